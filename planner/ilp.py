"""The exact placement ILP: contiguous segments on distinct devices (SPEC §2), via PuLP.

Segments are path arcs, as in the placement problem of the FSL-GAN seed paper stated as
a shortest path with side constraints. Binary ``w[d,i,j]`` runs layers ``i..j-1`` on
device ``d`` (one variable per segment that fits ``capacity_bytes[d]``); binary
``u[d,e,j]`` is the cut from ``d`` to ``e`` between layers ``j-1`` and ``j``. A plan is
one unit of flow from the data device's start to the last layer::

    boundary:   0           3           5           8 = L
    phone      (s)══w[p,0,3]══(e)
                               ╲u[p,l,3]
    laptop                      (s)══w[l,3,8]═══════(e) -> done

Constraints, each named so an infeasible model can be read back:

- ``data_first``: one segment starts on the data device at layer 0; no cut enters it;
- ``flow_leave_{d}_{j}`` / ``flow_enter_{e}_{j}``: a segment ending at ``j`` leaves by
  exactly one cut, a cut into ``e`` at ``j`` starts exactly one segment there; with
  ``data_first`` this covers every layer exactly once, in order (``cover_layer_{l}``
  of the per-layer model is implied, so it is not stated);
- ``one_segment_{d}``: at most one segment per device;
- ``capacity_{d}``: by construction, only segments that fit get a variable;
- ``budget``: the step time is at most ``budget_s`` (when set); segments and cuts that
  alone exceed it get no variable (a valid cut: the step time is at least each);
- throughput only: ``bottleneck_compute_{d}`` / ``bottleneck_cut_{j}`` bound ``T``.

This arc model has the same integer solutions as the per-layer model (``x[d][l]``,
adjacency ``y[a][b][l] >= x[a][l] + x[b][l+1] - 1`` and knapsack capacity rows) but a
much tighter LP relaxation: without ``one_segment`` it is a shortest path, which is
integral. Links with bandwidth <= 0 are treated as absent. Times are divided by a scale
(the fastest single-device compute time) so CBC's absolute tolerances meet numbers near 1.

Time limit: CBC through PuLP reports ``LpStatusOptimal`` even when it stopped on the time
limit with an incumbent; PuLP then sets ``prob.sol_status`` to ``LpSolutionIntegerFeasible``
instead of ``LpSolutionOptimal`` (it parses CBC's "Stopped on time - objective value"
line). We return ``optimal`` only when ``sol_status == LpSolutionOptimal``; an integer
solution otherwise is ``feasible``. HiGHS sets ``sol_status`` the same way.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pulp

from planner import check
from planner.problem import OBJECTIVES, ClientProblem, Objective, Solution, Stage

GAP_ABS = 1e-9  # absolute MIP gap on scaled times (the relative gap is 0)
# Measured on seeded 8x32 instances (CBC child CPU time): CBC's preprocessing, the
# feasibility pump and strong branching cost more than they save on this model
# (throughput 0.51 -> 0.17 s, latency 0.09 -> 0.05 s mean). Exactness is unaffected.
CBC_OPTIONS = ("preprocess off", "feas off", "strong 0")
DIRECT_MAX_ARCS = 500  # throughput: smaller models are solved directly, larger by bisection
BISECT_RTOL = 0.01  # throughput: bracket the optimum this tightly before the exact solve


@dataclass(frozen=True)
class IlpVariables:
    """The decision variables of :func:`create_problem`; absent keys are fixed to 0."""

    w: dict[tuple[int, int, int], pulp.LpVariable]  # (d, i, j): layers i..j-1 on d
    u: dict[tuple[int, int, int], pulp.LpVariable]  # (d, e, j): cut d -> e before layer j
    bottleneck: pulp.LpVariable | None  # T for the throughput objective, else None
    scale_s: float  # seconds per unit of the model's time coefficients


def _time_scale_s(p: ClientProblem) -> float:
    fastest = min(sum(row) for row in p.compute_s)
    return fastest if fastest > 0 else 1.0


def _segments(p: ClientProblem, limit_s: float) -> dict[tuple[int, int, int], float]:
    """Seconds of every segment ``(d, i, j)`` that fits, starts legally, within ``limit_s``."""
    out = {}
    limit = limit_s * (1 + 1e-9)
    for d in range(p.n_devices):
        starts = [0] if d == p.data_device else range(1, p.n_layers)
        mem, comp = p.memory_bytes[d], p.compute_s[d]
        for i in starts:
            used, secs = 0, 0.0
            for j in range(i + 1, p.n_layers + 1):
                used += mem[j - 1]
                secs += comp[j - 1]
                if used > p.capacity_bytes[d] or secs > limit:
                    break
                out[d, i, j] = secs
    return out


def _cuts(p: ClientProblem, limit_s: float) -> dict[tuple[int, int, int], float]:
    """Seconds of every cut ``(d, e, j)`` over a link that exists, within ``limit_s``."""
    out = {}
    limit = limit_s * (1 + 1e-9)
    for d in range(p.n_devices):
        for e in range(p.n_devices):
            if e == d or e == p.data_device or p.link_bytes_per_s[d][e] <= 0:
                continue
            for j in range(1, p.n_layers):
                t = p.transfer_s(d, e, j - 1)
                if t <= limit:
                    out[d, e, j] = t
    return out


def _greedy_plan(p: ClientProblem, theta_s: float) -> list[Stage] | None:
    """A greedy plan (each next device the one that reaches furthest) whose segments'
    compute and cuts' transfer are all at most ``theta_s``, or None if greedy fails."""
    n, L = p.n_devices, p.n_layers

    def extend(d: int, start: int) -> int:
        used, secs, m = 0, 0.0, start
        while m < L:
            used += p.memory_bytes[d][m]
            secs += p.compute_s[d][m]
            if used > p.capacity_bytes[d] or secs > theta_s:
                break
            m += 1
        return m

    stages = [Stage(p.data_device, 0, extend(p.data_device, 0))]
    while 0 < stages[-1].end < L:
        last, m = stages[-1].device, stages[-1].end
        used = {s.device for s in stages}
        reach = [
            (extend(e, m), e) for e in range(n)
            if e not in used and p.link_bytes_per_s[last][e] > 0 and p.transfer_s(last, e, m - 1) <= theta_s
        ]
        best_m, best_e = max(reach, default=(m, -1))
        if best_m == m:
            return None
        stages.append(Stage(best_e, m, best_m))
    return stages if stages[-1].end == L else None


