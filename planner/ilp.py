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

Throughput (min-max): arcs slower than a greedy plan's bottleneck
(:func:`planner.baselines.greedy_bottleneck`) get no variable, and models above
``DIRECT_MAX_ARCS`` are solved by threshold bisection then one exact solve
(:func:`_solve_bottleneck`), since the min-max LP relaxation is weak.

Time limit: CBC through PuLP reports ``LpStatusOptimal`` even when it stopped on the time
limit with an incumbent; PuLP then sets ``prob.sol_status`` to ``LpSolutionIntegerFeasible``
instead of ``LpSolutionOptimal`` (it parses CBC's "Stopped on time - objective value"
line). We return ``optimal`` only when ``sol_status == LpSolutionOptimal``; an integer
solution otherwise is ``feasible``. HiGHS sets ``sol_status`` the same way. The limit is
the solver's (``latency``: one CBC call; ``throughput``: a deadline over all its calls);
building the model is not counted.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pulp

from planner import arcs, check
from planner.baselines import greedy_bottleneck
from planner.problem import OBJECTIVES, ClientProblem, Objective, Solution, Stage

GAP_ABS = 1e-9  # absolute MIP gap on scaled times (the relative gap is 0)
# Measured on seeded 8x32 instances (CBC child CPU time): CBC's preprocessing, the
# feasibility pump and strong branching cost more than they save on this model
# (throughput 0.51 -> 0.17 s, latency 0.09 -> 0.05 s mean). Exactness is unaffected.
CBC_OPTIONS = ("preprocess off", "feas off", "strong 0")
DIRECT_MAX_ARCS = 500  # throughput: smaller models are solved directly, larger by bisection
BISECT_RTOL = 0.05  # throughput: bracket the optimum this tightly before the exact solve


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


def _row(pairs) -> pulp.LpAffineExpression:
    return pulp.LpAffineExpression(list(pairs))


def create_problem(
    p: ClientProblem, *, objective: Objective = "latency"
) -> tuple[pulp.LpProblem, IlpVariables]:
    """Build (do not solve) the placement ILP for ``p``; see the module docstring."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}, expected latency or throughput")
    scale = _time_scale_s(p)
    seg_s, cut_s = arcs.arcs(p, objective)
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
    floor_s: float = 0.0,
) -> tuple[str, tuple[Stage, ...]]:
    """One solver call: ``(outcome, stages)``, outcome ``optimal`` (proven), ``feasible``
    (stopped on the time limit with an incumbent), ``infeasible`` (proven) or ``unknown``
    (stopped without one). ``any_plan`` drops the objective: the first plan found will do.
    ``start``, a feasible plan, is handed to the solver as its first incumbent;
    ``floor_s``, a proven lower bound, bounds the throughput model's ``T`` from below."""
    prob, variables = create_problem(p, objective=objective)
    if any_plan:
        prob.setObjective(pulp.LpAffineExpression())
    if variables.bottleneck is not None and floor_s > 0:
        variables.bottleneck.lowBound = floor_s / variables.scale_s
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
    restricted to arcs <= the best plan's step time (every better plan uses only such
    arcs), with ``T`` >= the bracket's lower end and the best plan as warm start, then
    proves the optimum exactly. Small models (<= ``DIRECT_MAX_ARCS``) skip the search.
    Measured (8x32, 20 seeded clients): 1 % brackets 12-13 s, 5 % 9 s; 12x64 alike.
    """
    if sum(map(len, arcs.arcs(p, "throughput"))) <= DIRECT_MAX_ARCS:
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
    outcome, stages = _run(
        replace(p, budget_s=hi), "throughput", solver, _remaining_s(deadline), start=best, floor_s=lo * (1 - 1e-9)
    )
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
    at least that plan as ``feasible``; with none, a stopped solve returns ``time_limit``
    (no plan, and none ruled out), never ``infeasible``.
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
    if not stages and outcome == "unknown":  # stopped on the time limit: nothing found, nothing proven
        return Solution(stages=(), status="time_limit", step_time_s=math.inf, seconds=seconds)
    if not stages:
        return Solution.infeasible(seconds=seconds)
    return Solution(
        stages=stages,
        status="optimal" if outcome == "optimal" else "feasible",
        step_time_s=check.step_time_s(p, stages, objective),
        seconds=seconds,
    )
