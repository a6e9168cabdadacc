"""The placement solvers: literal cases, then the ILP against the exact DP (SPEC §2).

conftest.py seeds every test (autouse); instances draw from their own seeded Random.

Literal cases assert whole stage lists (torchgpipe style). The seeded cross-checks run
the ILP and the bitmask DP on the same random tables, both objectives, and require the
same step time (relative 1e-6), the same infeasibility, and plans that pass
:func:`planner.check.violations`.
"""

from __future__ import annotations

import math
import random

import pytest

from planner import arcs, baselines, check
from planner import ilp as ilp_module
from planner.ilp import create_problem, solve_ilp
from planner.problem import OBJECTIVES, ClientProblem, Stage
from planner.reference import solve_brute_force, solve_reference

RTOL = 1e-6


def problem(compute, memory=None, capacity=None, cut=None, bw=1e3, lat=0.0, *, data=0, budget=None):
    """Literal tables; scalars ``bw``/``lat`` mean the same link between every pair."""
    n, L = len(compute), len(compute[0])
    memory = memory or [[1] * L for _ in range(n)]
    capacity = capacity or [10**9] * n
    cut = cut if cut is not None else [100] * (L - 1)

    def square(v):
        return v if isinstance(v, list) else [[0 if a == b else v for b in range(n)] for a in range(n)]

    return ClientProblem(
        devices=tuple(f"dev{i}" for i in range(n)), data_device=data,
        compute_s=tuple(map(tuple, compute)), memory_bytes=tuple(map(tuple, memory)),
        capacity_bytes=tuple(capacity), cut_bytes=tuple(cut),
        link_bytes_per_s=tuple(map(tuple, square(bw))), link_latency_s=tuple(map(tuple, square(lat))),
        budget_s=budget,
    )


def random_problem(rng: random.Random, *, max_devices: int = 6, max_layers: int = 12) -> ClientProblem:
    """Seeded tables: speed factors, some capacities too small, absent links, budgets."""
    n, L = rng.randint(1, max_devices), rng.randint(1, max_layers)
    base = [rng.uniform(0.01, 1.0) for _ in range(L)]
    speed = [rng.choice((0.25, 0.5, 1, 2, 4, 8)) * rng.uniform(0.8, 1.2) for _ in range(n)]
    compute = [[b * s * rng.uniform(0.9, 1.1) for b in base] for s in speed]
    layer_bytes = [rng.randint(1, 1000) for _ in range(L)]
    memory = [[m * rng.choice((1, 1, 2)) for m in layer_bytes] for _ in range(n)]
    total = sum(layer_bytes)
    capacity = [
        rng.choices(
            (int(total * rng.uniform(0.2, 0.8)), int(total * rng.uniform(1.0, 3.0)), rng.randint(0, 50)),
            weights=(3, 6, 1),
        )[0]
        for _ in range(n)
    ]
    cut = [rng.randint(1, 2 * 10**5) for _ in range(L - 1)]
    bw = [[0.0 if a == b or rng.random() < 0.05 else rng.uniform(1e5, 1e7) for b in range(n)] for a in range(n)]
    lat = [[0.0 if a == b else rng.uniform(0, 0.05) for b in range(n)] for a in range(n)]
    budget = None if rng.random() < 0.4 else rng.uniform(0.1, 1.5) * sum(compute[0])
    return problem(compute, memory, capacity, cut, bw, lat, data=rng.randrange(n), budget=budget)


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
    p = problem([[1.0] * 4, [1.0] * 4], bw=1e9)
    sol = solve(p, objective="throughput")
    assert sol.stages == (Stage(0, 0, 2), Stage(1, 2, 4))
    assert sol.step_time_s == pytest.approx(2.0 + 100 / 1e9)


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
    for objective in OBJECTIVES:
        prob, variables = create_problem(p, objective=objective)
        names = {c.name for c in prob.constraints()}
        assert {"data_first", "one_segment_1", "one_segment_2", "budget"} <= names
        assert any(n.startswith("flow_leave_") for n in names)
        assert variables.w and variables.u
    prob, variables = create_problem(p, objective="throughput")
    assert {"bottleneck_compute_0", "bottleneck_cut_1"} <= {c.name for c in prob.constraints()}
    assert variables.bottleneck is not None


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


# --- seeded cross-checks ---------------------------------------------------------------


