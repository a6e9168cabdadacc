"""The placement solvers on literal cases (SPEC §2, §2.1), the baselines and time limits.

conftest.py seeds every test (autouse); instances draw from their own seeded Random.
Literal cases assert whole stage lists (torchgpipe style). The seeded cross-checks of
the ILP against the exact DP and brute force are in ``test_solver_crosscheck.py``.
"""

from __future__ import annotations

import math
import random

import pytest

from planner import baselines, bounds, cbc, check
from planner.arcs import catalogue
from planner.brute_force import solve_brute_force
from planner.ilp import create_problem, solve_ilp
from planner.problem import OBJECTIVES, Stage
from planner.reference import solve_reference
from tests.instances import big_problem, problem, random_problem

RTOL = 1e-6


# --- literal cases -------------------------------------------------------------------

SOLVERS = {"ilp": solve_ilp, "reference": solve_reference, "brute": solve_brute_force}


@pytest.mark.parametrize("solve", SOLVERS.values(), ids=SOLVERS.keys())
def test_single_device_holds_everything(solve):
    p = problem([[1.0, 2.0, 3.0]])
    sol = solve(p, objective="latency")
    assert sol.stages == (Stage(0, 0, 3),)
    assert sol.step_time_s == pytest.approx(6.0)
    assert sol.status == "optimal"


@pytest.mark.parametrize("solve", SOLVERS.values(), ids=SOLVERS.keys())
def test_fast_laptop_takes_all_but_the_first_layer(solve):
    # phone 1 s/layer, laptop 0.2 s/layer, a cut costs 100 B / 1 kB/s = 0.1 s
    p = problem([[1, 1, 1], [0.2, 0.2, 0.2]])
    sol = solve(p, objective="latency")
    assert sol.stages == (Stage(0, 0, 1), Stage(1, 1, 3))
    assert sol.step_time_s == pytest.approx(1.0 + 0.1 + 0.4)


@pytest.mark.parametrize("solve", SOLVERS.values(), ids=SOLVERS.keys())
def test_slow_link_keeps_everything_on_the_data_device(solve):
    p = problem([[1, 1, 1], [0.2, 0.2, 0.2]], cut=[10**6, 10**6])
    assert solve(p, objective="latency").stages == (Stage(0, 0, 3),)


@pytest.mark.parametrize("solve", SOLVERS.values(), ids=SOLVERS.keys())
def test_capacity_forces_the_slow_device_to_help(solve):
    # the data device is fastest but holds only 2 of 4 layers
    p = problem([[0.1] * 4, [1.0] * 4], capacity=[2, 10])
    sol = solve(p, objective="latency")
    assert sol.stages == (Stage(0, 0, 2), Stage(1, 2, 4))
    assert sol.step_time_s == pytest.approx(0.2 + 0.1 + 2.0)


@pytest.mark.parametrize("solve", SOLVERS.values(), ids=SOLVERS.keys())
def test_throughput_balances_two_equal_devices(solve):
    # M = 4: one device takes 4 / 4 per micro-batch, 1 + 3 x 1 = 4 s; two take 0.5 each,
    # (0.5 + 0.5 + cut) + 3 x 0.5 = 2.5 s; M = 1 would be 4 s either way
    p = problem([[1.0] * 4, [1.0] * 4], bw=1e9, micro_batch_choices=(1, 4))
    sol = solve(p, objective="throughput")
    assert (sol.stages, sol.micro_batches) == ((Stage(0, 0, 2), Stage(1, 2, 4)), 4)
    assert sol.step_time_s == pytest.approx(2.5 + 100 / 1e9 / 4)


@pytest.mark.parametrize("solve", SOLVERS.values(), ids=SOLVERS.keys())
def test_overhead_per_micro_batch_limits_m(solve):
    # one device, 4 s of compute, 0.2 s overhead per micro-batch: M = 1: 4.2 s; M = 2:
    # 2.2 + 2.2 = 4.4 s; a second device halves the compute: M = 2 then gives
    # units (1.2, 0, 1.2): 2.4 + 1.2 = 3.6 s, M = 4: (0.7, 0, 0.7) 1.4 + 3 x 0.7 = 3.5 s
    p = problem([[1.0] * 4, [1.0] * 4], bw=1e12, micro_batch_choices=(1, 2, 4), overhead_s=(0.2, 0.2))
    sol = solve(p, objective="throughput")
    assert (sol.stages, sol.micro_batches) == ((Stage(0, 0, 2), Stage(1, 2, 4)), 4)
    assert sol.step_time_s == pytest.approx(3.5, rel=1e-9)
    assert solve(p, objective="latency").step_time_s == pytest.approx(4.2)


