"""Cheap bounds on a client's step time for one ``M``, for the ILP's search over ``M``.

With units ``u`` per micro-batch (:mod:`planner.check`) every plan takes
``sum(u) + (M - 1) * max(u)``; ``sum(u)`` is at least the shortest path of
:mod:`planner.paths`, and

- ``max(u) >= bottleneck_floor``, the larger of two relaxations' thresholds: below it
  either (a) even the longest segment each device could hold within the time and its
  capacity cannot cover the layers together, where a segment must start on layer 0
  (the data device) or after a cut into its device, and end on the last layer or
  before a cut out of it, each cut within the time too (the order of the devices is
  ignored), or (b) no path of arcs within the time reaches the last layer even if
  devices may hold several segments (:mod:`planner.paths`);
- and a greedy plan (:func:`greedy_plan`) is an upper bound.

None of these use :mod:`planner.reference`, so the ILP and the reference stay independent.
"""

from __future__ import annotations

import math

import numpy as np

from planner.arcs import Arcs, units
from planner.paths import shortest_length
from planner.problem import ClientProblem, Stage

BISECT_RTOL = 1e-3


def _coverable_layers(p: ClientProblem, seg_u: np.ndarray, cut_u: np.ndarray, theta_s: float) -> int:
    """Layers the longest segments of the module docstring cover within ``theta_s``
    together; 0 if the data device can hold none."""
    L = p.n_layers
    cut_ok = cut_u <= theta_s  # [d, e, j]
    out_ok = cut_ok.any(axis=1)  # [d, j]: some cut leaves d before layer j
    out_ok[:, L] = True
    in_ok = cut_ok.any(axis=0)  # [e, j]: some cut enters e before layer j
    in_ok[p.data_device, 0] = True
    ok = (seg_u <= theta_s) & in_ok[:, :, None] & out_ok[:, None, :]
    span = np.arange(L + 1)[None, :] - np.arange(L + 1)[:, None]  # [i, j] = j - i
    longest = np.where(ok, span[None], 0).max(axis=(1, 2))
    return 0 if longest[p.data_device] == 0 else int(longest.sum())


def _has_path(p: ClientProblem, seg_u: np.ndarray, cut_u: np.ndarray, theta_s: float) -> bool:
    return math.isfinite(shortest_length(p, np.where(seg_u <= theta_s, seg_u, np.inf),
                                         np.where(cut_u <= theta_s, cut_u, np.inf)))


def bottleneck_floor_s(p: ClientProblem, arcs: Arcs, micro_batches: int, upper_s: float) -> float:
    """A lower bound on ``max(u)`` of any plan, by bisection in ``[0, upper_s]``."""
    seg_u, cut_u = units(p, arcs, micro_batches)

    def may_fit(theta_s: float) -> bool:
        return _coverable_layers(p, seg_u, cut_u, theta_s) >= p.n_layers and _has_path(p, seg_u, cut_u, theta_s)

    lo, hi = 0.0, upper_s
    if may_fit(0.0):
        return 0.0
    while hi - lo > BISECT_RTOL * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if may_fit(mid) else (mid, hi)
    return lo


def _greedy(p: ClientProblem, arcs: Arcs, seg_u: np.ndarray, cut_u: np.ndarray, theta_s: float) -> list[Stage] | None:
    """Each next device the unused one whose segment with unit <= ``theta_s`` reaches
    furthest (over a cut with unit <= ``theta_s``); None if that does not cover the model."""
    L = p.n_layers
    fits = seg_u <= theta_s  # a segment's unit grows with its end, so its fits are contiguous

    def reach(d: int, start: int) -> int:
        ends = np.flatnonzero(fits[d, start])
        return int(ends[-1]) if ends.size else start

    raw = [(p.data_device, 0, reach(p.data_device, 0))]
    while 0 < raw[-1][2] < L:
        last, m = raw[-1][0], raw[-1][2]
        used = {s[0] for s in raw}
        best_m, best_e = max(((reach(e, m), e) for e in range(p.n_devices)
                              if e not in used and cut_u[last, e, m] <= theta_s), default=(m, -1))
        if best_m == m:
            return None
        raw.append((best_e, m, best_m))
    if raw[-1][2] != L:
        return None
    return [Stage(d, i, j, *arcs.stage_options(d, i, j, nxt[0] if nxt else None))
            for (d, i, j), nxt in zip(raw, [*raw[1:], None])]


def greedy_plan(p: ClientProblem, arcs: Arcs, micro_batches: int) -> list[Stage] | None:
    """The greedy plan with the smallest threshold (bisection to ``BISECT_RTOL``), or None.
    Capacity and links are respected; the budget is not."""
    seg_u, cut_u = units(p, arcs, micro_batches)
    finite = seg_u[np.isfinite(seg_u)]
    if finite.size == 0:
        return None
    hi = float(finite.max()) + float(np.max(cut_u[np.isfinite(cut_u)], initial=0.0))
    best = _greedy(p, arcs, seg_u, cut_u, hi)
    if best is None:
        return None
    lo = 0.0
    while hi - lo > BISECT_RTOL * hi:
        mid = (lo + hi) / 2
        plan = _greedy(p, arcs, seg_u, cut_u, mid)
        lo, hi, best = (lo, mid, plan) if plan is not None else (mid, hi, best)
    return best
