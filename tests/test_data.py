"""trainer.data.datasets and trainer.run.images: datasets, IDX validation, shards, samplers, grids."""

from __future__ import annotations

import gzip
import io
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from planner.errors import InputError
from trainer.data.datasets import DataSource, load_dataset, load_digits_28, load_mnist
from trainer.data.shards import ShardSampler, shard_dirichlet, shard_iid, shard_sizes
from trainer.run.images import grid_array, save_grid


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


# --- digits ---------------------------------------------------------------------------

def test_digits_are_framed_like_mnist() -> None:
    d = load_digits_28()
    assert len(d) == 1797 and d.name == "digits"
    assert d.images.shape == (1797, 1, 28, 28) and d.images.dtype == torch.float32
    assert d.labels.dtype == torch.int64 and set(d.labels.tolist()) == set(range(10))
    assert d.images.min() == -1.0 and d.images.max() <= 1.0
    ink = (d.images + 1) / 2
    coords = torch.arange(28.0) + 0.5
    cy = (ink.sum(3).squeeze(1) * coords).sum(1) / ink.sum((1, 2, 3))
    cx = (ink.sum(2).squeeze(1) * coords).sum(1) / ink.sum((1, 2, 3))
    assert abs(cy.mean() - 14) < 0.5 and abs(cx.mean() - 14) < 0.5
    rows, cols = (ink.amax(dim=(0, 1, 3)) > 0), (ink.amax(dim=(0, 1, 2)) > 0)
    assert rows.sum() <= 28 and int(cols.sum()) >= 20  # a 20-pixel box, shifted


def test_digits_calls_do_not_share_memory() -> None:
    a = load_digits_28()
    a.images.zero_()
    assert load_digits_28().images.min() == -1.0 and load_digits_28().images.max() > 0


# --- MNIST IDX files ------------------------------------------------------------------

def _idx(magic: int, shape: tuple[int, ...], body: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(shape)}I", *shape) + body


def _write_mnist(folder: Path, *, n: int = 5, prefix: str = "train", gz: bool = False,
                 images: bytes | None = None, labels: bytes | None = None) -> np.ndarray:
    pixels = np.arange(n * 784, dtype=np.int64).reshape(n, 28, 28) % 256
    images = images if images is not None else _idx(2051, (n, 28, 28),
                                                    pixels.astype(np.uint8).tobytes())
    labels = labels if labels is not None else _idx(2049, (n,), bytes(range(n)))
    folder.mkdir(parents=True, exist_ok=True)
    for stem, data in ((f"{prefix}-images-idx3-ubyte", images),
                       (f"{prefix}-labels-idx1-ubyte", labels)):
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return pixels


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_raw_and_gz(tmp_path: Path, gz: bool) -> None:
    pixels = _write_mnist(tmp_path, gz=gz)
    d = load_mnist(tmp_path)
    assert d.images.shape == (5, 1, 28, 28) and d.images.dtype == torch.float32
    assert d.labels.tolist() == [0, 1, 2, 3, 4] and d.labels.dtype == torch.int64
    expect = torch.from_numpy(pixels).float() / 127.5 - 1
    assert torch.allclose(d.images[:, 0], expect)
    assert d.name == "mnist-train"


def test_mnist_test_split_and_torchvision_layout(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "MNIST" / "raw", n=3, prefix="t10k", gz=True)
    d = load_dataset("mnist", root=tmp_path, split="test")
    assert len(d) == 3 and d.name == "mnist-test"


def _error(tmp_path: Path, **files) -> str:
    _write_mnist(tmp_path, **files)
    with pytest.raises(InputError) as err:
        load_mnist(tmp_path)
    return str(err.value)


def test_mnist_wrong_magic_names_the_file(tmp_path: Path) -> None:
    msg = _error(tmp_path, images=_idx(2049, (5, 28, 28), bytes(5 * 784)))
    assert "train-images-idx3-ubyte" in msg and "magic" in msg and "2051" in msg


def test_mnist_truncated_and_overlong(tmp_path: Path) -> None:
    good = _idx(2051, (5, 28, 28), bytes(5 * 784))
    assert "truncated" in _error(tmp_path / "a", images=good[:-10])
    assert "trailing" in _error(tmp_path / "b", images=good + b"\0")
    assert "header" in _error(tmp_path / "c", labels=b"\0\0\x08")


