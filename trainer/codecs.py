"""What crosses a cut, encoded: the codecs a plan may put on a cut (SPEC §2.1 ``codec``).

A codec applies to everything crossing its cut: the activations forward and their
gradients back. The sender encodes, the receiver decodes to float32; the receiver knows
the tensor's shape (the activation it expects, or the output whose gradient it awaits).

- ``none``: the float32 tensor itself.
- ``fp16``: cast to IEEE half precision (2 bytes a value). Values beyond +-65504
  overflow to inf; activations and gradients of a normalised network are far below.
  Round-trip error: at most 2^-11 relative (half the spacing of 11-bit mantissas) for
  normal numbers, at most 2^-25 absolute below 2^-14.
- ``int8``: asymmetric affine quantisation per tensor (one scale and zero point per
  message, as PyTorch's ``quantize_per_tensor`` with ``quint8``): ``q = round(x / s) + z``
  clipped to 0..255, ``s = (max - min) / 255``, ``z = round(-min / s)``; the payload is the
  255 levels as bytes, then ``s`` and ``z`` as two float32 (8 bytes). Round-trip error:
  at most ``s / 2`` (half a step), plus the clipping of ``z``'s rounding at the ends.
"""

from __future__ import annotations

import torch

CODECS = ("none", "fp16", "int8")
INT8_SIDE_BYTES = 8  # scale and zero point, float32 each


def encode(x: torch.Tensor, codec: str) -> torch.Tensor:
    x = x.detach()
    if codec == "none":
        return x
    if codec == "fp16":
        return x.to(torch.float16)
    if codec == "int8":
        lo, hi = x.min(), x.max()
        scale = torch.clamp((hi - lo) / 255.0, min=torch.finfo(torch.float32).tiny)
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(x / scale) + zero, 0, 255).to(torch.uint8)
        side = torch.stack([scale, zero]).to(torch.float32).view(torch.uint8)
        return torch.cat([q.reshape(-1), side])
    raise ValueError(f"unknown codec {codec!r}, expected one of {', '.join(CODECS)}")


def decode(payload: torch.Tensor, codec: str, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    if codec == "none":
        return payload
    if codec == "fp16":
        return payload.to(torch.float32).reshape(shape)
    if codec == "int8":
        q, side = payload[:-INT8_SIDE_BYTES], payload[-INT8_SIDE_BYTES:].clone().view(torch.float32)
        scale, zero = side[0], side[1]
        return ((q.to(torch.float32) - zero) * scale).reshape(shape)
    raise ValueError(f"unknown codec {codec!r}, expected one of {', '.join(CODECS)}")


def encoded_bytes(n_values: int, codec: str) -> int:
    """Bytes on the wire for a float32 tensor of ``n_values`` values."""
    return {"none": 4 * n_values, "fp16": 2 * n_values, "int8": n_values + INT8_SIDE_BYTES}[codec]
