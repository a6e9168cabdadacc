"""The exact placement ILP: contiguous segments on distinct devices (SPEC §2), via PuLP.

The model is a layered shortest path with side constraints (a resource-constrained path,
as in the FSL-GAN seed paper's placement problem, stated here as a flow so that its LP
relaxation is tight). Binary ``x[d][l]`` puts layer ``l`` on device ``d``; binary
``z[a][b][l]`` says layer ``l`` runs on ``a`` and layer ``l+1`` on ``b`` (``a == b``:
the segment goes on, ``a != b``: a cut from ``a`` to ``b`` after ``l``)::

    layer:     0        1        2        3
    phone   x ──z──── x        .        .          z[phone][phone][0]
                       ╲z─────────────────         z[phone][laptop][1]: cut after 1
    laptop  .        .        x ──z──── x

Constraints, each named so an infeasible model can be read back:

- ``cover_layer_{l}``: every layer on exactly one device; ``data_first``: layer 0 on
  the data device (its entry is fixed, nothing may enter it later);
- ``flow_out_{d}_{l}`` / ``flow_in_{d}_{l}``: ``z`` links ``x`` of consecutive layers;
- ``one_segment_{d}``: at most one entry into each device, so at most one segment;
- ``capacity_{d}``: the segment's ``memory_bytes`` fit ``capacity_bytes``;
- ``budget``: the step time is at most ``budget_s`` (when set);
- throughput only: ``bottleneck_compute_{d}`` and ``bottleneck_cut_{l}`` bound ``T``.

Valid tightenings: ``x[d][l]`` is fixed to 0 (no variable) where layer ``l`` alone
overflows ``d``, or, on the data device, where the prefix ``0..l`` does; ``z`` exists only
between variables that may be 1 and over links with bandwidth > 0 (a link with bandwidth
0 is treated as absent). Times are divided by a scale (the fastest single-device compute
time) so CBC's absolute tolerances meet numbers near 1.

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

    x: dict[tuple[int, int], pulp.LpVariable]  # (device, layer) -> layer on device
    z: dict[tuple[int, int, int], pulp.LpVariable]  # (a, b, layer) -> l on a, l+1 on b
    bottleneck: pulp.LpVariable | None  # T for the throughput objective, else None
    scale_s: float  # seconds per unit of the model's time coefficients


def _time_scale_s(p: ClientProblem) -> float:
    fastest = min(sum(row) for row in p.compute_s)
    return fastest if fastest > 0 else 1.0


def _allowed_layers(p: ClientProblem) -> list[list[bool]]:
    """``ok[d][l]``: layer ``l`` may run on ``d`` at all (cheap necessary conditions)."""
    ok = [
        [p.memory_bytes[d][l] <= p.capacity_bytes[d] for l in range(p.n_layers)]
        for d in range(p.n_devices)
    ]
    prefix_bytes = 0
    for l in range(p.n_layers):
        prefix_bytes += p.memory_bytes[p.data_device][l]
        ok[p.data_device][l] = ok[p.data_device][l] and prefix_bytes <= p.capacity_bytes[p.data_device]
    for d in range(p.n_devices):
        ok[d][0] = d == p.data_device and ok[d][0]
    return ok


def create_problem(
    p: ClientProblem, *, objective: Objective = "latency"
) -> tuple[pulp.LpProblem, IlpVariables]:
    """Build (do not solve) the placement ILP for ``p``; see the module docstring."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}, expected latency or throughput")
    n, L, data = p.n_devices, p.n_layers, p.data_device
    scale = _time_scale_s(p)
    ok = _allowed_layers(p)
    prob = pulp.LpProblem(f"placement_{objective}", pulp.LpMinimize)
    x = {
        (d, l): pulp.LpVariable(f"x_{d}_{l}", cat=pulp.LpBinary)
        for d in range(n) for l in range(L) if ok[d][l]
    }
    z: dict[tuple[int, int, int], pulp.LpVariable] = {}
    for l in range(L - 1):
        for a in range(n):
            for b in range(n):
                if (a, l) not in x or (b, l + 1) not in x:
                    continue
                if a != b and (b == data or p.link_bytes_per_s[a][b] <= 0):
                    continue
                z[a, b, l] = pulp.LpVariable(f"z_{a}_{b}_{l}", cat=pulp.LpBinary)

    def cut_s(a: int, b: int, l: int) -> float:
        return p.transfer_s(a, b, l) / scale

    for l in range(L):
        prob += pulp.lpSum(x[d, l] for d in range(n) if (d, l) in x) == 1, f"cover_layer_{l}"
    if (data, 0) in x:
        prob += x[data, 0] == 1, "data_first"
    for l in range(L - 1):
        for d in range(n):
            out_ = [z[d, b, l] for b in range(n) if (d, b, l) in z]
            in_ = [z[a, d, l] for a in range(n) if (a, d, l) in z]
            if (d, l) in x:
                prob += pulp.lpSum(out_) == x[d, l], f"flow_out_{d}_{l}"
            if (d, l + 1) in x:
                prob += pulp.lpSum(in_) == x[d, l + 1], f"flow_in_{d}_{l}"
    for d in range(n):
        if d == data:
            continue
        entries = [z[a, d, l] for a in range(n) for l in range(L - 1) if a != d and (a, d, l) in z]
        if entries:
            prob += pulp.lpSum(entries) <= 1, f"one_segment_{d}"
        row = [(x[d, l], p.memory_bytes[d][l]) for l in range(L) if (d, l) in x]
        if row and sum(m for _, m in row) > p.capacity_bytes[d]:
            prob += pulp.LpAffineExpression(row) <= p.capacity_bytes[d], f"capacity_{d}"
    data_row = [(x[data, l], p.memory_bytes[data][l]) for l in range(L) if (data, l) in x]
    if data_row:  # implied by the prefix fixing above; kept so every device has its row
        prob += pulp.LpAffineExpression(data_row) <= p.capacity_bytes[data], f"capacity_{data}"

    compute = {
        d: pulp.LpAffineExpression([(x[d, l], p.compute_s[d][l] / scale) for l in range(L) if (d, l) in x])
        for d in range(n)
    }
    cuts = {
        l: pulp.LpAffineExpression(
            [(v, cut_s(a, b, k)) for (a, b, k), v in z.items() if k == l and a != b]
        )
        for l in range(L - 1)
    }
    budget = None if p.budget_s is None else p.budget_s / scale
    bottleneck = None
    if objective == "latency":
        step = pulp.lpSum(compute.values()) + pulp.lpSum(cuts.values())
        prob += step
        if budget is not None:
            prob += step <= budget, "budget"
    else:
        bottleneck = pulp.LpVariable("T", lowBound=0, upBound=budget)
        prob += bottleneck
        for d in range(n):
            prob += bottleneck >= compute[d], f"bottleneck_compute_{d}"
        for l in range(L - 1):
            prob += bottleneck >= cuts[l], f"bottleneck_cut_{l}"
        if budget is not None:
            prob += bottleneck <= budget, "budget"
    return prob, IlpVariables(x=x, z=z, bottleneck=bottleneck, scale_s=scale)


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
    """Stages from a solved model's ``x``, ordered by their first layer."""
    owner = []
    for l in range(p.n_layers):
        on = [d for d in range(p.n_devices) if (d, l) in variables.x and (variables.x[d, l].varValue or 0) > 0.5]
        if len(on) != 1:
            raise RuntimeError(f"solver returned layer {l} on {len(on)} devices")
        owner.append(on[0])
    stages, start = [], 0
    for l in range(1, p.n_layers + 1):
        if l == p.n_layers or owner[l] != owner[start]:
            stages.append(Stage(device=owner[start], start=start, end=l))
            start = l
    return tuple(stages)


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
