"""Measuring the costs of SPEC §2.1's options on this host: stage overhead, cut codecs,
and the server's generator step. Like :mod:`planner.profile`, every number is seconds of
one whole GAN training step on this machine; a device with ``processing_time_factor``
``f`` takes ``f`` times as long (:mod:`planner.costs`).

Every time is CPU seconds of the measuring thread (``time.thread_time``, one torch
thread: :data:`planner.profile.PROFILE_THREADS`), as ``--emulate virtual`` charges a
device's work, so the host's other load does not count.

``overhead_s``: the fixed cost of holding a stage for one micro-batch, whatever its
layers compute. Measured as one micro-batch's whole step through a stage whose layer
does no work: a one-element tensor handed between two threads through ``queue.Queue``
(the local backend's transport), copied on receipt, through an identity layer with one
parameter, forward and backward, in both phases of the step (discriminator: activation
in, forward, activation out, gradient in, backward, gradient out; generator: the same),
so 4 hand-offs in and 4 out, 2 forward and 2 backward dispatches, each of its four
blocks timed after another stage's work (:func:`other_stage_work`), as the blocks of
emulated devices sharing a host follow one another. The median over repeats after a
warm-up. It leaves out what a real link adds per message (the latency
is in ``link_latency_s``) and what computing a micro-batch instead of a batch costs
beyond that (small tensors run less efficiently; not modelled).

``loss_s``: the last device's loss for one micro-batch of ``b`` samples, both phases: the
binary cross-entropy on ``2b`` logits (real and fake) and on ``b`` (fake), with its
backward, as ``trainer.roles.device`` computes it; the last layer's table carries it.

``accumulate_s``: adding a layer's gradients to those the micro-batches before left (a
step in ``M`` micro-batches accumulates ``M - 1`` times; one batch never does).

``codec_s``: per layer output and codec, encoding and decoding what one side of a cut
after that layer handles in a step: it sends 3 x batch (activations of both phases, or
their gradients) and receives 3 x batch, so one encode and one decode of a tensor of
3 x batch samples (:mod:`planner.codecs`); median of repeats, measured once per shape.

``generator_step_s``: the server's own step at the plan's batch size: the generator's
forward on a batch of noise, backward from a gradient on its images, and its Adam update
(train mode), median of repeats. The generator is the model's
(``planner.usermodel.generator_for``): the seed's DCGAN generator for the built-in
models, a user factory's own. ``fake_bytes``: one batch of its images.
"""

from __future__ import annotations

import math
import queue
import statistics
import threading
import time
from collections.abc import Callable

import torch

from planner.codecs import CODECS, decode, encode

OVERHEAD_REPEATS, OVERHEAD_WARMUP = 60, 10
CODEC_REPEATS = 3
GENERATOR_REPEATS = 3
Timed = Callable[[Callable[[], object]], float]  # runs a block of work, returns its seconds


def cpu_s(work: Callable[[], object]) -> float:
    """The block's CPU seconds on this thread (``time.thread_time``: other threads and
    programs on this host do not count; a device's emulated clock counts otherwise)."""
    t0 = time.thread_time()
    work()
    return time.thread_time() - t0


def other_stage_work() -> Callable[[], None]:
    """A block of another stage's work (a 64 -> 128 channel 5 x 5 convolution's forward and
    backward on 2 samples, ~2 ms here): on one host a device's block follows other devices'
    blocks, which leave this thread's caches and predictors cold for it."""
    conv = torch.nn.Conv2d(64, 128, 5, stride=2, padding=2)
    x = torch.randn(2, 64, 14, 14, generator=torch.Generator().manual_seed(0))

    def run() -> None:
        conv(x).sum().backward()
    return run


def _one_micro_batch(layer: torch.nn.Module, inbox: queue.Queue, outbox: queue.Queue, *, timed: Timed,
                     between: Callable[[], None]) -> float:
    """The seconds of one micro-batch's four blocks (``timed`` each), each after ``between``."""
    seconds = 0.0
    for _ in range(2):  # discriminator phase, generator phase
        held: dict[str, torch.Tensor] = {}

        def forward() -> None:
            held["x"] = inbox.get().clone().requires_grad_(True)
            held["y"] = layer(held["x"])
            outbox.put(held["y"].detach().clone())

        def backward() -> None:
            held["y"].backward(inbox.get().clone())
            outbox.put(held["x"].grad.detach().clone())

        for block in (forward, backward):
            between()
            seconds += timed(block)
    return seconds


