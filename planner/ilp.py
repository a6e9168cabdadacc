"""The exact planner: placement, recompute flags, codecs and ``M`` (SPEC §2.1), proven optimal.

Per candidate ``M`` a plan takes ``sum(u) + (M - 1) * max(u)``. Its solver of record is
the ILP of :mod:`planner.ilp_model`, ``S(theta)``: the least ``sum(u)`` over plans
whose every unit is at most ``theta`` (options chosen per arc, :mod:`planner.options`),
each ``M`` on its own tables (SPEC §2.1 ``per_micro_batch``; one incumbent over all).
``latency`` allows ``M = 1``, where ``sum(u)`` is the step: one ILP. For ``M > 1`` the
step is ``min over theta of S(theta) + (M - 1) * theta``, a bottleneck sweep, searched
here by branch and bound over intervals of ``theta`` (the units' own values):

- every plan whose ``max(u)`` lies in ``[a, b]`` has ``sum(u) >= s_b`` (a known ``S``
  above the interval) and so a step of at least ``s_b + (M - 1) * a``; intervals whose
  bound is not below the best plan so far (the incumbent, any ``M``) are dropped;
- evaluating ``S(c)`` inside ``[a, b]`` with a cutoff ``sum(u) <= best - (M - 1) * a``
  either proves no plan with ``max(u) <= c`` beats the incumbent (``[a, c]`` is done)
  or returns the plan with the least sum, whose ``max(u) = t`` settles ``[t, c]``
  (every plan there takes at least ``S(c) + (M - 1) * t``, this plan's step) and
  leaves ``[a, t)`` with the larger bound ``S(c)``; ``(c, b]`` stays open.
- ``c`` is the interval's top value (one call settles an ``M`` that holds nothing
  faster) unless the interval is what a plan left below its ``max(u)`` and holds more
  than ``SWEEP_MAX_VALUES`` values: then its median value (bisection: it lifts the
  lower end fast where nothing fits).

Every value is removed by the evaluation that covers it, so the search ends, and what
remains of the incumbent is optimal for that ``M``. Starting points: greedy plans for
every ``M`` (:func:`planner.bounds.greedy_plan`), a lower bound on ``max(u)``
(:func:`planner.bounds.bottleneck_floor_s`) and on ``sum(u)`` (the shortest path that
may revisit devices, :mod:`planner.paths`). ``M`` are visited from the smallest bound
``sum_floor + (M - 1) * max_floor`` up; one whose bound is not below the incumbent is
skipped. A bottleneck variable ``T`` in one model would be simpler but its LP relaxation
averages the bottleneck over fractional paths (on a fleet 8x32 client: 38 % below the
optimum at M = 16; CBC ran for minutes).

Budget: the incumbent counts only plans within it, and with none yet the search's limit
is the budget itself. The time limit is a deadline over all solver calls; a stopped
search returns its incumbent as ``feasible``, ``optimal`` only when every ``M`` was settled.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence

import numpy as np

from planner import arcs as arcs_mod
from planner import bounds, check, paths
from planner.ilp_model import create_problem, make_solver, run
from planner.problem import OBJECTIVES, ClientProblem, Objective, Solution, Stage

__all__ = ["solve_ilp", "create_problem"]

SWEEP_MAX_VALUES = 8  # an interval with at most this many unit values is evaluated at its top


def _remaining_s(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.perf_counter(), 1e-3)


class _Incumbent:
    """The best ``(stages, M, step)`` within the budget so far; ``offer`` tries every ``M``."""

    def __init__(self, p: ClientProblem, choices: Sequence[int]):
        self.p, self.choices = p, choices
        self.stages: tuple[Stage, ...] = ()
        self.m, self.step_s = choices[0], math.inf

    def offer(self, stages: Sequence[Stage] | None) -> None:
        for m in self.choices if stages else ():
            t = check.step_time_s(self.p, stages, m)
            if t < self.step_s and not check.violations(self.p, stages, m):
                self.stages, self.m, self.step_s = tuple(stages), m, t

    def beaten_by(self, lower_s: float) -> bool:
        """Whether no plan with a step of at least ``lower_s`` can replace the incumbent."""
        if self.stages:
            return lower_s >= self.step_s * (1 - 1e-12)
        return self.p.budget_s is not None and lower_s > self.p.budget_s * (1 + check.RTOL)

    @property
    def limit_s(self) -> float:
        return min(self.step_s, math.inf if self.p.budget_s is None else self.p.budget_s * (1 + check.RTOL))


def _least_sum(p: ClientProblem, m: int, arcs: arcs_mod.Arcs, theta_s: float, cutoff_s: float,
               solver: str, deadline: float | None) -> tuple[str, tuple[Stage, ...]]:
    """``S(theta_s)`` with ``sum(u) <= cutoff_s``: the shortest path when it uses distinct
    devices (:mod:`planner.paths`), else the ILP."""
    seg_u, cut_u = paths.within(p, arcs, m, cutoff_s, theta_s)
    total, stages = paths.shortest_plan(p, arcs, seg_u, cut_u)
    if total > cutoff_s * (1 + check.RTOL):
        return "infeasible", ()
    if stages is not None:
        return "optimal", stages
    return run(p, m, solver, _remaining_s(deadline), arcs=arcs, theta_s=theta_s,
               cutoff_s=None if math.isinf(cutoff_s) else cutoff_s)


def _plan_units(arcs_u: tuple[np.ndarray, np.ndarray], stages: Sequence[Stage]) -> tuple[float, float]:
    """``(sum(u), max(u))`` of ``stages`` from the unit tables (the values the search uses)."""
    seg_u, cut_u = arcs_u
    us = [seg_u[s.device, s.start, s.end] for s in stages]
    us += [cut_u[a.device, b.device, b.start] for a, b in zip(stages, stages[1:])]
    return float(sum(us)), float(max(us))


def _settle(p: ClientProblem, m: int, arcs: arcs_mod.Arcs, best: _Incumbent, floors: tuple[float, float],
            solver: str, deadline: float | None) -> bool:
    """Leave in ``best`` a plan at least as fast as the optimum at ``m`` micro-batches (the
    module docstring's search); False when the deadline stopped it (nothing is proven)."""
    if m == 1:
        outcome, stages = _least_sum(p, 1, arcs, math.inf, best.limit_s, solver, deadline)
        best.offer(stages)
        return outcome in ("optimal", "infeasible")
    lam = m - 1
    unit_tables = arcs_mod.units(p, arcs, m)
    values = np.unique(np.concatenate([u[np.isfinite(u)] for u in unit_tables]))
    s_floor, lo = floors
    heap = [(s_floor + lam * lo, lo, math.inf, s_floor, True)]  # (bound, a, b, s_b, evaluate the top)
    while heap:
        bound, a, b, s_b, at_top = heapq.heappop(heap)
        if best.beaten_by(bound):
            break
        b = min(b, (best.limit_s - s_b) / lam)  # a faster plan with sum >= s_b has max <= this
        ia, ib = int(np.searchsorted(values, a, "left")), int(np.searchsorted(values, b, "right")) - 1
        if ia > ib:
            continue
        if deadline is not None and time.perf_counter() >= deadline:
            return False
        ic = ib if at_top or ib - ia < SWEEP_MAX_VALUES else (ia + ib) // 2
        c = float(values[ic])
        outcome, stages = _least_sum(p, m, arcs, c, best.limit_s - lam * a, solver, deadline)
        if outcome not in ("optimal", "infeasible"):
            best.offer(stages)
            return False
        if ic < ib:
            nxt = float(values[ic + 1])
            heapq.heappush(heap, (s_b + lam * nxt, nxt, b, s_b, True))
        if outcome == "optimal":
            best.offer(stages)
            s_c, top = _plan_units(unit_tables, stages)
            it = int(np.searchsorted(values, top, "left"))
            if it > ia:
                heapq.heappush(heap, (s_c + lam * a, a, float(values[it - 1]), s_c, False))
    return True


def _search(p: ClientProblem, choices: Sequence[int], solver: str, deadline: float | None) -> tuple[str, Solution]:
    if not choices:
        return "infeasible", Solution.infeasible()
    views = {m: p.at(m) for m in choices}  # each M's tables (SPEC §2.1 per_micro_batch)
    catalogues = {q: arcs_mod.catalogue(q) for q in dict.fromkeys(views.values())}
    arcs = {m: catalogues[q] for m, q in views.items()}
    best = _Incumbent(p, choices)
    for m in choices:
        best.offer(bounds.greedy_plan(views[m], arcs[m], m))
    floors, lower = {}, {}
    for m in choices:
        q = views[m]
        s_floor, stages = paths.shortest_plan(q, arcs[m], *paths.within(q, arcs[m], m))
        best.offer(stages)
        upper = best.step_s if math.isfinite(best.step_s) else s_floor
        t_floor = bounds.bottleneck_floor_s(q, arcs[m], m, upper) if m > 1 and math.isfinite(s_floor) else 0.0
        floors[m], lower[m] = (s_floor, t_floor), max(s_floor, t_floor) + (m - 1) * t_floor
    settled = True
    for m in sorted(choices, key=lambda m: (lower[m], m)):
        if not math.isfinite(lower[m]) or best.beaten_by(lower[m]):
            continue  # no plan with this M, or none faster than the incumbent (or within the budget)
        if deadline is not None and time.perf_counter() >= deadline:
            settled = False
            break
        settled = _settle(views[m], m, arcs[m], best, floors[m], solver, deadline) and settled
    if not best.stages:
        return ("infeasible" if settled else "unknown"), Solution.infeasible()
    return ("optimal" if settled else "feasible"), Solution(best.stages, "", best.step_s, micro_batches=best.m)


def solve_ilp(
    p: ClientProblem,
    *,
    objective: Objective = "latency",
    time_limit_s: float | None = None,
    solver: str = "cbc",
) -> Solution:
    """Solve ``p`` exactly (``optimal``), or the best found by ``time_limit_s`` (``feasible``).

    ``step_time_s`` is recomputed from the decoded stages with :func:`check.step_time_s`.
    A search stopped by the time limit returns its best plan as ``feasible``, or, with
    none, ``time_limit`` (no plan, and none ruled out), never ``infeasible``.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}, expected latency or throughput")
    make_solver(solver, time_limit_s)  # fail early on an unknown or missing solver
    t0 = time.perf_counter()
    deadline = None if time_limit_s is None else t0 + time_limit_s
    outcome, sol = _search(p, p.choices(objective), solver, deadline)
    seconds = time.perf_counter() - t0
    if not sol.stages and outcome == "unknown":  # stopped on the time limit: nothing found, nothing proven
        return Solution(stages=(), status="time_limit", step_time_s=math.inf, seconds=seconds)
    if not sol.stages:
        return Solution.infeasible(seconds=seconds)
    return Solution(stages=sol.stages, status="optimal" if outcome == "optimal" else "feasible",
                    step_time_s=check.step_time_s(p, sol.stages, sol.micro_batches), seconds=seconds,
                    micro_batches=sol.micro_batches)
