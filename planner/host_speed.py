"""How fast this host runs now, against when its tables were timed.

A shared virtual machine's speed drifts: the same GAN step's median CPU time moved by
28 % between blocks seconds apart on the 2-core VM of BENCHMARKS.md
(``benchmarks/host_drift.py``; its hypervisor exposes no instruction counters to count
work instead). A plan's prediction, timed at one moment, then misses a
run at another by that drift, whatever the cost model's quality. :func:`slowdown` times
the whole discriminator's GAN step now, as :func:`planner.profile.measure` timed each of its
layers, and divides by what the tables add up to: 1.2 means the host runs 20 % slower than
when it was profiled. ``benchmarks/prediction.py`` measures it before and after each run and
reports its errors both raw and with the prediction scaled by it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import TypeVar

import torch

from planner.models import LayeredModel
from planner.profile import ModelProfile, layer_args, profile_threads, time_layer_step

T = TypeVar("T")


def profiled_step_s(profile: ModelProfile) -> float:
    """The whole model's GAN step as the tables have it: every layer's time in context,
    less the loss (:func:`planner.layer_context.in_context` scales the layers to sum to the
    whole model's step timed beside them)."""
    return sum(layer.time_s for layer in profile.layers) - profile.loss_s


def step_now_s(model: LayeredModel, batch_size: int, *, repeats: int = 9, warmup: int = 2) -> float:
    """The median CPU time of the whole model's GAN step at ``batch_size`` now, on the
    profiles' one thread (:func:`planner.profile.time_layer_step`)."""
    args = layer_args(model, batch_size)[0]
    whole = model.segment(0, len(model))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(whole.parameters(), lr=1e-12)
    with profile_threads():
        times = [time_layer_step(whole, args[0], args[1], first=True, optimizer=optimizer)[0]
                 for _ in range(warmup + repeats)][warmup:]
    model.load_state_dict(state)  # the timing's optimizer steps leave no trace
    return statistics.median(times)


def slowdown(model: LayeredModel, profile: ModelProfile, **kwargs) -> float:
    """This host's time for the model's step now over the profile's (above 1: slower now)."""
    return step_now_s(model, profile.batch_size, **kwargs) / profiled_step_s(profile)


def around(model: LayeredModel, profile: ModelProfile, work: Callable[[], T], **kwargs) -> tuple[T, float]:
    """``work()``'s result and this host's :func:`slowdown` while it ran: the geometric mean
    of the slowdown timed just before and just after it."""
    before = slowdown(model, profile, **kwargs)
    result = work()
    return result, math.sqrt(before * slowdown(model, profile, **kwargs))