def assert_same_answer(p: ClientProblem, objective: str, a, b) -> None:
    assert (a.status == "infeasible") == (b.status == "infeasible"), (objective, a, b, p)
    if b.status == "infeasible":
        return
    assert a.status == "optimal" and b.status == "optimal"
    assert check.violations(p, a.stages, objective) == []
    assert check.violations(p, b.stages, objective) == []
    assert a.step_time_s == pytest.approx(b.step_time_s, rel=RTOL), (objective, a, b, p)


@pytest.mark.parametrize("block", range(20))
def test_ilp_matches_reference_on_random_instances(block):
    """200 seeded instances (20 blocks of 10), both objectives."""
    for seed in range(block * 10, block * 10 + 10):
        p = random_problem(random.Random(seed))
        for objective in OBJECTIVES:
            ilp = solve_ilp(p, objective=objective)
            ref = solve_reference(p, objective=objective)
            assert_same_answer(p, objective, ilp, ref)
            assert not ilp.stages or ilp.step_time_s == pytest.approx(check.step_time_s(p, ilp.stages, objective))


def test_random_instances_are_mixed():
    """The generator gives feasible and infeasible instances and multi-stage plans."""
    problems = [random_problem(random.Random(s)) for s in range(200)]
    sols = [solve_reference(p, objective=o) for p in problems for o in OBJECTIVES]
    assert 40 <= sum(s.status == "infeasible" for s in sols) <= 280
    assert sum(len(s.stages) == 2 for s in sols) >= 40
    assert sum(len(s.stages) >= 3 for s in sols) >= 30


@pytest.mark.parametrize("seed", range(3))
def test_ilp_matches_reference_on_larger_instances(seed):
    """8 devices, 28 layers: large enough that throughput goes through threshold bisection."""
    p = big_problem(100 + seed, n=8, L=28)
    assert sum(map(len, arcs.arcs(p, "throughput"))) > ilp_module.DIRECT_MAX_ARCS
    for objective in OBJECTIVES:
        assert_same_answer(p, objective, solve_ilp(p, objective=objective), solve_reference(p, objective=objective))


@pytest.mark.parametrize("seed", range(60))
def test_reference_matches_brute_force_on_tiny_instances(seed):
    p = random_problem(random.Random(5000 + seed), max_devices=3, max_layers=5)
    for objective in OBJECTIVES:
        ref, brute = solve_reference(p, objective=objective), solve_brute_force(p, objective=objective)
        assert_same_answer(p, objective, ref, brute)


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
            assert check.violations(p, sol.stages, objective) == []
            assert best.status == "optimal"
            assert sol.step_time_s >= best.step_time_s * (1 - RTOL)


# --- time limit ----------------------------------------------------------------------------


def big_problem(seed: int, n: int = 16, L: int = 64) -> ClientProblem:
    rng = random.Random(seed)
    base = [rng.uniform(0.01, 0.2) for _ in range(L)]
    compute = [[b * s * rng.uniform(0.9, 1.1) for b in base] for s in (rng.uniform(0.5, 8) for _ in range(n))]
    layer_bytes = [rng.randint(1000, 100000) for _ in range(L)]
    capacity = [int(sum(layer_bytes) * rng.uniform(0.05, 0.6)) for _ in range(n)]
    cut = [rng.randint(1000, 2_000_000) for _ in range(L - 1)]
    return problem(compute, [layer_bytes] * n, capacity, cut, bw=1e7, lat=0.005)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_time_limit_never_claims_optimal(objective):
    p = big_problem(1)  # 16 devices x 64 layers: no proof fits in 10 ms
    sol = solve_ilp(p, objective=objective, time_limit_s=0.01)
    assert sol.status in ("feasible", "time_limit")  # never "optimal", never a claim of infeasibility
    if sol.status == "feasible":
        assert check.violations(p, sol.stages, objective) == []
        assert sol.step_time_s == pytest.approx(check.step_time_s(p, sol.stages, objective))
    if baselines.greedy_bottleneck(p)[1] is not None:  # a fallback plan exists
        assert sol.status == "feasible"


def test_cbc_stopped_on_time_with_an_incumbent_is_feasible():
    """CBC says status 1 (Optimal) on a time limit; sol_status tells the two apart."""
    p = big_problem(1)
    start = baselines.greedy_bottleneck(p)[1]
    outcome, stages = ilp_module._run(p, "latency", "cbc", 0.01, start=start)
    assert outcome == "feasible"
    assert check.violations(p, stages, "latency") == []
