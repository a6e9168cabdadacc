"""The placement ILP for one number of micro-batches ``M`` and one bottleneck limit (SPEC §2.1).

Segments are path arcs, as in the placement problem of the FSL-GAN seed paper stated as
a shortest path with side constraints. Binary ``w[d,i,j]`` runs layers ``i..j-1`` on
device ``d`` (one variable per segment that fits ``capacity_bytes[d]``, plain or
recomputing); binary ``u[d,e,j]`` is the cut from ``d`` to ``e`` between layers ``j-1``
and ``j``. Each arc carries its best recompute flag or codec (:mod:`planner.options`
proves that choice exact for every ``M``). A plan is one unit of flow from the data
device's start to the last layer::

    boundary:   0           3           5           8 = L
    phone      (s)══w[p,0,3]══(e)
                               ╲u[p,l,3]
    laptop                      (s)══w[l,3,8]═══════(e) -> done

Per micro-batch an arc is a unit of ``u`` seconds (``C / M + overhead_s[d]`` for a
segment, ``V / M + latency`` for a cut). The model minimises ``sum(u)`` over plans whose
every unit is at most ``theta`` (arcs above it get no variable): for ``M = 1`` that is
the step time itself; for ``M > 1``, :mod:`planner.ilp` searches ``theta`` (why not a
bottleneck variable: see there). Constraints, each named so an infeasible model can be
read back:

- ``data_first``: one segment starts on the data device at layer 0; no cut enters it;
- ``flow_leave_{d}_{j}`` / ``flow_enter_{e}_{j}``: a segment ending at ``j`` leaves by
  exactly one cut, a cut into ``e`` at ``j`` starts exactly one segment there; with
  ``data_first`` this covers every layer exactly once, in order;
- ``one_segment_{d}``: at most one segment per device;
- ``capacity_{d}``: by construction, only segments that fit get a variable;
- ``budget`` (``M = 1``, where ``sum(u)`` is the step time): at most ``budget_s``;
  ``cutoff``: ``sum(u)`` at most a given value (the search's question "is there a plan
  faster than the best so far, or within the budget?"). Arcs that alone break either
  get no variable (:func:`planner.paths.within`).

Without ``one_segment`` the model is a shortest path, whose LP relaxation is integral
(:mod:`planner.paths` solves it directly). Links with bandwidth <= 0 are treated as
absent. Times are divided by a scale near the step time so CBC's absolute tolerances
meet numbers near 1.

Time limit: CBC through PuLP reports ``LpStatusOptimal`` even when it stopped on the time
limit with an incumbent; PuLP then sets ``prob.sol_status`` to ``LpSolutionIntegerFeasible``
instead of ``LpSolutionOptimal``. We return ``optimal`` only when ``sol_status ==
LpSolutionOptimal``; an integer solution otherwise is ``feasible``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pulp

from planner import arcs as arcs_mod
from planner import cbc, paths
from planner.problem import ClientProblem, Stage

GAP_ABS = 1e-9  # absolute MIP gap on scaled times (the relative gap is 0)


@dataclass(frozen=True)
class Model:
    """The ILP as arrays (:class:`planner.cbc.BinaryProgram`) and what its columns mean."""

    program: cbc.BinaryProgram
    keys: list[tuple[str, tuple[int, int, int]]]  # per column: ("w", (d, i, j)) or ("u", (d, e, j))
    scale_s: float  # seconds per unit of the model's time coefficients
    arcs: arcs_mod.Arcs  # the options each arc carries


@dataclass(frozen=True)
class IlpVariables:
    """The decision variables of :func:`create_problem`; absent keys are fixed to 0."""

    w: dict[tuple[int, int, int], pulp.LpVariable]  # (d, i, j): layers i..j-1 on d
    u: dict[tuple[int, int, int], pulp.LpVariable]  # (d, e, j): cut d -> e before layer j
    scale_s: float  # seconds per unit of the model's time coefficients
    arcs: arcs_mod.Arcs  # the options each arc carries


def _time_scale_s(p: ClientProblem, micro_batches: int) -> float:
    fastest = min(sum(row) for row in p.compute_s) / micro_batches + p.overhead(p.data_device)
    return fastest if fastest > 0 else 1.0


def build(
    p: ClientProblem, *, micro_batches: int = 1, theta_s: float = math.inf, cutoff_s: float | None = None,
    arcs: arcs_mod.Arcs | None = None,
) -> Model:
    """The ILP: least ``sum(u)`` at ``micro_batches`` over plans whose every unit is
    ``<= theta_s``, within the budget (``M = 1``) and ``sum(u) <= cutoff_s``."""
    m = micro_batches
    arcs = arcs if arcs is not None else arcs_mod.catalogue(p)
    scale = _time_scale_s(p, m)
    budget_s = p.budget_s if m == 1 and p.budget_s is not None else math.inf  # M > 1: the search's cutoff
    sum_limit = min(budget_s, math.inf if cutoff_s is None else cutoff_s)
    seg_u, cut_u = paths.within(p, arcs, m, sum_limit, theta_s)
    segs = np.argwhere(np.isfinite(seg_u)).tolist()
    cuts = np.argwhere(np.isfinite(cut_u)).tolist()
    keys = [("w", tuple(k)) for k in segs] + [("u", tuple(k)) for k in cuts]
    cost = [float(seg_u[tuple(k)]) / scale for k in segs] + [float(cut_u[tuple(k)]) / scale for k in cuts]
    rows: list[tuple[str, str, float, list[int], list[float]]] = []
    first = [c for c, (d, i, _) in enumerate(segs) if d == p.data_device and i == 0]
    rows.append(("data_first", "E", 1.0, first, [1.0] * len(first)))
    leave: dict[tuple[int, int], list] = {}  # (d, j): segments of d ending at j (+1), cuts out (-1)
    enter: dict[tuple[int, int], list] = {}  # (e, j): cuts into e at j (+1), segments from j (-1)
    device_cols: dict[int, list[int]] = {}
    for c, (d, i, j) in enumerate(segs):
        if j < p.n_layers:
            leave.setdefault((d, j), []).append((c, 1.0))
        if i > 0:
            enter.setdefault((d, i), []).append((c, -1.0))
        device_cols.setdefault(d, []).append(c)
    for c, (d, e, j) in enumerate(cuts, len(segs)):
        leave.setdefault((d, j), []).append((c, -1.0))
        enter.setdefault((e, j), []).append((c, 1.0))
    for prefix, table in (("flow_leave", leave), ("flow_enter", enter)):
        for (d, j), pairs in sorted(table.items()):
            rows.append((f"{prefix}_{d}_{j}", "E", 0.0, [c for c, _ in pairs], [a for _, a in pairs]))
    for d, cols in sorted(device_cols.items()):
        if d != p.data_device and len(cols) > 1:
            rows.append((f"one_segment_{d}", "L", 1.0, cols, [1.0] * len(cols)))
    all_cols = list(range(len(cost)))
    if math.isfinite(budget_s):
        rows.append(("budget", "L", budget_s * (1 + 1e-9) / scale, all_cols, cost))
    if cutoff_s is not None and cutoff_s < budget_s:
        rows.append(("cutoff", "L", cutoff_s * (1 + 1e-9) / scale, all_cols, cost))
    names = [f"{kind}_{k[0]}_{k[1]}_{k[2]}" for kind, k in keys]
    return Model(cbc.BinaryProgram(names, cost, rows), keys, scale, arcs)


def create_problem(p: ClientProblem, **model) -> tuple[pulp.LpProblem, IlpVariables]:
    """:func:`build`'s model as a PuLP problem, to read or to solve with any PuLP solver."""
    mdl = build(p, **model)
    prob = pulp.LpProblem("placement", pulp.LpMinimize)
    xs = [prob.add_variable(name, cat=pulp.LpBinary) for name in mdl.program.columns]
    sense = {"E": pulp.LpConstraintEQ, "L": pulp.LpConstraintLE, "G": pulp.LpConstraintGE}
    for name, s, rhs, cols, coefs in mdl.program.rows:
        expr = pulp.LpAffineExpression([(xs[c], a) for c, a in zip(cols, coefs)])
        prob.addConstraint(pulp.LpConstraint(expr, sense[s], name=name, rhs=rhs))
    prob.setObjective(pulp.LpAffineExpression(list(zip(xs, mdl.program.objective))))
    w = {k: x for (kind, k), x in zip(mdl.keys, xs) if kind == "w"}
    u = {k: x for (kind, k), x in zip(mdl.keys, xs) if kind == "u"}
    return prob, IlpVariables(w=w, u=u, scale_s=mdl.scale_s, arcs=mdl.arcs)


