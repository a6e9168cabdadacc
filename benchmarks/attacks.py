"""The attacks ``benchmarks/privacy.py`` measures: membership inference on the generator and
inversion of the activations a data device sends across its first cut.

- **GAN-Leaks, full black-box** (Chen, Yu, Zhang, Fritz, "GAN-Leaks: A Taxonomy of
  Membership Inference Attacks against Generative Models", CCS 2020, Sec. 5.1): the
  attacker draws ``k`` samples from the generator; a record's score is the L2 distance
  to its nearest sample, and a smaller distance says "member". Reported as the ROC AUC
  of training records (members) against the held-out split (non-members): 0.5 is chance.
- **GAN-Leaks, white-box** (the same paper, Sec. 5.3): whoever holds the generator (the
  server: ``checkpoint/server.pt``) scores a record by its reconstruction distance
  ``min_z ||G(z) - x||_2``, found by gradient descent on ``z`` from a few starts. Here the
  starts are the ``restarts`` nearest of ``candidates`` random samples (the black-box
  attack's answer, so the white-box distance is never larger), refined by Adam. The
  paper's LPIPS term needs downloaded VGG weights and its ``||z||`` regulariser matters
  for its larger latent spaces; both are left out (plain L2).
- **Model inversion from a cut** (He, Zhang, Lee, "Model Inversion Attacks against
  Collaborative Inference", ACSAC 2019, Sec. 4.3, the inverse-network attack): the
  attacker, who sees what crosses the cut and knows the segment before it (its weights
  are the client's; the strongest case), trains a decoder on auxiliary images (here the
  held-out split, which no client trains on) to map activations back to images, then
  decodes the activations of the client's training images.
- **SSIM** (Wang, Bovik, Sheikh, Simoncelli, "Image Quality Assessment: From Error
  Visibility to Structural Similarity", IEEE TIP 2004, Sec. III-C: an 11x11 Gaussian
  window of sigma 1.5, K1 = 0.01, K2 = 0.03), on images in [0, 1].
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn


def nearest_distance(records: torch.Tensor, samples: torch.Tensor, *, chunk: int = 256) -> torch.Tensor:
    """For each record, the L2 distance to its nearest sample (images flattened)."""
    s = samples.flatten(1).double()
    out = []
    for part in records.flatten(1).double().split(chunk):
        out.append(torch.cdist(part, s).min(dim=1).values)
    return torch.cat(out)


def gan_leaks_auc(members: torch.Tensor, non_members: torch.Tensor, samples: torch.Tensor) -> float:
    """AUC of the full black-box attack: members should lie closer to the samples."""
    return membership_auc(nearest_distance(members, samples), nearest_distance(non_members, samples))


def frozen_for_queries(generator: nn.Module, *, n: int = 1000, seed: int = 0) -> nn.Module:
    """A copy of ``generator`` in eval mode whose batch-norm statistics are those of
    ``n`` random samples (what ``trainer.quality.evaluation.sample_images`` normalises by), so
    each query is reconstructed on its own rather than through its batch's statistics."""
    g = copy.deepcopy(generator)
    norms = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: after one batch, that batch's statistics
    if norms:
        g.train()
        with torch.no_grad():
            g(torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(seed)))
    return g.eval().requires_grad_(False)


