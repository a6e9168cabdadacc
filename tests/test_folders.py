"""Image folders (``--data images:DIR``): labels from class folders, shards and the held-out
split, per-client folders, conversion to the model's input, and one-line errors naming
the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli import app
from planner.errors import InputError
from tests.helpers import assert_opened_exactly, chain_plan, config, opened_by, write_factory
from trainer import train
from trainer.roles.build import fit_images
from trainer.data.datasets import DataSource, held_out_rows
from trainer.data.folders import check_folder, list_folder, load_images


def _png(path: Path, colour, size=(16, 16), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def _classes(root: Path, counts: dict[str, int], size=(16, 16)) -> Path:
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            _png(root / name / f"{i:03d}.png", (40 * c, 10 * i % 256, 0), size)
    return root


def test_class_folders_become_labels_and_names_alone_are_read(tmp_path):
    root = _classes(tmp_path / "d", {"b_cats": 3, "a_dogs": 2})
    _png(tmp_path / "d" / "a_dogs" / ".hidden.png", 0)
    (tmp_path / "d" / "a_dogs" / "notes.txt").write_text("not an image")
    index = list_folder(root)
    assert index.classes == ("a_dogs", "b_cats") and index.labels.tolist() == [0, 0, 1, 1, 1]
    assert index.files[0] == "a_dogs/000.png" and len(index) == 5
    assert check_folder(index) == (16, 16)
    flat = tmp_path / "flat"
    for i in range(3):
        _png(flat / f"{i}.JPG", (i, i, i))
    assert list_folder(flat).classes == () and list_folder(flat).labels.tolist() == [0, 0, 0]


def test_images_are_converted_to_the_models_channels_and_size(tmp_path):
    red = _png(tmp_path / "f" / "red.png", (255, 0, 0, 128), size=(32, 32), mode="RGBA")
    index = list_folder(red.parent)
    rgb = load_images(index, np.array([0]), (3, 16, 16))
    assert rgb.shape == (1, 3, 16, 16) and rgb.dtype == torch.float32
    assert torch.allclose(rgb[0, :, 5, 5], torch.tensor([1.0, -1.0, -1.0]))  # alpha dropped, [-1, 1]
    gray = load_images(index, np.array([0]), (1, 8, 8))
    assert gray.shape == (1, 1, 8, 8) and -1 < gray[0, 0, 0, 0] < 0  # PIL's L: 0.299 R


def test_shards_are_disjoint_cover_the_pool_and_leave_the_held_out_split_alone(tmp_path):
    root = _classes(tmp_path / "d", {"a": 20, "b": 20, "c": 20})
    weights = [1.0, 2.0, 1.0]
    held = set(held_out_rows(60).tolist())
    assert len(held) == 12 and held_out_rows(60).tolist() == sorted(held)
    for alpha in (None, 0.3):
        src = DataSource.of(f"images:{root}", None, alpha, 7, (3, 16, 16))
        shards = [set(src.shard_rows(weights, k).tolist()) for k in range(3)]
        assert sum(map(len, shards)) == 48 and set().union(*shards) | held == set(range(60))
        assert not held & set().union(*shards)
        if alpha is None:
            assert [len(s) for s in shards] == [12, 24, 12]
    skewed = DataSource.of(f"images:{root}", None, 0.05, 0, (3, 16, 16))
    labels = list_folder(root).labels
    mixes = [np.bincount(labels[skewed.shard_rows(weights, k)], minlength=3) for k in range(3)]
    assert max(m.max() / m.sum() for m in mixes) > 0.8  # Dirichlet 0.05: a client dominated by one class
    data = skewed.client_data(weights, 1, "c1")
    assert data.images.shape == (len(data), 3, 16, 16) and data.labels.tolist() == labels[data.indices].tolist()
    ho = skewed.held_out()
    assert ho.indices.tolist() == sorted(held) and ho.name == f"images:{root}"


def test_per_client_folders_are_read_by_their_own_client_and_the_server(tmp_path):
    """From the files each reader opened (``trainer.privacy.opened``): a client's data opens every
    file of its own folder and nothing else under ``DIR``; the held-out split, the
    server's folder."""
    for name, n in (("c0", 5), ("c1", 7), ("server", 3)):
        for i in range(n):
            _png(tmp_path / name / f"{i}.png", (i, 0, 0))
    src = DataSource.of(f"images:{tmp_path}/{{client}}", None, None, 0, (3, 16, 16))
    for read, folder, n in ((lambda: src.client_data([1.0, 1.0], 1, "c1"), "c1", 7),
                            (lambda: src.client_data([1.0, 1.0], 0, "c0"), "c0", 5), (src.held_out, "server", 3)):
        record = opened_by(read, src)
        assert len(record["data"]) == n
        assert_opened_exactly({"role": folder} | record, list((tmp_path / folder).iterdir()))
        assert record["opened"]["data_folders_listed"] == [os.path.realpath(tmp_path / folder)]
    nothing = opened_by(lambda: src.check([1.0, 1.0]), src)["opened"]  # the folders may live on other machines
    assert nothing["data_files"] == {} and nothing["data_folders_listed"] == []
    with pytest.raises(InputError, match="c2: image folder does not exist"):
        src.client_data([1.0, 1.0, 1.0], 2, "c2")


