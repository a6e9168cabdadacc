"""GAN sample quality without internet: a small digit classifier stands in for Inception.

- FID: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
  Local Nash Equilibrium", Sec. 4: ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)),
  on the classifier's penultimate features; the sqrtm handling follows pytorch-fid.
- KID: Binkowski et al. 2018, "Demystifying MMD GANs", Sec. 3.3 / App. D: unbiased
  MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, mean and std over random subsets.
- Classifier score: the Inception Score of Salimans et al. 2016, Sec. 4,
  exp(E_x KL(p(y|x) || p(y))), between 1 and the number of classes.

Numbers from this classifier are comparable with each other, not with published
Inception FIDs. The classifier is trained on the real data once and cached on disk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits
from torch import nn
import torch.nn.functional as F

from planner.errors import InputError
from trainer.data import Dataset

ARCH_VERSION = 1  # bump when _Net or the training recipe changes: old caches retrain
FEATURE_DIM = 128
HELD_OUT_FRACTION = 0.2
MAX_TRAIN_IMAGES = 12_000  # a larger training split (MNIST) is subsampled to this


class _Net(nn.Module):
    """conv 5x5/2 (16) - conv 5x5/2 (32) - fc 128 (features) - relu - fc 10.

    Strided convolutions instead of pooling: 5x faster inference on a 2-core CPU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, stride=2, padding=2)  # 28 -> 14
        self.conv2 = nn.Conv2d(16, 32, 5, stride=2, padding=2)  # 14 -> 7
        self.fc1 = nn.Linear(32 * 7 * 7, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        features = self.fc1(x.flatten(1))
        return features, self.fc2(F.relu(features))

    @torch.no_grad()
    def normalize_features(self, images: torch.Tensor) -> None:
        """Divide fc1 by s, the features' RMS on ``images``, and multiply fc2's weight
        by s: features get RMS 1, the logits do not change (ReLU is positively
        homogeneous). Keeps KID's cubic kernel in a sane range."""
        rms = self(images)[0].pow(2).mean().sqrt().clamp_min(1e-6)
        self.fc1.weight.div_(rms)
        self.fc1.bias.div_(rms)
        self.fc2.weight.mul_(rms)


@dataclass(frozen=True)
class Classifier:
    net: _Net  # in eval mode; do not train further
    test_accuracy: float  # on the held-out HELD_OUT_FRACTION of the dataset, 0..1
    origin: str  # "trained", "cache", or "retrained: <why the cache was not used>"

    def embed(self, x: torch.Tensor, *, batch_size: int = 1024
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, 128] before the ReLU, logits [N, 10]) of images [N, 1, 28, 28]
        in [-1, 1]."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"expected images [N, 1, 28, 28], got {tuple(x.shape)}")
        with torch.inference_mode():
            parts = [self.net(x[i : i + batch_size].float())
                     for i in range(0, len(x), batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)[1]


def _held_out_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(n * HELD_OUT_FRACTION)))
    return perm[n_test:][:MAX_TRAIN_IMAGES], perm[:n_test]


def default_epochs(n_images: int) -> int:
    """About 12,000 training samples seen, 1..10 epochs (digits: 8, MNIST: 1)."""
    n_train = min(MAX_TRAIN_IMAGES, n_images - max(1, int(round(n_images *
                                                                HELD_OUT_FRACTION))))
    return max(1, min(10, round(12_000 / max(1, n_train))))


