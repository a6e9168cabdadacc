"""Secure aggregation for ``--aggregate fedavg``: the server learns the weighted average of
the clients' discriminators and nothing else about any one of them, even when a client's
weights do not arrive.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017, Sec. 4 (the semi-honest protocol): pairwise masks, a self mask, and the
recovery of dropped users' masks from Shamir shares (``trainer.aggregate.secagg_shares``); without
the paper's signatures (Sec. 6), so the server is trusted to relay the public keys as
they are (SECURITY.md says what that leaves open).

- **Keys, fresh every round.** Every device of every client makes two X25519 key pairs
  (RFC 7748), one for masks and one for sealing shares, and sends both public keys to the
  server, which hands the table of all of them to every device. Two devices of different
  clients derive a shared 32-byte mask key with X25519 and HKDF-SHA256 (RFC 5869). This
  setup runs when the run starts and again right after each round's exchange
  (:class:`KeyRing`), with the devices that delivered, so every round has its own keys
  (as in the paper) and a key rebuilt for a missing device unmasks no other round.
- **Shares.** Each device splits its mask private key and the seed of its self mask into
  Shamir shares, threshold ``t = max(2, n // 2 + 1)`` of the ``n`` clients, one of each
  for the data device of every client, sealed so that only that device reads it; the
  server relays them. The sealing keys are never shared.
- **Masks.** A client's discriminator is one flat vector of ``P`` parameters, and every
  client's has the same layout; a device holds the coordinates ``[a, b)`` of its segment.
  For each pair of devices of clients ``i < j`` whose ranges overlap, both expand their
  key with ChaCha20 (nonce: the round) into a stream of ``P`` values in ``Z_{2^62}`` and
  take the overlap; the device of client ``i`` adds it, the one of client ``j`` subtracts
  it. Every coordinate is held by exactly one device per client, so over the clients
  every mask appears once with each sign and the sum of the masked vectors is the sum of
  the unmasked ones. On top, each device adds its own self mask (ChaCha20 of its seed),
  which the server removes from the sum with the seed rebuilt from ``t`` data devices'
  shares; a data device gives, per device and round, a share of the self mask (the
  device delivered) or of the mask key (it is missing), never both, so a server that
  calls a delivered device missing still sees its segment self-masked.
- **Numbers.** Masks cancel exactly only in integers, so a device sends its weights as
  fixed point: ``round(n_c x 2^24 x w) mod 2^62``, ``n_c`` its client's training samples
  (as plain fedavg weighs). Before masking, each device checks that ``N x 2^24 x |w|``
  with ``N = sum_c n_c`` stays below ``2^61``, so the sum over all clients fits the
  signed range; the server sums mod ``2^62``, reads the sum as signed and divides by
  ``2^24 x sum_c n_c``: plain fedavg's average up to ``2^-25`` per client.
- **Rounds.** ``trainer.aggregate.secagg_round``: a client dropped by ``--deadline-s`` sends its
  masked weights after its steps and is averaged in; a device whose weights do not arrive
  has its masks removed from the others' sum with its key rebuilt from the survivors'
  shares, and the average is over the clients that delivered each coordinate. A device
  refuses to send a coordinate that no keyed device of another client masks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from trainer.roles.build import RunSpec, check_plan_model
from trainer.aggregate.secagg_shares import SEALED_BYTES, SHARE_BYTES, key_to_int, seal, split, threshold, unseal
from trainer.comm.transport import SERVER, Transport

MOD_BITS = 62
MOD = 1 << MOD_BITS  # the masked vectors live in Z_MOD
FRACTION_BITS = 24  # fixed point: a weight is sent as round(n_c x w x 2^24)
SUM_LIMIT = 2.0 ** (MOD_BITS - 1) - 2.0**20  # |sum over clients| below 2^61, less room for rounding
KEY_BYTES = 32
TAG = "secagg"
ANSWER_TIMEOUTS = 3  # the server's two waits of timeout_s (segments, shares), and a margin
DELIVERED, MISSING = 1, 2  # a share request names each device: its self mask's share, or its mask key's
_INFO = b"fsl-gan secure aggregation masks v1"


@dataclass(frozen=True)
class Layout:
    """Who holds what: every device in plan order, its ``(client index, a, b)`` in the
    flat discriminator vector, and each client's data device (the holder of its shares)."""

    devices: tuple[str, ...]
    ranges: dict[str, tuple[int, int, int]]
    heads: tuple[str, ...]
    size: int  # P

    @classmethod
    def of(cls, spec: RunSpec) -> Layout:
        ranges = param_ranges(spec)
        return cls(tuple(spec.roles()[1:]), ranges, tuple(c.stages[0].device for c in spec.plan.planned),
                   max(b for _, _, b in ranges.values()))

    def client(self, device: str) -> int:
        return self.ranges[device][0]


