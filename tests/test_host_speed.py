"""``planner.host_speed``: the host's speed now against its tables', checked on a model whose
cost is known without the project's code (a layer that spins for a set amount of its
thread's CPU time) and on tables written by hand."""

import time

import pytest
import torch
from torch import nn

from planner.host_speed import around, profiled_step_s, slowdown, step_now_s
from planner.models import LayeredModel
from planner.profile import LayerProfile, ModelProfile

SPIN_S = 0.01


class _Spin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        t0 = time.thread_time()
        while time.thread_time() - t0 < SPIN_S:
            pass
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        t0 = time.thread_time()
        while time.thread_time() - t0 < SPIN_S:
            pass
        return g


class Busy(nn.Module):
    def forward(self, x):
        return _Spin.apply(x)


def _model() -> LayeredModel:
    return LayeredModel("busy", (1, 4, 4), [("busy", Busy()), ("flat", nn.Flatten()), ("dense", nn.Linear(16, 1))])


def _layer(name: str, time_s: float) -> LayerProfile:
    return LayerProfile(name=name, kind="Linear", params=0, param_bytes=0, flops=0, output_shape=(1,),
                        output_bytes=4, saved_bytes=0, memory_bytes=0, time_s=time_s)


def _profile(times: list[float], loss_s: float) -> ModelProfile:
    return ModelProfile(model="busy", fingerprint="", input_shape=(1, 4, 4), batch_size=8,
                        layers=tuple(_layer(f"l{i}", t) for i, t in enumerate(times)), host="", torch_version="",
                        threads=1, seconds=0.0, loss_s=loss_s)


def test_the_tables_step_is_their_layers_less_the_loss():
    assert profiled_step_s(_profile([0.30, 0.20, 0.05], loss_s=0.05)) == pytest.approx(0.50)


def test_the_step_now_is_the_spins_known_cost():
    """A GAN step through the whole model calls the spin three times (the discriminator
    phase's forward on 2 x batch without input gradients, then the generator phase's
    forward and backward: ``planner.profile.time_layer_step``'s first layer): 3 x SPIN_S of
    CPU time, plus a 16-weight linear layer's microseconds."""
    assert 3 * SPIN_S <= step_now_s(_model(), 8, repeats=5) < 3 * SPIN_S * 1.25


def test_slowdown_is_the_step_now_over_the_tables():
    """Tables that say 1.5 x SPIN_S for that step: the host is 2x slower than they say;
    tables that say 6 x SPIN_S: 2x faster."""
    assert slowdown(_model(), _profile([SPIN_S, SPIN_S / 2, 0.0], loss_s=0.0), repeats=5) == pytest.approx(2.0, rel=0.2)
    assert slowdown(_model(), _profile([4 * SPIN_S, 3 * SPIN_S], loss_s=SPIN_S), repeats=5) == pytest.approx(0.5, rel=0.2)


def test_around_returns_the_work_and_the_slowdown_timed_around_it():
    """The work's own result, and the slowdown of tables that say 1.5 x SPIN_S: 2x."""
    got, slow = around(_model(), _profile([SPIN_S, SPIN_S / 2], loss_s=0.0), lambda: "done", repeats=5)
    assert got == "done" and slow == pytest.approx(2.0, rel=0.2)