def greedy_bottleneck(p: ClientProblem) -> tuple[float, list[Stage] | None]:
    """A feasible plan for ``throughput`` (ignoring the budget) and its step time, by
    bisecting ``theta_s`` over :func:`_greedy_plan` to 1e-3 relative; ``(inf, None)`` if
    greedy finds none. Its step time bounds the optimum from above."""
    hi = max(sum(row) for row in p.compute_s) + max(
        (p.transfer_s(a, b, l) for a in range(p.n_devices) for b in range(p.n_devices)
         if a != b and p.link_bytes_per_s[a][b] > 0 for l in range(p.n_layers - 1)), default=0.0)
    best = _greedy_plan(p, hi)
    if best is None:
        return float("inf"), None
    lo = 0.0
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        plan = _greedy_plan(p, mid)
        if plan is None:
            lo = mid
        else:
            hi, best = mid, plan
    return check.step_time_s(p, best, "throughput"), best


def _prune(
    p: ClientProblem, seg_s: dict[tuple[int, int, int], float], cut_s: dict[tuple[int, int, int], float]
) -> None:
    """Drop, in place, arcs on no path from the data device's layer 0 to the last layer."""
    L = p.n_layers
    reach_begin = {(p.data_device, 0)}  # (device, boundary) where a segment may begin
    reach_end: set[tuple[int, int]] = set()
    useful_end = {(d, L) for d in range(p.n_devices)}  # (device, boundary) a path may end at
    useful_begin: set[tuple[int, int]] = set()
    starts_at: dict[int, list[tuple[int, int, int]]] = {}
    for k in seg_s:
        starts_at.setdefault(k[1], []).append(k)
    cuts_at: dict[int, list[tuple[int, int, int]]] = {}
    for k in cut_s:
        cuts_at.setdefault(k[2], []).append(k)
    for b in range(L):  # forward: what a path from layer 0 can reach
        for d, e, _ in cuts_at.get(b, []):
            if (d, b) in reach_end:
                reach_begin.add((e, b))
        for d, _, j in starts_at.get(b, []):
            if (d, b) in reach_begin:
                reach_end.add((d, j))
    for b in range(L - 1, -1, -1):  # backward: what can still reach the last layer
        for d, _, j in starts_at.get(b, []):
            if (d, j) in useful_end:
                useful_begin.add((d, b))
        for d, e, _ in cuts_at.get(b, []):
            if (e, b) in useful_begin:
                useful_end.add((d, b))
    for k in [k for k in seg_s if (k[0], k[1]) not in reach_begin or (k[0], k[2]) not in useful_end]:
        del seg_s[k]
    for k in [k for k in cut_s if (k[0], k[2]) not in reach_end or (k[1], k[2]) not in useful_begin]:
        del cut_s[k]


