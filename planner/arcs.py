"""The arcs of the placement ILP: every segment and cut that may appear in an optimal plan.

A segment ``(d, i, j)`` runs layers ``i..j-1`` on device ``d``; it gets an arc only if it
fits ``capacity_bytes[d]``, starts legally (layer 0 only on the data device) and alone
stays within the time limit. A cut ``(d, e, j)`` moves the activation before layer ``j``
from ``d`` to ``e``. Arcs on no path from layer 0 to the last layer are pruned.
"""

from __future__ import annotations

from planner.baselines import greedy_bottleneck
from planner.problem import ClientProblem, Objective


def segments(p: ClientProblem, limit_s: float) -> dict[tuple[int, int, int], float]:
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


def cuts(p: ClientProblem, limit_s: float) -> dict[tuple[int, int, int], float]:
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


def prune(
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


def arcs(
    p: ClientProblem, objective: Objective
) -> tuple[dict[tuple[int, int, int], float], dict[tuple[int, int, int], float]]:
    """The segments and cuts that get a variable, with their seconds."""
    limit_s = float("inf") if p.budget_s is None else p.budget_s
    if objective == "throughput":  # the optimum uses no arc slower than a known plan
        limit_s = min(limit_s, greedy_bottleneck(p)[0])
    seg_s, cut_s = segments(p, limit_s), cuts(p, limit_s)
    prune(p, seg_s, cut_s)
    return seg_s, cut_s
