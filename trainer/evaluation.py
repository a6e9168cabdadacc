"""How good the generator is: FID, KID and classifier scores against a held-out split that
no client trains on (``trainer.data.DataSource.held_out``); the classifier is trained on
that split too (``trainer.quality``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from planner.profile import cache_dir
from trainer.data import DataSource
from trainer.quality import QualityEvaluator

EVAL_SIZE = 28  # the quality classifier's input


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
        self.quality = QualityEvaluator(self.held_out, cache_dir=cache_dir() / "classifier", seed=seed)
        self.seed, self.samples = seed, samples

    def __call__(self, generator: torch.nn.Module, round_done: int) -> dict:
        fake = sample_images(generator, self.samples, seed=self.seed * 100003 + round_done)
        if fake.shape[-1] != EVAL_SIZE:
            fake = F.interpolate(fake, size=(EVAL_SIZE, EVAL_SIZE), mode="bilinear", align_corners=False)
        return self.quality.evaluate(fake)