def _broken(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """(the folder, the path the error must name) of a broken image folder."""
    root = tmp_path / kind
    root.mkdir()
    if kind == "empty":
        return root, root
    if kind == "no-images":
        (root / "readme.txt").write_text("x")
        return root, root
    _png(root / "a" / "0.png", 0)
    if kind == "garbage":
        (root / "a" / "1.png").write_bytes(b"\x89PNG but not really")
        return root, root / "a" / "1.png"
    if kind == "mixed-sizes":
        return root, _png(root / "a" / "1.png", 0, size=(17, 16))
    if kind == "gif":
        Image.new("P", (16, 16)).save(root / "a" / "1.png", format="GIF")
        return root, root / "a" / "1.png"
    if kind == "images-and-folders":
        _png(root / "loose.png", 0)
        return root, root
    if kind == "empty-class":
        (root / "b").mkdir()
        return root, root / "b"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, says", [
    ("empty", "no PNG/JPEG images in the folder"), ("no-images", "found 1 other files, e.g. readme.txt"),
    ("garbage", "cannot be read as an image"), ("mixed-sizes", "is 17x16 pixels, 0.png is 16x16"),
    ("gif", "is a GIF image, expected PNG or JPEG"), ("images-and-folders", "holds both images (loose.png)"),
    ("empty-class", "class folder holds no PNG/JPEG images"),
])
def test_a_broken_folder_ends_fsl_train_with_one_line_naming_the_file(tmp_path, kind, says):
    root, culprit = _broken(tmp_path, kind)
    plan = chain_plan("dcgan", [3])
    cfg = config(tmp_path, plan)
    result = CliRunner().invoke(app, ["train", "--plan", str(cfg.plan_path), "--data", f"images:{root}",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{culprit}:" in lines[0] and says in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_a_truncated_image_is_named_when_its_pixels_are_decoded(tmp_path):
    """The header is intact, so the up-front check passes; the client's data device, which
    decodes its shard, ends fsl train with one line naming the file."""
    folder = tmp_path / "f"
    for i in range(6):
        _png(folder / f"{i}.png", (40 * i, 0, 0), size=(64, 64))
    row = min(set(range(6)) - set(held_out_rows(6).tolist()))  # in the single client's shard
    path = folder / f"{row}.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-200])
    index = list_folder(folder)
    check_folder(index)
    with pytest.raises(InputError, match=f"{path}: cannot be decoded"):
        load_images(index, np.array([row]), (3, 16, 16))
    cfg = config(tmp_path, chain_plan("dcgan", [3]))
    result = CliRunner().invoke(app, ["train", "--plan", str(cfg.plan_path), "--data", f"images:{folder}",
                                      "--rounds", "1", "--steps-per-round", "1", "--emulate", "none",
                                      "--eval-every", "0", "--out", str(tmp_path / "run")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and f"{path}: cannot be decoded" in lines[0], result.output


def test_options_that_cannot_work_on_an_image_folder_are_refused_up_front(tmp_path):
    flat = tmp_path / "flat"
    for i in range(10):
        _png(flat / f"{i}.png", (i, 0, 0))
    plan = chain_plan("dcgan", [3], n_clients=2)
    with pytest.raises(InputError, match="--alpha splits by class: the folder needs one subfolder per class"):
        train(config(tmp_path, plan, data=f"images:{flat}", alpha=0.5))
    few = tmp_path / "few"
    for i in range(2):
        _png(few / f"{i}.png", (i, 0, 0))
    with pytest.raises(InputError, match=f"{few}: 1 samples cannot give 2 clients"):
        train(config(tmp_path, plan, data=f"images:{few}"))
    for kw, says in ((dict(data="images:"), "images: needs the folder"),
                     (dict(data=f"images:{flat}", data_root=flat), "names its folder itself"),
                     (dict(data=f"images:{tmp_path}/{{client}}", alpha=1.0), "per-client folders"),
                     (dict(data=f"images:{flat}", out_dir=flat / "run"), "the run's pictures would become training")):
        with pytest.raises(InputError, match=says):
            config(tmp_path, plan, **kw).validate()


def test_digits_train_a_model_that_takes_rgb(tmp_path):
    """A 3-channel model on the built-in digits: the grayscale images are repeated into RGB
    and the classifier scores the samples' luminance."""

    digits = torch.rand(4, 1, 28, 28) * 2 - 1
    rgb = fit_images(digits, (3, 16, 16))
    assert rgb.shape == (4, 3, 16, 16) and torch.equal(rgb[:, 0], rgb[:, 2])
    ref = write_factory(tmp_path)
    plan = chain_plan(ref, [1])
    history = train(config(tmp_path, plan, rounds=1, steps_per_round=1, eval_every=1, eval_samples=16))
    assert np.isfinite(history[0]["fid"]) and history[0]["quality_features"].startswith("fid, kid on the digits")
    rows = json.loads((tmp_path / "run" / "processes.json").read_text())["processes"]
    assert {r["data"] for r in rows if r["training_samples"]} == {"digits"}