@pytest.mark.parametrize("solve", SOLVERS.values(), ids=SOLVERS.keys())
def test_device_order_follows_the_links(solve):
    # 0 -> 2 is slow, 0 -> 1 -> 2 is fast; every device holds one layer
    bw = [[0, 1e3, 1.0], [1e3, 0, 1e3], [1.0, 1e3, 0]]
    p = problem([[1.0] * 3] * 3, capacity=[1, 1, 1], bw=bw)
    sol = solve(p, objective="latency")
    assert sol.stages == (Stage(0, 0, 1), Stage(1, 1, 2), Stage(2, 2, 3))


@pytest.mark.parametrize("solve", SOLVERS.values(), ids=SOLVERS.keys())
def test_absent_link_is_never_used(solve):
    bw = [[0, 0.0], [0.0, 0]]
    p = problem([[1, 1, 1], [0.2, 0.2, 0.2]], capacity=[1, 10], bw=bw)
    assert solve(p, objective="latency").status == "infeasible"


@pytest.mark.parametrize("solve", SOLVERS.values(), ids=SOLVERS.keys())
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_budget_below_the_optimum_is_infeasible(solve, objective):
    p = problem([[1, 1, 1], [0.2, 0.2, 0.2]], budget=0.5)
    sol = solve(p, objective=objective)
    assert sol.status == "infeasible"
    assert sol.stages == () and sol.step_time_s == math.inf


@pytest.mark.parametrize("solve", SOLVERS.values(), ids=SOLVERS.keys())
def test_budget_equal_to_the_optimum_is_feasible(solve):
    p = problem([[1, 1, 1], [0.2, 0.2, 0.2]], budget=1.5)
    assert solve(p, objective="latency").stages == (Stage(0, 0, 1), Stage(1, 1, 3))


@pytest.mark.parametrize("solve", SOLVERS.values(), ids=SOLVERS.keys())
def test_first_layer_too_big_for_the_data_device(solve):
    p = problem([[1, 1], [1, 1]], memory=[[5, 1], [1, 1]], capacity=[4, 10])
    assert solve(p, objective="latency").status == "infeasible"


def test_ilp_constraints_are_named():
    p = problem([[1, 1, 1], [0.2, 0.2, 0.2], [0.5, 0.5, 0.5]], budget=10.0)
    prob, variables = create_problem(p)
    names = {c.name for c in prob.constraints()}
    assert {"data_first", "one_segment_1", "one_segment_2", "budget"} <= names
    assert any(n.startswith("flow_leave_") for n in names) and any(n.startswith("flow_enter_") for n in names)
    assert variables.w and variables.u
    prob, _ = create_problem(p, micro_batches=2, theta_s=0.6, cutoff_s=2.0)
    names = {c.name for c in prob.constraints()}
    assert "cutoff" in names and "budget" not in names  # M > 1: the search's cutoff carries the budget


def test_theta_keeps_only_units_within_it():
    # units at M = 2 (no overhead): phone 0.5 s per layer, laptop 0.1 s; cuts 0.05 s.
    # Within 0.5 s the phone holds layer 0 only, so the laptop must take 1..2 in one
    # segment: (1, 1, 2) and (1, 2, 3) lie on no path from layer 0 to the end
    p = problem([[1, 1, 1], [0.2, 0.2, 0.2]], micro_batch_choices=(2,))
    _, variables = create_problem(p, micro_batches=2, theta_s=0.5)
    assert set(variables.w) == {(0, 0, 1), (1, 1, 3)}
    assert set(variables.u) == {(0, 1, 1)}


def test_unknown_solver_and_objective_are_rejected():
    p = problem([[1.0]])
    with pytest.raises(ValueError, match="unknown solver"):
        solve_ilp(p, solver="gurobi")
    with pytest.raises(ValueError, match="unknown objective"):
        solve_ilp(p, objective="energy")
    with pytest.raises(ValueError, match="unknown objective"):
        solve_reference(p, objective="energy")


def test_highs_solves_or_says_it_is_missing():
    import pulp

    p = problem([[1, 1, 1], [0.2, 0.2, 0.2]])
    highs = getattr(pulp, "HiGHS", None)
    if highs is not None and highs(msg=False).available():
        assert solve_ilp(p, solver="highs").stages == (Stage(0, 0, 1), Stage(1, 1, 3))
    else:
        with pytest.raises(ValueError, match="highspy"):
            solve_ilp(p, solver="highs")


def test_reference_refuses_more_than_16_devices():
    p = problem([[1.0, 1.0]] * 17)
    with pytest.raises(ValueError, match="at most 16 devices"):
        solve_reference(p)


# --- baselines ---------------------------------------------------------------------------


def test_fsl_gan_fills_the_fastest_device_first():
    # devices by speed: dev2 (fastest), dev1, dev0; parts A = 0..1, B = 2..3, C = 4..5
    compute = [[1.0] * 6, [0.5] * 6, [0.1] * 6]
    p = problem(compute, capacity=[2, 10, 2])
    sol = baselines.solve_fsl_gan(p, parts=(0, 2, 4))
    assert sol.stages == (Stage(0, 0, 2), Stage(2, 2, 4), Stage(1, 4, 6))
    assert sol.status == "heuristic"


