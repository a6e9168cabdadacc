"""The server's side of one round of secure aggregation (``trainer.aggregate.secagg``), dropped
devices included.

1. Every device's masked segment is awaited (``timeout_s`` for all). A client dropped by
   ``--deadline-s`` sends it after its steps end: it arrives and is summed with the rest,
   so the round's average is fedavg over all clients, as without ``--secure-agg``. A
   device whose segment does not arrive (timeout, lost connection) is *missing*.
2. Every data device whose segment arrived is asked for its shares: of each delivered
   device's self mask, of each missing device's mask key (``timeout_s`` for all; a
   device waits up to ``3 x timeout_s`` for its answer, ``trainer.aggregate.secagg``).
3. Each missing device's mask private key is rebuilt from ``t`` shares (Lagrange at 0)
   and checked against its public key; its pairwise masks with every delivered device
   are derived and taken off the sum, as is every delivered device's self mask, so the
   sum holds the delivered segments only. The average of a coordinate is over the
   clients that delivered it: a whole missing client gives fedavg over the others.
4. The round's aggregation is skipped instead (every device keeps its weights; the
   reason goes to ``metrics.jsonl`` as ``aggregation_skipped``) when a coordinate was
   delivered by fewer than 2 clients (the average would be one client's weights) or
   fewer than ``t`` shares of a missing key or a self mask came back.
5. The next round's keys are set up with the devices that delivered (``ServerRing``).

The server never holds a delivered device's key. It holds a missing device's key of this
round only, whose segment never arrived; one arriving later is never read: the round's
next message from that device is expected to be its report, so ``fsl train`` stops there
as for any failed device.
"""

from __future__ import annotations

import time

import torch

from dataclasses import dataclass

from planner.errors import InputError
from trainer.roles.build import RunSpec
from trainer.errors import PeerLost, PeerTimeout
from trainer.aggregate.secagg import (DELIVERED, KEY_BYTES, MISSING, MOD, TAG, Layout, decode, mask_stream, public_bytes,
                            shared_key)
from trainer.aggregate.secagg_shares import SEALED_BYTES, SHARE_BYTES, int_to_key, reconstruct, threshold
from trainer.comm.transport import SERVER, Transport


@dataclass(frozen=True)
class ServerKeys:
    """What the server keeps from one key setup: the layout, every device's public mask
    key (zeros: left out; to check a rebuilt private key and derive its masks) and each
    client's weight."""

    layout: Layout
    mask_publics: tuple[bytes, ...]
    weights: tuple[float, ...]

    @property
    def threshold(self) -> int:
        return threshold(len(self.weights))

    def present(self) -> list[str]:
        return [d for d, key in zip(self.layout.devices, self.mask_publics) if any(key)]


def _setup(spec: RunSpec, t: Transport, weights: tuple[float, ...], present: list[str], *, timeout_s: float,
           late: set[str]) -> ServerKeys:
    """The server's part of one key setup (``secagg.KeyRing``) with the ``present``
    devices: relay every public key to all, with each client's weight, then the sealed
    shares to their holders."""
    lay = Layout.of(spec)
    n = len(weights)
    keys = {d: t.recv(SERVER, d, tag=TAG, timeout_s=timeout_s, late_ok=d in late) for d in present}
    for d, key in keys.items():
        if key.dtype != torch.uint8 or key.numel() != 2 * KEY_BYTES:
            raise ValueError(f"{d} sent public keys of {key.numel()} {key.dtype} values, "
                             f"expected {2 * KEY_BYTES} bytes")
    table = torch.stack([keys.get(d, torch.zeros(2 * KEY_BYTES, dtype=torch.uint8)) for d in lay.devices])
    for d in present:
        t.send(SERVER, d, table, tag=TAG)
        t.send(SERVER, d, torch.tensor(weights, dtype=torch.float64), tag=TAG)
    sealed = {d: t.recv(SERVER, d, tag=TAG, timeout_s=timeout_s, late_ok=d in late) for d in present}
    for d, s in sealed.items():
        if s.dtype != torch.uint8 or tuple(s.shape) != (n, 2 * SEALED_BYTES):
            raise ValueError(f"{d} sent sealed shares of shape {tuple(s.shape)} {s.dtype}, "
                             f"expected ({n}, {2 * SEALED_BYTES})")
    none = torch.zeros(2 * SEALED_BYTES, dtype=torch.uint8)
    for j, head in enumerate(lay.heads):
        if head in keys:
            t.send(SERVER, head, torch.stack([sealed[d][j] if d in sealed else none for d in lay.devices]), tag=TAG)
    return ServerKeys(lay, tuple(row[:KEY_BYTES].numpy().tobytes() for row in table), weights)


