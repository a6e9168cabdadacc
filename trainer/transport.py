"""Moving tensors between roles: one small interface, an in-process implementation.

Roles are named by strings: ``"server"`` or a device name from the plan. A message is
one tensor with a tag (``act_d``, ``grad_d``, ``act_g``, ``grad_g``, ``fake``,
``fake_grad``, ``losses``, ``stop``...). Every transport records each message's
bytes and seconds in :class:`TransferLog`, so metrics report what actually crossed.

Link emulation (``emulate="sleep"``): a message between two devices of a client takes
``bytes / link_bytes_per_s + latency / 4`` seconds, from the plan's own tables. SPEC §2
charges a link's latency once per cut per step; four messages cross a cut in a step
(activation and gradient, in each of the two phases), so each carries a quarter of it.
Messages to and from the server are not part of the plan and are not delayed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

SERVER = "server"
MESSAGES_PER_CUT_PER_STEP = 4


class StopRound(Exception):
    """Raised by ``recv`` when the peer sent ``stop``: the round is over for this role."""


LOST = "__lost__"  # queued by a receiver whose connection broke; the payload is the error


class PeerLost(RuntimeError):
    """The connection to a peer broke (its process died)."""

    def __init__(self, dst: str, src: str, cause: BaseException):
        self.src, self.dst = src, dst
        super().__init__(f"{dst} lost its connection to {src} ({type(cause).__name__}: {str(cause)[:160]})")


class PeerTimeout(Exception):
    """A ``recv`` waited longer than its timeout."""

    def __init__(self, dst: str, src: str, tag: str, timeout_s: float):
        self.src, self.dst, self.tag = src, dst, tag
        super().__init__(f"{dst} waited {timeout_s:.0f} s for {tag!r} from {src}")


@dataclass
class LinkTable:
    """Bandwidth (bytes/s) and latency (s) between named devices, from a plan."""

    bytes_per_s: dict[tuple[str, str], float] = field(default_factory=dict)
    latency_s: dict[tuple[str, str], float] = field(default_factory=dict)

    def delay_s(self, src: str, dst: str, nbytes: int) -> float:
        key = (src, dst)
        if key not in self.bytes_per_s:
            return 0.0
        return nbytes / self.bytes_per_s[key] + self.latency_s[key] / MESSAGES_PER_CUT_PER_STEP

    @classmethod
    def from_plan(cls, plan) -> "LinkTable":
        table = cls()
        for c in plan.planned:
            p = c.costs
            for a, da in enumerate(p.devices):
                for b, db in enumerate(p.devices):
                    if a != b:
                        table.bytes_per_s[(da, db)] = p.link_bytes_per_s[a][b]
                        table.latency_s[(da, db)] = p.link_latency_s[a][b]
        return table


@dataclass
class TransferLog:
    """Bytes and seconds per role, sent and received; thread-safe."""

    bytes_sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes_received: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    send_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    recv_wait_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    messages: list[tuple[str, str, str, int]] | None = None  # (src, dst, tag, bytes) if kept
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_send(self, src: str, dst: str, tag: str, nbytes: int, seconds: float) -> None:
        with self.lock:
            self.bytes_sent[src] += nbytes
            self.send_s[src] += seconds
            if self.messages is not None:
                self.messages.append((src, dst, tag, nbytes))

    def record_recv(self, dst: str, nbytes: int, seconds: float) -> None:
        with self.lock:
            self.bytes_received[dst] += nbytes
            self.recv_wait_s[dst] += seconds

    def reset(self) -> None:
        with self.lock:
            for d in (self.bytes_sent, self.bytes_received, self.send_s, self.recv_wait_s):
                d.clear()


def paced_sleep(seconds: float, debt: float) -> float:
    """Sleep ``seconds`` less what earlier sleeps overslept (``debt``); returns the new debt.

    ``time.sleep`` wakes late (the scheduler, the GIL), by ~0.1-1 ms a call; over the
    dozens of sleeps of one emulated step that drift would add up, so each sleep pays
    back what the one before overslept.
    """
    want = max(seconds, 0.0) - debt
    if want <= 0:
        return -want
    t0 = time.perf_counter()
    time.sleep(want)
    return max(time.perf_counter() - t0 - want, 0.0)


class Transport:
    """Point-to-point tensors between named roles.

    ``send`` and ``recv`` are written once here: timing, link emulation, the transfer
    log, ``stop`` and tag checks. An implementation moves the bytes: ``_put`` hands a
    payload towards ``dst``; ``_inbox(dst, src)`` is the FIFO queue of ``(tag, payload)``
    that arrived at ``dst`` from ``src``.
    """

    log: TransferLog
    links: LinkTable
    emulate: bool

    def __init__(self, links: LinkTable | None = None, *, emulate: bool = False, log: TransferLog | None = None):
        self.links = links or LinkTable()
        self.emulate = emulate
        self.log = log or TransferLog()
        self._sleep_debt: dict[str, float] = defaultdict(float)  # per sender, see paced_sleep

    def _put(self, src: str, dst: str, tag: str, payload: torch.Tensor) -> None:
        raise NotImplementedError

    def _inbox(self, dst: str, src: str) -> queue.Queue:
        raise NotImplementedError

    def _prepare(self, tensor: torch.Tensor) -> torch.Tensor:
        """The payload to hand over (a private copy where the receiver shares memory)."""
        return tensor.detach().contiguous()

    def send(self, src: str, dst: str, tensor: torch.Tensor, *, tag: str) -> None:
        t0 = time.perf_counter()
        payload = self._prepare(tensor)
        n = nbytes(payload)
        if self.emulate:
            self._sleep_debt[src] = paced_sleep(self.links.delay_s(src, dst, n), self._sleep_debt[src])
        self._put(src, dst, tag, payload)
        self.log.record_send(src, dst, tag, n, time.perf_counter() - t0)

    def recv(self, dst: str, src: str, *, tag: str, timeout_s: float | None = None) -> torch.Tensor:
        """The next tensor from ``src``; raises StopRound on ``stop``, PeerTimeout on timeout."""
        t0 = time.perf_counter()
        inbox = self._inbox(dst, src)
        try:
            got, payload = inbox.get(timeout=timeout_s)
        except queue.Empty:
            raise PeerTimeout(dst, src, tag, timeout_s or 0.0) from None
        if got == LOST:
            inbox.put((got, payload))  # every later recv fails the same way
            raise PeerLost(dst, src, payload)
        self.log.record_recv(dst, nbytes(payload), time.perf_counter() - t0)
        if got == "stop":
            raise StopRound(src)
        if got != tag:
            raise RuntimeError(f"{dst} expected {tag!r} from {src}, got {got!r}")
        return payload


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class InProcessTransport(Transport):
    """Roles are threads of one process; each (src, dst) pair is a FIFO queue."""

    def __init__(self, links: LinkTable | None = None, *, emulate: bool = False, keep_messages: bool = False):
        super().__init__(links, emulate=emulate, log=TransferLog(messages=[] if keep_messages else None))
        self._queues: dict[tuple[str, str], queue.Queue] = defaultdict(queue.Queue)
        self._lock = threading.Lock()

    def _inbox(self, dst: str, src: str) -> queue.Queue:
        with self._lock:
            return self._queues[(src, dst)]

    def _prepare(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().clone()  # the receiver is another thread: never share storage

    def _put(self, src: str, dst: str, tag: str, payload: torch.Tensor) -> None:
        self._inbox(dst, src).put((tag, payload))