def test_fsl_gan_merges_parts_and_never_returns_to_a_device():
    compute = [[0.1] * 6, [1.0] * 6]
    p = problem(compute, capacity=[4, 10])
    # the data device is fastest: A and B merge on it, C does not fit and moves on
    assert baselines.solve_fsl_gan(p, parts=(0, 2, 4)).stages == (Stage(0, 0, 4), Stage(1, 4, 6))
    p = problem(compute, capacity=[4, 1])  # C fits nowhere: dev0 is full, dev1 too small
    assert baselines.solve_fsl_gan(p, parts=(0, 2, 4)).status == "infeasible"


def test_uniform_and_params_split_as_documented():
    p = problem([[1.0] * 6, [0.1] * 6], memory=[[1, 1, 1, 1, 4, 4], [1] * 6], bw=1e9)
    uniform = baselines.solve_uniform(p, objective="throughput")
    assert uniform.stages == (Stage(0, 0, 3), Stage(1, 3, 6))
    params = baselines.solve_params(p, objective="throughput")
    assert params.stages == (Stage(0, 0, 4), Stage(1, 4, 6))  # 4 bytes | 8 bytes beats 3 | 9


@pytest.mark.parametrize("seed", range(40))
def test_baselines_are_feasible_and_never_beat_the_optimum(seed):
    p = random_problem(random.Random(9000 + seed))
    for objective in OBJECTIVES:
        best = solve_reference(p, objective=objective)
        for solve in (baselines.solve_fsl_gan, baselines.solve_uniform, baselines.solve_params):
            sol = solve(p, objective=objective)
            if sol.status == "infeasible":
                continue
            assert sol.status == "heuristic"
            assert check.violations(p, sol.stages, sol.micro_batches) == []
            assert best.status == "optimal"
            assert sol.step_time_s >= best.step_time_s * (1 - RTOL)


def test_baselines_take_the_best_m_and_codec_for_their_placement():
    from planner.problem import Codec

    # uniform puts 2 layers on each device; M = 2 beats M = 1; fp16 halves a slow cut
    p = problem([[1.0] * 4, [1.0] * 4], cut=[100, 1000, 100], micro_batch_choices=(1, 2),
                codecs=(Codec("fp16", 0.5, ((0.01,) * 3, (0.01,) * 3)),))
    sol = baselines.solve_uniform(p, objective="throughput")
    assert sol.stages == (Stage(0, 0, 2, codec="fp16"), Stage(1, 2, 4))
    assert sol.micro_batches == 2
    assert sol.step_time_s == pytest.approx(check.step_time_s(p, sol.stages, 2))


# --- time limit ----------------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_time_limit_never_claims_optimal(objective):
    p = big_problem(1, micro_batch_choices=(1, 2, 4, 8, 16))  # 16 devices x 64 layers: no proof in 10 ms
    sol = solve_ilp(p, objective=objective, time_limit_s=0.01)
    assert sol.status in ("feasible", "time_limit")  # never "optimal", never a claim of infeasibility
    if sol.status == "feasible":
        assert check.violations(p, sol.stages, sol.micro_batches) == []
        assert sol.step_time_s == pytest.approx(check.step_time_s(p, sol.stages, sol.micro_batches))
    if bounds.greedy_plan(p, catalogue(p), 1) is not None:  # an incumbent exists before any solver call
        assert sol.status == "feasible"


@pytest.mark.parametrize("first_line, outcome", [
    ("Optimal - objective value 1.25", "optimal"),
    ("Stopped on time - objective value 1.25", "feasible"),  # a time limit with an incumbent
    ("Stopped on time", "unknown"),
    ("Stopped on iterations - objective value 1e+50", "feasible"),
    ("Infeasible - objective value 0.0", "infeasible"),
    ("Integer infeasible - objective value 0.0", "infeasible"),
])
def test_cbc_solution_file_status(tmp_path, first_line, outcome):
    """The first line of CBC's solution file, read as PuLP's COIN_CMD.get_status does."""
    path = tmp_path / "model.sol"
    path.write_text(f"{first_line}\n      0 C0        1       0\n      1 C2        1       0\n")
    assert cbc.read_solution(str(path), 3) == (outcome, [1.0, 0.0, 1.0])


def test_cbc_and_pulp_solve_the_same_model():
    """planner.cbc writes the model PuLP would build (create_problem) and gets its optimum."""
    import pulp

    from planner.ilp_model import make_solver

    p = big_problem(2, n=6, L=16)
    prob, variables = create_problem(p, micro_batches=1)
    prob.solve(make_solver("cbc", None))
    sol = solve_ilp(p)
    assert sol.status == "optimal"
    assert pulp.value(prob.objective) * variables.scale_s == pytest.approx(sol.step_time_s, rel=1e-9)
