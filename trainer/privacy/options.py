"""A client's privacy options, and the randomness they draw on.

- **DP-SGD** (``--dp-epsilon E`` or ``--dp-noise SIGMA``, with ``--dp-clip C``): the
  client's whole discriminator is trained with differentially private SGD
  (``trainer.privacy.dpsgd``; epsilon in ``trainer.privacy.accountant``). What then leaves the client (the
  generator feedback, the weights under ``--aggregate``, the fake half of the loss) is
  post-processing of the noised updates.
- **Cut activations** (``--cut-noise SIGMA``): Gaussian noise of standard deviation
  ``SIGMA`` on every activation the data device sends across its first cut, for clients
  whose other devices are less trusted than the data device (Gaussian embedding noise,
  as SecretFlow's split learning ships it). Its backward pass is the identity: the next
  device's gradient is applied to the clean activation. It carries no epsilon.

Every random draw that protects a record comes from :class:`SecureRandom`: ChaCha20
(RFC 8439, the ``cryptography`` package) keyed from the operating system's entropy,
never from ``--seed`` (the server knows the seed; noise or batches it could replay would
protect nothing). Runs with DP or cut noise are therefore not reproducible bit for bit.
Gaussians are drawn by Box-Muller from 53-bit uniforms in float64, then rounded to the
tensor's dtype; floating-point attacks on the noise's low bits (Mironov, CCS 2012) are
not defended against (SECURITY.md).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms


class SecureRandom:
    """A ChaCha20 key stream as uniform and Gaussian numbers; ``key`` only for tests."""

    def __init__(self, key: bytes | None = None):
        self._stream = Cipher(algorithms.ChaCha20(key or os.urandom(32), bytes(16)), mode=None).encryptor()

    def uniform(self, n: int) -> np.ndarray:
        """``n`` float64 numbers uniform on [0, 1), 53 random bits each."""
        words = np.frombuffer(self._stream.update(bytes(8 * n)), dtype=np.uint64)
        return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def normal(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal numbers of ``shape`` (Box-Muller)."""
        n = math.prod(shape)
        u = self.uniform(2 * ((n + 1) // 2)).reshape(2, -1)
        r = np.sqrt(-2.0 * np.log1p(-u[0]))  # 1 - u in (0, 1]
        z = np.concatenate([r * np.cos(2 * np.pi * u[1]), r * np.sin(2 * np.pi * u[1])])[:n]
        return torch.from_numpy(z).to(dtype).reshape(shape)


@dataclass
class Privacy:
    """One device's noise on what it sends, and its secure random source (DP-SGD's own
    settings live in ``trainer.privacy.dpsgd.DeviceDP``); zero noise (the default): send as is."""

    cut_noise: float = 0.0  # std of the Gaussian noise on the first cut's activations; 0 = none
    random: SecureRandom = field(default_factory=SecureRandom)  # also DP-SGD's batches and noise

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """An activation of the first cut as it may leave the device."""
        if not self.cut_noise:
            return x
        return x.detach() + self.random.normal(x.shape, x.dtype) * self.cut_noise