def param_ranges(spec: RunSpec) -> dict[str, tuple[int, int, int]]:
    """Per planned device: ``(client index, a, b)``, its segment's coordinates in the flat
    discriminator vector (``parameters_to_vector`` of the layers in order)."""
    model, spans = check_plan_model(spec.plan, spec.source)
    offset = [0]
    for layer in model.layers:
        offset.append(offset[-1] + sum(p.numel() for p in layer.parameters()))
    return {st.device: (k, offset[spans[st.start][0]], offset[spans[st.end - 1][1]])
            for k, c in enumerate(spec.plan.planned) for st in c.stages}


def encode(flat: torch.Tensor, weight: float, total: float | None = None) -> torch.Tensor:
    """``round(weight x 2^24 x flat) mod 2^62`` as int64, once ``total`` (the weights of
    all clients, default ``weight``) times ``2^24 x max |flat|`` is known to fit 2^61."""
    total = weight if total is None else total
    top = flat.abs().max().item() if flat.numel() else 0.0
    if top * total * 2.0**FRACTION_BITS >= SUM_LIMIT:
        raise ValueError(f"secure aggregation's fixed point overflows: a weight of {top:.6g} x {total:g} samples "
                         f"of all clients x 2^{FRACTION_BITS} = {top * total * 2.0**FRACTION_BITS:.4g} reaches the "
                         f"sum's limit {SUM_LIMIT:.4g} (2^{MOD_BITS - 1}); every |w| must stay below "
                         f"{SUM_LIMIT / (total * 2.0**FRACTION_BITS):.4g}")
    return torch.remainder(torch.round(flat.double() * (weight * 2.0**FRACTION_BITS)).long(), MOD)


