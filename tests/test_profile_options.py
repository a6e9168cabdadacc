"""SPEC §2.1's measured costs: codecs, stage overhead, recomputation, the generator's step.

The codecs are checked against their error bounds; the measurements against what they
must be (positive, scaled by ``processing_time_factor``, the forward part of a layer's
step within its step); the recompute memory model against a hand computation.
"""

from __future__ import annotations

import math

import pytest
import torch

from planner.codecs import BYTES_RATIO, decode, encode, round_trip
from planner.costs import Options, Unit, client_problem, planning_units, recompute_memory_bytes
from planner.devices import parse_profile
from planner.models import dcgan_discriminator


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_fp16_round_trip_within_half_precision(scale):
    x = torch.randn(64, 128, 7, 7) * scale
    y = round_trip("fp16", x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.all((y - x).abs() <= x.abs() * 2**-11 + 2**-24)  # half's rounding, subnormals aside


@pytest.mark.parametrize("shift", [0.0, 5.0, -3.0])
def test_int8_round_trip_within_half_a_step(shift):
    x = torch.randn(64, 4096) + shift
    e = encode("int8", x)
    step = (float(x.max()) - float(x.min())) / 255
    assert e.payload.dtype == torch.int8 and e.scale == pytest.approx(step)
    assert float((decode(e) - x).abs().max()) <= step / 2 * (1 + 1e-5)
    assert e.payload.numel() * e.payload.element_size() == x.numel() * 4 * BYTES_RATIO["int8"]


def test_int8_of_a_constant_tensor_is_exact():
    x = torch.full((3, 5), 0.75)
    assert torch.equal(round_trip("int8", x), x)


def test_unknown_codec_is_rejected():
    with pytest.raises(ValueError, match="unknown codec"):
        encode("zip", torch.zeros(2))


def test_recompute_memory_model_by_hand():
    # a unit of 1000 parameters saving 8 MB for 2 x batch, reading a 1 MB batch
    u = Unit("block", 0, 2, flops=0, params=1000, param_bytes=4000, output_bytes=2_000_000,
             memory_bytes=16_000 + 8_000_000 + 4 * 2_000_000, time_s=0.1, forward_s=0.03,
             input_bytes=1_000_000, saved_bytes=8_000_000)
    plain = u.memory_bytes
    # M >= 4: the inputs of all micro-batches (2 x 1 MB) and one micro-batch's saved tensors
    assert recompute_memory_bytes(u, 4) == plain - 8_000_000 + 2_000_000 + 2_000_000
    # one micro-batch: recomputing brings back every saved tensor, the input on top
    assert recompute_memory_bytes(u, 1) == plain + 2_000_000 > plain


def test_client_tables_carry_every_option(dcgan_profile):
    client = parse_profile({"schema": "fsl-devices/1", "clients": [{"name": "c", "devices": [
        {"name": "phone", "processing_time_factor": 4.0, "capacity": "1GB", "bandwidth_mbps": 80,
         "latency_ms": 5, "holds_data": True},
        {"name": "laptop", "processing_time_factor": 1.0, "capacity": "2GB", "bandwidth_mbps": 400}]}]}).clients[0]
    units = planning_units(dcgan_discriminator(), dcgan_profile)
    p = client_problem(client, units, dcgan_profile, budget_s=None,
                       options=Options(micro_batch_choices=(2, 4), codecs=("int8",), recompute=True))
    assert p.overhead_s == pytest.approx((4 * 3e-4, 3e-4))
    assert p.micro_batch_choices == (2, 4)
    assert [c.name for c in p.codecs] == ["int8"] and p.codecs[0].bytes_ratio == 0.25
    assert p.codecs[0].codec_s[0][0] == pytest.approx(4 * dict(units[0].codec_s)["int8"])
    assert p.recompute.compute_s[1][3] == pytest.approx(units[3].time_s + units[3].forward_s)
    assert p.recompute.memory_bytes[0][3] == recompute_memory_bytes(units[3], 2)
    assert p.server_transfer_s == pytest.approx(2 * dcgan_profile.fake_bytes / 10e6 + 0.005)
    off = client_problem(client, units, dcgan_profile, budget_s=None, options=Options())
    assert off.recompute is not None and off.codecs == () and off.micro_batch_choices == (1,)
    assert client_problem(client, units, dcgan_profile, budget_s=None,
                          options=Options(recompute=False)).recompute is None


def test_measured_options_are_plausible(measured_dcgan_profile):
    prof = measured_dcgan_profile
    assert 0 < prof.overhead_s < 0.05  # a queue hand-off and two tiny passes, not a layer's work
    assert prof.generator_step_s > 0 and prof.fake_bytes == 64 * 28 * 28 * 4
    for layer in prof.layers:
        assert 0 < layer.forward_s < layer.time_s
        assert set(layer.codec_s) == set(BYTES_RATIO) and all(v > 0 for v in layer.codec_s.values())
    assert prof.layers[0].input_bytes == 64 * 28 * 28 * 4
    assert prof.layers[3].input_bytes == prof.layers[2].output_bytes
    assert math.isfinite(prof.step_time_s)


def test_overhead_times_four_blocks_a_micro_batch_and_not_the_work_between():
    """Each micro-batch is four blocks (forward and backward, both phases), each timed
    after another stage's work: a clock that says 1 ms per block gives 4 ms, and work
    between the blocks that spins for 20 ms of CPU each time is not counted."""
    import time

    from planner.profile_options import measure_overhead_s

    calls = []

    def spin() -> None:
        calls.append("between")
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.02:
            pass

    def one_ms(block) -> float:
        calls.append("block")
        block()
        return 1e-3

    assert measure_overhead_s(timed=one_ms, repeats=3, warmup=1, between=spin) == pytest.approx(4e-3)
    assert calls == ["between", "block"] * 4 * 4  # 4 micro-batches (1 warm-up), 4 blocks each
    assert measure_overhead_s(repeats=5, warmup=1, between=spin) < 0.02  # 4 x 20 ms spun, none counted
