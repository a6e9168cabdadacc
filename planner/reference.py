"""Exact reference solver, independent of the ILP: a bitmask DP with a bottleneck sweep.

It follows SPEC §2.1 and never imports PuLP, :mod:`planner.arcs` or :mod:`planner.options`,
so it can check :mod:`planner.ilp`; :mod:`planner.brute_force` checks it in turn.

For one ``M`` and a threshold ``theta``, :func:`_min_sum` is the Held-Karp style dynamic
program (Held & Karp, "A dynamic programming approach to sequencing problems", 1962)
over ``(used devices as a bitmask, last device e, layers 0..m-1 placed)``: ``f[S][e][m]``
is the least ``sum(u)`` of a partial plan whose units are all ``<= theta``, whose
segments use exactly the devices ``S``, the last being ``e`` and ending at layer ``m-1``::

    f[S][e][m] = min over d in S-{e}, l < m of
                 f[S-{e}][d][l] + cut_u(d, e, l-1) + seg_u(e, l..m-1)

A segment's unit is that of its best variant that fits (plain or recomputing, the one
with less compute), a cut's that of its fastest codec: each choice touches only its own
unit, and the step time grows with every unit. Inner minima are numpy min-plus products
over ``[layer, layer]`` tables built from prefix sums; work ``O(2^n n (n L + L^2))``.

The sweep (:func:`_best_for`) minimises ``sum(u) + (M - 1) * max(u)`` exactly: with
``theta`` infinite the DP's plan has the least sum ``S``, max unit ``theta_P`` and step
``S + (M - 1) theta_P``, the incumbent. A strictly better plan needs ``max(u) <
theta_P`` (its sum is at least ``S``) and ``(M - 1) max(u) < best - S``, so the DP runs
again with ``theta`` the largest unit value below both, until no plan is left.
"""

from __future__ import annotations

import math
import time

import numpy as np

from planner import check
from planner.problem import NO_CODEC, OBJECTIVES, ClientProblem, Objective, Solution, Stage

MAX_DEVICES = 16  # the DP table has 2**n * n * (L+1) entries


def _prefix(rows, dtype) -> np.ndarray:
    a = np.asarray(rows, dtype=dtype)
    return np.concatenate([np.zeros((a.shape[0], 1), dtype=dtype), np.cumsum(a, axis=1)], axis=1)


def _segment_tables(p: ClientProblem) -> tuple[np.ndarray, np.ndarray]:
    """``cost[e][l][m]`` compute of layers ``l..m-1`` on ``e`` by its best fitting
    variant (``inf`` where none fits or ``m <= l``) and ``rec[e][l][m]`` its flag."""
    L = p.n_layers
    cap = np.asarray(p.capacity_bytes, dtype=np.int64)[:, None, None]
    lower = np.arange(L + 1)[:, None] >= np.arange(L + 1)[None, :]
    tables = [(p.compute_s, p.memory_bytes)]
    if p.recompute is not None:
        tables.append((p.recompute.compute_s, p.recompute.memory_bytes))
    options = []
    for comp_rows, mem_rows in tables:
        comp, mem = _prefix(comp_rows, float), _prefix(mem_rows, np.int64)
        seg_s = comp[:, None, :] - comp[:, :, None]  # [e][l][m] = comp[e][m] - comp[e][l]
        seg_bytes = mem[:, None, :] - mem[:, :, None]
        options.append(np.where((seg_bytes <= cap) & ~lower[None], seg_s, np.inf))
    if len(options) == 1:
        return options[0], np.zeros(options[0].shape, dtype=bool)
    rec = options[1] < options[0]
    return np.where(rec, options[1], options[0]), rec


def _cut_tables(p: ClientProblem) -> tuple[np.ndarray, np.ndarray]:
    """``vol[d][e][l]``: the fastest codec's volume seconds of the cut after ``l`` from
    ``d`` to ``e`` (``inf`` over an absent link), and ``codec[d][e][l]`` its index (-1: none)."""
    bw = np.asarray(p.link_bytes_per_s, dtype=float)[:, :, None]
    cut_b = np.asarray(p.cut_bytes, dtype=float)[None, None, :]
    with np.errstate(divide="ignore"):
        vol = np.where(bw > 0, cut_b / bw, np.inf)
        codec = np.full(vol.shape, -1)
        for i, c in enumerate(p.codecs):
            cs = np.asarray(c.codec_s, dtype=float).reshape(p.n_devices, -1)
            v = np.where(bw > 0, cut_b * c.bytes_ratio / bw, np.inf) + cs[:, None, :] + cs[None, :, :]
            codec = np.where(v < vol, i, codec)
            vol = np.minimum(vol, v)
    return vol, codec


