"""trainer.quality.fid: metrics against closed forms and references; trainer.quality.classifier: the
cached classifier."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from planner.errors import InputError
from trainer.data.datasets import Dataset, load_digits_28
from trainer.quality.classifier import Classifier, load_or_train_classifier
from trainer.quality.fid import (QualityEvaluator, classifier_score, confidence_score,
                             frechet_distance, kernel_inception_distance)

QUICK_EPOCHS = 3  # ~96% held-out accuracy on digits in a few seconds


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits_28()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quality-cache")


@pytest.fixture(scope="module")
def classifier(digits: Dataset, cache_dir: Path) -> Classifier:
    return load_or_train_classifier(digits, cache_dir=cache_dir, epochs=QUICK_EPOCHS)


@pytest.fixture
def small(digits: Dataset) -> Dataset:  # trains in well under a second
    return Dataset(digits.images[:200], digits.labels[:200], "digits-200")


# --- the classifier and its cache -----------------------------------------------------

def test_classifier_is_accurate(classifier: Classifier, digits: Dataset) -> None:
    assert classifier.origin == "trained"
    assert classifier.test_accuracy > 0.9
    feats, logits = classifier.embed(digits.images[:300])
    assert feats.shape == (300, 128) and logits.shape == (300, 10)
    assert 0.5 < feats.pow(2).mean().sqrt() < 2  # normalised to RMS 1 on training data
    assert torch.equal(classifier.logits(digits.images[:300]), logits)


def test_cache_hit_gives_identical_features(classifier: Classifier, digits: Dataset,
                                            cache_dir: Path) -> None:
    again = load_or_train_classifier(digits, cache_dir=cache_dir, epochs=QUICK_EPOCHS)
    assert again.origin == "cache" and again.test_accuracy == classifier.test_accuracy
    x = digits.images[:64]
    assert torch.equal(again.features(x), classifier.features(x))
    assert [p.name for p in cache_dir.iterdir()] == [next(cache_dir.iterdir()).name]


def test_corrupt_cache_is_retrained(small: Dataset, tmp_path: Path) -> None:
    first = load_or_train_classifier(small, cache_dir=tmp_path, epochs=1)
    (path,) = tmp_path.iterdir()
    path.write_bytes(path.read_bytes()[:100])
    second = load_or_train_classifier(small, cache_dir=tmp_path, epochs=1)
    assert second.origin.startswith("retrained") and "unreadable" in second.origin
    assert torch.equal(second.features(small.images), first.features(small.images))
    assert load_or_train_classifier(small, cache_dir=tmp_path, epochs=1).origin == "cache"


def test_tampered_weights_fail_their_checksum(small: Dataset, tmp_path: Path) -> None:
    load_or_train_classifier(small, cache_dir=tmp_path, epochs=1)
    (path,) = tmp_path.iterdir()
    blob = torch.load(path, weights_only=True)
    blob["state"]["fc2.bias"] += 1.0
    torch.save(blob, path)
    again = load_or_train_classifier(small, cache_dir=tmp_path, epochs=1)
    assert "checksum" in again.origin


def test_other_seed_or_data_does_not_hit(small: Dataset, tmp_path: Path) -> None:
    load_or_train_classifier(small, cache_dir=tmp_path, epochs=1)
    assert load_or_train_classifier(small, cache_dir=tmp_path, epochs=1,
                                    seed=1).origin == "trained"
    other = Dataset(small.images.flip(-1), small.labels, "flipped")
    assert load_or_train_classifier(other, cache_dir=tmp_path, epochs=1).origin \
        == "trained"
    assert len(list(tmp_path.iterdir())) == 3


def test_unwritable_cache_dir_is_an_input_error(small: Dataset, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot write the classifier cache"):
        load_or_train_classifier(small, cache_dir=blocker / "cache", epochs=1)


# --- Frechet distance -----------------------------------------------------------------

def _with_stats(mu: np.ndarray, cov: np.ndarray, n: int = 400, seed: int = 0) -> np.ndarray:
    """n samples whose sample mean and unbiased covariance are exactly mu and cov."""
    z = np.random.default_rng(seed).standard_normal((n, len(mu)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # covariance I
    return z @ np.linalg.cholesky(cov).T + mu


def test_fid_of_a_set_with_itself_is_zero() -> None:
    f = np.random.default_rng(0).standard_normal((500, 16))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)


def test_fid_closed_form_commuting() -> None:
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expect = 1 + 4 + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()  # 5 + 1 + 1 + 4
    got = frechet_distance(_with_stats(mu_a, np.diag(var_a)), _with_stats(mu_b, np.diag(var_b), seed=1))
    assert got == pytest.approx(expect, rel=1e-9) and expect == 11


def test_fid_closed_form_general() -> None:
    rng = np.random.default_rng(1)
    m_a, m_b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    cov_a, cov_b = m_a @ m_a.T + 0.1 * np.eye(6), m_b @ m_b.T + 0.1 * np.eye(6)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(w)) @ v.T
    expect = np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(
        np.linalg.eigvalsh(root_a @ cov_b @ root_a)).sum()
    zeros = np.zeros(6)
    assert frechet_distance(_with_stats(zeros, cov_a), _with_stats(zeros, cov_b, seed=1)) == \
        pytest.approx(expect, rel=1e-7)


def test_fid_of_gaussian_samples_approaches_closed_form() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((20000, 4)) * [1, 2, 3, 1]
    b = rng.standard_normal((20000, 4)) * [2, 1, 1, 1] + [1, 0, 0, 0]
    expect = 1 + (1 + 1 + 4 + 0)
    assert frechet_distance(a, b) == pytest.approx(expect, rel=0.03)


def test_fid_survives_singular_covariances() -> None:
    rng = np.random.default_rng(3)
    a, b = np.zeros((100, 8)), np.zeros((100, 8))
    a[:, :2], b[:, 1:3] = rng.standard_normal((100, 2)), rng.standard_normal((100, 2))
    value = frechet_distance(a, b)
    assert np.isfinite(value) and value > 0


# --- KID and the classifier scores ----------------------------------------------------

def test_kid_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((30, 5)), rng.standard_normal((30, 5)) + 0.5
    # subsets as large as the sets: every subset is all of a and all of b
    mean, std = kernel_inception_distance(a, b, subsets=3, subset_size=1000)
    k_aa, k_bb, k_ab = [(x @ y.T / 5 + 1) ** 3 for x, y in ((a, a), (b, b), (a, b))]
    expect = ((k_aa.sum() - np.trace(k_aa)) / (30 * 29)
              + (k_bb.sum() - np.trace(k_bb)) / (30 * 29) - 2 * k_ab.mean())
    assert mean == pytest.approx(expect, rel=1e-5) and std == pytest.approx(0, abs=1e-6)  # float32


def test_kid_is_unbiased_for_one_distribution() -> None:
    rng = np.random.default_rng(5)
    same = [kernel_inception_distance(rng.standard_normal((300, 8)),
                                      rng.standard_normal((300, 8)), subsets=20,
                                      subset_size=200, seed=s)[0] for s in range(10)]
    shifted = kernel_inception_distance(rng.standard_normal((300, 8)),
                                        rng.standard_normal((300, 8)) + 0.5)[0]
    assert abs(np.mean(same)) < 0.01 < 0.2 < shifted


def test_scores_on_literal_logits() -> None:
    sure = torch.eye(10).repeat(5, 1) * 50  # every class, each predicted surely
    assert confidence_score(sure) == pytest.approx(1.0)
    assert classifier_score(sure) == pytest.approx(10.0, rel=1e-6)
    unsure = torch.zeros(50, 10)
    assert confidence_score(unsure) == pytest.approx(0.1)
    assert classifier_score(unsure) == pytest.approx(1.0)
    one_class = torch.zeros(50, 10)
    one_class[:, 3] = 50
    assert classifier_score(one_class) == pytest.approx(1.0)


# --- the evaluator --------------------------------------------------------------------

def test_evaluator_real_vs_noise(digits: Dataset, cache_dir: Path,
                                 classifier: Classifier) -> None:
    evaluator = QualityEvaluator(digits, cache_dir=cache_dir, n_real=800,
                                 epochs=QUICK_EPOCHS)
    assert evaluator.classifier.origin == "cache"
    held = digits.images[torch.randperm(len(digits))[:800]]
    start = time.perf_counter()
    real = evaluator.evaluate(held)
    elapsed_s = time.perf_counter() - start
    noise = evaluator.evaluate(torch.rand(800, 1, 28, 28) * 2 - 1)
    assert set(real) == {"fid", "kid", "kid_std", "confidence", "class_score"}
    assert real["fid"] < 0.05 * noise["fid"]
    assert abs(real["kid"]) < 0.05 < noise["kid"]
    assert real["confidence"] > 0.9 > noise["confidence"]
    assert real["class_score"] > 8 > noise["class_score"]
    assert elapsed_s < 10  # ~0.3 s on an idle 2-core machine; loose for busy CI


def test_fid_and_kid_real_halves_small_real_vs_noise_large(classifier: Classifier,
                                                           digits: Dataset) -> None:
    # a random split: the file is ordered by writer, so [:half] vs [half:] differ a bit
    feats = classifier.features(digits.images[torch.randperm(len(digits))])
    half = len(feats) // 2
    noisy_feats = classifier.features(torch.rand(half, 1, 28, 28) * 2 - 1)
    assert frechet_distance(feats[:half], feats[half:]) \
        < 0.1 * frechet_distance(noisy_feats, feats[half:])
    kid_real, kid_real_std = kernel_inception_distance(feats[:half], feats[half:])
    kid_noise, _ = kernel_inception_distance(noisy_feats, feats[half:])
    assert abs(kid_real) < 3 * kid_real_std + 0.01 < 0.1 * kid_noise


def test_evaluator_is_seeded_runs_the_network_once_and_keeps_the_global_rng(
        digits: Dataset, cache_dir: Path, classifier: Classifier) -> None:
    evaluator = QualityEvaluator(digits, cache_dir=cache_dir, n_real=600, epochs=QUICK_EPOCHS)
    fakes = torch.rand(300, 1, 28, 28) * 2 - 1
    calls = []
    hook = evaluator.classifier.net.register_forward_hook(lambda *_: calls.append(1))
    state = torch.random.get_rng_state()
    first = evaluator.evaluate(fakes)
    assert len(calls) == 1  # FID, KID and the class scores share one pass over the fakes
    assert torch.equal(torch.random.get_rng_state(), state)
    hook.remove()
    assert evaluator.evaluate(fakes.clone()) == first  # same fakes, same numbers (KID subsets seeded)
    other = evaluator.evaluate(torch.rand(300, 1, 28, 28) * 2 - 1)
    assert other["fid"] != first["fid"]  # the fakes of the last call are not kept