def test_mnist_bad_dimensions_counts_and_labels(tmp_path: Path) -> None:
    assert "32x32" in _error(tmp_path / "a", images=_idx(2051, (5, 32, 32),
                                                         bytes(5 * 1024)))
    assert "4 labels for 5 images" in _error(tmp_path / "b",
                                             labels=_idx(2049, (4,), bytes(4)))
    assert "label 12" in _error(tmp_path / "c", labels=_idx(2049, (5,), bytes([12] * 5)))


def test_mnist_corrupt_gzip(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(InputError, match="train-labels-idx1-ubyte.gz.*cannot be read"):
        load_mnist(tmp_path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="cannot be read"):
        load_mnist(tmp_path)


def test_mnist_missing_things(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(InputError, match="train-images-idx3-ubyte.gz found"):
        load_mnist(tmp_path)
    with pytest.raises(InputError, match="'train' or 'test'"):
        load_mnist(tmp_path, split="val")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_rows_are_the_rows_of_the_whole_file(tmp_path: Path, gz: bool) -> None:
    _write_mnist(tmp_path, n=9, gz=gz)
    whole, part = load_mnist(tmp_path), load_mnist(tmp_path, indices=np.array([7, 2, 5]))
    assert torch.equal(part.images, whole.images[[7, 2, 5]]) and part.labels.tolist() == [7, 2, 5]
    assert part.indices.tolist() == [7, 2, 5] and part.digest() != whole.digest()
    with pytest.raises(InputError, match="rows up to 9"):
        load_mnist(tmp_path, indices=np.array([9]))


def test_digits_rows_are_the_rows_of_the_whole_set() -> None:
    whole, part = load_digits_28(), load_digits_28(np.array([5, 1000, 3]))
    assert torch.equal(part.images, whole.images[[5, 1000, 3]])
    assert torch.equal(part.labels, whole.labels[[5, 1000, 3]])


@pytest.mark.parametrize("alpha", [None, 0.3])
def test_client_shards_are_disjoint_and_never_touch_the_held_out_split(alpha) -> None:
    src = DataSource("digits", alpha=alpha, seed=3)
    weights = [1.0, 2.0, 1.5]
    held = set(src.held_out().indices.tolist())
    shards = [set(src.shard_rows(weights, k).tolist()) for k in range(3)]
    assert len(held) == round(1797 * 0.2)
    assert not any(a & b for i, a in enumerate(shards) for b in shards[i + 1:])
    assert set().union(*shards) == set(range(1797)) - held
    mine = src.client_data(weights, 1, "b")
    assert set(mine.indices.tolist()) == shards[1] and len(mine) == len(shards[1])


def test_per_client_folders_hold_each_client_its_own_data(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "alice", n=4)
    _write_mnist(tmp_path / "bob", n=6)
    _write_mnist(tmp_path / "server", n=3, prefix="t10k")
    src = DataSource("mnist", root=str(tmp_path / "{client}"))
    assert src.per_client
    assert len(src.client_data([1, 1], 0, "alice")) == 4 and len(src.client_data([1, 1], 1, "bob")) == 6
    assert len(src.held_out()) == 3 and src.held_out().name == "mnist-test"
    with pytest.raises(InputError, match="carol"):
        src.client_data([1], 0, "carol")


def test_load_dataset_dispatch_errors() -> None:
    assert load_dataset("digits").name == "digits"
    with pytest.raises(InputError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(InputError, match="root"):
        load_dataset("mnist")


# --- shards ---------------------------------------------------------------------------

def test_shard_sizes_literal() -> None:
    assert shard_sizes(10, [1, 1, 2]).tolist() == [3, 2, 5]  # 2.5, 2.5, 5 -> tie to first
    assert shard_sizes(10, [1, 1, 100]).tolist() == [1, 1, 8]
    assert shard_sizes(10, [1, 1, 2, 2, 0.25]).tolist() == [1, 2, 3, 3, 1]
    assert shard_sizes(30, [1, 100], min_size=8).tolist() == [8, 22]
    with pytest.raises(InputError, match="5 samples cannot give 3 clients at least 2"):
        shard_sizes(5, [1, 1, 1], min_size=2)
    with pytest.raises(ValueError, match="positive"):
        shard_sizes(5, [1, 0])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(5, 400), weights=st.lists(st.floats(0.1, 10), min_size=1,
                                                max_size=5), seed=st.integers(0, 99))
def test_shard_iid_partitions(n: int, weights: list[float], seed: int) -> None:
    shards = shard_iid(n, weights, seed=seed)
    joined = np.concatenate(shards)
    assert sorted(joined.tolist()) == list(range(n))  # disjoint and covering
    assert all(len(s) >= 1 for s in shards)
    exact = n * np.array(weights) / sum(weights)
    if np.all(exact >= 1):  # no share needed lifting to the minimum of one
        assert np.all(np.abs(np.array([len(s) for s in shards]) - exact) < 1)
    assert all(np.array_equal(a, b) for a, b in zip(shards, shard_iid(n, weights,
                                                                      seed=seed)))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(40, 500), classes=st.integers(1, 10),
       weights=st.lists(st.floats(0.2, 5), min_size=1, max_size=5),
       alpha=st.sampled_from([0.01, 0.1, 1.0, 100.0]), seed=st.integers(0, 99))
def test_shard_dirichlet_partitions(n: int, classes: int, weights: list[float],
                                    alpha: float, seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, classes, n)
    shards = shard_dirichlet(labels, weights, alpha=alpha, seed=seed)
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    assert [len(s) for s in shards] == shard_sizes(n, weights, min_size=8).tolist()
    again = shard_dirichlet(torch.from_numpy(labels), weights, alpha=alpha, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))


