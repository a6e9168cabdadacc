"""Baseline placements to compare the exact planner against; status ``heuristic``.

Each returns a plan that passes :func:`planner.check.violations` (capacity and budget
included) or :meth:`Solution.infeasible` when its rule finds none. Speed order: devices
by the sum of their ``compute_s`` over all layers, fastest first, ties by index.

- :func:`solve_fsl_gan`: the seed paper's method (FSL-GAN, "Federated split learning for
  GANs", placement section): sort devices by speed, cut the model into parts at fixed
  boundaries (A, B, C, ...), and give the parts in order, first-fit, to the first device
  in speed order with enough remaining capacity. Under SPEC §2 the first part must go on
  the data device, a device once left is not used again, and consecutive parts on one
  device merge into one stage.
- :func:`solve_uniform`: equal layer counts (the first ``L mod k`` segments one layer
  longer) over ``k`` devices, the data device first and then the fastest others, for
  ``k = 1..n``; the best feasible ``k`` wins.
- :func:`solve_params`: like uniform, but the cuts balance the data device's
  ``memory_bytes`` row, minimising the largest segment (DeepSpeed pipeline parallelism's
  ``partition_method="parameters"``, ``ds_utils.partition_balanced``).

Each placement then gets the same execution options the exact planner may use (SPEC
§2.1): per stage and cut the flag and codec :func:`planner.options.dress` chooses, and
the fastest ``M`` the objective allows, so a comparison measures placement alone.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import replace

from planner import check
from planner.options import best_micro_batches, dress
from planner.problem import ClientProblem, Objective, Solution, Stage


def speed_order(p: ClientProblem) -> list[int]:
    """Device indices, fastest first (least total ``compute_s``), ties by index."""
    return sorted(range(p.n_devices), key=lambda d: (sum(p.compute_s[d]), d))


def _heuristic(p: ClientProblem, stages: Sequence[Stage], objective: Objective, t0: float) -> Solution:
    dressed = dress(p, stages) if stages else None
    m = best_micro_batches(p, dressed)[0] if dressed and objective == "throughput" else 1
    seconds = time.perf_counter() - t0
    if not dressed or check.violations(p, dressed, m):
        return Solution.infeasible(seconds=seconds)
    return Solution(stages=dressed, status="heuristic", step_time_s=check.step_time_s(p, dressed, m),
                    seconds=seconds, micro_batches=m)


def _has_links(p: ClientProblem, stages: Sequence[Stage]) -> bool:
    return all(p.link_bytes_per_s[a.device][b.device] > 0 for a, b in zip(stages, stages[1:]))


def solve_fsl_gan(
    p: ClientProblem, *, parts: Sequence[int] | None = None, objective: Objective = "latency",
    order: Sequence[int] | None = None,
) -> Solution:
    """The seed paper's greedy first-fit of model parts onto devices in speed order.

    ``parts`` are the layer indices where a part starts (``(0, 3, 6)`` for A/B/C);
    ``None`` makes every layer its own part. ``order``: the devices to fill, in this
    order, instead of all of them by speed (the seed's code also shuffles them, and
    keeps the first three).
    """
    t0 = time.perf_counter()
    starts = sorted(set(range(p.n_layers) if parts is None else parts))
    if not starts or starts[0] != 0 or starts[-1] >= p.n_layers:
        raise ValueError(f"parts must start at 0 and lie below {p.n_layers}, got {list(starts)}")
    bounds = [*starts, p.n_layers]
    order = speed_order(p) if order is None else list(order)
    left: set[int] = set()
    stages: list[Stage] = []
    used_bytes = 0
    for s, e in zip(bounds, bounds[1:]):
        current = stages[-1].device if stages else None
        candidates = [p.data_device] if current is None else [d for d in order if d not in left]
        chosen = None
        for d in candidates:
            base = used_bytes if d == current else 0
            if base + sum(p.memory_bytes[d][s:e]) <= p.capacity_bytes[d]:
                chosen = d
                break
        if chosen is None:
            return Solution.infeasible(seconds=time.perf_counter() - t0)
        if chosen == current:
            stages[-1] = Stage(chosen, stages[-1].start, e)
            used_bytes += sum(p.memory_bytes[chosen][s:e])
        else:
            if current is not None:
                left.add(current)
            stages.append(Stage(chosen, s, e))
            used_bytes = sum(p.memory_bytes[chosen][s:e])
    if not _has_links(p, stages):
        return Solution.infeasible(seconds=time.perf_counter() - t0)
    return _heuristic(p, stages, objective, t0)


def _uniform_bounds(n_layers: int, k: int) -> list[int]:
    size, extra = divmod(n_layers, k)
    bounds = [0]
    for i in range(k):
        bounds.append(bounds[-1] + size + (1 if i < extra else 0))
    return bounds


@functools.lru_cache(maxsize=1024)  # every client of a plan has the same memory row per unit
def _balanced_bounds(weights: tuple[int, ...], k: int) -> tuple[int, ...]:
    """Cut ``weights`` into ``k`` non-empty contiguous parts minimising the largest sum."""
    L = len(weights)
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    # best[j][m]: smallest max part sum cutting weights[:m] into j parts; arg for the cut
    best = [[math.inf] * (L + 1) for _ in range(k + 1)]
    arg = [[0] * (L + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for j in range(1, k + 1):
        for m in range(j, L + 1):
            for c in range(j - 1, m):
                v = max(best[j - 1][c], prefix[m] - prefix[c])
                if v < best[j][m]:
                    best[j][m], arg[j][m] = v, c
    bounds, m = [L], L
    for j in range(k, 0, -1):
        m = arg[j][m]
        bounds.append(m)
    return tuple(bounds[::-1])


def _best_over_k(p: ClientProblem, objective: Objective, bounds_for_k, t0: float) -> Solution:
    others = [d for d in speed_order(p) if d != p.data_device]
    best: Solution | None = None
    for k in range(1, min(p.n_devices, p.n_layers) + 1):
        bounds = bounds_for_k(k)
        devices = [p.data_device, *others[: k - 1]]
        stages = [Stage(d, s, e) for d, s, e in zip(devices, bounds, bounds[1:])]
        if not _has_links(p, stages):
            continue
        sol = _heuristic(p, stages, objective, t0)
        if sol.status != "infeasible" and (best is None or sol.step_time_s < best.step_time_s):
            best = sol
    seconds = time.perf_counter() - t0
    if best is None:
        return Solution.infeasible(seconds=seconds)
    return replace(best, seconds=seconds)


def solve_uniform(p: ClientProblem, *, objective: Objective = "latency") -> Solution:
    """Equal layer counts over the data device and the fastest others, best ``k``."""
    t0 = time.perf_counter()
    return _best_over_k(p, objective, lambda k: _uniform_bounds(p.n_layers, k), t0)


def solve_params(p: ClientProblem, *, objective: Objective = "latency") -> Solution:
    """Memory-balanced cuts (data device's ``memory_bytes`` row), best ``k``."""
    t0 = time.perf_counter()
    weights = tuple(p.memory_bytes[p.data_device])
    return _best_over_k(p, objective, lambda k: _balanced_bounds(weights, k), t0)
