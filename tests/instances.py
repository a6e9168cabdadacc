"""Cost tables for the solver tests: literal ones, seeded random ones, large ones."""

from __future__ import annotations

import random
from dataclasses import replace

from planner.problem import ClientProblem, Codec, MicroBatchTables, RecomputeTables


def problem(compute, memory=None, capacity=None, cut=None, bw=1e3, lat=0.0, *, data=0, budget=None, **options):
    """Literal tables; scalars ``bw``/``lat`` mean the same link between every pair."""
    n, L = len(compute), len(compute[0])
    memory = memory or [[1] * L for _ in range(n)]
    capacity = capacity or [10**9] * n
    cut = cut if cut is not None else [100] * (L - 1)

    def square(v):
        return v if isinstance(v, list) else [[0 if a == b else v for b in range(n)] for a in range(n)]

    return ClientProblem(
        devices=tuple(f"dev{i}" for i in range(n)), data_device=data,
        compute_s=tuple(map(tuple, compute)), memory_bytes=tuple(map(tuple, memory)),
        capacity_bytes=tuple(capacity), cut_bytes=tuple(cut),
        link_bytes_per_s=tuple(map(tuple, square(bw))), link_latency_s=tuple(map(tuple, square(lat))),
        budget_s=budget, **options,
    )


def random_problem(rng: random.Random, *, max_devices: int = 6, max_layers: int = 12) -> ClientProblem:
    """Seeded tables: speed factors, some capacities too small, absent links, budgets, and
    every §2.1 option: per micro-batch overheads, 1 to 3 ``M`` choices (1 among them or
    not), recompute tables (more compute, less memory) and codecs, each drawn or not."""
    n, L = rng.randint(1, max_devices), rng.randint(1, max_layers)
    base = [rng.uniform(0.01, 1.0) for _ in range(L)]
    speed = [rng.choice((0.25, 0.5, 1, 2, 4, 8)) * rng.uniform(0.8, 1.2) for _ in range(n)]
    compute = [[b * s * rng.uniform(0.9, 1.1) for b in base] for s in speed]
    layer_bytes = [rng.randint(1, 1000) for _ in range(L)]
    memory = [[m * rng.choice((1, 1, 2)) for m in layer_bytes] for _ in range(n)]
    total = sum(layer_bytes)
    capacity = [rng.choices((int(total * rng.uniform(0.2, 0.8)), int(total * rng.uniform(1.0, 3.0)),
                             rng.randint(0, 50)), weights=(3, 6, 1))[0] for _ in range(n)]
    cut = [rng.randint(1, 2 * 10**5) for _ in range(L - 1)]
    bw = [[0.0 if a == b or rng.random() < 0.05 else rng.uniform(1e5, 1e7) for b in range(n)] for a in range(n)]
    lat = [[0.0 if a == b else rng.uniform(0, 0.05) for b in range(n)] for a in range(n)]
    budget = None if rng.random() < 0.5 else rng.uniform(0.3, 1.5) * sum(compute[0])
    recompute = None if rng.random() < 0.3 else RecomputeTables(
        tuple(tuple(c * rng.uniform(1.1, 1.5) for c in row) for row in compute),
        tuple(tuple(int(m * rng.uniform(0.2, 0.8)) for m in row) for row in memory))
    codecs = tuple(Codec(name, ratio, tuple(tuple(rng.uniform(0, cost) * s for _ in range(L - 1)) for s in speed))
                   for name, ratio, cost in (("fp16", 0.5, 0.02), ("int8", 0.25, 0.05)) if rng.random() < 0.6)
    choices = tuple(sorted(rng.sample((1, 2, 3, 4, 8, 16), rng.randint(1, 3))))
    p = problem(compute, memory, capacity, cut, bw, lat, data=rng.randrange(n), budget=budget,
                overhead_s=tuple(rng.uniform(0, 0.01) * s for s in speed), micro_batch_choices=choices,
                recompute=recompute, codecs=codecs)
    return replace(p, per_micro_batch=micro_batch_tables(rng, p)) if rng.random() < 0.5 else p


def micro_batch_tables(rng: random.Random, p: ClientProblem) -> tuple[tuple[int, MicroBatchTables], ...]:
    """Seeded SPEC §2.1 ``per_micro_batch`` for each ``M > 1`` of ``p``: small batches cost
    more than their share (each layer 1x to 2x the base, per device), overheads grow, and
    each field is drawn present or absent."""
    def scaled(t, lo=1.0, hi=2.0):
        return tuple(tuple(v * rng.uniform(lo, hi) for v in row) for row in t)

    out = []
    for m in (m for m in p.micro_batch_choices if m > 1):
        out.append((m, MicroBatchTables(
            compute_s=scaled(p.compute_s) if rng.random() < 0.8 else None,
            overhead_s=tuple(rng.uniform(0, 0.02) for _ in p.devices) if rng.random() < 0.5 else None,
            recompute_s=scaled(p.recompute.compute_s) if p.recompute is not None and rng.random() < 0.5 else None,
            codec_s=tuple((c.name, scaled(c.codec_s)) for c in p.codecs if rng.random() < 0.5))))
    return tuple(out)


def big_problem(seed: int, n: int = 16, L: int = 64, **options) -> ClientProblem:
    rng = random.Random(seed)
    base = [rng.uniform(0.01, 0.2) for _ in range(L)]
    compute = [[b * s * rng.uniform(0.9, 1.1) for b in base] for s in (rng.uniform(0.5, 8) for _ in range(n))]
    layer_bytes = [rng.randint(1000, 100000) for _ in range(L)]
    capacity = [int(sum(layer_bytes) * rng.uniform(0.05, 0.6)) for _ in range(n)]
    cut = [rng.randint(1000, 2_000_000) for _ in range(L - 1)]
    return problem(compute, [layer_bytes] * n, capacity, cut, bw=1e7, lat=0.005, **options)
