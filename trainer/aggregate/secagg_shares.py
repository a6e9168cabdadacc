"""Shamir secret sharing of a device's mask key, and the sealed envelopes that carry the
shares through the server (Bonawitz et al., CCS 2017, Sec. 4: ``s_u^SK`` shared with
threshold ``t``, each share encrypted for its holder with a key the server cannot derive).

- **Sharing.** A secret ``s < p`` becomes ``f(x)`` at ``x = 1..n`` for a random polynomial
  ``f`` of degree ``t - 1`` with ``f(0) = s`` over GF(``p``), ``p = 2^521 - 1`` (a Mersenne
  prime above every 32-byte X25519 private key). Any ``t`` shares give ``s`` back by
  Lagrange interpolation at 0; fewer are consistent with every secret (Shamir 1979).
- **Sealing.** A share travels device -> server -> holder in ChaCha20-Poly1305 under
  HKDF-SHA256 of an X25519 exchange between a second key pair of each device (the "box"
  keys, never shared), so the server relays shares it cannot read; the nonce names the
  sender and the kind (0: mask key, 1: self mask), the associated data the owner, the
  holder and the kind, so no two seals of one setup reuse a nonce under one key (the box
  keys are fresh every setup) and a share cannot be replayed as another's.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PRIME = (1 << 521) - 1  # GF(p) of the shares: a Mersenne prime, p > 2^256
SHARE_BYTES = 66  # ceil(521 / 8): one share, little-endian
SEALED_BYTES = SHARE_BYTES + 16  # with Poly1305's tag
_INFO = b"fsl-gan secure aggregation shares v1"


def threshold(clients: int) -> int:
    """Shares needed to rebuild a key or self mask: a majority of the ``clients`` (each
    client's data device holds one share of every device's), and never fewer than 2, so
    the server with one client learns nothing from the shares."""
    return max(2, clients // 2 + 1)


def split(secret: int, xs: list[int], t: int, *, prime: int = PRIME,
          draw: Callable[[int], int] = secrets.randbelow) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` for holders at the distinct nonzero ``xs``;
    ``draw(p)`` gives each of the ``t - 1`` random coefficients."""
    if not 0 <= secret < prime or t < 1 or len(set(xs)) != len(xs) or any(x % prime == 0 for x in xs):
        raise ValueError(f"cannot share {secret} at {xs} with threshold {t} over GF({prime})")
    coefficients = [secret] + [draw(prime) for _ in range(t - 1)]
    return {x: sum(c * pow(x, i, prime) for i, c in enumerate(coefficients)) % prime for x in xs}


def reconstruct(shares: dict[int, int], *, prime: int = PRIME) -> int:
    """``f(0)`` from shares ``{x: f(x)}`` (Lagrange interpolation); given ``t`` or more
    shares of a degree ``t - 1`` polynomial, the secret."""
    secret = 0
    for x, y in shares.items():
        num = den = 1
        for other in shares:
            if other != x:
                num, den = num * -other % prime, den * (x - other) % prime
        secret = (secret + y * num * pow(den, -1, prime)) % prime
    return secret


def key_to_int(private: X25519PrivateKey) -> int:
    return int.from_bytes(private.private_bytes_raw(), "little")


def int_to_key(secret: int) -> X25519PrivateKey:
    """The private key a share set reconstructs (ValueError when it is not 32 bytes)."""
    return X25519PrivateKey.from_private_bytes(secret.to_bytes(32, "little"))


def _box(private: X25519PrivateKey, peer_public: bytes) -> ChaCha20Poly1305:
    secret = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return ChaCha20Poly1305(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret))


def _nonce_and_aad(owner: int, holder: int, kind: int) -> tuple[bytes, bytes]:
    return owner.to_bytes(4, "little") + kind.to_bytes(8, "little"), b"%d>%d:%d" % (owner, holder, kind)


def seal(share: int, *, box: X25519PrivateKey, holder_box: bytes, owner: int, holder: int, kind: int = 0) -> bytes:
    """Device ``owner``'s share for the device ``holder`` (indices in the key table), of
    its mask key (``kind`` 0) or of its self mask (1)."""
    nonce, aad = _nonce_and_aad(owner, holder, kind)
    return _box(box, holder_box).encrypt(nonce, share.to_bytes(SHARE_BYTES, "little"), aad)


def unseal(sealed: bytes, *, box: X25519PrivateKey, owner_box: bytes, owner: int, holder: int, kind: int = 0) -> int:
    """The share of ``kind`` device ``owner`` sealed for ``holder``; raises ``InvalidTag``
    if it was altered or meant for another holder or kind."""
    nonce, aad = _nonce_and_aad(owner, holder, kind)
    return int.from_bytes(_box(box, owner_box).decrypt(nonce, sealed, aad), "little")