def make_solver(solver: str, time_limit_s: float | None) -> pulp.LpSolver:
    if solver == "cbc":
        with warnings.catch_warnings():  # PuLP 3.x deprecates the bundled CBC; we pin <4
            warnings.simplefilter("ignore", DeprecationWarning)
            return pulp.PULP_CBC_CMD(
                msg=False, gapRel=0, gapAbs=GAP_ABS, threads=1, timeLimit=time_limit_s, options=list(cbc.CBC_OPTIONS)
            )
    if solver == "highs":
        highs = getattr(pulp, "HiGHS", None)
        if highs is None or not highs(msg=False).available():
            raise ValueError("solver 'highs' needs the highspy package, which is not installed; use 'cbc'")
        return highs(msg=False, gapRel=0, gapAbs=GAP_ABS, threads=1, timeLimit=time_limit_s)
    raise ValueError(f"unknown solver {solver!r}, expected cbc or highs")


def decode(mdl: Model, values) -> tuple[Stage, ...]:
    """Stages from a solution's column values, ordered by their first layer, with options."""
    chosen = sorted((k[1], k[2], k[0]) for (kind, k), v in zip(mdl.keys, values) if kind == "w" and v > 0.5)
    cuts = {(k[0], k[2]): k[1] for (kind, k), v in zip(mdl.keys, values) if kind == "u" and v > 0.5}
    return tuple(Stage(d, i, j, *mdl.arcs.stage_options(d, i, j, cuts.get((d, j)))) for i, j, d in chosen)


