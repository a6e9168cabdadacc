"""The ``torch.distributed`` transport: one role per process, point-to-point over gloo.

Wire format: a message is a fixed header, then the payload::

    header (int64, HEADER_LEN): [tag id, round, dtype code, ndim, dim0, ..., dim7, arrival ns]
    payload: the tensor itself, contiguous (skipped when it has no elements)

The header, the step messages (activations, gradients, fake images, losses), the control
values (``stop``, ``start``, ``round``, ``saved``, ``report``, ``weights``, ``bye``) and
``secagg``'s raw key bytes and ``probe`` payloads are plain tensors: raw numbers, nothing
to deserialize. Four tags carry a ``torch.save`` buffer (a pickle in a zip) as a uint8
tensor (``trainer.state.pack``): ``hello``, ``state`` (checkpoint state), ``trace`` and
``calib``. The receiver reads them only with ``torch.load(weights_only=True)``
(``trainer.state.unpack``), whose unpickler accepts tensors, numbers, strings, lists and
dicts and refuses any other object, so a peer cannot make it run code; their size is
bounded like every other message's. ``arrival ns`` is the message's virtual arrival under
``--emulate virtual`` (``trainer.transport``), in integer nanoseconds; 0 otherwise.

Tags are ``trainer.comm.tags.TAGS``: a header naming another is refused on both ends.
Before anything is allocated, the receiver checks each header against
``trainer.comm.protocol``: the sender may send that tag (``stop`` and plan switches only from
the server), in that dtype, and no more bytes than the plan allows for it. A header that
fails is a :class:`~trainer.errors.ProtocolViolation` naming the peer, and nothing more
is read from that peer (the stream's framing can no longer be trusted).

One receiving thread per peer posts ``dist.recv`` for the header, then for the payload,
and hands the message to the role's inbox (:class:`~trainer.comm.transport.Transport` does the
rest: rounds, stop, tag checks, timeouts). A peer whose connection breaks surfaces as
``PeerLost`` on the next ``recv`` from it. ``close()`` sends ``bye`` to every peer and
waits for theirs, so every receiving thread ends before the process group is destroyed.
"""

from __future__ import annotations

import threading
import time

import torch
import torch.distributed as dist

from trainer.comm.tags import TAGS
from trainer.comm import protocol
from trainer.errors import ProtocolError, ProtocolViolation
from trainer.comm.protocol import WireLimits
from trainer.comm.transport import LOST, REFUSED, Envelope, LinkTable, Transport

MAX_DIMS = 8
HEADER_LEN = 5 + MAX_DIMS
NS = 1e9  # the header's virtual time is in integer nanoseconds
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.uint8, torch.int8, torch.bool)


def encode_header(tensor: torch.Tensor, tag: str, epoch: int, at_s: float = 0.0) -> torch.Tensor:
    if tag not in TAGS:
        raise ProtocolError(f"unknown tag {tag!r}; known: {', '.join(TAGS)}")
    if tensor.dtype not in DTYPES or tensor.dim() > MAX_DIMS:
        raise ProtocolError(f"cannot send a {tensor.dtype} tensor of {tensor.dim()} dims")
    dims = list(tensor.shape) + [0] * (MAX_DIMS - tensor.dim())
    return torch.tensor([TAGS.index(tag), epoch, DTYPES.index(tensor.dtype), tensor.dim(), *dims, round(at_s * NS)],
                        dtype=torch.int64)


def decode_header(header: torch.Tensor) -> tuple[str, int, torch.dtype, tuple[int, ...]]:
    tag_id, epoch, dtype_id, ndim, *dims = header.tolist()[:HEADER_LEN - 1]
    if not (0 <= tag_id < len(TAGS) and 0 <= dtype_id < len(DTYPES) and 0 <= ndim <= MAX_DIMS):
        raise ProtocolError(f"malformed header {header.tolist()}")
    return TAGS[tag_id], epoch, DTYPES[dtype_id], tuple(dims[:ndim])


class DistTransport(Transport):
    """Messages between roles that live in different ranks; this process plays ``me``."""

    def __init__(self, me: str, ranks: dict[str, int], peers: list[str], *, links: LinkTable | None = None,
                 emulate: bool = False, limits: WireLimits | None = None, virtual: bool = False):
        super().__init__(links, emulate=emulate, limits=limits or WireLimits(), virtual=virtual)
        self.me, self.ranks, self.peers = me, ranks, list(peers)
        self._threads = [threading.Thread(target=self._receive, args=(p,), name=f"recv-{p}", daemon=True)
                         for p in self.peers]
        for th in self._threads:
            th.start()

    def _receive(self, src: str) -> None:
        rank = self.ranks[src]
        while True:
            try:
                header = torch.empty(HEADER_LEN, dtype=torch.int64)
                dist.recv(header, src=rank)
                tag, epoch, dtype, shape = self.admit(src, header)
                payload = torch.empty(shape, dtype=dtype)
                if payload.numel():
                    dist.recv(payload, src=rank)
            except ProtocolViolation as e:  # refused before allocating: the role fails at once
                self._arrive(self.me, Envelope(src, REFUSED, 0, e))
                return
            except Exception as e:  # noqa: BLE001 - handed to the role's next recv from src
                self._arrive(self.me, Envelope(src, LOST, 0, e))
                return
            if tag == "bye":
                return
            self._arrive(self.me, Envelope(src, tag, epoch, payload, int(header[-1]) / NS))

    def admit(self, src: str, header: torch.Tensor) -> tuple[str, int, torch.dtype, tuple[int, ...]]:
        """The header's fields, if ``src`` may send that message (``trainer.comm.protocol``);
        else :class:`ProtocolViolation` naming ``src``."""
        try:
            tag, epoch, dtype, shape = decode_header(header)
        except ProtocolError as e:
            raise ProtocolViolation(self.me, src, str(e)) from None
        protocol.check(self.limits, self.me, src, tag, dtype, shape)
        return tag, epoch, dtype, shape

    def _put(self, dst: str, envelope: Envelope) -> None:
        rank = self.ranks[dst]
        dist.send(encode_header(envelope.payload, envelope.tag, envelope.epoch, envelope.at_s), dst=rank)
        if envelope.payload.numel():
            dist.send(envelope.payload, dst=rank)

    def close(self, timeout_s: float) -> None:
        """Say ``bye`` to every peer, then wait (bounded) until each peer has said it. The
        run's work is done by then: a peer already gone is no failure."""
        deadline = time.monotonic() + timeout_s
        for p in self.peers:
            try:
                self.send(self.me, p, torch.zeros(0), tag="bye")
            except RuntimeError:  # gloo: the peer closed its side first
                continue
        super().close(max(0.0, deadline - time.monotonic()))  # what the emulated links still carry
        for th in self._threads:
            th.join(max(0.0, deadline - time.monotonic()))
