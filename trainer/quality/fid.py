"""GAN sample quality without internet: a small digit classifier stands in for Inception.

- FID: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
  Local Nash Equilibrium", Sec. 4: ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)),
  on the classifier's penultimate features, computed by torchmetrics'
  ``FrechetInceptionDistance(feature=...)`` in float64.
- KID: Binkowski et al. 2018, "Demystifying MMD GANs", Sec. 3.3 / App. D: unbiased
  MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, mean and std over random subsets,
  computed by torchmetrics' ``KernelInceptionDistance(feature=...)`` in float32; the
  subsets are drawn under the evaluator's seed.
- Both agreed with this module's former hand-written statistics on the same features
  (``benchmarks/quality_agreement.py``, numbers in BENCHMARKS.md).
- Classifier score: the Inception Score of Salimans et al. 2016, Sec. 4,
  exp(E_x KL(p(y|x) || p(y))), between 1 and the number of classes.

Numbers from this classifier are comparable with each other, not with published
Inception FIDs. The classifier (``trainer.quality.classifier``) is trained on the real data once
and cached on disk.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from trainer.quality.classifier import FEATURE_DIM, Classifier, load_or_train_classifier
from trainer.data.datasets import Dataset


# --- FID and KID: torchmetrics, on the classifier's features ---------------------------

class _Features(nn.Module):
    """torchmetrics' ``feature`` extractor: images [N, 1, 28, 28] in [-1, 1] -> the
    classifier's penultimate features [N, 128], float64 (so the metrics compute and
    return float64). The last call's logits are kept: ``evaluate`` hands the same fakes
    to FID, KID and the class scores, and the network runs on them once."""

    num_features = FEATURE_DIM  # read by torchmetrics instead of probing a dummy image

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # images, feats, logits

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._last is None or self._last[0] is not images:
            feats, logits = self.classifier.embed(images)
            self._last = (images, feats.double(), logits)
        return self._last[1], self._last[2]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)[0]


class _Given(nn.Module):
    """A ``feature`` extractor for inputs that are features already ([N, d])."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.double()


class _Cast(nn.Module):
    """Another extractor's features in ``out_dtype``."""

    def __init__(self, inner: nn.Module, out_dtype: torch.dtype) -> None:
        super().__init__()
        self.inner, self.out_dtype, self.num_features = inner, out_dtype, inner.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).to(self.out_dtype)


# torchmetrics gathers a metric's state over torch.distributed's process group before it
# computes, whenever one exists; in the dist backend only the server evaluates, so that
# gather would wait for ranks that never join. Every metric here is computed locally.
LOCAL = {"sync_on_compute": False, "dist_sync_on_step": False}


def _fid_metric(feature: nn.Module) -> FrechetInceptionDistance:
    return FrechetInceptionDistance(feature=feature, reset_real_features=False, **LOCAL)


def _kid_metric(feature: nn.Module, *, subsets: int, subset_size: int) -> KernelInceptionDistance:
    """KID on float32 features: its 3 x ``subsets`` kernel matrices took 2.4x less time
    than in float64 on this 2-core machine, and the value moved by under 1e-6 relative."""
    with warnings.catch_warnings():  # "will save all extracted features": 1000 x 128 here
        warnings.simplefilter("ignore", UserWarning)
        return KernelInceptionDistance(feature=_Cast(feature, torch.float32), subsets=subsets,
                                       subset_size=subset_size, reset_real_features=False, **LOCAL)


def _fid_value(metric: FrechetInceptionDistance) -> float:
    # rounding can leave a tiny negative value for identical sets; a distance is >= 0
    return max(float(metric.compute()), 0.0)


def _kid_values(metric: KernelInceptionDistance, n_real: int, n_fake: int, *, subset_size: int,
                seed: int) -> tuple[float, float]:
    """(mean, std) over subsets of min(subset_size, n_real, n_fake) rows each, drawn by
    torch.randperm under ``seed`` without touching the caller's random state."""
    m = min(subset_size, n_real, n_fake)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {n_real}, {n_fake}")
    metric.subset_size = m
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x).double()
    if t.ndim != 2 or len(t) < 2:
        raise ValueError(f"need features [N >= 2, d], got shape {tuple(t.shape)}")
    return t


