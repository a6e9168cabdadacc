"""The ILP against the exact DP and brute force on seeded instances with SPEC §2.1's options.

Instances draw per-micro-batch overheads, a few ``M`` choices (1 included or not), each
``M``'s own tables (``per_micro_batch``, half the instances),
recompute tables (more compute, less memory) and codecs, besides the §2 tables, budgets,
tight capacities and absent links. Both objectives run (latency on the same tables with
``micro_batch_choices = [1]``). Every pair must agree on infeasibility and on the step
time (relative 1e-6), and every plan must pass :func:`planner.check.violations` with
its own ``M``. ``test_instances_exercise_every_option`` makes sure the seeds do reach
M > 1, recomputing stages, codecs and infeasible clients.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from planner import check
from planner.brute_force import solve_brute_force
from planner.ilp import solve_ilp
from planner.problem import OBJECTIVES, ClientProblem, Codec, RecomputeTables, Solution
from planner.reference import solve_reference
from tests.instances import big_problem, random_problem

RTOL = 1e-6


def tables_for(p: ClientProblem, objective: str) -> ClientProblem:
    return replace(p, micro_batch_choices=(1,)) if objective == "latency" else p


def assert_same_answer(p: ClientProblem, a: Solution, b: Solution) -> None:
    assert (a.status == "infeasible") == (b.status == "infeasible"), (a, b, p)
    if b.status == "infeasible":
        return
    assert a.status == "optimal" and b.status == "optimal"
    for sol in (a, b):
        assert check.violations(p, sol.stages, sol.micro_batches) == []
        assert sol.step_time_s == pytest.approx(check.step_time_s(p, sol.stages, sol.micro_batches), rel=1e-12)
    assert a.step_time_s == pytest.approx(b.step_time_s, rel=RTOL), (a, b, p)


@pytest.mark.parametrize("block", range(10))
def test_ilp_matches_reference_on_random_instances(block):
    """200 seeded instances (10 blocks of 20), both objectives."""
    for seed in range(block * 20, block * 20 + 20):
        q = random_problem(random.Random(seed))
        for objective in OBJECTIVES:
            p = tables_for(q, objective)
            assert_same_answer(p, solve_ilp(p, objective=objective), solve_reference(p, objective=objective))


def test_instances_exercise_every_option():
    """The seeds reach what the cross-check is for: M > 1, recomputation, codecs, several
    stages, and infeasible clients (capacity, links, budget)."""
    sols = [solve_reference(random_problem(random.Random(s)), objective="throughput") for s in range(200)]
    planned = [s for s in sols if s.stages]
    assert 20 <= len(sols) - len(planned) <= 120
    assert sum(s.micro_batches > 1 for s in planned) >= 40
    assert sum(len(s.stages) >= 2 for s in planned) >= 30
    assert sum(any(st.recompute for st in s.stages) for s in planned) >= 10
    assert sum(any(st.codec != "none" for st in s.stages) for s in planned) >= 10
    measured = [p for p in map(random_problem, map(random.Random, range(200))) if p.per_micro_batch]
    assert len(measured) >= 50  # every M's own tables (SPEC §2.1 per_micro_batch) ...
    moved = [p for p in measured if solve_reference(p, objective="throughput").step_time_s
             != solve_reference(replace(p, per_micro_batch=()), objective="throughput").step_time_s]
    assert len(moved) >= 20  # ... change the answer, so the cross-check tests the solvers' use of them


@pytest.mark.parametrize("seed", range(60))
def test_reference_matches_brute_force_on_tiny_instances(seed):
    """Brute force enumerates every flag, codec and M: it checks the per-arc choices too."""
    q = random_problem(random.Random(5000 + seed), max_devices=3, max_layers=5)
    for objective in OBJECTIVES:
        p = tables_for(q, objective)
        assert_same_answer(p, solve_reference(p, objective=objective), solve_brute_force(p, objective=objective))


@pytest.mark.parametrize("seed", range(2))
def test_ilp_matches_reference_on_larger_instances(seed):
    """8 devices, 28 layers, M up to 16, overheads, recompute and a codec."""
    q = big_problem(100 + seed, n=8, L=28)
    p = replace(q, micro_batch_choices=(1, 2, 4, 8, 16), overhead_s=tuple(0.002 * (d + 1) for d in range(8)),
                recompute=RecomputeTables(tuple(tuple(c * 1.3 for c in r) for r in q.compute_s),
                                          tuple(tuple(m // 2 for m in r) for r in q.memory_bytes)),
                codecs=(Codec("fp16", 0.5, tuple((0.001,) * 27 for _ in range(8))),))
    ilp, ref = solve_ilp(p, objective="throughput"), solve_reference(p, objective="throughput")
    assert_same_answer(p, ilp, ref)
    assert ilp.micro_batches > 1
