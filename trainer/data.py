"""Datasets, client shards and per-shard batch samplers.

Images are float32 in [-1, 1], shape [N, 1, 28, 28]; labels are int64 digits 0..9.

- ``digits``: scikit-learn's 1,797 8x8 digits (values 0..16), framed like MNIST: each
  digit is upsampled bilinearly to a 20x20 box and placed in a 28x28 canvas so that its
  centre of mass sits at the centre (LeCun et al., the MNIST page: "centered in a 28x28
  image by computing the center of mass of the pixels").
- ``mnist``: the real IDX files from a local folder, validated byte by byte.

Non-IID shards follow Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical
Data Distribution for Federated Visual Classification", Sec. 3.1: client k's label mix
is q_k ~ Dir(alpha * p), p the dataset's class frequencies.
"""

from __future__ import annotations

import functools
import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from planner.errors import InputError

DATASETS = ("digits", "mnist")
MIN_SHARD_SIZE = 8  # default fewest samples per Dirichlet shard (one small batch)


@dataclass(frozen=True)
class Dataset:
    images: torch.Tensor  # float32 [N, 1, 28, 28] in [-1, 1]
    labels: torch.Tensor  # int64 [N], 0..9
    name: str  # "digits", "mnist-train", "mnist-test"

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@functools.lru_cache(maxsize=1)
def _digits_28() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    raw = load_digits()
    small = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)
    box = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    box = box.clamp_(0.0, 1.0)
    canvas = torch.zeros(len(box), 1, 28, 28)
    coords = torch.arange(20, dtype=torch.float32) + 0.5
    mass = box.sum(dim=(1, 2, 3)).clamp_min(1e-6)
    cy = (box.sum(dim=3).squeeze(1) * coords).sum(1) / mass  # centre of mass in the box
    cx = (box.sum(dim=2).squeeze(1) * coords).sum(1) / mass
    top = (14.0 - cy).round().clamp(0, 8).long()  # 14: canvas centre; box stays inside
    left = (14.0 - cx).round().clamp(0, 8).long()
    for i, (t, l) in enumerate(zip(top.tolist(), left.tolist())):
        canvas[i, :, t : t + 20, l : l + 20] = box[i]
    images = (canvas * 2.0 - 1.0).numpy()
    return images, raw.target.astype(np.int64)


def load_digits_28() -> Dataset:
    """scikit-learn's digits framed like MNIST: 1,797 images, [N, 1, 28, 28] in [-1, 1].

    Computed once per process (about 50 ms) and kept in memory; each call returns copies.
    """
    images, labels = _digits_28()
    return Dataset(torch.tensor(images), torch.tensor(labels), "digits")


def load_mnist(root: str | Path, *, split: str = "train") -> Dataset:
    """The MNIST IDX files of ``split`` ("train" or "test") from the folder ``root``.

    Looks in ``root``, ``root/MNIST/raw`` and ``root/raw`` for ``{train,t10k}-images-
    idx3-ubyte`` and ``-labels-idx1-ubyte``, raw or ``.gz``. Any problem (missing folder
    or file, broken gzip, wrong magic number or size, truncated or overlong file, labels
    outside 0..9, mismatched counts) raises ``InputError`` naming the file.
    """
    if split not in ("train", "test"):
        raise InputError("split", None, f"must be 'train' or 'test', got {split!r}")
    folder = Path(root)
    if not folder.is_dir():
        raise InputError(str(folder), None, "MNIST folder does not exist")
    prefix = "train" if split == "train" else "t10k"
    image_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    label_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    pixels = _parse_idx(image_path, _read_bytes(image_path), magic=2051, dims=3)
    labels = _parse_idx(label_path, _read_bytes(label_path), magic=2049, dims=1)
    if pixels.shape[1:] != (28, 28):
        raise InputError(str(image_path), "dimensions", f"images are "
                         f"{pixels.shape[1]}x{pixels.shape[2]}, expected 28x28")
    if len(labels) != len(pixels):
        raise InputError(str(label_path), "count", f"{len(labels)} labels for "
                         f"{len(pixels)} images in {image_path.name}")
    if len(labels) and labels.max() > 9:
        raise InputError(str(label_path), "labels", f"label {int(labels.max())} found, "
                         "expected digits 0..9")
    images = torch.from_numpy(pixels.astype(np.float32) / np.float32(127.5) - 1)
    return Dataset(images.unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                   f"mnist-{split}")


