"""What crosses the network in one GAN training step: the message schedule, written once.

Nothing here imports torch. The plan's ``cut_bytes`` factor (``planner.costs``), the
trainer's roles and transports (a step's tags, how a link's latency is spread over its
messages; the trainer's own tags are ``trainer.comm.tags``) and every benchmark's expected bytes derive from it.

One step of a client whose discriminator runs on devices ``d0`` (holds the data) ->
``d1`` -> ... -> ``dk`` (computes the loss), batch ``B``; the server holds the generator::

    server              d0 (data)            cut          d1 ... dk (last)
      | fake = G(z)      |                                  |
      |--- fake (B) ---->| x = [real ; fake]                |
      |                  |--- act_d  (2B, forward) -------->| D loss
      |                  |<-- grad_d (2B, backward) --------| backward, Adam step
      |                  |--- act_g  (B, forward) --------->| G loss
      |                  |<-- grad_g (B, backward) ---------|
      |<- fake_grad (B) -|                                  |
      |<------------------------- losses [d_loss, g_loss] --|

Every cut carries the four ``CUT_MESSAGES``; with ``M`` micro-batches each is sent ``M``
times with ``B / M`` (or ``2B / M``) samples, so the bytes per step do not change.
Control messages (round start, reports, checkpoint state, aggregation) are not part of
a step and are neither planned nor delayed by link emulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod


@dataclass(frozen=True)
class Message:
    tag: str
    phase: str  # "d": discriminator phase (real and fake), "g": generator phase
    direction: str  # "forward" (towards the loss) or "backward"
    samples: int  # samples carried, in multiples of the batch size


CUT_MESSAGES = (
    Message("act_d", "d", "forward", 2),
    Message("grad_d", "d", "backward", 2),
    Message("act_g", "g", "forward", 1),
    Message("grad_g", "g", "backward", 1),
)
FAKE = Message("fake", "d", "forward", 1)  # server -> data device: generated images
FAKE_GRAD = Message("fake_grad", "g", "backward", 1)  # data device -> server: their gradient
LOSSES = "losses"  # last device -> server: [d_loss, g_loss], two float32 values
LOSS_VALUES = 2

SAMPLES_CROSSING_PER_STEP = sum(m.samples for m in CUT_MESSAGES)  # 6: x batch per cut and step
MESSAGES_PER_CUT_PER_MICRO_BATCH = len(CUT_MESSAGES)  # a link's latency is spread over these

PLANNED_TAGS = frozenset([m.tag for m in CUT_MESSAGES] + [FAKE.tag, FAKE_GRAD.tag, LOSSES])  # a step's messages


def cut_bytes_per_step(output_bytes: int) -> int:
    """Bytes crossing a cut in one step, given the layer's output for one batch (one way)."""
    return SAMPLES_CROSSING_PER_STEP * output_bytes


def bytes_per_step(stages: list[tuple[int, int]], cut_bytes: list[int], *, batch_size: int,
                   input_shape: list[int], float_bytes: int = 4) -> list[tuple[int, int]]:
    """(sent, received) bytes of each stage's device in one step, from the plan's tables
    alone. ``stages`` are ``(start, end)`` layer spans in chain order; a cut's ``cut_bytes``
    is split between the directions by the samples each message carries."""
    forward = sum(m.samples for m in CUT_MESSAGES if m.direction == "forward") / SAMPLES_CROSSING_PER_STEP
    image = batch_size * prod(input_shape) * float_bytes
    out = []
    for i, (start, end) in enumerate(stages):
        after = cut_bytes[end - 1] if i + 1 < len(stages) else 0  # activations out, gradients in
        before = cut_bytes[start - 1] if i > 0 else 0  # activations in, gradients out
        sent = round(after * forward) + round(before * (1 - forward))
        received = round(after * (1 - forward)) + round(before * forward)
        if i == 0:  # the fake images in, their gradient out
            sent, received = sent + FAKE_GRAD.samples * image, received + FAKE.samples * image
        if i + 1 == len(stages):
            sent += LOSS_VALUES * float_bytes
        out.append((sent, received))
    return out
