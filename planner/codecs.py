"""Cut codecs (SPEC §2.1 ``costs.codecs``): lossy encodings of what crosses a cut.

Each codec encodes a float32 tensor into a payload and decodes it back; the planner
times them (:mod:`planner.profile_options`) and the trainer applies them to everything
that crosses a cut that uses one, activations forward and gradients back.

- ``fp16``: a cast to IEEE half precision, 2 bytes per element (``bytes_ratio`` 0.5).
  Values beyond +-65504 become inf; relative error at most 2^-11 within range.
- ``int8``: affine quantisation with one scale and zero point **per tensor** (one
  message), 1 byte per element (``bytes_ratio`` 0.25): ``q = round(x / scale) + zp``
  clamped to [-128, 127] with ``scale = (max - min) / 255`` and ``zp`` chosen so that
  ``min`` maps to -128; the absolute error is at most ``scale / 2`` (a constant tensor
  round-trips exactly). The two float32
  parameters (8 bytes per message) are not in ``bytes_ratio``: for the smallest cut of
  the project's models (one 4096-value activation per sample, batch 64) they are 8 in
  1,048,576 bytes.

``bytes_ratio`` is encoded bytes / raw float32 bytes of the payload.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BYTES_RATIO = {"fp16": 0.5, "int8": 0.25}
CODECS = tuple(BYTES_RATIO)


@dataclass(frozen=True)
class Encoded:
    """A tensor as it crosses a cut."""

    codec: str
    payload: torch.Tensor  # float16 or int8, the input's shape
    scale: float = 1.0  # int8 only
    zero_point: int = 0  # int8 only


def encode(codec: str, x: torch.Tensor) -> Encoded:
    if codec == "fp16":
        return Encoded(codec, x.to(torch.float16))
    if codec == "int8":
        lo, hi = float(x.min()), float(x.max())
        scale = (hi - lo) / 255.0 if hi > lo else abs(lo) or 1.0  # a constant maps to -128 exactly
        zero_point = int(round(-128 - lo / scale))
        q = torch.clamp(torch.round(x / scale) + zero_point, -128, 127).to(torch.int8)
        return Encoded(codec, q, scale, zero_point)
    raise ValueError(f"unknown codec {codec!r}, expected one of {', '.join(CODECS)}")


def decode(e: Encoded) -> torch.Tensor:
    if e.codec == "fp16":
        return e.payload.to(torch.float32)
    if e.codec == "int8":
        return (e.payload.to(torch.float32) - e.zero_point) * e.scale
    raise ValueError(f"unknown codec {e.codec!r}, expected one of {', '.join(CODECS)}")


def round_trip(codec: str, x: torch.Tensor) -> torch.Tensor:
    """``decode(encode(codec, x))``: what the receiver sees."""
    return decode(encode(codec, x))
