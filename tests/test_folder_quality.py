"""Quality on image folders (``trainer.quality.evaluation``): FID and KID on a classifier of the
folder's class subfolders, trained on its held-out split; the pixel-statistics fallback
without classes; ``--fid-inception``'s refusals."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg, stats
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from typer.testing import CliRunner

from cli import app
from planner.errors import InputError
from tests.helpers import chain_plan, config
from trainer.data.datasets import DataSource
from trainer.quality.evaluation import Evaluation, sample_images
from trainer.quality.inception import check_weights

SIZE = 16
CHANNELS = ("red", "green", "blue")  # class k: a square lit in channel k only


def write_channel_squares(root: Path, *, per_class: int, seed: int = 0) -> Path:
    """Linearly separable classes: on a dim noisy background (every channel 0..40), a square
    of random place and side (5..8 px) lit 140..255 in its class's channel alone."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(CHANNELS):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 41, (SIZE, SIZE, 3)).astype(np.uint8)
            side = int(rng.integers(5, 9))
            top, left = rng.integers(0, SIZE - side + 1, 2)
            pixels[top:top + side, left:left + side, k] = rng.integers(140, 256)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


class _Gen(nn.Module):
    """A tiny generator (z [N, 8] -> [N, 3, 16, 16] in [-1, 1])."""

    z_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(self.z_dim, 3 * SIZE * SIZE), nn.Tanh(), nn.Unflatten(1, (3, SIZE, SIZE)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[DataSource, Evaluation]:
    root = write_channel_squares(tmp_path_factory.mktemp("toy") / "squares", per_class=200)
    src = DataSource.of(f"images:{root}", None, None, 0, (3, SIZE, SIZE))
    return src, Evaluation(src, seed=0, samples=64)


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID as the reference implementation writes it (scipy's sqrtm of the product)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


class _Identity(nn.Module):
    num_features = 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_the_folder_fid_is_torchmetrics_fid_on_the_classifiers_features(toy):
    """The row's fid against FIDs computed here from the classifier's features of all the
    held-out images and of the same fakes: by a fresh torchmetrics metric fed the features,
    and by scipy's matrix square root."""
    _, evaluation = toy
    generator = _Gen()
    row = evaluation(generator, 3)
    assert row["quality_features"].startswith("fid, kid on the features of a classifier of the folder's 3 class")
    fakes = sample_images(generator, 64, seed=0 * 100003 + 3)  # the seed Evaluation draws round 3's noise with
    clf = evaluation.quality.classifier
    real_f, fake_f = clf.features(evaluation.held_out.images).double(), clf.features(fakes).double()
    reference = FrechetInceptionDistance(feature=_Identity(), sync_on_compute=False)
    reference.update(real_f, real=True)
    reference.update(fake_f, real=False)
    assert row["fid"] == pytest.approx(float(reference.compute()), rel=1e-6)
    assert row["fid"] == pytest.approx(_scipy_fid(real_f.numpy(), fake_f.numpy()), rel=1e-5)
    assert row["fid"] > 1 and np.isfinite(row["kid"])  # noise against squares: far apart


def test_the_classifier_separates_a_toy_folder_and_reports_its_accuracy(toy):
    """The bound: a classifier of 3 classes that learned nothing is right a third of the
    time, and it would score >= 0.9 on the 480 pool images with probability < 1e-140; one
    that is right 97 % of the time (separable classes allow 100 %) scores under 0.9 with
    probability < 1e-6 (both computed below). The pool images were never seen by the
    classifier, which trains on the held-out split only: an independent test set."""
    src, evaluation = toy
    pool = src.client_data([1.0], 0, "only")
    assert len(pool) == 480 and len(evaluation.held_out) == 120
    n, bound = len(pool), 0.9
    assert stats.binom.sf(int(np.ceil(bound * n)) - 1, n, 1 / 3) < 1e-140
    assert stats.binom.cdf(int(np.ceil(bound * n)) - 1, n, 0.97) < 1e-6
    clf = evaluation.quality.classifier
    accuracy = float((clf.logits(pool.images).argmax(1) == pool.labels).double().mean())
    assert accuracy >= bound
    row = evaluation(_Gen(), 1)
    assert row["classifier_test_images"] == 24 and row["classifier_accuracy"] >= bound  # 24: a fifth of 120


def test_a_folder_without_classes_keeps_pixel_kid_and_says_why(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    src = DataSource.of(f"images:{root}", None, None, 0, (3, SIZE, SIZE))
    row = Evaluation(src, seed=0, samples=16)(_Gen(), 1)
    assert row["quality_features"].startswith("kid on pixel statistics")
    assert "no class subfolders, so no classifier is trained" in row["quality_features"]
    assert "fid" not in row and "classifier_accuracy" not in row and np.isfinite(row["kid"])


# --- --fid-inception: only its refusals run here (no Inception weights offline) -------

def _fidelity_imports() -> bool:
    try:
        importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
        return True
    except Exception:  # noqa: BLE001 - absent, or its torchvision import fails
        return False


class Payload:
    def __reduce__(self):
        return (print, ("an arbitrary call",))


def test_weights_that_are_missing_or_not_tensors_are_refused(tmp_path):
    with pytest.raises(InputError, match="--fid-inception: no such file"):
        check_weights(tmp_path / "absent.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a torch file")
    with pytest.raises(InputError, match=r"notes.pth: --fid-inception: not a file of tensors"):
        check_weights(text)
    evil = tmp_path / "evil.pth"
    with evil.open("wb") as f:
        pickle.dump({"w": Payload()}, f)
    with pytest.raises(InputError, match="weights_only=True"):
        check_weights(evil)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(InputError, match="holds no state dict of tensors"):
        check_weights(listed)


def test_fsl_train_refuses_wrong_inception_weights_with_one_line(tmp_path):
    """A state dict of tensors that is not the Inception: where torch-fidelity imports, its
    load fails on the tensors; where it does not (this machine: its package imports
    torchvision), the line says what to install. Either way exit 2 before --out exists."""
    weights = tmp_path / "small.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    cfg = config(tmp_path, chain_plan("dcgan", [3]))
    args = ["train", "--plan", str(cfg.plan_path), "--rounds", "1", "--steps-per-round", "1", "--emulate", "none",
            "--fid-inception", str(weights), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    says = "not the FID Inception's weights" if _fidelity_imports() else "pip install 'fsl-gan[inception]'"
    assert says in lines[0], lines[0]
    assert not (tmp_path / "run").exists()
    again = CliRunner().invoke(app, args + ["--eval-every", "0"])
    assert again.exit_code == 2 and "--eval-every 0 makes none" in again.stderr, again.output
