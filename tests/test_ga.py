"""The genetic algorithm (planner/ga.py) against the proven-optimal ILP, and its CLI.

The GA is a heuristic: on the same tables it may lose to the ILP, never beat it (that
would mean an infeasible plan or a wrong step time), and every plan it returns must pass
:func:`planner.check.violations`. On small instances its default settings find the
optimum. The model profile is the synthetic dcgan one (conftest.py).
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from planner import check, plan
from planner.devices import load_profile
from planner.ga import GASettings, decode, score, solve_ga
from planner.ilp import solve_ilp
from planner.models import dcgan_discriminator
from planner.planfile import load_plan
from planner.problem import OBJECTIVES, Stage
from tests.instances import problem, random_problem
from tests.test_solvers import RTOL

ROOT = Path(__file__).parent.parent
QUICK = GASettings(population=40, generations=40)


def with_one(p):
    """``p`` where M = 1 is among the choices, so a latency plan can exist (the seeded
    instances sometimes leave it out)."""
    return replace(p, micro_batch_choices=tuple(sorted({1, *p.micro_batch_choices})))


def test_decode_orders_helpers_by_start_and_drops_empty_segments():
    p = problem([[1.0] * 6] * 4, data=2)  # helpers are devices 0, 1, 3
    # helper 0 starts at 4, helper 1 unused, helper 3 starts at 2
    assert decode(p, np.array([1, 4, 0, 1, 1, 2])) == (Stage(2, 0, 2), Stage(3, 2, 4), Stage(0, 4, 6))
    # a tie at layer 3: the lower device index gets no layers, so it is unused
    assert decode(p, np.array([1, 3, 0, 5, 1, 3])) == (Stage(2, 0, 3), Stage(3, 3, 6))
    assert decode(p, np.array([0, 1, 0, 1, 0, 1])) == (Stage(2, 0, 6),)


def test_literal_case_capacity_forces_a_helper():
    # the data device is fastest but holds only 2 of 4 layers (as in test_solvers)
    p = problem([[0.1] * 4, [1.0] * 4], capacity=[2, 10])
    sol = solve_ga(p, settings=QUICK)
    assert sol.stages == (Stage(0, 0, 2), Stage(1, 2, 4)) and sol.status == "heuristic"
    assert sol.step_time_s == pytest.approx(0.2 + 0.1 + 2.0)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_never_beats_the_ilp_and_returns_feasible_plans(objective):
    rng = random.Random(15)
    planned = 0
    for _ in range(25):
        p = with_one(random_problem(rng, max_devices=6, max_layers=12))
        best = solve_ilp(p, objective=objective)
        ga = solve_ga(p, objective=objective, settings=QUICK)
        if best.status == "infeasible":
            assert ga.status == "infeasible" and ga.stages == ()
            continue
        if ga.status == "infeasible":  # a heuristic may miss; it must not pretend
            continue
        planned += 1
        assert ga.status == "heuristic"
        assert check.violations(p, ga.stages, ga.micro_batches) == []
        assert ga.step_time_s == check.step_time_s(p, ga.stages, ga.micro_batches)
        assert ga.micro_batches in p.choices(objective)
        assert ga.step_time_s >= best.step_time_s * (1 - RTOL)
    assert planned >= 10  # the instances exercise the comparison, not only infeasibility


def test_finds_the_optimum_on_small_instances():
    rng = random.Random(3)
    compared = 0
    for _ in range(60):
        p = with_one(random_problem(rng, max_devices=4, max_layers=8))
        best = solve_ilp(p, objective="latency")
        if best.status == "infeasible":
            continue
        compared += 1
        ga = solve_ga(p, settings=GASettings(population=100, generations=100))
        assert ga.step_time_s == pytest.approx(best.step_time_s, rel=RTOL), (p, ga, best)
    assert compared >= 25


def test_same_seed_same_plan_other_seed_searches_anew():
    p = with_one(random_problem(random.Random(7), max_devices=6, max_layers=12))
    p = replace(p, budget_s=None)
    runs = [solve_ga(p, settings=replace(QUICK, seed=s)) for s in (0, 0, 1)]
    assert runs[0].stages == runs[1].stages and runs[0].step_time_s == runs[1].step_time_s
    # the seed is used: random initial populations of 2, no breeding, differ with it
    blind = {solve_ga(p, settings=GASettings(population=2, generations=0, seed=s)).stages for s in range(10)}
    assert len(blind) > 1


def test_budget_and_capacity_make_the_ga_exclude_like_the_ilp():
    # only the helper can hold layers 1..3 and it is 10x slower: the budget rules it out
    p = problem([[0.1] * 4, [1.0] * 4], capacity=[1, 10], budget=1.0)
    assert solve_ilp(p, objective="latency").status == "infeasible"
    assert solve_ga(p, settings=QUICK).status == "infeasible"
    ok = replace(p, budget_s=5.0)
    assert solve_ga(ok, settings=QUICK).stages == (Stage(0, 0, 1), Stage(1, 1, 4))


def test_score_grades_infeasible_plans_by_how_far_they_break_the_rules():
    p = problem([[0.1] * 4, [1.0] * 4], capacity=[2, 10], budget=2.5)
    assert score(p, (Stage(0, 0, 2), Stage(1, 2, 4)), "latency") == (0.0, pytest.approx(2.3), 1)
    little, much = score(p, (Stage(0, 0, 3), Stage(1, 3, 4)), "latency"), score(p, (Stage(0, 0, 4),), "latency")
    assert little == (pytest.approx(0.5), pytest.approx(1.4), 1) and much == (pytest.approx(1.0), pytest.approx(0.4), 1)
    late = score(p, (Stage(0, 0, 1), Stage(1, 1, 4)), "latency")  # fits, 3.2 s against 2.5 s
    assert late == (pytest.approx(0.7 / 2.5), pytest.approx(3.2), 1)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="population"):
        GASettings(population=1)
    with pytest.raises(ValueError, match="seed"):
        GASettings(seed=-1)


def test_plan_with_ga_is_deterministic_and_recorded(dcgan_profile):
    devices = load_profile(ROOT / "profiles" / "lab.json")
    runs = [plan(dcgan_discriminator(), devices, model_profile=dcgan_profile, solver="ga", ga=QUICK)
            for _ in range(2)]
    assert [c.stages for c in runs[0].clients] == [c.stages for c in runs[1].clients]
    assert runs[0].solver["name"] == "ga" and runs[0].solver["status"] == "heuristic"
    assert runs[0].solver["ga"]["population"] == 40
    best = plan(dcgan_discriminator(), devices, model_profile=dcgan_profile)
    assert runs[0].round_time_s >= best.round_time_s * (1 - RTOL)


def test_fsl_plan_solver_ga_end_to_end(tmp_path: Path, profile_cache):
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(app, ["plan", "--devices", str(ROOT / "profiles" / "lab.json"), "--solver", "ga",
                                 "--ga-population", "30", "--ga-generations", "20", "--ga-seed", "3",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "solver ga: heuristic" in r.output
    loaded = load_plan(out)  # re-checks every stage against SPEC §2
    assert loaded.solver["ga"] == {**loaded.solver["ga"], "population": 30, "generations": 20, "seed": 3}
    assert json.loads(out.read_text())["solver"]["name"] == "ga"
    bad = CliRunner().invoke(app, ["plan", "--devices", str(ROOT / "profiles" / "lab.json"), "--solver", "ga",
                                   "--ga-population", "1", "--out", str(tmp_path / "x.json")])
    assert bad.exit_code == 2 and "--ga-population" in bad.output