def frechet_distance(feat_a: torch.Tensor | np.ndarray, feat_b: torch.Tensor | np.ndarray) -> float:
    """torchmetrics' FID between two feature sets [N, d] (float64)."""
    a, b = _as_tensor(feat_a), _as_tensor(feat_b)
    metric = _fid_metric(_Given(a.shape[1]))
    metric.update(a, real=True)
    metric.update(b, real=False)
    return _fid_value(metric)


def kernel_inception_distance(feat_a: torch.Tensor | np.ndarray, feat_b: torch.Tensor | np.ndarray, *,
                              subsets: int = 50, subset_size: int = 500, seed: int = 0) -> tuple[float, float]:
    """torchmetrics' KID (mean, std) between two feature sets [N, d]: unbiased MMD^2 with
    the kernel (x.y / d + 1)^3 over ``subsets`` random subsets (see :func:`_kid_values`)."""
    a, b = _as_tensor(feat_a), _as_tensor(feat_b)
    metric = _kid_metric(_Given(a.shape[1]), subsets=subsets, subset_size=2)
    metric.update(a, real=True)
    metric.update(b, real=False)
    return _kid_values(metric, len(a), len(b), subset_size=subset_size, seed=seed)


def confidence_score(logits: torch.Tensor) -> float:
    """Mean over samples of the largest softmax probability (1/classes .. 1)."""
    return float(F.softmax(logits.double(), dim=1).max(dim=1).values.mean())


def classifier_score(logits: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))): 1 (all alike or all unsure) .. classes (all sure,
    classes balanced)."""
    log_p = F.log_softmax(logits.double(), dim=1)
    log_marginal = torch.logsumexp(log_p, dim=0) - np.log(len(log_p))
    kl = (log_p.exp() * (log_p - log_marginal)).sum(dim=1)
    return float(kl.mean().exp())


class QualityEvaluator:
    """Real-data features computed once; ``evaluate`` scores a batch of fakes.

    ``n_real`` real images (a seeded draw) are the reference; ``epochs`` is passed to
    the classifier's training (None: default_epochs). FID and KID are torchmetrics'
    metrics with the classifier as their ``feature`` extractor; they keep the real
    images' statistics between evaluations (``reset_real_features=False``).
    """

    def __init__(self, dataset: Dataset, *, cache_dir: str | Path, n_real: int = 1000,
                 seed: int = 0, epochs: int | None = None, kid_subsets: int = 50,
                 kid_subset_size: int = 500):
        self.classifier = load_or_train_classifier(dataset, cache_dir=cache_dir,
                                                   seed=seed, epochs=epochs)
        gen = torch.Generator().manual_seed(seed + 1)
        pick = torch.randperm(len(dataset), generator=gen)[: min(n_real, len(dataset))]
        real = dataset.images[pick]
        self._features = _Features(self.classifier)
        self._fid = _fid_metric(self._features)
        self._kid = _kid_metric(self._features, subsets=kid_subsets, subset_size=2)
        self._fid.update(real, real=True)
        self._kid.update(real, real=True)
        self.n_real, self.seed, self.kid_subset_size = len(real), seed, kid_subset_size

    def evaluate(self, fake_images: torch.Tensor) -> dict[str, float]:
        """{"fid", "kid", "kid_std", "confidence", "class_score"} for fakes [N >= 2, 1,
        28, 28] in [-1, 1]."""
        fakes = fake_images.detach().cpu()
        if len(fakes) < 2:
            raise ValueError(f"need at least 2 fake images, got {len(fakes)}")
        self._fid.reset()  # drops the last fakes, keeps the real statistics
        self._kid.reset()
        self._fid.update(fakes, real=False)
        self._kid.update(fakes, real=False)
        _, logits = self._features.embed(fakes)  # the same call as the metrics': no rerun
        kid, kid_std = _kid_values(self._kid, self.n_real, len(fakes),
                                   subset_size=self.kid_subset_size, seed=self.seed)
        return {"fid": _fid_value(self._fid), "kid": kid, "kid_std": kid_std,
                "confidence": confidence_score(logits),
                "class_score": classifier_score(logits)}