def _find_idx(folder: Path, stem: str) -> Path:
    for place in (folder, folder / "MNIST" / "raw", folder / "raw"):
        for name in (stem, stem + ".gz"):
            if (place / name).is_file():
                return place / name
    raise InputError(str(folder), None, f"neither {stem} nor {stem}.gz found "
                     "(looked in the folder, MNIST/raw and raw)")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise InputError(str(path), None, f"cannot be read: {err}") from err


def _parse_idx(path: Path, data: bytes, *, magic: int, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes: magic (0, 0, 0x08, ndim), ndim big-endian int32
    sizes, then exactly prod(sizes) bytes (LeCun's MNIST page, "FILE FORMATS")."""
    header = 4 + 4 * dims
    if len(data) < header:
        raise InputError(str(path), "header", f"file is {len(data)} bytes, the header "
                         f"alone needs {header} (truncated?)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise InputError(str(path), "magic", f"found {found} (0x{found:08x}), expected "
                         f"{magic} (0x{magic:08x}); is this the right file?")
    shape = tuple(int(v) for v in np.frombuffer(data, ">u4", dims, offset=4))
    body = int(np.prod(shape))
    if len(data) != header + body:
        what = "truncated" if len(data) < header + body else "has trailing bytes"
        raise InputError(str(path), "length", f"{what}: {len(data)} bytes, header says "
                         f"{'x'.join(map(str, shape))} needs {header + body}")
    return np.frombuffer(data, np.uint8, body, offset=header).reshape(shape)


def load_dataset(name: str, *, root: str | Path | None = None,
                 split: str = "train") -> Dataset:
    """``"digits"`` (no files needed) or ``"mnist"`` (needs ``root``; see load_mnist)."""
    if name == "digits":
        return load_digits_28()
    if name == "mnist":
        if root is None:
            raise InputError("dataset", "root", "mnist needs the folder that holds its "
                             "IDX files")
        return load_mnist(root, split=split)
    raise InputError("dataset", None, f"unknown dataset {name!r}; expected one of "
                     f"{', '.join(DATASETS)}")


# --- shards ---------------------------------------------------------------------------

def shard_sizes(n: int, weights: Sequence[float], *, min_size: int = 1) -> np.ndarray:
    """Split ``n`` samples in proportion to ``weights`` (largest remainder), every share
    at least ``min_size``; the shares sum to ``n``."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"weights must be a non-empty list of positive numbers, got "
                         f"{list(weights)}")
    if n < len(w) * min_size:
        raise InputError("dataset", None, f"{n} samples cannot give {len(w)} clients at "
                         f"least {min_size} each")
    exact = n * w / w.sum()
    sizes = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[: n - int(sizes.sum())]] += 1
    while np.any(sizes < min_size):  # lift the smallest, from the most over its share
        over = np.where(sizes > min_size, sizes - exact, -np.inf)
        sizes[np.argmax(over)] -= 1
        sizes[np.argmin(sizes)] += 1
    return sizes


def shard_iid(n: int, weights: Sequence[float], *, seed: int) -> list[np.ndarray]:
    """Disjoint sorted index arrays covering ``range(n)``, sizes proportional to weights
    (each at least one sample)."""
    sizes = shard_sizes(n, weights)
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.split(perm, np.cumsum(sizes)[:-1])]


def shard_dirichlet(labels: torch.Tensor | np.ndarray, weights: Sequence[float], *,
                    alpha: float, seed: int,
                    min_size: int = MIN_SHARD_SIZE) -> list[np.ndarray]:
    """Non-IID shards after Hsu et al. 2019: client k wants labels q_k ~ Dir(alpha * p).

    Shard sizes are exactly ``shard_sizes(len(labels), weights, min_size=min_size)``.
    Samples are dealt in rounds: every client asks for its missing count from q_k
    (restricted to classes not yet used up); where a class is asked for more than it has,
    it is shared out by a multivariate hypergeometric draw. At most one round per class.
    Small alpha (0.1) gives clients one or two dominant labels; alpha = 100 is near IID.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    if not alpha > 0 or not np.isfinite(alpha):
        raise ValueError(f"alpha must be a positive number, got {alpha}")
    rng = np.random.default_rng(seed)
    sizes = shard_sizes(len(y), weights, min_size=min_size)
    classes, y_idx = np.unique(y, return_inverse=True)
    avail = np.bincount(y_idx, minlength=len(classes)).astype(np.int64)
    q = np.nan_to_num(rng.dirichlet(alpha * avail / avail.sum(), size=len(sizes)))
    take = np.zeros((len(sizes), len(classes)), dtype=np.int64)
    need = sizes.copy()
    while need.sum() > 0:
        p = q * (avail > 0)
        lost = p.sum(axis=1) == 0  # q_k fell entirely on used-up classes
        p[lost] = avail / avail.sum()
        p /= p.sum(axis=1, keepdims=True)
        ask = np.stack([rng.multinomial(need[k], p[k]) for k in range(len(sizes))])
        for j in np.flatnonzero(ask.sum(axis=0) > avail):
            ask[:, j] = rng.multivariate_hypergeometric(ask[:, j], int(avail[j]))
        take += ask
        need -= ask.sum(axis=1)
        avail -= ask.sum(axis=0)
    shards: list[list[np.ndarray]] = [[] for _ in sizes]
    for j in range(len(classes)):
        members = rng.permutation(np.flatnonzero(y_idx == j))
        for k, part in enumerate(np.split(members, np.cumsum(take[:, j])[:-1])):
            shards[k].append(part)
    return [np.sort(np.concatenate(parts)) for parts in shards]


# --- sampling -------------------------------------------------------------------------

class ShardSampler:
    """Endless batches from one shard: a fresh permutation each epoch (without
    replacement), a batch that crosses an epoch end is completed from the next one.

    Owns its ``torch.Generator``; ``state_dict()`` holds only tensors and ints, so it
    survives ``torch.save`` / ``torch.load(weights_only=True)``, and a sampler restored
    from it continues with exactly the batches the original would have drawn.
    """

    def __init__(self, images: torch.Tensor, *, batch_size: int, seed: int):
        if batch_size < 1 or len(images) < 1:
            raise ValueError(f"need batch_size >= 1 and a non-empty shard, got "
                             f"batch_size={batch_size}, {len(images)} images")
        self.images, self.batch_size = images, int(batch_size)
        self._gen = torch.Generator().manual_seed(int(seed))
        self._perm = torch.randperm(len(images), generator=self._gen)
        self._pos, self.epoch = 0, 0

    def next_indices(self) -> torch.Tensor:
        """Indices into ``images`` of the next batch (int64, ``batch_size`` long)."""
        parts, missing = [], self.batch_size
        while missing:
            if self._pos == len(self._perm):
                self._perm = torch.randperm(len(self.images), generator=self._gen)
                self._pos, self.epoch = 0, self.epoch + 1
            part = self._perm[self._pos : self._pos + missing]
            parts.append(part)
            self._pos += len(part)
            missing -= len(part)
        return torch.cat(parts)

    def next_batch(self) -> torch.Tensor:
        return self.images[self.next_indices()]

    def __iter__(self) -> ShardSampler:
        return self

    def __next__(self) -> torch.Tensor:
        return self.next_batch()

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        return {"generator": self._gen.get_state(), "perm": self._perm.clone(),
                "pos": self._pos, "epoch": self.epoch, "n": len(self.images),
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict, *, source: str = "checkpoint") -> None:
        """Continue from ``state``; a state from another shard or batch size is an
        ``InputError`` naming ``source``."""
        want = {"generator", "perm", "pos", "epoch", "n", "batch_size"}
        if not isinstance(state, dict) or set(state) != want:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise InputError(source, "sampler", f"expected keys {sorted(want)}, "
                             f"found {found}")
        if state["n"] != len(self.images) or state["batch_size"] != self.batch_size:
            raise InputError(source, "sampler", f"saved for {state['n']} images in "
                             f"batches of {state['batch_size']}, this run has "
                             f"{len(self.images)} in batches of {self.batch_size}")
        perm = state["perm"]
        if perm.shape != (len(self.images),) or not 0 <= state["pos"] <= len(perm):
            raise InputError(source, "sampler.perm", f"permutation of shape "
                             f"{tuple(perm.shape)} at {state['pos']} does not fit "
                             f"{len(self.images)} images")
        self._gen.set_state(state["generator"])
        self._perm, self._pos = perm.clone().long(), int(state["pos"])
        self.epoch = int(state["epoch"])