def train_classifier(dataset: Dataset, *, seed: int = 0, epochs: int | None = None,
                     batch_size: int = 64, lr: float = 3e-3,
                     device: str = "cpu") -> Classifier:
    """Adam on 80% of ``dataset`` (a seeded split, at most MAX_TRAIN_IMAGES of it);
    accuracy measured on the other 20%. Same seed, same threads: same weights."""
    train_idx, test_idx = _held_out_split(len(dataset), seed)
    epochs = default_epochs(len(dataset)) if epochs is None else epochs
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _Net().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * -(-len(train_idx) // batch_size))
    x_all, y_all = dataset.images.to(device), dataset.labels.to(device)
    net.train()
    for _ in range(epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size].to(device)
            loss = F.cross_entropy(net(x_all[idx])[1], y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval().requires_grad_(False)
    net.normalize_features(x_all[train_idx[:2000].to(device)])
    clf = Classifier(net, 0.0, "trained")
    pred = clf.logits(x_all[test_idx.to(device)]).argmax(1)
    accuracy = (pred == y_all[test_idx.to(device)]).float().mean().item()
    return Classifier(net.cpu(), accuracy, "trained")


# --- the on-disk cache ----------------------------------------------------------------

def cache_key(dataset: Dataset, *, seed: int, epochs: int) -> str:
    """sha256 of the images, labels, seed, epochs and ARCH_VERSION (hex)."""
    h = hashlib.sha256()
    h.update(dataset.images.detach().cpu().contiguous().numpy().tobytes())
    h.update(dataset.labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    h.update(f"{tuple(dataset.images.shape)}|{seed}|{epochs}|{ARCH_VERSION}".encode())
    return h.hexdigest()


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _read_cache(path: Path, key: str) -> tuple[_Net, float]:
    """The cached net, or ValueError saying why the file cannot be used."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file means "retrain"
        raise ValueError(f"unreadable ({type(err).__name__})") from err
    if not isinstance(blob, dict) or blob.get("key") != key \
            or blob.get("arch") != ARCH_VERSION:
        raise ValueError("written for another dataset, seed or architecture")
    state = blob.get("state")
    if not isinstance(state, dict) or _state_digest(state) != blob.get("digest"):
        raise ValueError("weights do not match their checksum")
    net = _Net()
    net.load_state_dict(state)
    return net.eval().requires_grad_(False), float(blob["test_accuracy"])


def _write_cache(path: Path, key: str, clf: Classifier) -> None:
    state = {k: v.detach().cpu().clone() for k, v in clf.net.state_dict().items()}
    blob = {"arch": ARCH_VERSION, "key": key, "test_accuracy": clf.test_accuracy,
            "digest": _state_digest(state), "state": state}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_train_classifier(dataset: Dataset, *, cache_dir: str | Path, seed: int = 0,
                             epochs: int | None = None) -> Classifier:
    """The classifier for (dataset contents, seed, epochs, ARCH_VERSION), from
    ``cache_dir/classifier-<key>.pt`` when that file is intact, else trained and written
    atomically (temp file + os.replace).

    The cache is derived data: a file that does not load, belongs to other inputs, or
    whose weights fail their sha256 is retrained and overwritten, never trusted; the
    returned ``origin`` says why. Only an unusable ``cache_dir`` raises (InputError).
    """
    folder = Path(cache_dir)
    epochs = default_epochs(len(dataset)) if epochs is None else epochs
    key = cache_key(dataset, seed=seed, epochs=epochs)
    path = folder / f"classifier-{key[:24]}.pt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unusable(folder, err) from err
    origin = "trained"
    if path.exists():
        try:
            net, accuracy = _read_cache(path, key)
            return Classifier(net, accuracy, "cache")
        except (ValueError, RuntimeError, KeyError, TypeError) as err:
            origin = f"retrained: cache file {path.name} {err}"
    clf = train_classifier(dataset, seed=seed, epochs=epochs)
    try:
        _write_cache(path, key, clf)
    except OSError as err:
        raise _unusable(folder, err) from err
    return Classifier(clf.net, clf.test_accuracy, origin)


def _unusable(folder: Path, err: OSError) -> InputError:
    return InputError(str(folder), None, f"cannot write the classifier cache: "
                      f"{err.strerror or err}")


# --- metrics on features and logits ---------------------------------------------------
# _ONE_BLAS_THREAD: next to torch's OpenMP threads, multithreaded OpenBLAS on these small
# matrices (128 x 128, 1000 x 1000) ran 10-20x slower on a busy 2-core machine.

def _as_f64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def feature_stats(feats: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [d] and unbiased covariance [d, d] of features [N, d], float64."""
    f = _as_f64(feats)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need features [N >= 2, d], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray,
                                cov_b: np.ndarray, *, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu_a, cov_a) and N(mu_b, cov_b)."""
    with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # handled below
        return _frechet(mu_a, cov_a, mu_b, cov_b, eps)


def _frechet(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray,
             eps: float) -> float:
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product: nudge both (pytorch-fid)
        offset = np.eye(len(cov_a)) * eps
        covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(covmean):
        if np.abs(np.diagonal(covmean).imag).max() > 1e-3 * max(
                1.0, np.abs(np.diagonal(covmean).real).max()):
            # sqrtm went astray; Tr (A B)^1/2 = Tr (A^1/2 B A^1/2)^1/2, symmetric PSD
            w, v = np.linalg.eigh(cov_a)
            root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
            inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
            trace_covmean = float(np.sqrt(np.clip(inner, 0, None)).sum())
        else:
            trace_covmean = float(np.trace(covmean.real))
    else:
        trace_covmean = float(np.trace(covmean))
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_covmean
    return max(float(value), 0.0)


def frechet_distance(feat_a: torch.Tensor | np.ndarray,
                     feat_b: torch.Tensor | np.ndarray) -> float:
    """FID formula on two feature sets [N, d] (float64)."""
    return frechet_distance_from_stats(*feature_stats(feat_a), *feature_stats(feat_b))


def kernel_inception_distance(feat_a: torch.Tensor | np.ndarray,
                              feat_b: torch.Tensor | np.ndarray, *, subsets: int = 50,
                              subset_size: int = 500, seed: int = 0
                              ) -> tuple[float, float]:
    """(mean, std) over ``subsets`` of unbiased MMD^2, cubic polynomial kernel; each
    subset draws min(subset_size, N_a, N_b) rows of each set without replacement."""
    a, b = _as_f64(feat_a), _as_f64(feat_b)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)}, {len(b)}")
    d, rng = a.shape[1], np.random.default_rng(seed)
    with threadpool_limits(1, user_api="blas"):  # see _ONE_BLAS_THREAD
        k_aa, k_bb = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3  # kernels once,
        k_ab = (a @ b.T / d + 1) ** 3  # subsets index into them
    # subset sums as quadratic forms u' K v with 0/1 indicator rows, all subsets at once
    u = np.zeros((subsets, len(a)))
    v = np.zeros((subsets, len(b)))
    for s in range(subsets):
        u[s, rng.choice(len(a), m, replace=False)] = 1.0
        v[s, rng.choice(len(b), m, replace=False)] = 1.0
    with threadpool_limits(1, user_api="blas"):
        sum_aa = ((u @ k_aa) * u).sum(1) - u @ np.diagonal(k_aa)  # off-diagonal only
        sum_bb = ((v @ k_bb) * v).sum(1) - v @ np.diagonal(k_bb)
        sum_ab = ((u @ k_ab) * v).sum(1)
    values = (sum_aa + sum_bb) / (m * (m - 1)) - 2 * sum_ab / (m * m)
    return float(values.mean()), float(values.std())


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
    the classifier's training (None: default_epochs).
    """

    def __init__(self, dataset: Dataset, *, cache_dir: str | Path, n_real: int = 1000,
                 seed: int = 0, epochs: int | None = None, kid_subsets: int = 50,
                 kid_subset_size: int = 500):
        self.classifier = load_or_train_classifier(dataset, cache_dir=cache_dir,
                                                   seed=seed, epochs=epochs)
        gen = torch.Generator().manual_seed(seed + 1)
        pick = torch.randperm(len(dataset), generator=gen)[: min(n_real, len(dataset))]
        self.real_features = self.classifier.features(dataset.images[pick]).double()
        self._mu, self._cov = feature_stats(self.real_features)
        self.seed, self.kid_subsets, self.kid_subset_size = seed, kid_subsets, \
            kid_subset_size

    def evaluate(self, fake_images: torch.Tensor) -> dict[str, float]:
        """{"fid", "kid", "kid_std", "confidence", "class_score"} for fakes [N >= 2, 1,
        28, 28] in [-1, 1]."""
        feats, logits = self.classifier.embed(fake_images.detach().cpu())
        fid = frechet_distance_from_stats(*feature_stats(feats), self._mu, self._cov)
        kid, kid_std = kernel_inception_distance(
            feats, self.real_features, subsets=self.kid_subsets,
            subset_size=self.kid_subset_size, seed=self.seed)
        return {"fid": fid, "kid": kid, "kid_std": kid_std,
                "confidence": confidence_score(logits),
                "class_score": classifier_score(logits)}
