"""Secure aggregation for ``--aggregate fedavg``: the server learns the weighted average of
the clients' discriminators and nothing else about any one of them.

Pairwise additive masking (Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017, Sec. 3 "masking with one-time pads" and
Sec. 4, without the secret-shared recovery of dropped users: here a round with a dropped
client skips its aggregation, see ``trainer.aggregate``).

- **Keys.** Every device of every client makes an X25519 key pair (RFC 7748) when the run
  starts and sends its public key to the server, which hands the table of all of them to
  every device. Two devices of different clients derive a shared 32-byte key with X25519
  and HKDF-SHA256 (RFC 5869). Private keys never leave their device; nothing is shared
  between the devices of one client.
- **Masks.** A client's discriminator is one flat vector of ``P`` parameters, and every
  client's has the same layout; a device holds the coordinates ``[a, b)`` of its segment.
  For each pair of devices of clients ``i < j`` whose ranges overlap, both expand their
  key with ChaCha20 (nonce: the round) into a stream of ``P`` values in ``Z_{2^62}`` and
  take the overlap; the device of client ``i`` adds it, the one of client ``j`` subtracts
  it. Every coordinate is held by exactly one device per client, so over the clients
  every mask appears once with each sign and the sum of the masked vectors is the sum of
  the unmasked ones. A fresh nonce per round keeps two rounds' masks unrelated.
- **Numbers.** Masks cancel exactly only in integers, so a device sends its weights as
  fixed point: ``round(n_c x 2^24 x w) mod 2^62``, ``n_c`` its client's training samples
  (as plain fedavg weighs). The server sums mod ``2^62``, reads the sum as signed and
  divides by ``2^24 x sum_c n_c``: plain fedavg's average up to ``2^-25`` per client.

The server relays the public keys: an actively malicious server could hand out its own
(the paper's Sec. 6 assumes authenticated keys); SECURITY.md states the assumption.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from planner.errors import InputError
from trainer.build import RunSpec, check_plan_model
from trainer.transport import SERVER, Transport

MOD_BITS = 62
MOD = 1 << MOD_BITS  # the masked vectors live in Z_MOD
FRACTION_BITS = 24  # fixed point: a weight is sent as round(n_c x w x 2^24)
KEY_BYTES = 32
TAG = "secagg"
_INFO = b"fsl-gan secure aggregation masks v1"


def param_ranges(spec: RunSpec) -> dict[str, tuple[int, int, int]]:
    """Per planned device: ``(client index, a, b)``, its segment's coordinates in the flat
    discriminator vector (``parameters_to_vector`` of the layers in order)."""
    model, spans = check_plan_model(spec.plan, spec.source)
    offset = [0]
    for layer in model.layers:
        offset.append(offset[-1] + sum(p.numel() for p in layer.parameters()))
    return {st.device: (k, offset[spans[st.start][0]], offset[spans[st.end - 1][1]])
            for k, c in enumerate(spec.plan.planned) for st in c.stages}


def encode(flat: torch.Tensor, weight: float) -> torch.Tensor:
    """``round(weight x 2^24 x flat) mod 2^62`` as int64."""
    scaled = flat.double() * (weight * 2.0**FRACTION_BITS)
    limit = 2.0 ** (MOD_BITS - 2)
    if scaled.numel() and scaled.abs().max().item() >= limit:
        raise ValueError(f"a weight of {flat.abs().max().item():.3g} x {weight:g} samples does not fit the "
                         f"fixed point of secure aggregation (|w x n| < 2^{MOD_BITS - 2 - FRACTION_BITS})")
    return torch.remainder(torch.round(scaled).long(), MOD)


def decode(total: torch.Tensor, weight_sum: float) -> torch.Tensor:
    """The weighted average as float32 from the mod-2^62 sum of encoded vectors."""
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


@dataclass(frozen=True)
class Masker:
    """One device's masking: its coordinates, its client's weight, its pairwise keys."""

    client: int
    start: int
    end: int
    weight: float  # n_c: its client's training samples
    peers: tuple[tuple[int, int, int, bytes], ...]  # (sign, a, b, key) per overlapping device of another client

    def mask(self, flat: torch.Tensor, round_no: int) -> torch.Tensor:
        """The segment as the server may see it: encoded, plus every pairwise mask."""
        v = encode(flat, self.weight)
        for sign, a, b, key in self.peers:
            lo, hi = max(a, self.start), min(b, self.end)
            m = mask_stream(key, round_no, lo, hi)
            part = v[lo - self.start:hi - self.start]
            v[lo - self.start:hi - self.start] = torch.remainder(part + m if sign > 0 else part - m, MOD)
        return v


def join(spec: RunSpec, me: str, t: Transport, *, timeout_s: float) -> Masker:
    """Device ``me``: make a key pair, swap public keys through the server, derive the
    pairwise keys with the overlapping devices of other clients."""
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    t.send(me, SERVER, torch.frombuffer(bytearray(public), dtype=torch.uint8), tag=TAG)
    table = t.recv(me, SERVER, tag=TAG, timeout_s=timeout_s)
    weights = t.recv(me, SERVER, tag=TAG, timeout_s=timeout_s).tolist()
    ranges = param_ranges(spec)
    devices = spec.roles()[1:]
    if tuple(table.shape) != (len(devices), KEY_BYTES) or len(weights) != len(spec.plan.planned):
        raise ValueError(f"{me}: a key table of shape {tuple(table.shape)} and {len(weights)} weights, "
                         f"expected ({len(devices)}, {KEY_BYTES}) and {len(spec.plan.planned)}")
    k, a, b = ranges[me]
    peers = []
    for d, row in zip(devices, table):
        j, pa, pb = ranges[d]
        if j != k and max(a, pa) < min(b, pb):
            peers.append((1 if k < j else -1, pa, pb, shared_key(private, row.numpy().tobytes())))
    return Masker(k, a, b, float(weights[k]), tuple(peers))


def serve_keys(spec: RunSpec, t: Transport, samples: dict[str, int], *, timeout_s: float) -> None:
    """The server's part of :func:`join`: relay every device's public key to all, with
    every client's weight (its training samples)."""
    if len(spec.plan.planned) < 2:
        raise InputError("--secure-agg", None, f"needs at least 2 planned clients to hide one among them; "
                         f"{spec.source} plans {len(spec.plan.planned)}")
    devices = spec.roles()[1:]
    keys = [t.recv(SERVER, d, tag=TAG, timeout_s=timeout_s) for d in devices]
    for d, key in zip(devices, keys):
        if key.dtype != torch.uint8 or key.numel() != KEY_BYTES:
            raise ValueError(f"{d} sent a public key of {key.numel()} {key.dtype} values, expected {KEY_BYTES} bytes")
    table = torch.stack(keys)
    weights = torch.tensor([float(samples[c.name]) for c in spec.plan.planned], dtype=torch.float64)
    for d in devices:
        t.send(SERVER, d, table, tag=TAG)
        t.send(SERVER, d, weights, tag=TAG)


def unmask_average(parts: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The weighted average from every client's masked whole vector: their sum mod 2^62
    (where the masks cancel), decoded."""
    total = None
    for v in parts.values():
        total = v.clone() if total is None else torch.remainder(total + v, MOD)
    return decode(total, sum(weights[c] for c in parts))