class ServerRing:
    """The server's keys over a run: set up with every device when the run starts, then
    again after each round's answers with the devices that delivered (``secagg.KeyRing``)."""

    def __init__(self, spec: RunSpec, weights: tuple[float, ...], *, timeout_s: float):
        self.spec, self.weights, self.timeout_s = spec, weights, timeout_s
        self.keys: ServerKeys | None = None

    def setup(self, t: Transport, present: list[str], late: set[str]) -> None:
        self.keys = _setup(self.spec, t, self.weights, present, timeout_s=self.timeout_s, late=late)


def serve_keys(spec: RunSpec, t: Transport, samples: dict[str, int], *, timeout_s: float) -> ServerRing:
    """The server's side of ``secagg.join``: the first round's keys, with every device."""
    if len(spec.plan.planned) < 2:
        raise InputError("--secure-agg", None, f"needs at least 2 planned clients to hide one among them; "
                         f"{spec.source} plans {len(spec.plan.planned)}")
    ring = ServerRing(spec, tuple(float(samples[c.name]) for c in spec.plan.planned), timeout_s=timeout_s)
    ring.setup(t, list(Layout.of(spec).devices), set())
    return ring


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _gather(keys: ServerKeys, t: Transport, late: set[str], timeout_s: float | None) -> dict[str, torch.Tensor]:
    """The masked segments that arrive within ``timeout_s``, checked against the layout."""
    got, deadline = {}, None if timeout_s is None else time.monotonic() + timeout_s
    for d in keys.present():
        try:
            v = t.recv(SERVER, d, tag="weights", timeout_s=_left(deadline), late_ok=d in late)
        except (PeerTimeout, PeerLost):
            continue
        _, a, b = keys.layout.ranges[d]
        if v.dtype != torch.int64 or tuple(v.shape) != (b - a,):
            raise ValueError(f"{d} sent masked weights of shape {tuple(v.shape)} {v.dtype}, expected ({b - a},) int64")
        got[d] = v
    return got


