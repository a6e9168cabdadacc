"""The ``torch.distributed`` transport: one role per process, point-to-point over gloo.

Wire format: a message is a fixed header, then the payload, both plain tensors; nothing
is pickled::

    header (int64, HEADER_LEN): [tag id, round, dtype code, ndim, dim0, ..., dim7]
    payload: the tensor itself, contiguous (skipped when it has no elements)

Tags are ``planner.schedule.TAGS``: a header naming another is refused on both ends.
The receiver learns the payload's shape and dtype from the header. One receiving thread
per peer posts ``dist.recv`` for the header, then for the payload, and hands the message
to the role's inbox (:class:`~trainer.transport.Transport` does the rest: rounds, stop,
tag checks, timeouts). A peer whose connection breaks surfaces as ``PeerLost`` on the
next ``recv`` from it. ``close()`` sends ``bye`` to every peer and waits for theirs, so
every receiving thread ends before the process group is destroyed.
"""

from __future__ import annotations

import threading
import time

import torch
import torch.distributed as dist

from planner.schedule import TAGS
from trainer.errors import ProtocolError
from trainer.transport import LOST, Envelope, LinkTable, Transport

MAX_DIMS = 8
HEADER_LEN = 4 + MAX_DIMS
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.uint8, torch.int8, torch.bool)


def encode_header(tensor: torch.Tensor, tag: str, epoch: int) -> torch.Tensor:
    if tag not in TAGS:
        raise ProtocolError(f"unknown tag {tag!r}; known: {', '.join(TAGS)}")
    if tensor.dtype not in DTYPES or tensor.dim() > MAX_DIMS:
        raise ProtocolError(f"cannot send a {tensor.dtype} tensor of {tensor.dim()} dims")
    dims = list(tensor.shape) + [0] * (MAX_DIMS - tensor.dim())
    return torch.tensor([TAGS.index(tag), epoch, DTYPES.index(tensor.dtype), tensor.dim(), *dims], dtype=torch.int64)


def decode_header(header: torch.Tensor) -> tuple[str, int, torch.dtype, tuple[int, ...]]:
    tag_id, epoch, dtype_id, ndim, *dims = header.tolist()
    if not (0 <= tag_id < len(TAGS) and 0 <= dtype_id < len(DTYPES) and 0 <= ndim <= MAX_DIMS):
        raise ProtocolError(f"malformed header {header.tolist()}")
    return TAGS[tag_id], epoch, DTYPES[dtype_id], tuple(dims[:ndim])


class DistTransport(Transport):
    """Messages between roles that live in different ranks; this process plays ``me``."""

    def __init__(self, me: str, ranks: dict[str, int], peers: list[str], *, links: LinkTable | None = None,
                 emulate: bool = False):
        super().__init__(links, emulate=emulate)
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
                tag, epoch, dtype, shape = decode_header(header)
                payload = torch.empty(shape, dtype=dtype)
                if payload.numel():
                    dist.recv(payload, src=rank)
            except Exception as e:  # noqa: BLE001 - handed to the role's next recv from src
                self._arrive(self.me, Envelope(src, LOST, 0, e))
                return
            if tag == "bye":
                return
            self._arrive(self.me, Envelope(src, tag, epoch, payload))

    def _put(self, dst: str, envelope: Envelope) -> None:
        rank = self.ranks[dst]
        dist.send(encode_header(envelope.payload, envelope.tag, envelope.epoch), dst=rank)
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
