"""Moving tensors between roles: one interface, written once; implementations move bytes.

Roles are named by strings: ``"server"`` or a device name from the plan. A message is one
tensor with a tag from ``trainer.comm.tags.TAGS`` and the round (``epoch``) it belongs to.
Each role has one inbox; ``recv(dst, src, tag)`` takes the next message from ``src``,
keeping others aside for later, so a ``stop`` from the server reaches a device whatever
peer it is waiting for.

- **Rounds.** ``begin_round(role, r)`` moves a role to round ``r``; a message of an earlier
  round is late (its client was dropped) and is discarded on arrival.
- **Stop.** The server drops a late client by sending ``stop`` to its devices. A ``recv``
  inside the steps (``stoppable=True``) then raises :class:`StopRound`; outside them it is
  ignored (the steps were over anyway), and step messages a stopped role still finds are
  discarded (``late_ok``).
- **Tags.** Every tag is checked on send; a ``recv`` that finds another tag raises ``ProtocolError``.
- **Link emulation** (``emulate=True``): step messages between two devices take the
  time the plan says their link takes (``trainer.comm.links``).
- **Virtual time** (``virtual=True``): each role's clock is attached (:meth:`attach`); a message
  carries its virtual arrival (``trainer.comm.links.VirtualLinks``), its receiver's clock moves there.
- **Who may send what.** Every message is checked against ``trainer.comm.protocol``: its sender
  (``stop`` and plan switches only from the server), and over the wire its dtype and size,
  before anything is allocated; a violation is a ``ProtocolViolation`` naming the peer.
- **Log.** :class:`TransferLog` counts each role's bytes and waits, step and control
  messages apart, so metrics report what actually crossed; ``trainer.comm.msgtrace``
  records every message when ``FSL_MESSAGE_TRACE`` names a folder (``trainer.comm.sequence``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

import torch

from trainer.comm.tags import STEP_TAGS, TAGS, UNPLANNED_STEP_TAGS
from trainer.comm import msgtrace, protocol
from trainer.errors import PeerLost, PeerTimeout, ProtocolError, ProtocolViolation, RunAborted, StopRound
from trainer.comm.links import EmulatedLink, LinkTable, VirtualLinks
from trainer.comm.protocol import SERVER, WireLimits  # noqa: F401 - SERVER: every role imports it from here

LOST = "__lost__"  # a broken connection; the payload is the error
ABORT = "__abort__"  # the run is being torn down; every recv raises RunAborted
REFUSED = "__refused__"  # a peer broke the protocol; the payload is the ProtocolViolation
URGENT = ("stop", ABORT, REFUSED)  # reach a role whatever peer it waits for


@dataclass(frozen=True)
class Envelope:
    src: str
    tag: str
    epoch: int
    payload: object  # a tensor, or the error of LOST / ABORT
    at_s: float = 0.0  # --emulate virtual: when it arrives, in the emulated world's seconds


def _counter() -> defaultdict:
    return defaultdict(int)


@dataclass
class TransferLog:
    """Bytes and seconds per role, sent and received; thread-safe. ``bytes_*`` count a
    step's messages (what the plan predicts), ``control_bytes_*`` everything else."""

    bytes_sent: dict[str, int] = field(default_factory=_counter)
    bytes_received: dict[str, int] = field(default_factory=_counter)
    control_bytes_sent: dict[str, int] = field(default_factory=_counter)
    control_bytes_received: dict[str, int] = field(default_factory=_counter)
    recv_wait_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    discarded: dict[str, int] = field(default_factory=_counter)  # late messages dropped on arrival
    messages: list[tuple[str, str, str, int]] | None = None  # (src, dst, tag, bytes) if kept
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_send(self, src: str, dst: str, tag: str, nbytes: int) -> None:
        with self.lock:
            (self.bytes_sent if tag in STEP_TAGS else self.control_bytes_sent)[src] += nbytes
            if self.messages is not None:
                self.messages.append((src, dst, tag, nbytes))

    def record_recv(self, dst: str, tag: str, nbytes: int, seconds: float) -> None:
        with self.lock:
            (self.bytes_received if tag in STEP_TAGS else self.control_bytes_received)[dst] += nbytes
            self.recv_wait_s[dst] += seconds

    def reset(self, role: str) -> None:
        """Start counting ``role``'s round afresh."""
        with self.lock:
            for d in (self.bytes_sent, self.bytes_received, self.control_bytes_sent,
                      self.control_bytes_received, self.recv_wait_s, self.discarded):
                d.pop(role, None)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Transport:
    """Point-to-point tensors between named roles (see the module docstring).

    An implementation moves bytes: ``_put(dst, envelope)`` hands a message towards
    ``dst``, whose arrival ends in :meth:`_arrive`.
    """

    def __init__(self, links: LinkTable | None = None, *, emulate: bool = False, log: TransferLog | None = None,
                 limits: WireLimits | None = None, virtual: bool = False):
        self.links = links or LinkTable()
        self.virtual = virtual
        self._clocks: dict = {}  # role -> its trainer.roles.clock.Clock (virtual time)
        self._virtual_links = VirtualLinks(self.links)
        self.limits = limits  # the plan's bounds on what a peer may send (None: senders only)
        self.emulate = emulate
        self.log = log or TransferLog()
        self._inbox: dict[str, queue.Queue] = defaultdict(queue.Queue)
        self._aside: dict[tuple[str, str], deque] = defaultdict(deque)  # (dst, src): taken, not yet wanted
        self._epoch: dict[str, int] = defaultdict(int)
        self._stopped: dict[str, int] = {}  # role -> epoch it was stopped in
        self._aborted: dict[str, str] = {}  # role -> why the run is being torn down
        self._links: dict[tuple[str, str], EmulatedLink] = {}  # under emulation, per (src, dst)
        self._lock = threading.Lock()

    # -- what an implementation provides
    def _put(self, dst: str, envelope: Envelope) -> None:
        raise NotImplementedError

    def _prepare(self, tensor: torch.Tensor) -> torch.Tensor:
        """The payload to hand over (a private copy where the receiver shares memory)."""
        return tensor.detach().contiguous()

    def _arrive(self, dst: str, envelope: Envelope) -> None:
        """Hand ``envelope`` to ``dst``'s inbox, or, if its sender may not send it (see
        ``trainer.comm.protocol``), the violation in its place."""
        if envelope.tag not in (LOST, ABORT, REFUSED):
            try:
                p = envelope.payload
                protocol.check(self.limits, dst, envelope.src, envelope.tag, p.dtype, tuple(p.shape))
            except ProtocolViolation as e:
                envelope = Envelope(envelope.src, REFUSED, 0, e)
        with self._lock:
            box = self._inbox[dst]
        box.put(envelope)

    # -- the interface
    def attach(self, role: str, clock) -> None:
        """Under ``virtual``: ``role``'s messages leave at ``clock.now_s``, and ``clock`` moves
        to the arrival of each it receives."""
        self._clocks[role] = clock

    def begin_round(self, role: str, epoch: int) -> None:
        self._epoch[role] = epoch
        self.log.reset(role)

    def epoch(self, role: str) -> int:
        return self._epoch[role]

    def stopped(self, role: str) -> bool:
        """Whether ``role`` was stopped in its current round."""
        return self._stopped.get(role) == self._epoch[role]

    def send(self, src: str, dst: str, tensor: torch.Tensor, *, tag: str) -> tuple[float, float]:
        """Send ``tensor`` to ``dst``; returns when its transfer started and ends
        (perf_counter; under emulation the end may lie ahead: the link carries it)."""
        if tag not in TAGS:
            raise ProtocolError(f"{src} sends unknown tag {tag!r}; known: {', '.join(TAGS)}")
        payload = self._prepare(tensor)
        n = nbytes(payload)
        envelope = Envelope(src, tag, self._epoch[src], payload)
        msgtrace.record(src, dst, tag, envelope.epoch, payload)
        if self.virtual:
            clock = self._clocks.get(src)
            span = self._virtual_links.carry(src, dst, clock.now_s if clock else 0.0, n, step=tag in STEP_TAGS)
            self._put(dst, Envelope(src, tag, envelope.epoch, payload, span[1]))
        elif self.emulate:
            delay = self.links.delay_s(src, dst, n) if tag in STEP_TAGS else 0.0
            span = self._link(src, dst).carry(dst, envelope, delay)
        else:
            t0 = time.perf_counter()
            self._put(dst, envelope)
            span = (t0, time.perf_counter())
        self.log.record_send(src, dst, tag, n)
        return span

    def _link(self, src: str, dst: str) -> EmulatedLink:
        with self._lock:
            if (src, dst) not in self._links:
                self._links[(src, dst)] = EmulatedLink(self._put, f"link-{src}-{dst}")
            return self._links[(src, dst)]

    def drain_links(self, timeout_s: float) -> None:
        """Wait (bounded) until the emulated links have handed on everything sent."""
        deadline = time.monotonic() + timeout_s
        for link in list(self._links.values()):
            link.drain(max(0.0, deadline - time.monotonic()))

    def recv(self, dst: str, src: str, *, tag: str, timeout_s: float | None = None, stoppable: bool = False,
             late_ok: bool = False) -> torch.Tensor:
        """The next tensor tagged ``tag`` from ``src``; raises StopRound (``stoppable``),
        PeerTimeout after ``timeout_s``, PeerLost, RunAborted or ProtocolError."""
        return self.recv_any(dst, ((src, tag),), timeout_s=timeout_s, stoppable=stoppable, late_ok=late_ok)[0]

    def recv_any(self, dst: str, wanted: tuple[tuple[str, str], ...], *, timeout_s: float | None = None,
                 stoppable: bool = False, late_ok: bool = False) -> tuple[torch.Tensor, str]:
        """The next tensor from any ``(src, tag)`` of ``wanted``, as :meth:`recv`; where
        several have arrived, the earliest in ``wanted``. Returns ``(tensor, src)``."""
        t0 = time.perf_counter()
        deadline = None if timeout_s is None else t0 + timeout_s
        tags = dict(wanted)
        if stoppable and self.stopped(dst):  # stopped before this round's work began (see "stop" below)
            raise StopRound(SERVER)
        while True:
            if dst in self._aborted:
                raise RunAborted(self._aborted[dst])
            env = self._next(dst, tuple(tags), deadline, wanted[0][1], timeout_s)
            if env.tag == ABORT:
                self._aborted[dst] = str(env.payload)
                continue
            if env.tag == REFUSED:
                raise env.payload
            if env.tag == LOST:
                self._aside[(dst, env.src)].appendleft(env)  # every later recv fails the same way
                raise PeerLost(dst, env.src, env.payload)
            step_only = STEP_TAGS | UNPLANNED_STEP_TAGS
            if env.epoch < self._epoch[dst] or (env.tag in step_only and late_ok and tags[env.src] not in step_only):
                with self.log.lock:
                    self.log.discarded[dst] += 1
                continue
            if env.tag == "stop":  # kept even when it comes before the round it ends has begun here
                if self._stopped.get(dst, -1) < env.epoch:
                    self._stopped[dst] = env.epoch
                    if stoppable and env.epoch == self._epoch[dst]:
                        raise StopRound(env.src)
                continue
            if env.tag != tags[env.src]:
                raise ProtocolError(f"{dst} expected {tags[env.src]!r} from {env.src}, got {env.tag!r} "
                                    f"(round {env.epoch})")
            self.log.record_recv(dst, env.tag, nbytes(env.payload), self._arrived(dst, env, t0))
            return env.payload, env.src

    def _arrived(self, dst: str, env: Envelope, t0: float) -> float:
        """How long ``dst`` waited for ``env``: virtual, its clock moves to the arrival."""
        clock = self._clocks.get(dst) if self.virtual else None
        if clock is None:
            return time.perf_counter() - t0
        waited = max(env.at_s - clock.now_s, 0.0)
        clock.now_s += waited
        return waited

    def _next(self, dst: str, srcs: tuple[str, ...], deadline: float | None, tag: str,
              timeout_s: float | None) -> Envelope:
        """The next envelope from any of ``srcs``, or an ``URGENT`` one from anyone.
        What has arrived goes aside per sender first, so among it the first of ``srcs``
        with a message wins."""
        with self._lock:
            box = self._inbox[dst]
        while True:
            try:
                env = box.get_nowait()
            except queue.Empty:
                ready = next((src for src in srcs if self._aside[(dst, src)]), None)
                if ready is not None:
                    return self._aside[(dst, ready)].popleft()
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    raise PeerTimeout(dst, srcs[0], tag, timeout_s or 0.0) from None
                try:
                    env = box.get(timeout=left)
                except queue.Empty:
                    raise PeerTimeout(dst, srcs[0], tag, timeout_s or 0.0) from None
            if env.tag in URGENT:
                return env
            self._aside[(dst, env.src)].append(env)

    def abort(self, roles, reason: str) -> None:
        """Wake every role in ``roles``: their next (or current) ``recv`` raises RunAborted."""
        for r in roles:
            self._arrive(r, Envelope("?", ABORT, 0, reason))

    def close(self, timeout_s: float) -> None:
        """Release what the implementation holds (threads, connections)."""
        self.drain_links(timeout_s)
        for link in self._links.values():
            link.stop()


class InProcessTransport(Transport):
    """Roles are threads of one process; a message is put straight into the inbox."""

    def __init__(self, links: LinkTable | None = None, *, emulate: bool = False, keep_messages: bool = False,
                 limits: WireLimits | None = None, virtual: bool = False):
        super().__init__(links, emulate=emulate, log=TransferLog(messages=[] if keep_messages else None),
                         limits=limits, virtual=virtual)

    def _prepare(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().clone()  # the receiver is another thread: never share storage

    def _put(self, dst: str, envelope: Envelope) -> None:
        self._arrive(dst, envelope)