def _arcs(
    p: ClientProblem, objective: Objective
) -> tuple[dict[tuple[int, int, int], float], dict[tuple[int, int, int], float]]:
    """The segments and cuts that get a variable, with their seconds."""
    limit_s = float("inf") if p.budget_s is None else p.budget_s
    if objective == "throughput":  # the optimum uses no arc slower than a known plan
        limit_s = min(limit_s, greedy_bottleneck(p)[0])
    seg_s, cut_s = _segments(p, limit_s), _cuts(p, limit_s)
    _prune(p, seg_s, cut_s)
    return seg_s, cut_s


def _row(pairs) -> pulp.LpAffineExpression:
    return pulp.LpAffineExpression(list(pairs))


def create_problem(
    p: ClientProblem, *, objective: Objective = "latency"
) -> tuple[pulp.LpProblem, IlpVariables]:
    """Build (do not solve) the placement ILP for ``p``; see the module docstring."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}, expected latency or throughput")
    scale = _time_scale_s(p)
    seg_s, cut_s = _arcs(p, objective)
    prob = pulp.LpProblem(f"placement_{objective}", pulp.LpMinimize)
    w = {k: prob.add_variable("w_{}_{}_{}".format(*k), cat=pulp.LpBinary) for k in seg_s}
    u = {k: prob.add_variable("u_{}_{}_{}".format(*k), cat=pulp.LpBinary) for k in cut_s}

    def add(pairs, sense: int, rhs: float, name: str) -> None:
        prob.addConstraint(pulp.LpConstraint(_row(pairs), sense, name=name, rhs=rhs))

    EQ, LE = pulp.LpConstraintEQ, pulp.LpConstraintLE
    add(((v, 1) for (d, i, _), v in w.items() if d == p.data_device and i == 0), EQ, 1, "data_first")
    leave: dict[tuple[int, int], list] = {}  # (d, j): segments of d ending at j (+1), cuts out (-1)
    enter: dict[tuple[int, int], list] = {}  # (e, j): cuts into e at j (+1), segments from j (-1)
    device_rows: dict[int, list] = {}
    for (d, i, j), v in w.items():
        if j < p.n_layers:
            leave.setdefault((d, j), []).append((v, 1))
        if i > 0:
            enter.setdefault((d, i), []).append((v, -1))
        device_rows.setdefault(d, []).append((v, seg_s[d, i, j] / scale))
    cut_rows: dict[int, list] = {}
    for (d, e, j), v in u.items():
        leave.setdefault((d, j), []).append((v, -1))
        enter.setdefault((e, j), []).append((v, 1))
        cut_rows.setdefault(j, []).append((v, cut_s[d, e, j] / scale))
    for (d, j), pairs in sorted(leave.items()):
        add(pairs, EQ, 0, f"flow_leave_{d}_{j}")
    for (e, j), pairs in sorted(enter.items()):
        add(pairs, EQ, 0, f"flow_enter_{e}_{j}")
    for d, pairs in sorted(device_rows.items()):
        if d != p.data_device and len(pairs) > 1:
            add(((v, 1) for v, _ in pairs), LE, 1, f"one_segment_{d}")

    budget = None if p.budget_s is None else p.budget_s / scale
    bottleneck = None
    if objective == "latency":
        step = [*(t for r in device_rows.values() for t in r), *(t for r in cut_rows.values() for t in r)]
        prob.setObjective(_row(step))
        if budget is not None:
            add(step, LE, budget, "budget")
    else:
        bottleneck = prob.add_variable("T", lowBound=0, upBound=budget)
        prob.setObjective(_row([(bottleneck, 1)]))
        for d, pairs in sorted(device_rows.items()):
            add([*pairs, (bottleneck, -1)], LE, 0, f"bottleneck_compute_{d}")
        for j, pairs in sorted(cut_rows.items()):
            add([*pairs, (bottleneck, -1)], LE, 0, f"bottleneck_cut_{j}")
        if budget is not None:
            add([(bottleneck, 1)], LE, budget, "budget")
    return prob, IlpVariables(w=w, u=u, bottleneck=bottleneck, scale_s=scale)


def _make_solver(solver: str, time_limit_s: float | None) -> pulp.LpSolver:
    if solver == "cbc":
        with warnings.catch_warnings():  # PuLP 3.x deprecates the bundled CBC; we pin <4
            warnings.simplefilter("ignore", DeprecationWarning)
            return pulp.PULP_CBC_CMD(
                msg=False, gapRel=0, gapAbs=GAP_ABS, threads=1, timeLimit=time_limit_s, options=list(CBC_OPTIONS)
            )
    if solver == "highs":
        highs = getattr(pulp, "HiGHS", None)
        if highs is None or not highs(msg=False).available():
            raise ValueError("solver 'highs' needs the highspy package, which is not installed; use 'cbc'")
        return highs(msg=False, gapRel=0, gapAbs=GAP_ABS, threads=1, timeLimit=time_limit_s)
    raise ValueError(f"unknown solver {solver!r}, expected cbc or highs")


def decode_stages(p: ClientProblem, variables: IlpVariables) -> tuple[Stage, ...]:
    """Stages from a solved model's segment variables, ordered by their first layer."""
    chosen = sorted((i, j, d) for (d, i, j), v in variables.w.items() if (v.varValue or 0) > 0.5)
    return tuple(Stage(device=d, start=i, end=j) for i, j, d in chosen)


