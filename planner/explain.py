"""Why no plan fits a client, in words and numbers a person can act on (SPEC §2, §1).

:func:`explain_infeasible` tries the reasons from the most direct to the least, and
returns the first that holds:

1. the data device cannot hold layer 0 (the first segment needs at least that);
2. some layer fits on no device at all;
3. even with each layer on the device where it is smallest, the layers need more
   memory in all than the devices offer together;
4. contiguous segments cover only a prefix of the layers (found by a DP over sets of
   used devices: extending each segment as far as it fits is optimal for the prefix);
5. the budget: the best plan without a budget (the exact ILP) is slower than it;
6. none of these: a plan fits, so a time-limited solver stopped before it found one.

Memory here is a layer's smaller need of its two tables when a stage may recompute
(SPEC §2.1). For reasons 1-5 the caller may pass alternatives: the client's tables with
options the user left out (``--recompute auto``, another codec, larger ``M``); the
first that admits a plan is named: "...; fits with --codecs none,int8 (1.20 s per step)".

Nothing here prints; the CLI shows the returned string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from planner.ilp import solve_ilp
from planner.problem import ClientProblem, Objective

EXACT_SOLVERS = ("ilp", "reference")  # a miss by these means a time limit; by any other, a heuristic

_UNITS = (("GB", 10**9), ("MB", 10**6), ("kB", 10**3))
PREFIX_DP_MAX_DEVICES = 16  # reason 4 walks all subsets of devices


def format_bytes(n: float) -> str:
    """Decimal units as in SPEC §1: ``512 B``, ``1.0 kB``, ``1.9 MB``, ``3.2 GB``."""
    for unit, size in _UNITS:
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def format_seconds(s: float) -> str:
    """Seconds with two decimals: ``7.31 s``."""
    return f"{s:.2f} s"


def _layer(l: int, names: Sequence[str] | None) -> str:
    return f"layer {names[l]}" if names is not None else f"layer {l}"


def _memory(p: ClientProblem) -> tuple[tuple[int, ...], ...]:
    """``[d][l]``: the least a layer needs on a device, recomputing if that is allowed."""
    if p.recompute is None:
        return p.memory_bytes
    return tuple(tuple(map(min, a, b)) for a, b in zip(p.memory_bytes, p.recompute.memory_bytes))


def _covered_prefix(p: ClientProblem, memory: Sequence[Sequence[int]]) -> int:
    """How many leading layers some sequence of distinct devices can hold contiguously
    (at most: a segment's memory is taken as the sum of its layers' least needs)."""
    n, L, data = p.n_devices, p.n_layers, p.data_device
    reach_from = []  # [d][start]: the end of d's longest segment from start that fits
    for d in range(n):
        ends, m, used = [], 0, 0
        for start in range(L):
            if m < start:
                m, used = start, 0
            while m < L and used + memory[d][m] <= p.capacity_bytes[d]:
                used += memory[d][m]
                m += 1
            ends.append(m)
            if m > start:
                used -= memory[d][start]
        reach_from.append(ends)
    reach = [0] * (1 << n)  # [set of used devices]: layers covered, 0 if unreachable
    reach[1 << data] = reach_from[data][0]
    for mask in sorted(range(1 << n), key=int.bit_count):
        last = reach[mask]
        if not 0 < last < L:
            continue
        for e in range(n):
            if not mask >> e & 1:
                new = mask | 1 << e
                reach[new] = max(reach[new], reach_from[e][last])
    return max(reach)


def _reason(p: ClientProblem, objective: Objective, layer_names: Sequence[str] | None) -> tuple[str, float | None]:
    """Reasons 1-5 of the module docstring, or ``("", step)`` when a plan fits."""
    data, L = p.data_device, p.n_layers
    data_name = p.devices[data]
    memory = _memory(p)
    if memory[data][0] > p.capacity_bytes[data]:
        return (
            f"first segment needs at least {format_bytes(memory[data][0])} on {data_name} "
            f"({_layer(0, layer_names)}), capacity {format_bytes(p.capacity_bytes[data])}"
        ), None
    for l in range(L):
        if all(memory[d][l] > p.capacity_bytes[d] for d in range(p.n_devices)):
            need = min(memory[d][l] for d in range(p.n_devices))
            big = max(range(p.n_devices), key=lambda d: p.capacity_bytes[d])
            return (
                f"{_layer(l, layer_names)} needs at least {format_bytes(need)}, "
                f"the largest capacity is {format_bytes(p.capacity_bytes[big])} on {p.devices[big]}"
            ), None
    need_all = sum(min(memory[d][l] for d in range(p.n_devices)) for l in range(L))
    offer = sum(p.capacity_bytes)
    if need_all > offer:
        return f"layers need {format_bytes(need_all)} in all, the devices offer {format_bytes(offer)}", None
    if p.n_devices <= PREFIX_DP_MAX_DEVICES:
        reach = _covered_prefix(p, memory)
        if reach < L:
            return (
                f"contiguous segments on distinct devices hold at most layers 0..{reach - 1} "
                f"of {L}; {_layer(reach, layer_names)} fits on no device left after them"
            ), None
    free = solve_ilp(replace(p, budget_s=None), objective=objective)
    if free.status == "infeasible":
        return (
            "no ordering of the devices holds the layers in contiguous segments "
            "within capacity over the links that exist"
        ), None
    if p.budget_s is not None and free.step_time_s > p.budget_s * (1 + 1e-9):
        return (
            f"best plan needs {format_seconds(free.step_time_s)} per step, budget "
            f"{format_seconds(p.budget_s)} (over by {format_seconds(free.step_time_s - p.budget_s)})"
        ), None
    return "", free.step_time_s


def explain_infeasible(
    p: ClientProblem, *, objective: Objective = "latency", layer_names: Sequence[str] | None = None,
    solver: str = "ilp", alternatives: Sequence[tuple[str, ClientProblem]] = (),
) -> str:
    """A sentence saying why no feasible plan exists for ``p``; see the module docstring.

    ``layer_names`` (optional, one per layer) name layers instead of their indices.
    When a plan does fit, says so: an exact ``solver`` gave up on its time limit, a
    heuristic one missed it. ``alternatives``: ``(hint, tables)`` pairs tried in order.
    """
    reason, step = _reason(p, objective, layer_names)
    if reason:
        for hint, alt in alternatives:
            sol = solve_ilp(alt, objective=objective)
            if sol.stages:
                return f"{reason}; fits with {hint} ({format_seconds(sol.step_time_s)} per step)"
        return reason
    if solver in EXACT_SOLVERS:
        return (
            f"a plan fits ({format_seconds(step)} per step); "
            "the solver stopped on its time limit before it found one"
        )
    return (
        f"a plan fits ({format_seconds(step)} per step); "
        f"the {solver} heuristic did not find it (--solver ilp does)"
    )
