"""Data sets, and which part of them each role may hold.

Images are float32 in [-1, 1], shape [N, 1, 28, 28] (an image folder: the model's input
shape); labels are int64 (digits 0..9; an image folder's class folders 0..K-1).

- ``digits``: scikit-learn's 1,797 8x8 digits (values 0..16), framed like MNIST: each
  digit is upsampled bilinearly to a 20x20 box and placed in a 28x28 canvas so that its
  centre of mass sits at the centre (LeCun et al., the MNIST page: "centered in a 28x28
  image by computing the center of mass of the pixels").
- ``mnist``: the real IDX files from a local folder, validated byte by byte.

Locality (:class:`DataSource`): a run's data is a *training pool*, sharded over the
clients, and a *held-out* split that no client trains on, used only for evaluation on
the server. ``digits``: a fixed 20 % of the 1,797 images (``SPLIT_SEED``) is held out;
``mnist``: the training file is the pool, ``t10k`` the held-out split. A data device
computes every client's shard boundaries from the pool's labels alone
(``trainer.data.shards``) and keeps only its own shard's images: raw IDX files are
memory-mapped and only those rows read (a ``.gz`` file is decompressed in memory and the
other rows dropped at once); the digits are one file inside scikit-learn, parsed whole
(every 8x8 digit) and only the shard's rows framed. Which files each role opened is
recorded, not taken from here (``trainer.privacy.opened``). With ``--data-root 'DIR/{client}'`` every client's data
device reads its own folder (``DIR/<client>``, IDX training files) and nothing is
sharded; the server reads its held-out ``t10k`` files from ``DIR/server``.

``images:DIR`` (``trainer.data.folders``): a fixed 20 % of the folder's files is held out;
the rest is the pool. ``images:DIR/{client}``: each client's data device reads all of
``DIR/<client>`` and the server its held-out images from ``DIR/server``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from planner.errors import InputError
from trainer.data.folders import FolderIndex, check_folder, list_folder, load_images
from trainer.data.idx import idx_rows, mnist_labels
from trainer.data.shards import shard_dirichlet, shard_iid

DATASETS = ("digits", "mnist")
IMAGES = "images:"  # --data images:DIR: an image folder (trainer.data.folders)
HELD_OUT_FRACTION = 0.2  # digits: the share held out for evaluation
SPLIT_SEED = 20_221_010  # digits: the held-out split is the same for every run and seed
CLIENT = "{client}"  # in --data-root: each client's own folder
N_DIGITS = 1797


@dataclass(frozen=True)
class Dataset:
    images: torch.Tensor  # float32 [N, C, H, W] in [-1, 1]; [N, 1, 28, 28] for digits and MNIST
    labels: torch.Tensor  # int64 [N]: digits 0..9, or an image folder's class index
    name: str  # "digits", "mnist-train", "mnist-test", "images:<folder>"
    indices: torch.Tensor | None = None  # int64 [N]: rows of the source these images are

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def digest(self) -> str:
        """sha256 of the source name and the rows held: what processes.json reports."""
        rows = self.indices if self.indices is not None else torch.arange(len(self))
        h = hashlib.sha256(self.name.encode())
        h.update(np.sort(rows.numpy().astype(np.int64)).tobytes())
        return "sha256:" + h.hexdigest()


def _raw_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def digits_labels() -> np.ndarray:
    return _raw_digits().target.astype(np.int64)


def load_digits_28(indices: np.ndarray | None = None) -> Dataset:
    """scikit-learn's digits framed like MNIST, [N, 1, 28, 28] in [-1, 1]: all 1,797, or
    only the rows ``indices`` (the others are never framed and not kept)."""
    raw = _raw_digits()
    rows = np.arange(N_DIGITS) if indices is None else np.asarray(indices, dtype=np.int64)
    small = torch.from_numpy(raw.images[rows].astype(np.float32) / 16.0).unsqueeze(1)
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
    labels = torch.from_numpy(raw.target[rows].astype(np.int64))
    return Dataset(canvas * 2.0 - 1.0, labels, "digits", torch.from_numpy(rows))


def load_mnist(root: str | Path, *, split: str = "train", indices: np.ndarray | None = None) -> Dataset:
    """The MNIST IDX files of ``split`` ("train" or "test") from the folder ``root``: every
    image, or only the rows ``indices``.

    Looks in ``root``, ``root/MNIST/raw`` and ``root/raw`` for ``{train,t10k}-images-
    idx3-ubyte`` and ``-labels-idx1-ubyte``, raw or ``.gz``. Any problem (missing folder
    or file, broken gzip, wrong magic number or size, truncated or overlong file, labels
    outside 0..9, mismatched counts, a row index out of range) raises ``InputError``
    naming the file.
    """
    image_path, labels = mnist_labels(root, split)
    pixels, n = idx_rows(image_path, magic=2051, dims=3, rows=indices)
    if pixels.shape[1:] != (28, 28):
        raise InputError(str(image_path), "dimensions", f"images are "
                         f"{pixels.shape[1]}x{pixels.shape[2]}, expected 28x28")
    if n != len(labels):
        raise InputError(str(image_path), "count", f"{len(labels)} labels for {n} images in {image_path.name}")
    rows = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    images = torch.from_numpy(pixels.astype(np.float32) / np.float32(127.5) - 1)
    return Dataset(images.unsqueeze(1), torch.from_numpy(labels[rows].astype(np.int64)),
                   f"mnist-{split}", torch.from_numpy(rows))


def load_dataset(name: str, *, root: str | Path | None = None, split: str = "train") -> Dataset:
    """A whole data set: ``"digits"`` (no files needed) or ``"mnist"`` (needs ``root``)."""
    if name == "digits":
        return load_digits_28()
    if name == "mnist":
        if root is None:
            raise InputError("dataset", "root", "mnist needs the folder that holds its IDX files")
        return load_mnist(root, split=split)
    raise InputError("dataset", None, f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


@dataclass(frozen=True)
class DataSource:
    """A run's data and the split rules; each role asks only for what it may hold."""

    name: str  # digits | mnist | images
    root: str | None = None  # mnist: the IDX folder; images: the image folder; either may hold {client}
    alpha: float | None = None  # Dirichlet alpha of the shards; None = IID
    seed: int = 0  # the shards' seed
    shape: tuple[int, ...] = (1, 28, 28)  # images: the model's input (C, H, W) they are loaded as

    @classmethod
    def of(cls, data: str, data_root: str | None, alpha: float | None, seed: int,
           shape: tuple[int, ...]) -> "DataSource":
        """The source ``--data`` / ``--data-root`` name (``images:DIR`` carries its folder)."""
        if data.startswith(IMAGES):
            return cls("images", data[len(IMAGES):], alpha, seed, tuple(shape))
        return cls(data, data_root, alpha, seed, tuple(shape))

    @property
    def per_client(self) -> bool:
        return self.root is not None and CLIENT in self.root

    def _pool(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows of the training pool in the source, their labels): labels only."""
        if self.name == "digits":
            labels = digits_labels()
            rows = np.setdiff1d(np.arange(N_DIGITS), _digits_held_out())
            return rows, labels[rows]
        if self.name == "images":
            labels = list_folder(self.root).labels
            rows = np.setdiff1d(np.arange(len(labels)), held_out_rows(len(labels)))
            return rows, labels[rows]
        _, labels = mnist_labels(self.root, "train")
        return np.arange(len(labels)), labels

    def shard_rows(self, weights: list[float], k: int) -> np.ndarray:
        """Rows of the source that client ``k`` of clients weighted ``weights`` holds."""
        rows, labels = self._pool()
        try:
            if self.alpha is None:
                shards = shard_iid(len(rows), weights, seed=self.seed)
            else:
                shards = shard_dirichlet(labels, weights, alpha=self.alpha, seed=self.seed)
        except InputError as e:
            raise InputError(self.root if self.name == "images" else e.source, e.field, e.problem) from None
        return rows[shards[k]]

    def client_data(self, weights: list[float], k: int, client: str) -> Dataset:
        """Client ``k``'s training data, and nothing else: its shard, or its own folder."""
        if self.per_client:
            folder = self.root.replace(CLIENT, client)
            if self.name == "images":
                return _folder_rows(list_folder(folder), None, self.shape)
            return load_mnist(folder, split="train")
        rows = self.shard_rows(weights, k)
        if self.name == "digits":
            return load_digits_28(rows)
        if self.name == "images":
            return _folder_rows(list_folder(self.root), rows, self.shape)
        return load_mnist(self.root, split="train", indices=rows)

    def held_out(self) -> Dataset:
        """The evaluation split: no client trains on it."""
        if self.name == "digits":
            return load_digits_28(_digits_held_out())
        root = self.root.replace(CLIENT, "server") if self.per_client else self.root
        if self.name == "images":
            index = list_folder(root)
            return _folder_rows(index, None if self.per_client else held_out_rows(len(index)), self.shape)
        return load_mnist(root, split="test")

    def check(self, weights: list[float]) -> None:
        """Fail before any role starts where the data is certain to fail: an image folder
        shared by every client is listed, every header read and the shards computed. A
        per-client folder is checked by its own data device (it may live elsewhere)."""
        if self.name != "images" or self.per_client:
            return
        index = list_folder(self.root)
        check_folder(index)
        if self.alpha is not None and len(index.classes) < 2:
            raise InputError(self.root, None, f"--alpha splits by class: the folder needs one subfolder per class, "
                             f"found {len(index.classes) or 'no'} class folder{'s' * (len(index.classes) != 1)}")
        for k in range(len(weights)):
            self.shard_rows(weights, k)


def held_out_rows(n: int) -> np.ndarray:
    """An image folder's held-out rows: a fixed 20 % (at least one), the same for every
    run and seed, like the digits'."""
    return np.sort(np.random.default_rng(SPLIT_SEED).permutation(n)[:max(1, int(round(n * HELD_OUT_FRACTION)))])


def _folder_rows(index: FolderIndex, rows: np.ndarray | None, shape: tuple[int, ...]) -> Dataset:
    """Rows of an image folder (all of it if None) as a Dataset, loaded as ``shape``."""
    rows = np.arange(len(index)) if rows is None else np.asarray(rows, dtype=np.int64)
    return Dataset(load_images(index, rows, shape), torch.from_numpy(index.labels[rows]),
                   f"images:{index.root}", torch.from_numpy(rows))


def _digits_held_out() -> np.ndarray:
    n = int(round(N_DIGITS * HELD_OUT_FRACTION))
    return np.sort(np.random.default_rng(SPLIT_SEED).permutation(N_DIGITS)[:n])