def _warm_start(p: ClientProblem, variables: IlpVariables, stages: Sequence[Stage]) -> bool:
    """Set ``stages`` as the solver's starting incumbent; False if the model lacks an arc."""
    segs = {(s.device, s.start, s.end) for s in stages}
    cuts = {(a.device, b.device, b.start) for a, b in zip(stages, stages[1:])}
    if not segs <= variables.w.keys() or not cuts <= variables.u.keys():
        return False
    for k, v in variables.w.items():
        v.setInitialValue(1 if k in segs else 0)
    for k, v in variables.u.items():
        v.setInitialValue(1 if k in cuts else 0)
    if variables.bottleneck is not None:
        variables.bottleneck.setInitialValue(check.step_time_s(p, stages, "throughput") / variables.scale_s)
    return True


def _run(
    p: ClientProblem,
    objective: Objective,
    solver: str,
    time_limit_s: float | None,
    *,
    any_plan: bool = False,
    start: Sequence[Stage] | None = None,
) -> tuple[str, tuple[Stage, ...]]:
    """One solver call: ``(outcome, stages)``, outcome ``optimal`` (proven), ``feasible``
    (stopped on the time limit with an incumbent), ``infeasible`` (proven) or ``unknown``
    (stopped without one). ``any_plan`` drops the objective: the first plan found will do.
    ``start``, a feasible plan, is handed to the solver as its first incumbent."""
    prob, variables = create_problem(p, objective=objective)
    if any_plan:
        prob.setObjective(pulp.LpAffineExpression())
    backend = _make_solver(solver, time_limit_s)
    if start is not None and _warm_start(p, variables, start):
        backend.optionsDict["warmStart"] = True
    prob.solve(backend)
    status = pulp.LpStatus[prob.status]
    if status in ("Infeasible", "Unbounded") or (
        status == "Optimal" and prob.sol_status == pulp.LpSolutionInfeasible
    ):
        return "infeasible", ()
    if prob.sol_status == pulp.LpSolutionOptimal and status == "Optimal":
        return "optimal", decode_stages(p, variables)
    if prob.sol_status == pulp.LpSolutionIntegerFeasible:
        return "feasible", decode_stages(p, variables)
    return "unknown", ()


def _coverable_layers(p: ClientProblem, theta_s: float) -> int:
    """How many layers the devices could hold if each took its longest segment with
    compute <= ``theta_s`` that fits its capacity (the data device's from layer 0)."""
    total = 0
    for d in range(p.n_devices):
        comp = np.concatenate(([0.0], np.cumsum(p.compute_s[d])))
        mem = np.concatenate(([0], np.cumsum(p.memory_bytes[d])))
        starts = np.arange(1) if d == p.data_device else np.arange(1, p.n_layers)
        if starts.size == 0:
            continue
        by_time = np.searchsorted(comp, comp[starts] + theta_s * (1 + 1e-9), side="right") - 1
        by_bytes = np.searchsorted(mem, mem[starts] + p.capacity_bytes[d], side="right") - 1
        total += int(np.max(np.minimum(by_time, by_bytes) - starts))
    return total


