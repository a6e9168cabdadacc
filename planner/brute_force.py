"""Brute force over every plan SPEC §2.1 allows; for tiny instances only.

It enumerates every ordered device sequence that starts on the data device, every
composition of the layers into that many non-empty segments, every recompute flag per
stage (when ``costs.recompute`` exists), every codec per cut and every ``M`` the
objective allows, and keeps the fastest that :func:`planner.check.violations` accepts.
Nothing here assumes how the options should be chosen, so it checks the per-arc choices
that :mod:`planner.options` and :mod:`planner.reference` make.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator

from planner import check
from planner.problem import NO_CODEC, ClientProblem, Objective, Solution, Stage


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Cut points ``0 < c1 < ... < c_{parts-1} < total`` of ``range(total)``."""
    for inner in itertools.combinations(range(1, total), parts - 1):
        yield (0, *inner, total)


def enumerate_plans(p: ClientProblem) -> Iterator[tuple[Stage, ...]]:
    """Every stage list SPEC §2 allows apart from capacity and budget, with every flag
    and codec §2.1 allows."""
    others = [d for d in range(p.n_devices) if d != p.data_device]
    flags = (False, True) if p.recompute is not None else (False,)
    codecs = (NO_CODEC, *(c.name for c in p.codecs))
    for k in range(1, min(p.n_devices, p.n_layers) + 1):
        for order in itertools.permutations(others, k - 1):
            devices = (p.data_device, *order)
            if any(p.link_bytes_per_s[a][b] <= 0 for a, b in zip(devices, devices[1:])):
                continue
            for cuts in _compositions(p.n_layers, k):
                for rec in itertools.product(flags, repeat=k):
                    for enc in itertools.product(codecs, repeat=k - 1):
                        yield tuple(Stage(d, s, e, r, c)
                                    for d, s, e, r, c in zip(devices, cuts, cuts[1:], rec, (*enc, NO_CODEC)))


def solve_brute_force(p: ClientProblem, *, objective: Objective = "latency") -> Solution:
    """Exact optimum by enumerating every plan and ``M``."""
    t0 = time.perf_counter()
    choices = p.choices(objective)
    best_t, best, best_m = math.inf, None, 1
    for stages in enumerate_plans(p):
        for m in choices:
            if check.violations(p, stages, m):
                continue
            t = check.step_time_s(p, stages, m)
            if t < best_t:
                best_t, best, best_m = t, stages, m
    seconds = time.perf_counter() - t0
    if best is None:
        return Solution.infeasible(seconds=seconds)
    return Solution(stages=best, status="optimal", step_time_s=best_t, seconds=seconds, micro_batches=best_m)
