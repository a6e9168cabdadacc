"""What a client's data device does to the two things it sends out of itself, when asked.

- **Generator feedback** (``--dp-clip C --dp-noise SIGMA``): GS-WGAN's gradient
  sanitisation (Chen, Orekondy, Fritz, "GS-WGAN: A Gradient-Sanitized Approach for
  Learning Differentially Private Generators", NeurIPS 2020, Sec. 3.2-3.3, Alg. 1): the
  gradient of the client's generator loss w.r.t. each fake sample is clipped to L2 norm
  ``C`` and Gaussian noise of standard deviation ``SIGMA x C`` is added, per sample, before
  it leaves the data device for the server. Only this gradient reaches the generator, so
  the generator (and whoever holds it) sees the private data only through it. The loss is
  a mean over the batch, so the row ``i`` of the gradient the device computes is
  ``grad l_i / B``; clipping to ``C / B`` and adding ``SIGMA x C / B`` (what GS-WGAN's
  ``dp_conv_hook`` does with ``clip_bound_ = CLIP_BOUND / batchsize``) is the same as
  sanitising each sample's own gradient to ``C`` and averaging. The privacy loss of this
  mechanism is accounted in ``trainer.accountant``.
- **Cut activations** (``--cut-noise SIGMA``): Gaussian noise of standard deviation
  ``SIGMA`` on every activation the data device sends across its first cut, for clients
  whose other devices are less trusted than the data device (Gaussian embedding noise,
  as SecretFlow's split learning ships it). Its backward pass is the identity: the next
  device's gradient is applied to the clean activation.

The noise is drawn from a generator seeded by the operating system's entropy, never
from ``--seed``: the server knows the seed, and noise it could replay would protect
nothing. Runs with either option are therefore not reproducible bit for bit.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch


def secret_seed() -> int:
    """A seed nobody else knows (tests replace this function to replay the noise)."""
    return secrets.randbits(63)


def clip_per_sample(grad: torch.Tensor, bound: float) -> torch.Tensor:
    """Each row of ``grad`` (one sample's gradient, any shape after the first dimension)
    scaled down to L2 norm at most ``bound``; rows within it are returned unchanged."""
    rows = grad.flatten(1)
    norms = rows.norm(dim=1, keepdim=True)
    factor = (bound / norms.clamp_min(1e-12)).clamp(max=1.0)
    return (rows * factor).view_as(grad)


@dataclass
class Privacy:
    """The data device's sanitising of what it sends; all zero (the default): send as is."""

    dp_clip: float = 0.0  # C: per-sample L2 bound of the generator feedback; 0 = no DP
    dp_noise: float = 0.0  # SIGMA: noise multiplier, the noise's std is SIGMA x C
    cut_noise: float = 0.0  # std of the Gaussian noise on the first cut's activations; 0 = none
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(secret_seed()))

    @property
    def dp(self) -> bool:
        return self.dp_clip > 0

    def feedback(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient w.r.t. the fake batch as it may leave the device (see the module
        docstring): rows clipped to ``C / B``, plus noise of std ``SIGMA x C / B``."""
        if not self.dp:
            return grad
        b = grad.shape[0]
        clipped = clip_per_sample(grad, self.dp_clip / b)
        noise = torch.randn(grad.shape, generator=self.generator, dtype=grad.dtype)
        return clipped + noise * (self.dp_noise * self.dp_clip / b)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """An activation of the first cut as it may leave the device."""
        if not self.cut_noise:
            return x
        return x.detach() + torch.randn(x.shape, generator=self.generator, dtype=x.dtype) * self.cut_noise
