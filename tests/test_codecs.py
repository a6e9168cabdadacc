"""Cut codecs: round-trip error within each format's bound; the bytes on the wire are
the encoded bytes, activations forward and gradients back (issue 12)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from planner.models import build_discriminator
from planner.schedule import CUT_MESSAGES
from tests.helpers import B, chain_plan, run
from trainer.comm.codecs import INT8_SIDE_BYTES, decode, encode, encoded_bytes


@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
def test_round_trip_error_is_within_the_format_bound(scale):
    x = torch.randn(4, 64, 7, 7, generator=torch.Generator().manual_seed(1)) * scale
    half = decode(encode(x, "fp16"), "fp16", x.shape)
    normal = x.abs() >= 2 ** -14
    assert ((half - x).abs() <= 2 ** -11 * x.abs())[normal].all()
    assert ((half - x).abs() <= 2 ** -25)[~normal].all()
    q = encode(x, "int8")
    assert q.dtype == torch.uint8 and q.numel() == x.numel() + INT8_SIDE_BYTES  # one message: bytes, scale, zero point
    step = (x.max() - x.min()) / 255
    err = (decode(q, "int8", x.shape) - x).abs()
    assert err.max() <= step * 0.5 + step * 1e-3 + 1e-6 * scale
    assert err.max() >= step * 0.2  # it does quantise: not a disguised float copy
    assert torch.equal(decode(encode(x, "none"), "none", x.shape), x)


def test_a_constant_tensor_survives_int8():
    x = torch.full((3, 5), 0.25)
    torch.testing.assert_close(decode(encode(x, "int8"), "int8", x.shape), x, atol=1e-6, rtol=0)


def _cut_message_bytes(per_sample: int, codec: str, m: int) -> tuple[int, int]:
    """(forward, backward) bytes across one cut in one step: every cut message M times,
    each encoded on its own."""
    out = {"forward": 0, "backward": 0}
    for msg in CUT_MESSAGES:
        out[msg.direction] += m * encoded_bytes(msg.samples * B // m * per_sample, codec)
    return out["forward"], out["backward"]


@pytest.mark.parametrize("codec, m", [("fp16", 1), ("int8", 2)])
def test_bytes_on_the_wire_are_the_encoded_bytes(tmp_path, codec, m):
    cuts = [2, 6]
    plan = chain_plan("dcgan", cuts, codecs={0: codec, 1: "none"}, micro_batches=m)
    (row,) = run(tmp_path, plan, rounds=1, steps_per_round=2)
    model = build_discriminator("dcgan")
    with torch.no_grad():
        x, sizes = torch.zeros(1, *model.input_shape), []
        for i in range(len(model)):
            x = model.run(x, i, i + 1)
            sizes.append(x.numel())
    fwd0, bwd0 = _cut_message_bytes(sizes[cuts[0]], codec, m)
    fwd1, bwd1 = _cut_message_bytes(sizes[cuts[1]], "none", m)
    image = B * math.prod(model.input_shape) * 4
    steps = row["clients"]["client0"]["steps"]
    sent = {d: v["bytes_sent"] / steps for d, v in row["devices"].items()}
    assert sent["c0-d0"] == fwd0 + image  # activations of cut 0, encoded, and the fakes' gradient
    assert sent["c0-d1"] == bwd0 + fwd1  # gradients back across cut 0, encoded; cut 1 as is
    assert sent["c0-d2"] == bwd1 + 8  # and the two losses
    assert fwd0 < 0.6 * 4 * 3 * B * sizes[cuts[0]]  # fewer bytes than float32 would need
    assert math.isfinite(row["g_loss"])
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert metrics["devices"]["c0-d0"]["codec_s"] > 0 and metrics["devices"]["c0-d2"]["codec_s"] == 0
