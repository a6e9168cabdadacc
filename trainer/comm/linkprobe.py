"""Measuring a link over the transport that training uses: bandwidth and latency.

Method (``fsl calibrate``): the prober sends a payload of ``s`` bytes, the echo answers
each with a 4-byte acknowledgement, and the prober times the exchange, send to ack::

    prober                              echo
      |--- probe (s bytes) ------------->|
      |<-- probe_ack (4 bytes) ----------|      T(s) = 2 c + s / bandwidth

where ``c`` is the fixed cost of one message (header and payload through gloo and both
processes' threads, and the network's one-way latency). First the size grows 4x from
``MIN_BYTES`` until one exchange takes ``TARGET_S`` (or ``MAX_BYTES``), so any link is
measured for about as long; then ``s_max / 8 .. s_max`` and a near-empty probe are
timed ``REPEATS`` times, interleaved, and a least-squares line through the per-size
medians gives ``bandwidth = 1 / slope`` and ``intercept = 2 c``. What the run is
charged (``planner.calibration``): a cut crossing per micro-batch sends four messages
(``planner.schedule``), so a link's ``latency_ms`` is ``4 c = 2 x intercept``; the server
exchange (fake images out, their gradient back) two, so a device's own ``latency_ms``
(its link to the server) is ``2 c = intercept``. A negative intercept (a queue's burst
allowance speeds small messages) counts as 0. Link emulation is off while probing: the
real network is measured.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from trainer.comm.transport import Transport

PROBE, ACK = "probe", "probe_ack"
MIN_BYTES = 64 * 1024
MAX_BYTES = 64 * 1024 * 1024
TARGET_S = 0.25  # the largest probe takes about this long
SMALL_BYTES = 1024  # the near-empty probe, anchoring the intercept
REPEATS = 3
WARMUP = 2


@dataclass(frozen=True)
class LinkFit:
    """A fitted link: ``seconds(s) = intercept_s + s / bytes_per_s``."""

    bytes_per_s: float
    intercept_s: float  # two messages' fixed cost (the probe and its ack)
    sizes: tuple[int, ...]  # probe sizes, bytes
    seconds: tuple[float, ...]  # median exchange time per size
    residual_s: float  # largest |fit - median| over the sizes

    @property
    def mbps(self) -> float:
        return self.bytes_per_s * 8 / 1e6


def fit_link(sizes: list[int], seconds: list[float]) -> LinkFit:
    """Least squares of ``seconds`` on ``sizes``; ValueError if the slope is not positive."""
    n = len(sizes)
    mx, my = sum(sizes) / n, sum(seconds) / n
    sxx = sum((x - mx) ** 2 for x in sizes)
    slope = sum((x - mx) * (y - my) for x, y in zip(sizes, seconds)) / sxx
    if slope <= 0:
        raise ValueError(f"exchange time does not grow with size ({list(zip(sizes, seconds))})")
    intercept = my - slope * mx
    residual = max(abs(intercept + slope * x - y) for x, y in zip(sizes, seconds))
    return LinkFit(1 / slope, max(intercept, 0.0), tuple(sizes), tuple(seconds), residual)


def _exchange(t: Transport, me: str, peer: str, payload: torch.Tensor, timeout_s: float) -> float:
    t0 = time.perf_counter()
    t.send(me, peer, payload, tag=PROBE)
    t.recv(me, peer, tag=ACK, timeout_s=timeout_s)
    return time.perf_counter() - t0


def probe(t: Transport, me: str, peer: str, *, timeout_s: float = 60.0) -> LinkFit:
    """Measure the link from ``me`` to ``peer`` (which runs :func:`echo`); ends the echo."""
    payloads: dict[int, torch.Tensor] = {}

    def payload(n: int) -> torch.Tensor:
        if n not in payloads:
            payloads[n] = torch.zeros(n, dtype=torch.uint8)
        return payloads[n]

    try:
        for _ in range(WARMUP):
            _exchange(t, me, peer, payload(MIN_BYTES), timeout_s)
        size = MIN_BYTES
        while size < MAX_BYTES and _exchange(t, me, peer, payload(size), timeout_s) < TARGET_S:
            size *= 4
        sizes = [SMALL_BYTES] + [size // k for k in (8, 4, 2, 1)]
        times: dict[int, list[float]] = {s: [] for s in sizes}
        for _ in range(REPEATS):
            for s in sizes:
                times[s].append(_exchange(t, me, peer, payload(s), timeout_s))
    finally:
        t.send(me, peer, torch.zeros(0, dtype=torch.uint8), tag=PROBE)  # the echo's end
    return fit_link(sizes, [statistics.median(times[s]) for s in sizes])


def echo(t: Transport, me: str, peer: str, *, timeout_s: float = 60.0) -> None:
    """Answer ``peer``'s probes until its empty one."""
    ack = torch.zeros(1, dtype=torch.float32)
    while True:
        x = t.recv(me, peer, tag=PROBE, timeout_s=timeout_s)
        if x.numel() == 0:
            return
        t.send(me, peer, ack, tag=ACK)