def test_shard_dirichlet_small_alpha_is_skewed() -> None:
    labels = load_digits_28().labels.numpy()

    def top_share(alpha: float) -> float:
        shards = shard_dirichlet(labels, [1] * 6, alpha=alpha, seed=3)
        return float(np.mean([np.bincount(labels[s]).max() / len(s) for s in shards]))

    assert top_share(0.1) > 0.5 > 0.15 > top_share(1000.0)


# --- sampler --------------------------------------------------------------------------

def test_sampler_epochs_are_permutations_and_wrap() -> None:
    sampler = ShardSampler(torch.arange(10.0), batch_size=4, seed=1)
    drawn = torch.cat([sampler.next_indices() for _ in range(5)])  # 20 = two epochs
    assert sorted(drawn[:10].tolist()) == list(range(10))
    assert sorted(drawn[10:].tolist()) == list(range(10)) and sampler.epoch == 1
    assert not torch.equal(drawn[:10], drawn[10:])
    big = ShardSampler(torch.arange(3.0), batch_size=7, seed=0)
    assert len(next(big)) == 7


def test_sampler_restores_exactly_through_weights_only_load() -> None:
    images = torch.randn(13, 1, 28, 28)
    a = ShardSampler(images, batch_size=5, seed=7)
    for _ in range(4):
        a.next_batch()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = ShardSampler(images, batch_size=5, seed=999)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(8):
        assert torch.equal(a.next_batch(), b.next_batch())
    assert a.epoch == b.epoch


def test_sampler_rejects_foreign_state() -> None:
    state = ShardSampler(torch.zeros(10), batch_size=4, seed=0).state_dict()
    with pytest.raises(InputError, match="run.pt: sampler: saved for 10 images"):
        ShardSampler(torch.zeros(11), batch_size=4, seed=0).load_state_dict(
            state, source="run.pt")
    with pytest.raises(InputError, match="expected keys"):
        ShardSampler(torch.zeros(10), batch_size=4, seed=0).load_state_dict({"n": 10})


# --- image grids ----------------------------------------------------------------------

def test_save_grid_writes_png(tmp_path: Path) -> None:
    images = torch.full((10, 1, 28, 28), 1.0)
    images[3] = -1.0
    path = tmp_path / "samples" / "round_0001.png"
    save_grid(images, path, nrow=4, scale=2)
    picture = np.asarray(Image.open(path))
    assert picture.shape == (2 * (3 * 30 + 2), 2 * (4 * 30 + 2))
    assert picture[2 * 2, 2 * 2] == 255 and picture[0, 0] == 0  # image, then padding
    assert picture[2 * 2, 2 * (2 + 3 * 30)] == 0  # the black fourth image
    assert list(tmp_path.joinpath("samples").iterdir()) == [path]  # no temp left


def test_grid_array_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[N >= 1, 1 or 3, H, W\]"):
        grid_array(torch.zeros(2, 28, 28))
