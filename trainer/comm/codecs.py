"""Cut codecs on the wire: ``planner.codecs`` (what the planner timed) framed as one tensor.

A codec applies to everything crossing its cut, activations forward and gradients back;
the sender encodes, the receiver decodes to float32 and knows the tensor's shape (the
activation it expects, or the output whose gradient it awaits). ``fp16`` travels as the
half-precision tensor itself; ``int8`` as its bytes followed by the scale and the zero
point as two float32 (``INT8_SIDE_BYTES``), so one message holds everything.
"""

from __future__ import annotations

import torch

from planner.codecs import CODECS as LOSSY
from planner.codecs import Encoded, decode as planner_decode, encode as planner_encode

CODECS = ("none", *LOSSY)
INT8_SIDE_BYTES = 8  # scale and zero point, float32 each


def encode(x: torch.Tensor, codec: str) -> torch.Tensor:
    x = x.detach()
    if codec == "none":
        return x
    e = planner_encode(codec, x)
    if codec == "fp16":
        return e.payload
    side = torch.tensor([e.scale, float(e.zero_point)], dtype=torch.float32).view(torch.uint8)
    return torch.cat([e.payload.reshape(-1).view(torch.uint8), side])


def decode(payload: torch.Tensor, codec: str, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    if codec == "none":
        return payload
    if codec == "fp16":
        return planner_decode(Encoded(codec, payload.reshape(shape)))
    q, side = payload[:-INT8_SIDE_BYTES], payload[-INT8_SIDE_BYTES:].clone().view(torch.float32)
    return planner_decode(Encoded(codec, q.view(torch.int8).reshape(shape), float(side[0]), int(side[1])))


def encoded_bytes(n_values: int, codec: str) -> int:
    """Bytes on the wire for a float32 tensor of ``n_values`` values."""
    return {"none": 4 * n_values, "fp16": 2 * n_values, "int8": n_values + INT8_SIDE_BYTES}[codec]
