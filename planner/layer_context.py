"""A layer's cost in the step it is part of, from its timing alone: pure arithmetic over
:mod:`planner.profile`'s measurements (no torch), so it is tested with literal numbers.

- :func:`in_context`: a forward and backward through many layers costs less than the sum
  of each layer timed alone; the layers' work is scaled to sum to the whole model's,
  timed in the same rounds at the same batch.
- :func:`step_s`: a layer's seconds per step in ``M`` micro-batches: ``M`` times its work
  at ``B / M`` (with the loss, on the last layer), one Adam update, ``M - 1`` gradient
  accumulations.
"""

from __future__ import annotations


def step_s(step: float, update: float, micro_batches: int = 1, accumulate: float = 0.0, loss: float = 0.0) -> float:
    """A layer's ``time_s`` for a step in ``micro_batches`` pieces, from its timing at
    ``batch / micro_batches`` (``step`` and ``update`` of :func:`in_context`): each
    piece's work (and ``loss``, for the last layer), one Adam update per step, and
    ``micro_batches - 1`` gradient accumulations."""
    m = micro_batches
    return m * (max(step - update, 0.0) + loss) + min(update, step) + (m - 1) * accumulate


def in_context(timings: list[tuple[float, float, float]]) -> tuple[list[tuple[float, float, float]], float]:
    """Per layer ``(step, forward, update)`` in the whole model's context, and the ratio:
    :func:`planner.profile.time_layers` ``(whole=True)``'s layers' work beyond the update scaled to sum to
    the whole model's (module docstring)."""
    *layers, (w_step, _, w_update) = timings
    alone = sum(max(t - u, 0.0) for t, _, u in layers)
    ratio = max(w_step - w_update, 0.0) / alone if alone > 0 else 1.0
    return [(u + ratio * max(t - u, 0.0), ratio * f, u) for t, f, u in layers], ratio