def _bottleneck_lower_s(p: ClientProblem, upper_s: float) -> float:
    """A lower bound on the ``throughput`` step time, found by bisection: below it the
    devices' longest segments within the time cannot cover all layers together."""
    lo, hi = 0.0, upper_s
    if _coverable_layers(p, 0.0) >= p.n_layers:
        return 0.0
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _coverable_layers(p, mid) >= p.n_layers else (mid, hi)
    return lo


def _remaining_s(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.perf_counter(), 1e-3)


def _solve_bottleneck(
    p: ClientProblem, solver: str, deadline: float | None
) -> tuple[str, tuple[Stage, ...]]:
    """Minimise the ``throughput`` step time by threshold search, then one exact solve.

    A min-max objective has a weak LP relaxation (fractional plans average the busiest
    device), so the direct model can take minutes at 12 devices x 64 layers. With a
    threshold ``theta`` as the budget, every arc slower than ``theta`` is dropped, which
    removes that averaging: "is there a plan with step time <= theta" is quick to answer
    either way. Geometric bisection between a lower bound and the best plan found (the
    greedy plan first) brackets the optimum within ``BISECT_RTOL``; the min-``T`` model
    restricted to arcs <= the best plan's step time then proves the optimum exactly (every
    better plan uses only such arcs).
    """
    if sum(map(len, _arcs(p, "throughput"))) <= DIRECT_MAX_ARCS:
        return _run(p, "throughput", solver, _remaining_s(deadline))
    budget = float("inf") if p.budget_s is None else p.budget_s
    upper, greedy = greedy_bottleneck(p)
    best = tuple(greedy) if greedy is not None and upper <= budget * (1 + 1e-9) else None
    if best is None:
        outcome, stages = _run(p, "throughput", solver, _remaining_s(deadline), any_plan=True)
        if outcome in ("infeasible", "unknown"):
            return outcome, ()
        best = stages
    hi = check.step_time_s(p, best, "throughput")
    lo = _bottleneck_lower_s(p, hi)
    for _ in range(64):
        if hi <= lo * (1 + BISECT_RTOL) or (deadline is not None and time.perf_counter() >= deadline):
            break
        theta = math.sqrt(lo * hi) if lo > 0 else hi / 2
        outcome, stages = _run(replace(p, budget_s=theta), "throughput", solver, _remaining_s(deadline), any_plan=True)
        if outcome == "infeasible":
            lo = theta
        elif stages:
            best, hi = stages, check.step_time_s(p, stages, "throughput")
        else:
            break
    if deadline is not None and time.perf_counter() >= deadline:
        return "feasible", best
    outcome, stages = _run(replace(p, budget_s=hi), "throughput", solver, _remaining_s(deadline))
    if outcome in ("optimal", "feasible") and check.step_time_s(p, stages, "throughput") <= hi:
        return outcome, stages
    return "feasible", best


def solve_ilp(
    p: ClientProblem,
    *,
    objective: Objective = "latency",
    time_limit_s: float | None = None,
    solver: str = "cbc",
) -> Solution:
    """Solve ``p`` exactly (``optimal``), or the best found by ``time_limit_s`` (``feasible``).

    ``throughput`` runs several solver calls (see :func:`_solve_bottleneck`) sharing the
    time limit. With a time limit, a greedy plan that meets the budget is handed to CBC as
    its first incumbent (``latency``) or kept as the fallback, so a stopped solve returns
    at least that plan as ``feasible``; with none, a stopped solve returns ``infeasible``
    although infeasibility is then not proven.
    ``step_time_s`` is recomputed from the decoded stages with :func:`check.step_time_s`.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}, expected latency or throughput")
    _make_solver(solver, time_limit_s)  # fail early on an unknown or missing solver
    t0 = time.perf_counter()
    deadline = None if time_limit_s is None else t0 + time_limit_s
    greedy = None
    if time_limit_s is not None:  # a plan to fall back on if the limit comes first
        greedy = greedy_bottleneck(p)[1]
        greedy = greedy if greedy is not None and not check.violations(p, greedy, objective) else None
    if objective == "throughput":
        outcome, stages = _solve_bottleneck(p, solver, deadline)
    else:
        outcome, stages = _run(p, objective, solver, time_limit_s, start=greedy)
    if outcome == "unknown" and greedy is not None:
        outcome, stages = "feasible", tuple(greedy)
    seconds = time.perf_counter() - t0
    if not stages:
        return Solution.infeasible(seconds=seconds)
    return Solution(
        stages=stages,
        status="optimal" if outcome == "optimal" else "feasible",
        step_time_s=check.step_time_s(p, stages, objective),
        seconds=seconds,
    )
