"""How good the generator is, against a held-out split that no client trains on
(``trainer.data.datasets.DataSource.held_out``): for digits and MNIST, FID, KID and classifier
scores on a digit classifier trained on that split (``trainer.quality.fid``); for an image
folder, which has no digits and maybe no labels, KID on pixel statistics
(``trainer.quality.pixelkid``). Each row says which in ``quality_features``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from planner.profile_cache import cache_dir
from trainer.data.datasets import DataSource
from trainer.errors import Diverged
from trainer.quality.fid import QualityEvaluator
from trainer.quality.pixelkid import PixelKID

EVAL_SIZE = 28  # the quality classifier's input
CLASSIFIER = "fid, kid on the digits classifier's features (trained on the held-out split)"


def sample_images(generator: torch.nn.Module, n: int, seed: int) -> torch.Tensor:
    """``n`` images from fixed noise. Batch norm stays in training mode (batch statistics),
    as the generator trains: early running averages lag far behind and make every sample
    look alike. The running averages are put back, so sampling leaves no trace."""
    g = generator
    z = torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(seed))
    saved = {k: v.clone() for k, v in g.named_buffers()}
    with torch.no_grad():
        out = g(z)
        for k, v in g.named_buffers():
            v.copy_(saved[k])
    return out


class Evaluation:
    """Scores of the generator's samples against the held-out split."""

    def __init__(self, data: DataSource, *, seed: int, samples: int):
        self.held_out = data.held_out()
        self.digits = data.name != "images"
        if self.digits:
            self.quality = QualityEvaluator(self.held_out, cache_dir=cache_dir() / "classifier", seed=seed)
        else:
            self.quality = PixelKID(self.held_out, seed=seed)
        self.seed, self.samples = seed, samples

    def __call__(self, generator: torch.nn.Module, round_done: int) -> dict:
        fake = sample_images(generator, self.samples, seed=self.seed * 100003 + round_done)
        if not bool(torch.isfinite(fake).all()):  # FID on NaN ends in a LAPACK crash, not an error
            raise Diverged("evaluation: the generator's samples are not finite")
        if not self.digits:
            return self.quality.evaluate(fake)
        if fake.shape[1] == 3:  # an RGB model trained on digits: the classifier reads luminance
            fake = fake.mean(dim=1, keepdim=True)
        if fake.shape[-1] != EVAL_SIZE:
            fake = F.interpolate(fake, size=(EVAL_SIZE, EVAL_SIZE), mode="bilinear", align_corners=False)
        return self.quality.evaluate(fake) | {"quality_features": CLASSIFIER}
