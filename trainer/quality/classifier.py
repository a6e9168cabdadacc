"""The classifier that stands in for Inception in ``trainer.quality.fid``, and its cache.

A small CNN trained on labelled real images once (seeded): the digits, or an image
folder's class subfolders (C channels, H x W pixels, K classes: the input shape and the
labels of the data decide; 28x28 grayscale digits get the same network as ever). Its
penultimate features are normalised to RMS 1; it is cached on disk by the contents of
the data, the seed, the epochs and ``ARCH_VERSION``; a cache file that does not load or
fails its checksum is retrained.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from planner.errors import InputError
from trainer.data.datasets import Dataset

ARCH_VERSION = 1  # bump when _Net or the training recipe changes: old caches retrain
FEATURE_DIM = 128
HELD_OUT_FRACTION = 0.2
MAX_TRAIN_IMAGES = 12_000  # a larger training split (MNIST) is subsampled to this
GRID = 8  # larger images are average-pooled to 8x8 cells after the convolutions


class _Net(nn.Module):
    """conv 5x5/2 (16) - conv 5x5/2 (32) - average pool to at most GRID x GRID - fc 128
    (features) - relu - fc K, for images of ``shape`` = (C, H, W).

    Strided convolutions instead of pooling: 5x faster inference on a 2-core CPU. Digits
    (1, 28, 28) reach 7x7 after the convolutions, where the pool is the identity.
    """

    def __init__(self, shape: tuple[int, ...] = (1, 28, 28), classes: int = 10) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.conv1 = nn.Conv2d(shape[0], 16, 5, stride=2, padding=2)  # 28 -> 14
        self.conv2 = nn.Conv2d(16, 32, 5, stride=2, padding=2)  # 14 -> 7
        grid = tuple(min(GRID, -(-side // 4)) for side in shape[1:])  # each conv: ceil(side / 2)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.fc1 = nn.Linear(32 * grid[0] * grid[1], FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool(F.relu(self.conv2(F.relu(self.conv1(x)))))
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
    test_images: int = 0  # how many images test_accuracy was measured on

    def embed(self, x: torch.Tensor, *, batch_size: int = 1024
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, 128] before the ReLU, logits [N, K]) of images [N, C, H, W] in
        [-1, 1] of the shape the network was trained on ([N, 1, 28, 28] for digits)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.net.shape:
            raise ValueError(f"expected images [N, {', '.join(map(str, self.net.shape))}], got {tuple(x.shape)}")
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


def classes_of(dataset: Dataset) -> int:
    """K: the largest label + 1 (10 for digits, the class folders for an image folder)."""
    return int(dataset.labels.max()) + 1


def default_epochs(n_images: int) -> int:
    """About 12,000 training samples seen, 1..20 epochs (the digits' held-out split of 359
    images: 20, 93 % test accuracy where 10 gave 90 %; all digits: 8; MNIST: 1)."""
    n_train = min(MAX_TRAIN_IMAGES, n_images - max(1, int(round(n_images *
                                                                HELD_OUT_FRACTION))))
    return max(1, min(20, round(12_000 / max(1, n_train))))


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
        net = _Net(tuple(dataset.images.shape[1:]), classes_of(dataset)).to(device)
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
    return Classifier(net.cpu(), accuracy, "trained", len(test_idx))


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


def _read_cache(path: Path, key: str, dataset: Dataset) -> tuple[_Net, float]:
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
    net = _Net(tuple(dataset.images.shape[1:]), classes_of(dataset))
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
            net, accuracy = _read_cache(path, key, dataset)
            return Classifier(net, accuracy, "cache", len(_held_out_split(len(dataset), seed)[1]))
        except (ValueError, RuntimeError, KeyError, TypeError) as err:
            origin = f"retrained: cache file {path.name} {err}"
    clf = train_classifier(dataset, seed=seed, epochs=epochs)
    try:
        _write_cache(path, key, clf)
    except OSError as err:
        raise _unusable(folder, err) from err
    return Classifier(clf.net, clf.test_accuracy, origin, clf.test_images)


def _unusable(folder: Path, err: OSError) -> InputError:
    return InputError(str(folder), None, f"cannot write the classifier cache: "
                      f"{err.strerror or err}")