def _ask_shares(keys: ServerKeys, t: Transport, got: dict, missing: list[str], late: set[str],
                timeout_s: float | None, *, self_masks: bool) -> dict[int, dict[int, int]]:
    """Per device index: the shares ``{x: share}`` the delivered data devices return, of
    the self mask of every delivered device (``self_masks``) and of the mask key of each
    of ``missing``. Every holder is asked, one status per device (``secagg.DELIVERED``,
    ``MISSING`` or 0), even when that is for nothing."""
    lay = keys.layout
    requests = {}
    for h in (h for h in lay.heads if h in got):
        status = torch.zeros(len(lay.devices), dtype=torch.int64)
        for i, d in enumerate(lay.devices):
            status[i] = MISSING if d in missing else DELIVERED if d in got and self_masks else 0
        requests[h] = status
        t.send(SERVER, h, status, tag=TAG)
    shares: dict[int, dict[int, int]] = {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for h, status in requests.items():
        try:
            answer = t.recv(SERVER, h, tag=TAG, timeout_s=_left(deadline), late_ok=h in late)
        except (PeerTimeout, PeerLost):
            continue  # a holder that fails now: its shares are missing too
        if answer.dtype != torch.uint8 or tuple(answer.shape) != (len(lay.devices), SHARE_BYTES):
            raise ValueError(f"{h} answered {tuple(answer.shape)} {answer.dtype} shares, "
                             f"expected ({len(lay.devices)}, {SHARE_BYTES}) uint8")
        for i in status.nonzero().flatten().tolist():
            shares.setdefault(i, {})[lay.client(h) + 1] = int.from_bytes(answer[i].numpy().tobytes(), "little")
    return shares


def _unmask_self(keys: ServerKeys, d: str, points: dict[int, int], total: torch.Tensor, round_no: int) -> str | None:
    """Take delivered device ``d``'s self mask off ``total`` (in place); else say why not."""
    if len(points) < keys.threshold:
        return f"{len(points)} of the {keys.threshold} shares of {d}'s self mask needed to remove it came back"
    try:
        seed = reconstruct(points).to_bytes(KEY_BYTES, "little")
    except OverflowError:
        return f"the shares returned for {d}'s self mask do not rebuild a {KEY_BYTES}-byte key"
    _, a, b = keys.layout.ranges[d]
    total[a:b] = torch.remainder(total[a:b] - mask_stream(seed, round_no, a, b), MOD)
    return None


def _unmask_missing(keys: ServerKeys, u: str, points: dict[int, int], got: dict, total: torch.Tensor,
                    round_no: int) -> str | None:
    """Take missing device ``u``'s masks off ``total`` (in place); else say why not."""
    lay = keys.layout
    i = lay.devices.index(u)
    if len(points) < keys.threshold:
        return (f"{u}'s weights did not arrive and {len(points)} of the {keys.threshold} shares of its mask key "
                "needed to remove its masks came back")
    try:
        private = int_to_key(reconstruct(points))
    except (ValueError, OverflowError):
        private = None
    if private is None or public_bytes(private) != keys.mask_publics[i]:
        return f"{u}'s weights did not arrive and the shares returned for it do not rebuild its mask key"
    ku, ua, ub = lay.ranges[u]
    for v in got:
        kv, va, vb = lay.ranges[v]
        lo, hi = max(ua, va), min(ub, vb)
        if kv != ku and lo < hi:
            m = mask_stream(shared_key(private, keys.mask_publics[lay.devices.index(v)]), round_no, lo, hi)
            total[lo:hi] = torch.remainder(total[lo:hi] - m if kv < ku else total[lo:hi] + m, MOD)
    return None


def secure_combine(ring: ServerRing, t: Transport, *, late: set[str], timeout_s: float | None) -> str | None:
    """One round's secure fedavg: answer every delivered device its part of the average
    (or nothing, keeping its weights), then set up the next round's keys with them;
    returns why the aggregation was skipped, else None."""
    keys, round_no = ring.keys, t.epoch(SERVER)
    lay = keys.layout
    got = _gather(keys, t, late, timeout_s)
    missing = [d for d in keys.present() if d not in got]
    total = torch.zeros(lay.size, dtype=torch.int64)
    weight = torch.zeros(lay.size, dtype=torch.float64)
    clients = torch.zeros(lay.size, dtype=torch.int64)
    for d in got:
        k, a, b = lay.ranges[d]
        weight[a:b] += keys.weights[k]
        clients[a:b] += 1
    few = int(clients.min()) if lay.size else 2
    why = None
    if few < 2:
        gone = [d for d in lay.devices if d not in got]
        why = (f"{', '.join(gone)} sent no weights, so some coordinates came from {few} client(s) only: "
               "their average would be that client's weights")
    shares = _ask_shares(keys, t, got, [] if why else missing, late, timeout_s,
                         self_masks=not why)
    for d, v in got.items():
        _, a, b = lay.ranges[d]
        total[a:b] = torch.remainder(total[a:b] + v, MOD)
    for u in [] if why else missing:
        why = _unmask_missing(keys, u, shares.get(lay.devices.index(u), {}), got, total, round_no)
        if why:
            break
    for d in [] if why else got:
        why = _unmask_self(keys, d, shares.get(lay.devices.index(d), {}), total, round_no)
        if why:
            break
    average = None if why else decode(total, weight)
    for d in got:
        _, a, b = lay.ranges[d]
        t.send(SERVER, d, torch.zeros(0) if average is None else average[a:b], tag="weights")
    ring.setup(t, list(got), late)
    return f"secure aggregation skipped: {why}; every client keeps its own discriminator" if why else None
