"""The server's side of one round of secure aggregation (``trainer.secagg``), dropped
devices included.

1. Every device's masked segment is awaited (``timeout_s`` for all). A client dropped by
   ``--deadline-s`` sends it after its steps end: it arrives and is summed with the rest,
   so the round's average is fedavg over all clients, as without ``--secure-agg``. A
   device whose segment does not arrive (timeout, lost connection) is *missing*.
2. Every data device whose segment arrived is asked for its shares of the missing
   devices' mask keys (an empty request when none is missing) and answers (``timeout_s``
   for all; a device waits up to ``3 x timeout_s`` for its answer, ``trainer.secagg``).
3. Each missing device's mask private key is rebuilt from ``t`` shares (Lagrange at 0)
   and checked against its public key; its pairwise masks with every delivered device
   are derived and taken off the sum, which then holds the delivered segments only. The
   average of a coordinate is over the clients that delivered it: a whole missing client
   gives fedavg over the others.
4. The round's aggregation is skipped instead (every device keeps its weights; the
   reason goes to ``metrics.jsonl`` as ``aggregation_skipped``) when a coordinate was
   delivered by fewer than 2 clients (the average would be one client's weights) or
   fewer than ``t`` shares of a missing key came back.

The server never holds a delivered device's key; it holds a missing device's key from
step 3 on, and a segment of that device arriving later is never read (the round's
messages after it are the report's, so the run stops there as for any failed device).
"""

from __future__ import annotations

import time

import torch

from trainer.errors import PeerLost, PeerTimeout
from trainer.secagg import MOD, TAG, ServerKeys, decode, mask_stream, public_bytes, shared_key
from trainer.secagg_shares import SHARE_BYTES, int_to_key, reconstruct
from trainer.transport import SERVER, Transport


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _gather(keys: ServerKeys, t: Transport, late: set[str], timeout_s: float | None) -> dict[str, torch.Tensor]:
    """The masked segments that arrive within ``timeout_s``, checked against the layout."""
    got, deadline = {}, None if timeout_s is None else time.monotonic() + timeout_s
    for d in keys.layout.devices:
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
                timeout_s: float | None) -> dict[int, dict[int, int]]:
    """Per missing device (its index): the shares ``{x: share}`` the delivered data
    devices return; ``missing`` empty: every holder is still asked, for nothing."""
    lay = keys.layout
    requests = {h: [lay.devices.index(u) for u in missing if lay.client(u) != lay.client(h)]
                for h in lay.heads if h in got}
    for h, request in requests.items():
        t.send(SERVER, h, torch.tensor(request, dtype=torch.int64), tag=TAG)
    shares: dict[int, dict[int, int]] = {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for h, request in requests.items():
        try:
            answer = t.recv(SERVER, h, tag=TAG, timeout_s=_left(deadline), late_ok=h in late)
        except (PeerTimeout, PeerLost):
            continue  # a holder that fails now: its shares are missing too
        if answer.dtype != torch.uint8 or tuple(answer.shape) != (len(request), SHARE_BYTES):
            raise ValueError(f"{h} answered {tuple(answer.shape)} {answer.dtype} for {len(request)} shares, "
                             f"expected ({len(request)}, {SHARE_BYTES}) uint8")
        for u, row in zip(request, answer):
            shares.setdefault(u, {})[lay.client(h) + 1] = int.from_bytes(row.numpy().tobytes(), "little")
    return shares


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


def secure_combine(keys: ServerKeys, t: Transport, *, late: set[str], timeout_s: float | None) -> str | None:
    """One round's secure fedavg: answer every delivered device its part of the average
    (or nothing, keeping its weights); returns why the aggregation was skipped, else None."""
    lay, round_no = keys.layout, t.epoch(SERVER)
    got = _gather(keys, t, late, timeout_s)
    missing = [d for d in lay.devices if d not in got]
    total = torch.zeros(lay.size, dtype=torch.int64)
    weight = torch.zeros(lay.size, dtype=torch.float64)
    clients = torch.zeros(lay.size, dtype=torch.int64)
    for d, v in got.items():
        k, a, b = lay.ranges[d]
        total[a:b] = torch.remainder(total[a:b] + v, MOD)
        weight[a:b] += keys.weights[k]
        clients[a:b] += 1
    few = int(clients.min()) if lay.size else 2
    why = None
    if missing and few < 2:
        why = (f"{', '.join(missing)} sent no weights, so some coordinates came from {few} client(s) only: "
               "their average would be that client's weights")
    shares = _ask_shares(keys, t, got, [] if why else missing, late, timeout_s)
    for u in [] if why else missing:
        why = _unmask_missing(keys, u, shares.get(lay.devices.index(u), {}), got, total, round_no)
        if why:
            break
    average = None if why else decode(total, weight)
    for d in got:
        _, a, b = lay.ranges[d]
        t.send(SERVER, d, torch.zeros(0) if average is None else average[a:b], tag="weights")
    return f"secure aggregation skipped: {why}; every client keeps its own discriminator" if why else None
