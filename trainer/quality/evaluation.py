"""How good the generator is, against a held-out split that no client trains on
(``trainer.data.datasets.DataSource.held_out``), scored in the server's process:

- digits and MNIST: FID, KID and classifier scores on a digit classifier trained on that
  split (``trainer.quality.fid``);
- an image folder with class subfolders: the same, on a classifier of the folder's
  classes trained on its held-out images (``trainer.quality.classifier`` takes any C, H, W, K);
- an image folder without classes (or with one): KID on pixel statistics
  (``trainer.quality.pixelkid``), no network.

Each row says which in ``quality_features``; a classifier's held-out accuracy comes with
its scores (``classifier_accuracy`` over ``classifier_test_images``), so a reader knows
how far its features can be trusted. With ``--fid-inception`` the row also holds
``fid_inception``, the standard FID (``trainer.quality.inception``)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from planner.profile_cache import cache_dir
from trainer.data.datasets import DataSource
from trainer.errors import Diverged
from trainer.quality.inception import InceptionFID
from trainer.quality.fid import QualityEvaluator
from trainer.quality.pixelkid import DESCRIPTION as PIXELS, PixelKID

EVAL_SIZE = 28  # the digits classifier's input
CLASSIFIER = "fid, kid on the digits classifier's features (trained on the held-out split)"
FOLDER = "fid, kid on the features of a classifier of the folder's {k} class subfolders (trained on the held-out split)"
UNLABELLED = PIXELS + "; the folder has {why}, so no classifier is trained"


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

    def __init__(self, data: DataSource, *, seed: int, samples: int, fid_inception: Path | None = None):
        self.held_out = data.held_out()
        self.digits = data.name != "images"
        classes = len(set(self.held_out.labels.tolist()))
        if self.digits or classes >= 2:
            self.quality = QualityEvaluator(self.held_out, cache_dir=cache_dir() / "classifier", seed=seed)
            self.features = CLASSIFIER if self.digits else FOLDER.format(k=int(self.held_out.labels.max()) + 1)
        else:
            self.quality = PixelKID(self.held_out, seed=seed)
            why = "no class subfolders" if int(self.held_out.labels.max()) == 0 else "one class in its held-out split"
            self.features = UNLABELLED.format(why=why)
        self.inception = None
        if fid_inception is not None:
            self.inception = InceptionFID(fid_inception, self.held_out.images)
        self.seed, self.samples = seed, samples

    def __call__(self, generator: torch.nn.Module, round_done: int) -> dict:
        fake = sample_images(generator, self.samples, seed=self.seed * 100003 + round_done)
        if not bool(torch.isfinite(fake).all()):  # FID on NaN ends in a LAPACK crash, not an error
            raise Diverged("evaluation: the generator's samples are not finite")
        row = self._scores(fake) | {"quality_features": self.features}
        if isinstance(self.quality, QualityEvaluator):
            clf = self.quality.classifier
            row |= {"classifier_accuracy": clf.test_accuracy, "classifier_test_images": clf.test_images}
        if self.inception is not None:
            row["fid_inception"] = self.inception.evaluate(fake)
        return row

    def _scores(self, fake: torch.Tensor) -> dict:
        if not self.digits:
            return self.quality.evaluate(fake)
        if fake.shape[1] == 3:  # an RGB model trained on digits: the classifier reads luminance
            fake = fake.mean(dim=1, keepdim=True)
        if fake.shape[-1] != EVAL_SIZE:
            fake = F.interpolate(fake, size=(EVAL_SIZE, EVAL_SIZE), mode="bilinear", align_corners=False)
        return self.quality.evaluate(fake)