def reconstruction_distance(generator: nn.Module, records: torch.Tensor, *, candidates: int = 1000,
                            restarts: int = 3, steps: int = 20, lr: float = 0.05, seed: int = 0) -> torch.Tensor:
    """White-box GAN-Leaks: per record, ``min_z ||G(z) - x||_2`` over ``restarts`` Adam runs
    of ``steps`` steps, each started at one of the ``restarts`` nearest of ``candidates``
    samples (``generator`` is used as given: see :func:`frozen_for_queries`)."""
    g = generator
    z0 = torch.randn(candidates, g.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        samples = torch.cat([g(part) for part in z0.split(500)])
    flat = records.flatten(1)
    d = torch.cat([torch.cdist(part.double(), samples.flatten(1).double()) for part in flat.split(256)])
    top = d.topk(restarts, dim=1, largest=False)
    z = z0[top.indices.flatten()].clone().requires_grad_(True)
    target = flat.repeat_interleave(restarts, dim=0)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        loss = (g(z).flatten(1) - target).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = (g(z).flatten(1) - target).double().norm(dim=1).view(-1, restarts)
    return torch.minimum(final, top.values).min(dim=1).values


def membership_auc(d_members: torch.Tensor, d_non_members: torch.Tensor) -> float:
    """ROC AUC of "a smaller distance is a member": 1 when every member is closer."""
    labels = np.r_[np.ones(len(d_members)), np.zeros(len(d_non_members))]
    return float(roc_auc_score(labels, -torch.cat([d_members, d_non_members]).numpy()))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image of [N, 1, H, W] images in [0, 1] (valid windows only)."""
    w = _gaussian_window()
    a, b = a.double(), b.double()
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    var_a = F.conv2d(a * a, w) - mu_a**2
    var_b = F.conv2d(b * b, w) - mu_b**2
    cov = F.conv2d(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


class Decoder(nn.Module):
    """Activations [C, H, W] (or [D]) back to a 1x28x28 image in [-1, 1]."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.flat = len(shape) == 1
        channels = 16 if self.flat else shape[0]
        self.lift = nn.Linear(shape[0], 16 * 7 * 7) if self.flat else nn.Identity()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 64, 3, padding=1), nn.ReLU(),
            nn.Upsample(size=(28, 28), mode="bilinear", align_corners=False),
            nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 1, 3, padding=1), nn.Tanh())

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if self.flat:
            a = self.lift(a).view(-1, 16, 7, 7)
        return self.net(a)


class SmallDecoder(nn.Module):
    """A [C, 14, 14] feature map (the DCGAN first cut, 28 -> 14) back to 1x28x28 in [-1, 1]:
    one transposed convolution and one convolution, 3.3x fewer multiplications than
    :class:`Decoder`, enough to invert a cut after a single convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.ConvTranspose2d(channels, 32, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(32, 1, 3, padding=1), nn.Tanh())

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.net(a)


def decoder_for(shape: tuple[int, ...]) -> nn.Module:
    """:class:`SmallDecoder` for a [C, 14, 14] cut, :class:`Decoder` for any other."""
    return SmallDecoder(shape[0]) if len(shape) == 3 and shape[1:] == (14, 14) else Decoder(shape)


def invert(send, aux: torch.Tensor, targets: torch.Tensor, *, iters: int, seed: int = 0,
           batch: int = 128) -> torch.Tensor:
    """Train a decoder on ``(send(aux), aux)`` and return its reconstructions of
    ``targets`` from ``send(targets)``. ``send(x)`` is what crosses the cut for images
    ``x`` (drawn afresh each call, noise included)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        shape = tuple(send(aux[:1]).shape[1:])
    dec = decoder_for(shape)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(iters):
        idx = torch.randint(len(aux), (batch,), generator=g)
        with torch.no_grad():
            a = send(aux[idx])
        loss = F.mse_loss(dec(a), aux[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.cat([dec(send(part)) for part in targets.split(256)])


def reconstruction_scores(original: torch.Tensor, recon: torch.Tensor) -> tuple[float, float, float]:
    """(MSE, SSIM, PSNR in dB) of reconstructions against the originals, on [0, 1]; the
    PSNR is the mean over images of 10 log10(1 / MSE of the image)."""
    a, b = (original + 1) / 2, (recon.clamp(-1, 1) + 1) / 2
    per_image = (a - b).double().pow(2).flatten(1).mean(1)
    psnr = float((10 * torch.log10(1 / per_image.clamp_min(1e-10))).mean())
    return float(F.mse_loss(b, a)), float(ssim(a, b).mean()), psnr