def decode(total: torch.Tensor, weight_sum: float | torch.Tensor) -> torch.Tensor:
    """The weighted average as float32 from the mod-2^62 sum of encoded vectors
    (``weight_sum``: one number, or one per coordinate)."""
    signed = torch.where(total >= MOD // 2, total - MOD, total)
    return (signed.double() / (weight_sum * 2.0**FRACTION_BITS)).float()


def mask_stream(key: bytes, round_no: int, start: int, end: int) -> torch.Tensor:
    """Values ``start..end-1`` of the key's stream for ``round_no``, uniform in Z_{2^62}."""
    first_block, skip = divmod(8 * start, 64)  # ChaCha20 blocks are 64 bytes; a value is 8
    nonce = first_block.to_bytes(4, "little") + round_no.to_bytes(8, "little") + bytes(4)
    raw = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update(bytes(skip + 8 * (end - start)))
    values = np.frombuffer(raw, dtype="<u8", offset=skip) & np.uint64(MOD - 1)
    return torch.from_numpy(values.astype(np.int64))


def shared_key(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    secret = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_INFO).derive(secret)


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Masker:
    """One device's masking: its coordinates, its client's weight, its pairwise keys, and
    (on a data device) the shares it holds of other clients' devices' mask keys."""

    client: int
    start: int
    end: int
    weight: float  # n_c: its client's training samples
    peers: tuple[tuple[int, int, int, bytes], ...]  # (sign, a, b, key) per overlapping device of another client
    total: float | None = None  # sum of n_c over all clients (None: weight)
    held: tuple[tuple[int, int, int], ...] = ()  # (device index, mask key share, self mask share)
    holder: bool = False  # answers the server's requests for shares each round
    self_seed: bytes | None = None  # this round's self mask's ChaCha20 key (None: none, in unit tests)

    def mask(self, flat: torch.Tensor, round_no: int) -> torch.Tensor:
        """The segment as the server may see it: encoded, plus every pairwise mask; refused
        when a coordinate would have none (no other client's device holding it is keyed)."""
        v = encode(flat, self.weight, self.total)
        masked = torch.zeros(v.numel(), dtype=torch.bool)
        for sign, a, b, key in self.peers:
            lo, hi = max(a, self.start), min(b, self.end)
            m = mask_stream(key, round_no, lo, hi)
            part = v[lo - self.start:hi - self.start]
            v[lo - self.start:hi - self.start] = torch.remainder(part + m if sign > 0 else part - m, MOD)
            masked[lo - self.start:hi - self.start] = True
        if not bool(masked.all()):
            bare = int((~masked).sum())
            raise ValueError(f"{bare} of the coordinates [{self.start}, {self.end}) have no other client's device "
                             "in this round's keys to mask them with; they are not sent in the clear")
        if self.self_seed is not None:
            v = torch.remainder(v + mask_stream(self.self_seed, round_no, self.start, self.end), MOD)
        return v

    def shares_for(self, status: torch.Tensor) -> torch.Tensor:
        """Row ``d``: the share held of device ``d``'s self mask if the server says it
        :data:`DELIVERED`, of its mask key if :data:`MISSING`, nothing if 0. One status per
        device and round, so the server never gets both of one device's masks."""
        held = {d: (s, b) for d, s, b in self.held}
        codes = status.tolist() if status.dtype == torch.int64 and status.dim() == 1 else [-1]
        if any(c not in (0, DELIVERED, MISSING) or (c and d not in held) for d, c in enumerate(codes)):
            raise ValueError(f"a share request {status.tolist()} names devices this one holds no shares of "
                             f"(held: {sorted(held)})")
        out = torch.zeros((len(codes), SHARE_BYTES), dtype=torch.uint8)
        for d, c in enumerate(codes):
            if c:
                out[d] = _bytes(held[d][0 if c == MISSING else 1].to_bytes(SHARE_BYTES, "little"))
        return out

    def send(self, me: str, t: Transport, flat: torch.Tensor, *, round_no: int, timeout_s: float | None,
             late_ok: bool) -> None:
        """Send the masked segment; a data device then answers the server's request for
        the shares of the devices whose weights did not arrive (usually none), which
        comes once the server has every segment or waited ``timeout_s`` for them (so it
        waits twice that). The answer comes after the server's wait for the shares:
        :data:`ANSWER_TIMEOUTS` x ``timeout_s`` after sending."""
        t.send(me, SERVER, self.mask(flat, round_no), tag="weights")
        if self.holder:
            request = t.recv(me, SERVER, tag=TAG, timeout_s=timeout_s and 2 * timeout_s, late_ok=late_ok)
            t.send(me, SERVER, self.shares_for(request), tag=TAG)


def _bytes(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _setup(spec: RunSpec, me: str, t: Transport, *, timeout_s: float, late_ok: bool) -> Masker:
    """One key setup: make key pairs, swap public keys through the server (a device left
    out has a row of zeros), derive the pairwise keys with the overlapping devices of
    other clients, and deal the shares of the mask key to the other clients' data devices
    (receiving theirs if it is one)."""
    mask_key, box_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    t.send(me, SERVER, _bytes(public_bytes(mask_key) + public_bytes(box_key)), tag=TAG)
    table = t.recv(me, SERVER, tag=TAG, timeout_s=timeout_s, late_ok=late_ok)
    weights = t.recv(me, SERVER, tag=TAG, timeout_s=timeout_s, late_ok=late_ok).tolist()
    lay = Layout.of(spec)
    n = len(spec.plan.planned)
    if tuple(table.shape) != (len(lay.devices), 2 * KEY_BYTES) or len(weights) != n:
        raise ValueError(f"{me}: a key table of shape {tuple(table.shape)} and {len(weights)} weights, "
                         f"expected ({len(lay.devices)}, {2 * KEY_BYTES}) and {n}")
    rows = [(row[:KEY_BYTES].numpy().tobytes(), row[KEY_BYTES:].numpy().tobytes()) for row in table]
    present = [any(row[0]) for row in rows]
    me_i = lay.devices.index(me)
    k, a, b = lay.ranges[me]
    peers = []
    for d, (mask_public, _), there in zip(lay.devices, rows, present):
        j, pa, pb = lay.ranges[d]
        if there and j != k and max(a, pa) < min(b, pb):
            peers.append((1 if k < j else -1, pa, pb, shared_key(mask_key, mask_public)))
    seed = secrets.token_bytes(KEY_BYTES)
    shares = [split(secret, [j + 1 for j in range(n)], threshold(n))
              for secret in (key_to_int(mask_key), int.from_bytes(seed, "little"))]
    sealed = torch.zeros((n, 2 * SEALED_BYTES), dtype=torch.uint8)
    for j, head in enumerate(lay.heads):
        h = lay.devices.index(head)
        if present[h]:
            sealed[j] = _bytes(b"".join(seal(kind[j + 1], box=box_key, holder_box=rows[h][1], owner=me_i, holder=h,
                                             kind=i) for i, kind in enumerate(shares)))
    t.send(me, SERVER, sealed, tag=TAG)
    held = []
    if me == lay.heads[k]:
        inbox = t.recv(me, SERVER, tag=TAG, timeout_s=timeout_s, late_ok=late_ok)
        for d in (d for d in range(len(lay.devices)) if present[d]):
            row = inbox[d].numpy().tobytes()
            held.append((d, *(unseal(row[i * SEALED_BYTES:(i + 1) * SEALED_BYTES], box=box_key,
                                     owner_box=rows[d][1], owner=d, holder=me_i, kind=i) for i in range(2))))
    return Masker(k, a, b, float(weights[k]), tuple(peers), float(sum(weights)), tuple(held), me == lay.heads[k],
                  seed)


class KeyRing:
    """A device's secure aggregation over a run: fresh keys for every round, set up when
    the run starts and again right after each round's exchange (Bonawitz et al. key each
    round too), so a mask key the server rebuilds for a missing device unmasks nothing of
    another round. ``masker`` masks the coming round."""

    def __init__(self, spec: RunSpec, me: str, *, timeout_s: float):
        self.spec, self.me, self.timeout_s = spec, me, timeout_s
        self.masker: Masker | None = None

    def setup(self, t: Transport, *, late_ok: bool = False) -> KeyRing:
        self.masker = _setup(self.spec, self.me, t, timeout_s=self.timeout_s, late_ok=late_ok)
        return self


def join(spec: RunSpec, me: str, t: Transport, *, timeout_s: float) -> KeyRing:
    """Device ``me``'s keys for the first round (the server's side: ``secagg_round.serve_keys``)."""
    return KeyRing(spec, me, timeout_s=timeout_s).setup(t)


def unmask_average(parts: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The weighted average from every client's masked whole vector: their sum mod 2^62
    (where the masks cancel), decoded."""
    total = None
    for v in parts.values():
        total = v.clone() if total is None else torch.remainder(total + v, MOD)
    return decode(total, sum(weights[c] for c in parts))
