"""The cost model's arithmetic (``planner.profile``): layers in the whole model's context
and one Adam update per step, against hand-computed numbers; and what the profile times."""

from __future__ import annotations

import pytest
import torch

from planner.layer_context import in_context, step_s
from planner.profile import time_layer_step, time_layers
from planner.models import dcgan_discriminator
from planner.profile import layer_args


def test_step_counts_the_update_once_whatever_the_micro_batches():
    # a layer timed at B/4: 1.0 s of which 0.2 s Adam; four pieces: 4 x 0.8 + 0.2
    assert step_s(1.0, 0.2, 4) == pytest.approx(3.4)
    assert step_s(1.0, 0.2) == pytest.approx(1.0)
    assert step_s(0.1, 0.3, 2) == pytest.approx(0.1)  # an update timed longer than its step: noise, clamped


def test_layers_scale_to_the_whole_models_work():
    # two layers alone: 1.0 s (no update) and 2.0 s (0.5 s update); the whole model 2.4 s
    # with its update 0.5 s: the work 1.9 s over 1.0 + 1.5 s alone is a ratio of 0.76
    layers, ratio = in_context([(1.0, 0.3, 0.0), (2.0, 0.5, 0.5), (2.4, 0.7, 0.5)])
    assert ratio == pytest.approx(0.76)
    assert layers == [pytest.approx((0.76, 0.228, 0.0)), pytest.approx((0.5 + 0.76 * 1.5, 0.38, 0.5))]
    assert sum(t for t, _, _ in layers) == pytest.approx(2.4)  # the whole model's step


def test_the_profile_times_the_whole_model_in_the_same_rounds_and_the_update_apart():
    torch.set_num_threads(1)
    model = dcgan_discriminator()
    args = layer_args(model, 4)
    timings = time_layers(model, args, repeats=2, warmup=1, whole=True)
    assert len(timings) == len(model) + 1
    for (step, forward, update), layer in zip(timings, model.layers):
        assert 0 <= forward <= step and 0 <= update <= step
        assert (update > 0) == any(p.requires_grad for p in layer.parameters())
    conv = torch.nn.Conv2d(1, 8, 3)
    opt = torch.optim.Adam(conv.parameters())
    before = conv.weight.detach().clone()
    step, _, update = time_layer_step(conv, (torch.ones(8, 1, 5, 5),), (torch.ones(4, 1, 5, 5),), first=True, optimizer=opt)
    assert 0 < update < step and not torch.equal(before, conv.weight)  # the update ran inside the timing
