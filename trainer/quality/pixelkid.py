"""A label-free quality measure for any images: KID on pixel statistics.

A classifier (``trainer.quality.fid``) needs labels. For an image folder without class
subfolders (or with one) the server scores the generator's samples by KID, the unbiased squared
MMD with the kernel (x.y / d + 1)^3 (Binkowski et al. 2018, "Demystifying MMD GANs",
Sec. 3.3; torchmetrics via ``trainer.quality.fid.kernel_inception_distance``), between the
held-out split (no client trains on it) and the samples, on *pixel statistics*: each
image's 16x16 area means per channel (768 numbers for RGB), divided by their RMS over
the held-out images so that the kernel sees values near 1. No network, no training,
no labels. KID rather than FID: it is unbiased with few images, and an image folder's
held-out split may hold only tens.

What it sees and what not (``benchmarks/pixel_kid.py``, shapes of
``examples/make_shapes.py``): against 90 held-out shapes, 408 other real shapes score
-0.013 +- 0.020, their circles alone 0.085, the shapes blurred 0.20, dimmed by half 2.3,
uniform noise and blank images 3.4. It is blind to what these means and the kernel's
low moments do not show: grayscale copies of the shapes scored -0.009, like real ones.
Numbers compare runs on the same folder, not with Inception KIDs nor with the digits
classifier's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from planner.errors import InputError
from trainer.data.datasets import Dataset
from trainer.quality.fid import kernel_inception_distance

GRID = 16  # each channel is averaged over a GRID x GRID grid of cells
DESCRIPTION = "kid on pixel statistics (16x16 area means per channel; no network, no labels)"


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """[N, C x 16 x 16]: the area mean of each cell of a 16x16 grid, per channel."""
    return F.adaptive_avg_pool2d(images.detach().cpu().float(), GRID).flatten(1)


class PixelKID:
    """The held-out images' statistics computed once; ``evaluate`` scores a batch of fakes."""

    def __init__(self, held_out: Dataset, *, seed: int = 0, n_real: int = 1000, kid_subsets: int = 50,
                 kid_subset_size: int = 500):
        if len(held_out) < 2:
            raise InputError(held_out.name, None, f"the held-out split has {len(held_out)} image; evaluation "
                             "needs at least 2 (add images, or --eval-every 0)")
        pick = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(seed + 1))[:n_real]
        real = pixel_features(held_out.images[pick])
        self.scale = float(real.pow(2).mean().sqrt().clamp_min(1e-6))
        self.real = real / self.scale
        self.seed, self.subsets, self.subset_size = seed, kid_subsets, kid_subset_size

    def evaluate(self, fake_images: torch.Tensor) -> dict[str, float | str]:
        """{"kid", "kid_std", "quality_features"} for fakes [N >= 2, C, H, W] in [-1, 1]."""
        fake = pixel_features(fake_images) / self.scale
        kid, std = kernel_inception_distance(self.real, fake, subsets=self.subsets,
                                             subset_size=self.subset_size, seed=self.seed)
        return {"kid": kid, "kid_std": std, "quality_features": DESCRIPTION}