def run(p: ClientProblem, micro_batches: int, solver: str, time_limit_s: float | None, **model,
        ) -> tuple[str, tuple[Stage, ...]]:
    """One solver call on :func:`build` ``(p, micro_batches, **model)``: ``(outcome,
    stages)``, outcome ``optimal`` (proven), ``feasible`` (stopped on the time limit with
    an incumbent), ``infeasible`` (proven: no plan within the limits) or ``unknown``
    (stopped without one). ``cbc`` goes through :mod:`planner.cbc`, others through PuLP."""
    mdl = build(p, micro_batches=micro_batches, **model)
    if not mdl.program.rows[0][3]:  # no segment starts on the data device within the limits
        return "infeasible", ()
    if solver == "cbc":
        outcome, values = cbc.solve(mdl.program, time_limit_s=time_limit_s, gap_abs=GAP_ABS)
        return outcome, decode(mdl, values) if outcome in ("optimal", "feasible") else ()
    prob, variables = create_problem(p, micro_batches=micro_batches, **model)
    prob.solve(make_solver(solver, time_limit_s))
    status = pulp.LpStatus[prob.status]
    if status in ("Infeasible", "Unbounded") or (
        status == "Optimal" and prob.sol_status == pulp.LpSolutionInfeasible
    ):
        return "infeasible", ()
    values = [x.varValue or 0.0 for x in prob.variables()]
    order = {x.name: v for x, v in zip(prob.variables(), values)}
    values = [order.get(name, 0.0) for name in mdl.program.columns]
    if prob.sol_status == pulp.LpSolutionOptimal and status == "Optimal":
        return "optimal", decode(mdl, values)
    if prob.sol_status == pulp.LpSolutionIntegerFeasible:
        return "feasible", decode(mdl, values)
    return "unknown", ()