def _min_sum(p: ClientProblem, seg_u: np.ndarray, cut_u: np.ndarray, theta: float):
    """The DP of the module docstring: ``(least sum(u), stages)`` with every unit
    ``<= theta``, or ``(inf, None)``."""
    n, L, data = p.n_devices, p.n_layers, p.data_device
    seg = np.where(seg_u <= theta, seg_u, np.inf)
    cut = np.where(cut_u <= theta, cut_u, np.inf)
    f = np.full((1 << n, n, L + 1), np.inf)
    par_l = np.zeros((1 << n, n, L + 1), dtype=np.int32)  # start of e's segment
    par_d = np.zeros((1 << n, n, L + 1), dtype=np.int32)  # device before e, by start
    f[1 << data, data, :] = seg[data, 0, :]
    for mask in sorted((m for m in range(1 << n) if m >> data & 1), key=int.bit_count):
        members = [d for d in range(n) if mask >> d & 1]
        prev = f[mask][members]  # [d][l]
        if not np.isfinite(prev[:, 1:L]).any():
            continue
        for e in range(n):
            if mask >> e & 1:
                continue
            arrive = np.full((len(members), L + 1), np.inf)  # reach e's segment starting at l from d
            arrive[:, 1:L] = prev[:, 1:L] + cut[members, e, : L - 1]
            best_d = arrive.argmin(axis=0)
            total = arrive[best_d, np.arange(L + 1)][:, None] + seg[e]  # [l][m]
            best_l = total.argmin(axis=0)
            new = mask | 1 << e
            f[new, e] = total[best_l, np.arange(L + 1)]
            par_l[new, e] = best_l
            par_d[new, e] = np.asarray(members, dtype=np.int32)[best_d]
    final = f[:, :, L]
    flat = int(np.argmin(final))
    if not math.isfinite(final.flat[flat]):
        return math.inf, None
    mask, e = divmod(flat, n)
    stages, m = [], L
    while True:
        l = 0 if mask == 1 << data else int(par_l[mask, e, m])
        stages.append((e, l, m))
        if l == 0:
            break
        mask, e, m = mask ^ (1 << e), int(par_d[mask, e, l]), l
    return float(final.flat[flat]), stages[::-1]


def _best_for(p: ClientProblem, m: int, seg_c, rec, vol, codec) -> tuple[float, list[Stage] | None]:
    """The least step time at ``m`` micro-batches and its plan, by the sweep above."""
    overhead = np.asarray(p.overhead_s if p.overhead_s is not None else [0.0] * p.n_devices)
    seg_u = seg_c / m + overhead[:, None, None]
    cut_u = vol / m + np.asarray(p.link_latency_s, dtype=float)[:, :, None]
    values = np.unique(np.concatenate([seg_u[np.isfinite(seg_u)], cut_u[np.isfinite(cut_u)]]))
    best, plan, theta = math.inf, None, math.inf
    while True:
        s, raw = _min_sum(p, seg_u, cut_u, theta)
        if raw is None:
            return best, plan
        top = max([seg_u[e, i, j] for e, i, j in raw] + [cut_u[a[0], b[0], a[2] - 1] for a, b in zip(raw, raw[1:])])
        if s + (m - 1) * top < best:
            best = s + (m - 1) * top
            plan = [Stage(e, i, j, bool(rec[e, i, j]),
                          p.codecs[codec[e, nxt[0], j - 1]].name if nxt and codec[e, nxt[0], j - 1] >= 0 else NO_CODEC)
                    for (e, i, j), nxt in zip(raw, [*raw[1:], None])]
        if m == 1:
            return best, plan
        below = values[values < min(top, (best - s) / (m - 1))]
        if below.size == 0:
            return best, plan
        theta = float(below[-1])


def solve_reference(p: ClientProblem, *, objective: Objective = "latency") -> Solution:
    """Exact optimum over placements, options and ``M`` (each ``M`` on its own tables);
    ``optimal`` or ``infeasible``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}, expected latency or throughput")
    if p.n_devices > MAX_DEVICES:
        raise ValueError(f"reference DP supports at most {MAX_DEVICES} devices, got {p.n_devices}")
    t0 = time.perf_counter()
    best: tuple[float, list[Stage] | None, int] = (math.inf, None, 1)
    for m in p.choices(objective):
        q = p.at(m)  # this M's tables (SPEC §2.1 per_micro_batch)
        t, plan = _best_for(q, m, *_segment_tables(q), *_cut_tables(q))
        if plan is not None and t < best[0]:
            best = (t, plan, m)
    seconds = time.perf_counter() - t0
    t, plan, m = best
    if plan is None:
        return Solution.infeasible(seconds=seconds)
    step = check.step_time_s(p, plan, m)
    if p.budget_s is not None and step > p.budget_s * (1 + check.RTOL):
        return Solution.infeasible(seconds=seconds)
    return Solution(stages=tuple(plan), status="optimal", step_time_s=step, seconds=seconds, micro_batches=m)