def measure_overhead_s(*, timed: Timed = cpu_s, repeats: int = OVERHEAD_REPEATS,
                       warmup: int = OVERHEAD_WARMUP, between: Callable[[], None] | None = None) -> float:
    """Seconds of one micro-batch's step through a stage that computes nothing (above),
    each block timed by ``timed`` after another stage's work (``between``, by default
    :func:`other_stage_work`; untimed)."""
    between = between or other_stage_work()
    layer = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    to_stage, from_stage = queue.Queue(), queue.Queue()
    times: list[float] = []

    def peer() -> None:  # the neighbours: send, wait for the answer, send the gradient
        for _ in range(warmup + repeats):
            for _ in range(2):
                to_stage.put(torch.ones(1, 1))
                from_stage.get()
                to_stage.put(torch.ones(1, 1))
                from_stage.get()

    helper = threading.Thread(target=peer, daemon=True)
    helper.start()
    for r in range(warmup + repeats):
        seconds = _one_micro_batch(layer, to_stage, from_stage, timed=timed, between=between)
        if r >= warmup:
            times.append(seconds)
    helper.join()
    return statistics.median(times)


def measure_loss_s(batch_size: int, *, timed: Timed = cpu_s, repeats: int = 21) -> float:
    """Seconds of one micro-batch's loss of ``batch_size`` samples, both phases (above)."""
    def loss(rows: int, real: int) -> None:
        logits = torch.zeros(rows, 1, requires_grad=True)
        labels = torch.cat([torch.ones(real), torch.zeros(rows - real)])
        out = torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), labels, reduction="none")
        (out / batch_size).sum().backward()
        out[real:].detach().sum()

    return statistics.median(timed(lambda: (loss(2 * batch_size, batch_size), loss(batch_size, 0)))
                             for _ in range(repeats + 1))


def measure_accumulate_s(layer: torch.nn.Module, *, timed: Timed = cpu_s, repeats: int = 7) -> float:
    """Seconds of adding ``layer``'s gradients to accumulated ones, once (above)."""
    grads = [torch.ones_like(p) for p in layer.parameters() if p.requires_grad]
    if not grads:
        return 0.0
    new = [torch.ones_like(g) for g in grads]
    return statistics.median(timed(lambda: [g.add_(n) for g, n in zip(grads, new)]) for _ in range(repeats + 1))


def measure_codec_s(shape: tuple[int, ...], batch_size: int, *, timed: Timed = cpu_s) -> dict[str, float]:
    """Seconds per step one side of a cut spends on each codec for activations of
    ``shape`` per sample (above), each run timed by ``timed``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((3 * batch_size, *shape), generator=gen)
    out = {}
    for codec in CODECS:
        times = [timed(lambda: decode(encode(codec, x))) for _ in range(CODEC_REPEATS + 1)]
        out[codec] = statistics.median(times[1:])
    return out


def measure_generator_step(batch_size: int, generator: torch.nn.Module | None,
                           image_shape: tuple[int, ...]) -> tuple[float, int]:
    """``(generator_step_s, fake_bytes)`` at ``batch_size`` (above); a model without a
    generator (a user factory that returns none: profile and plan only) has a step of 0
    and ``fake_bytes`` of a batch of its input images."""
    if generator is None:
        return 0.0, 4 * batch_size * math.prod(image_shape)
    g = generator.train()
    opt = torch.optim.Adam(g.parameters(), lr=1e-12)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn((batch_size, g.z_dim), generator=gen)
    times = []
    for _ in range(GENERATOR_REPEATS + 1):
        t0 = time.thread_time()
        fake = g(z)
        fake.backward(torch.ones_like(fake))
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.thread_time() - t0)
    return statistics.median(times[1:]), fake.numel() * fake.element_size()
