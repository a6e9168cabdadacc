"""Exact reference solvers, independent of the ILP: a bitmask DP and brute force.

Both follow SPEC §2 and never import PuLP, so they can check :mod:`planner.ilp`.

:func:`solve_reference` is the Held-Karp style dynamic program (Held & Karp, "A dynamic
programming approach to sequencing problems", 1962) over ``(used devices as a bitmask,
last device e, layers 0..m-1 placed)``: ``f[S][e][m]`` is the best cost of a partial
plan whose segments use exactly the devices ``S``, the last being ``e`` and ending at
layer ``m-1``. Since ``e`` is the device added last, the previous state is on
``S - {e}``, so every state is reached from a unique smaller mask::

    f[S][e][m] = min over d in S-{e}, l < m with memory(e, l..m-1) <= capacity(e) of
                 f[S-{e}][d][l]  (+)  transfer(d, e, l-1)  (+)  compute(e, l..m-1)

with ``(+)`` = ``+`` for ``latency`` and ``max`` for ``throughput`` (a bottleneck path has
the same optimal substructure). The step time of a plan is its cost, so the budget is a
filter on the final answer. Inner minima are numpy min-plus (min-max) products over
``[layer, layer]`` tables built from prefix sums; work ``O(2^n n (n L + L^2))``.

:func:`solve_brute_force` enumerates every ordered device sequence that starts on the
data device and every composition of the layers into that many non-empty segments.

A link with bandwidth <= 0 is treated as absent (no cut may use it), as in the ILP.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator

import numpy as np

from planner import check
from planner.problem import OBJECTIVES, ClientProblem, Objective, Solution, Stage

MAX_DEVICES = 16  # the DP table has 2**n * n * (L+1) entries
BUDGET_RTOL = 1e-9  # the tolerance planner.check allows on the budget


def _segment_tables(p: ClientProblem) -> tuple[np.ndarray, np.ndarray]:
    """``cost[e][l][m]`` seconds of layers ``l..m-1`` on ``e`` (``inf`` where it overflows
    capacity or ``m <= l``) and ``cut[d][e][l]`` seconds of the cut after layer ``l``."""
    n, L = p.n_devices, p.n_layers
    comp = np.zeros((n, L + 1))
    comp[:, 1:] = np.cumsum(np.asarray(p.compute_s, dtype=float), axis=1)
    mem = np.zeros((n, L + 1), dtype=np.int64)
    mem[:, 1:] = np.cumsum(np.asarray(p.memory_bytes, dtype=np.int64), axis=1)
    seg_s = comp[:, None, :] - comp[:, :, None]  # [e][l][m] = comp[e][m] - comp[e][l]
    seg_bytes = mem[:, None, :] - mem[:, :, None]
    cap = np.asarray(p.capacity_bytes, dtype=np.int64)[:, None, None]
    lower = np.arange(L + 1)[:, None] >= np.arange(L + 1)[None, :]
    cost = np.where((seg_bytes <= cap) & ~lower[None], seg_s, np.inf)
    bw = np.asarray(p.link_bytes_per_s, dtype=float)
    lat = np.asarray(p.link_latency_s, dtype=float)
    cut_b = np.asarray(p.cut_bytes, dtype=float)
    with np.errstate(divide="ignore"):
        cut = np.where(bw[:, :, None] > 0, cut_b[None, None, :] / bw[:, :, None], np.inf) + lat[:, :, None]
    return cost, cut


def _combine(objective: Objective):
    return np.add if objective == "latency" else np.maximum


def _within_budget(p: ClientProblem, t: float) -> bool:
    return p.budget_s is None or t <= p.budget_s * (1 + BUDGET_RTOL)


def solve_reference(p: ClientProblem, *, objective: Objective = "latency") -> Solution:
    """Exact optimum by the bitmask DP above; ``optimal`` or ``infeasible``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}, expected latency or throughput")
    if p.n_devices > MAX_DEVICES:
        raise ValueError(f"reference DP supports at most {MAX_DEVICES} devices, got {p.n_devices}")
    t0 = time.perf_counter()
    n, L, data = p.n_devices, p.n_layers, p.data_device
    plus = _combine(objective)
    cost, cut = _segment_tables(p)
    f = np.full((1 << n, n, L + 1), np.inf)
    par_l = np.zeros((1 << n, n, L + 1), dtype=np.int32)  # start of e's segment
    par_d = np.zeros((1 << n, n, L + 1), dtype=np.int32)  # device before e, by start
    f[1 << data, data, :] = cost[data, 0, :]
    masks = sorted((m for m in range(1 << n) if m >> data & 1), key=int.bit_count)
    for mask in masks:
        members = [d for d in range(n) if mask >> d & 1]
        prev = f[mask][members]  # [d][l]
        if not np.isfinite(prev[:, 1:L]).any():
            continue
        for e in range(n):
            if mask >> e & 1:
                continue
            # arrive[d][l]: reach e's segment starting at l from d (cut after l-1)
            arrive = np.full((len(members), L + 1), np.inf)
            arrive[:, 1:L] = plus(prev[:, 1:L], cut[members, e, : L - 1])
            best_d = arrive.argmin(axis=0)
            a = arrive[best_d, np.arange(L + 1)]  # [l]
            total = plus(a[:, None], cost[e])  # [l][m]
            best_l = total.argmin(axis=0)
            new = mask | 1 << e
            f[new, e] = total[best_l, np.arange(L + 1)]
            par_l[new, e] = best_l
            par_d[new, e] = np.asarray(members, dtype=np.int32)[best_d]
    final = f[:, :, L]
    flat = int(np.argmin(final))
    best = float(final.flat[flat])
    seconds = time.perf_counter() - t0
    if not math.isfinite(best):
        return Solution.infeasible(seconds=seconds)
    mask, e = divmod(flat, n)
    stages, m = [], L
    while True:
        l = 0 if mask == 1 << data else int(par_l[mask, e, m])
        stages.append(Stage(device=e, start=l, end=m))
        if l == 0:
            break
        mask, e, m = mask ^ (1 << e), int(par_d[mask, e, l]), l
    stages.reverse()
    step = check.step_time_s(p, stages, objective)
    if not _within_budget(p, step):
        return Solution.infeasible(seconds=seconds)
    return Solution(stages=tuple(stages), status="optimal", step_time_s=step, seconds=seconds)


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Cut points ``0 < c1 < ... < c_{parts-1} < total`` of ``range(total)``."""
    for inner in itertools.combinations(range(1, total), parts - 1):
        yield (0, *inner, total)


def enumerate_plans(p: ClientProblem) -> Iterator[tuple[Stage, ...]]:
    """Every stage list that SPEC §2 allows apart from capacity and budget."""
    others = [d for d in range(p.n_devices) if d != p.data_device]
    for k in range(1, min(p.n_devices, p.n_layers) + 1):
        for order in itertools.permutations(others, k - 1):
            devices = (p.data_device, *order)
            if any(p.link_bytes_per_s[a][b] <= 0 for a, b in zip(devices, devices[1:])):
                continue
            for cuts in _compositions(p.n_layers, k):
                yield tuple(Stage(d, s, e) for d, s, e in zip(devices, cuts, cuts[1:]))


def solve_brute_force(p: ClientProblem, *, objective: Objective = "latency") -> Solution:
    """Exact optimum by enumerating every plan; for tiny instances only."""
    t0 = time.perf_counter()
    best_t, best = math.inf, None
    for stages in enumerate_plans(p):
        if check.violations(p, stages, objective):
            continue
        t = check.step_time_s(p, stages, objective)
        if t < best_t:
            best_t, best = t, stages
    seconds = time.perf_counter() - t0
    if best is None:
        return Solution.infeasible(seconds=seconds)
    return Solution(stages=best, status="optimal", step_time_s=best_t, seconds=seconds)
