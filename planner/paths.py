"""The placement ILP without ``one_segment``: a shortest path, solved in closed form.

Dropping the rows that keep a device to one segment leaves a shortest path from the
data device's layer 0 to the last layer through the arc graph (segments and cuts as
edges; beginning or ending a segment on device ``d`` at boundary ``j`` as nodes), whose
LP is integral. It is acyclic in the boundaries, so one pass forward and one backward
give every node's distance from the start and to the end. Hence, exactly:

- an arc whose shortest path through it exceeds a limit on ``sum(u)`` is in no plan
  within that limit (:func:`within` drops it; with no limit this keeps the arcs on some
  path from layer 0 to the last layer);
- the shortest path's length is a lower bound on the ILP's optimum, and when the path
  visits every device at most once it is an optimal plan and no solver call is needed
  (:func:`shortest_plan`).
"""

from __future__ import annotations

import math

import numpy as np

from planner.arcs import Arcs, units
from planner.problem import ClientProblem, Stage


def _forward(p: ClientProblem, seg_u: np.ndarray, cut_u: np.ndarray):
    """``begin[d, j]`` / ``end[d, j]``: least cost to begin / end a segment on ``d`` at
    boundary ``j``, with the argmins (the segment's start, the cut's sender)."""
    n, L = p.n_devices, p.n_layers
    begin, end = np.full((n, L + 1), np.inf), np.full((n, L + 1), np.inf)
    from_start, from_dev = np.zeros((n, L + 1), dtype=np.int64), np.zeros((n, L + 1), dtype=np.int64)
    begin[p.data_device, 0] = 0.0
    rows = np.arange(n)
    for j in range(1, L + 1):
        total = begin[:, :j] + seg_u[:, :j, j]  # [d, i]
        from_start[:, j] = total.argmin(axis=1)
        end[:, j] = total[rows, from_start[:, j]]
        if j < L:
            via = end[:, j, None] + cut_u[:, :, j]  # [d, e]
            from_dev[:, j] = via.argmin(axis=0)
            begin[:, j] = via[from_dev[:, j], rows]
    return begin, end, from_start, from_dev


def _backward(p: ClientProblem, seg_u: np.ndarray, cut_u: np.ndarray):
    """``finish_begin[d, j]`` / ``finish_end[d, j]``: least cost from beginning / ending
    a segment on ``d`` at boundary ``j`` to the end of the model."""
    n, L = p.n_devices, p.n_layers
    finish_begin, finish_end = np.full((n, L + 1), np.inf), np.full((n, L + 1), np.inf)
    finish_end[:, L] = 0.0
    for j in range(L - 1, -1, -1):
        finish_begin[:, j] = (seg_u[:, j, j + 1 :] + finish_end[:, j + 1 :]).min(axis=1)
        if j > 0:
            finish_end[:, j] = (cut_u[:, :, j] + finish_begin[None, :, j]).min(axis=1)
    return finish_begin, finish_end


def within(
    p: ClientProblem, arcs: Arcs, micro_batches: int, sum_limit_s: float = math.inf, unit_limit_s: float = math.inf,
) -> tuple[np.ndarray, np.ndarray]:
    """The units (``inf`` elsewhere) of the arcs with unit ``<= unit_limit_s`` that lie
    on some path with ``sum(u) <= sum_limit_s``."""
    seg_u, cut_u = (np.where(u <= unit_limit_s, u, np.inf) for u in units(p, arcs, micro_batches))
    begin, end, _, _ = _forward(p, seg_u, cut_u)
    finish_begin, finish_end = _backward(p, seg_u, cut_u)
    limit = sum_limit_s * (1 + 1e-9) if math.isfinite(sum_limit_s) else math.inf
    seg_total = begin[:, :, None] + seg_u + finish_end[:, None, :]
    cut_total = end[:, None, :] + cut_u + finish_begin[None, :, :]
    return (np.where(np.isfinite(seg_total) & (seg_total <= limit), seg_u, np.inf),
            np.where(np.isfinite(cut_total) & (cut_total <= limit), cut_u, np.inf))


def shortest_length(p: ClientProblem, seg_u: np.ndarray, cut_u: np.ndarray) -> float:
    """The least ``sum(u)`` of a path over the arcs with finite units (``inf``: none)."""
    return float(_forward(p, seg_u, cut_u)[1][:, p.n_layers].min())


def shortest_plan(p: ClientProblem, arcs: Arcs, seg_u: np.ndarray, cut_u: np.ndarray):
    """``(least sum of units, stages or None)`` over the arcs with finite units; stages is
    None when the cheapest path uses a device twice; ``(inf, None)`` when none exists."""
    _, end, from_start, from_dev = _forward(p, seg_u, cut_u)
    L = p.n_layers
    d = int(end[:, L].argmin())
    best = float(end[d, L])
    if not math.isfinite(best):
        return math.inf, None
    raw, j = [], L
    while True:
        i = int(from_start[d, j])
        raw.append((d, i, j))
        if i == 0:
            break
        d, j = int(from_dev[d, i]), i
    raw.reverse()
    if len({s[0] for s in raw}) < len(raw):
        return best, None
    return best, tuple(Stage(d, i, j, *arcs.stage_options(d, i, j, nxt[0] if nxt else None))
                       for (d, i, j), nxt in zip(raw, [*raw[1:], None]))
