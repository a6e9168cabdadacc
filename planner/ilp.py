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

import time
from dataclasses import dataclass

import pulp

from planner import check
from planner.problem import OBJECTIVES, ClientProblem, Objective, Solution, Stage

GAP_ABS = 1e-9  # absolute MIP gap on scaled times (the relative gap is 0)


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


def _segments(p: ClientProblem) -> dict[tuple[int, int, int], float]:
    """Seconds of every segment ``(d, i, j)`` that fits, starts legally and meets the budget."""
    out = {}
    limit = float("inf") if p.budget_s is None else p.budget_s * (1 + 1e-9)
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


def _cuts(p: ClientProblem) -> dict[tuple[int, int, int], float]:
    """Seconds of every cut ``(d, e, j)`` over a link that exists and meets the budget."""
    out = {}
    limit = float("inf") if p.budget_s is None else p.budget_s * (1 + 1e-9)
    for d in range(p.n_devices):
        for e in range(p.n_devices):
            if e == d or e == p.data_device or p.link_bytes_per_s[d][e] <= 0:
                continue
            for j in range(1, p.n_layers):
                t = p.transfer_s(d, e, j - 1)
                if t <= limit:
                    out[d, e, j] = t
    return out


def create_problem(
    p: ClientProblem, *, objective: Objective = "latency"
) -> tuple[pulp.LpProblem, IlpVariables]:
    """Build (do not solve) the placement ILP for ``p``; see the module docstring."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}, expected latency or throughput")
    n, L, data = p.n_devices, p.n_layers, p.data_device
    scale = _time_scale_s(p)
    seg_s, cut_s = _segments(p), _cuts(p)
    prob = pulp.LpProblem(f"placement_{objective}", pulp.LpMinimize)
    w = {k: pulp.LpVariable("w_{}_{}_{}".format(*k), cat=pulp.LpBinary) for k in seg_s}
    u = {k: pulp.LpVariable("u_{}_{}_{}".format(*k), cat=pulp.LpBinary) for k in cut_s}
    ends: dict[tuple[int, int], list] = {}  # (d, j) -> segments of d ending at j
    begins: dict[tuple[int, int], list] = {}  # (d, i) -> segments of d starting at i
    for (d, i, j), v in w.items():
        ends.setdefault((d, j), []).append(v)
        begins.setdefault((d, i), []).append(v)
    leaves: dict[tuple[int, int], list] = {}
    enters: dict[tuple[int, int], list] = {}
    for (d, e, j), v in u.items():
        leaves.setdefault((d, j), []).append(v)
        enters.setdefault((e, j), []).append(v)

    prob += pulp.lpSum(begins.get((data, 0), [])) == 1, "data_first"
    for d in range(n):
        for j in range(1, L):
            if (d, j) in ends or (d, j) in leaves:
                prob += pulp.lpSum(ends.get((d, j), [])) == pulp.lpSum(leaves.get((d, j), [])), f"flow_leave_{d}_{j}"
            if d != data and ((d, j) in enters or (d, j) in begins):
                prob += pulp.lpSum(enters.get((d, j), [])) == pulp.lpSum(begins.get((d, j), [])), f"flow_enter_{d}_{j}"
    per_device: dict[int, list] = {}
    for (d, i, j), v in w.items():
        per_device.setdefault(d, []).append((v, seg_s[d, i, j] / scale))
    for d, row in per_device.items():
        if d != data and len(row) > 1:
            prob += pulp.lpSum(v for v, _ in row) <= 1, f"one_segment_{d}"

    per_cut: dict[int, list] = {}
    for (d, e, j), v in u.items():
        per_cut.setdefault(j, []).append((v, cut_s[d, e, j] / scale))
    budget = None if p.budget_s is None else p.budget_s / scale
    bottleneck = None
    if objective == "latency":
        step = pulp.LpAffineExpression([*(t for r in per_device.values() for t in r), *(t for r in per_cut.values() for t in r)])
        prob += step
        if budget is not None:
            prob += step <= budget, "budget"
    else:
        bottleneck = pulp.LpVariable("T", lowBound=0)
        prob += bottleneck
        for d, row in per_device.items():
            prob += bottleneck >= pulp.LpAffineExpression(row), f"bottleneck_compute_{d}"
        for j, row in per_cut.items():
            prob += bottleneck >= pulp.LpAffineExpression(row), f"bottleneck_cut_{j}"
        if budget is not None:
            prob += bottleneck <= budget, "budget"
    return prob, IlpVariables(w=w, u=u, bottleneck=bottleneck, scale_s=scale)


def _make_solver(solver: str, time_limit_s: float | None) -> pulp.LpSolver:
    if solver == "cbc":
        return pulp.PULP_CBC_CMD(msg=False, gapRel=0, gapAbs=GAP_ABS, threads=1, timeLimit=time_limit_s)
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


def solve_ilp(
    p: ClientProblem,
    *,
    objective: Objective = "latency",
    time_limit_s: float | None = None,
    solver: str = "cbc",
) -> Solution:
    """Solve ``p`` exactly (``optimal``), or the best found by ``time_limit_s`` (``feasible``).

    ``step_time_s`` is recomputed from the decoded stages with :func:`check.step_time_s`.
    """
    t0 = time.perf_counter()
    backend = _make_solver(solver, time_limit_s)
    prob, variables = create_problem(p, objective=objective)
    prob.solve(backend)
    seconds = time.perf_counter() - t0
    has_solution = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    if pulp.LpStatus[prob.status] not in ("Optimal", "Not Solved") or not has_solution:
        return Solution.infeasible(seconds=seconds)
    proven = pulp.LpStatus[prob.status] == "Optimal" and prob.sol_status == pulp.LpSolutionOptimal
    stages = decode_stages(p, variables)
    return Solution(
        stages=stages,
        status="optimal" if proven else "feasible",
        step_time_s=check.step_time_s(p, stages, objective),
        seconds=seconds,
    )
