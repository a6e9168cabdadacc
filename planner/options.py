"""Choosing a stage's recompute flag, a cut's codec and the client's ``M`` for a placement.

Why per-arc choices are exact (SPEC §2.1): the step time ``sum(u) + (M - 1) * max(u)``
never decreases when one unit grows, and a stage's flag changes only that stage's unit
(through ``C_k``) and whether it fits its device (a stage alone on its device), a cut's
codec only that cut's unit (through ``V_k``). So for a fixed placement and any ``M``:

- a stage takes, of the variants that fit its capacity, the one with the smaller
  compute (plain on ties); memory beyond fitting buys nothing;
- a cut takes the codec with the smallest ``V`` ("none" on ties): the latency is the
  same for every codec.

Both choices are independent of ``M``, so a solver may decide them per segment and per
cut before it places anything; :mod:`planner.reference`'s brute force, which enumerates
every flag and codec, checks this on tiny instances.
"""

from __future__ import annotations

from collections.abc import Sequence

from planner import check
from planner.problem import NO_CODEC, ClientProblem, Stage


def segment_variant(p: ClientProblem, d: int, start: int, end: int) -> tuple[float, bool] | None:
    """``(compute_s, recompute)`` of the best variant of layers ``start..end-1`` on ``d``
    that fits its capacity, or None if neither fits."""
    cap = p.capacity_bytes[d]
    best = None
    if sum(p.memory_bytes[d][start:end]) <= cap:
        best = (sum(p.compute_s[d][start:end]), False)
    rec = p.recompute
    if rec is not None and sum(rec.memory_bytes[d][start:end]) <= cap:
        c = sum(rec.compute_s[d][start:end])
        if best is None or c < best[0]:
            best = (c, True)
    return best


def best_codec(p: ClientProblem, a: int, b: int, layer: int) -> tuple[str, float]:
    """``(codec, V)`` with the smallest volume time for the cut after ``layer``, a -> b."""
    best = (NO_CODEC, p.cut_volume_s(a, b, layer))
    for c in p.codecs:
        v = p.cut_volume_s(a, b, layer, c.name)
        if v < best[1]:
            best = (c.name, v)
    return best


def dress(p: ClientProblem, stages: Sequence[Stage]) -> tuple[Stage, ...] | None:
    """``stages`` with each flag and codec chosen as the module docstring says; None if
    some stage fits its device with neither table."""
    out = []
    for k, s in enumerate(stages):
        variant = segment_variant(p, s.device, s.start, s.end)
        if variant is None:
            return None
        codec = best_codec(p, s.device, stages[k + 1].device, s.end - 1)[0] if k + 1 < len(stages) else NO_CODEC
        out.append(Stage(s.device, s.start, s.end, recompute=variant[1], codec=codec))
    return tuple(out)


def best_micro_batches(p: ClientProblem, stages: Sequence[Stage]) -> tuple[int, float]:
    """``(M, step_time_s)`` of the fastest ``M`` in ``p.micro_batch_choices`` for
    ``stages``, each on its own tables (the smallest such ``M`` on ties)."""
    return check.best_micro_batches(p, stages, p.micro_batch_choices)
