"""Differentially private generator feedback and noise on the first cut (trainer.privacy),
epsilon (trainer.accountant) against Opacus and a closed form, and which options are refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from scipy import stats
from typer.testing import CliRunner

from cli import app
from planner.errors import InputError
from tests.helpers import B, chain_plan, config, first_real_batch, run
from trainer import privacy
from trainer.accountant import ORDERS, check_budget, client_epsilon, epsilon
from trainer.backends.local import run_local
from trainer.build import RunSpec, client_discriminator
from trainer.config import TrainConfig, privacy_warnings
from trainer.privacy import Privacy, clip_per_sample
from trainer.transport import InProcessTransport


def test_clipping_bounds_each_sample_and_keeps_the_small_ones():
    g = torch.randn(64, 1, 28, 28) * torch.logspace(-3, 1, 64).view(-1, 1, 1, 1)
    C = 0.5
    out = clip_per_sample(g, C)
    before, after = g.flatten(1).norm(dim=1), out.flatten(1).norm(dim=1)
    small = before <= C
    assert 10 < small.sum() < 54  # both kinds are there
    assert torch.all(after <= C * (1 + 1e-6))
    assert torch.equal(out[small], g[small])
    torch.testing.assert_close(after[~small], torch.full_like(after[~small], C))
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), g.flatten(1))
    torch.testing.assert_close(cos, torch.ones(64))  # direction kept


def test_feedback_noise_has_the_stated_scale():
    """Per sample, noise of std SIGMA x C on the sample's own gradient, i.e. SIGMA x C / B
    on the row of a batch-mean gradient; mean 0, Gaussian (fixed seed)."""
    C, sigma, b = 0.05, 1.3, 32
    p = Privacy(C, sigma, generator=torch.Generator().manual_seed(7))
    noise = (p.feedback(torch.zeros(b, 1, 28, 28)) * b / (sigma * C)).flatten().double()
    n = noise.numel()
    assert abs(noise.mean().item()) < 4 / math.sqrt(n)
    assert abs(noise.var().item() - 1) < 4 * math.sqrt(2 / n)
    assert stats.kstest(noise.numpy(), "norm").pvalue > 1e-3
    assert p.feedback(torch.zeros(b, 3)).std().item() > 0  # fresh noise every call, not a replay
    assert torch.equal(Privacy().feedback(noise), noise)  # no DP: sent as computed


@pytest.mark.parametrize("q, sigma, steps, delta", [
    (32 / 719, 1.0, 300, 1 / 719), (0.01, 0.7, 1000, 1e-5), (0.25, 2.0, 50, 1e-3), (1.0, 3.0, 10, 1e-5)])
def test_epsilon_matches_opacus(q, sigma, steps, delta):
    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]
    want = acc.get_epsilon(delta=delta)
    assert epsilon(sample_rate=q, noise_multiplier=sigma, steps=steps, delta=delta) == pytest.approx(want, rel=1e-9)


def test_epsilon_over_rounds_of_different_noise_composes_as_opacus():
    q, delta = 0.05, 1e-4
    acc = RDPAccountant()
    acc.history = [(1.0, q, 50), (2.0, q, 30), (0.8, q, 5)]
    got = epsilon(sample_rate=q, delta=delta, segments=[(1.0, 50), (2.0, 30), (0.8, 5)])
    assert got == pytest.approx(acc.get_epsilon(delta=delta), rel=1e-9)
    assert epsilon(sample_rate=q, delta=delta, segments=[(1.0, 50), (None, 1)]) == math.inf  # a step without DP


def test_epsilon_without_subsampling_is_the_gaussian_mechanisms():
    """q = 1: T steps of the Gaussian mechanism have RDP T x alpha / (2 sigma^2) (Mironov
    2017, Prop. 7), converted by Balle et al. 2020, Thm. 21; computed here from scratch."""
    sigma, steps, delta = 4.0, 20, 1e-5
    a = np.array(ORDERS)
    want = np.min(steps * a / (2 * sigma**2) - (np.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a))
    assert epsilon(sample_rate=1.0, noise_multiplier=sigma, steps=steps, delta=delta) == pytest.approx(want, rel=1e-9)
    assert client_epsilon(records=100, batch_size=10, segments=[(1.0, 0)])["epsilon"] == 0


def _spy_run(tmp_path, plan, out: str, tags: set[str], **kw) -> tuple[list, list[dict]]:
    """Run ``plan`` for one step; returns (the messages with ``tags``, the metrics)."""
    cfg = config(tmp_path, plan, out, rounds=1, steps_per_round=1, **kw)
    t = InProcessTransport()
    seen, send = [], t.send

    def spy(src, dst, tensor, *, tag):
        if tag in tags:
            seen.append((src, tag, tensor.detach().clone()))
        return send(src, dst, tensor, tag=tag)

    t.send = spy
    return seen, run_local(RunSpec(cfg, plan), transport=t)


def test_the_server_receives_the_sanitised_gradient(tmp_path, monkeypatch):
    """The first step's feedback is the same with and without DP up to the sanitising, so
    the DP run's message must be exactly Privacy(C, SIGMA).feedback(the plain run's)."""
    plan = chain_plan("dcgan", [2])
    C, sigma = 1e-3, 0.8
    (plain,), _ = _spy_run(tmp_path, plan, "plain", {"fake_grad"})
    monkeypatch.setattr(privacy, "secret_seed", lambda: 1234)
    (noisy,), (m,) = _spy_run(tmp_path, plan, "dp", {"fake_grad"}, dp_clip=C, dp_noise=sigma)
    clean = plain[2]
    assert (clean.flatten(1).norm(dim=1) * B > C).sum() >= B // 2  # clipping is at work
    want = Privacy(C, sigma, generator=torch.Generator().manual_seed(1234)).feedback(clean)
    torch.testing.assert_close(noisy[2], want, atol=1e-9, rtol=0)
    rows = json.loads((tmp_path / "dp" / "processes.json").read_text())["processes"]
    n = next(r["training_samples"] for r in rows if r["training_samples"])
    got = m["clients"]["client0"]
    assert got["epsilon"] == pytest.approx(
        client_epsilon(records=n, batch_size=B, segments=[(sigma, 1)])["epsilon"], rel=1e-12)
    assert got["delta"] == 1 / n and got["dp_steps"] == 1 and 0 < got["epsilon"] < math.inf


def test_cut_noise_is_gaussian_on_what_the_data_device_sends(tmp_path, monkeypatch):
    """The first step's real activations across the first cut (before any update): the
    message is the clean activation plus N(0, SIGMA^2), nothing else."""
    plan = chain_plan("dcgan", [1])  # conv + LeakyReLU on the data device: no dropout before the cut
    sigma = 0.3
    seen, _ = _spy_run(tmp_path, plan, "noisy", {"act_d"}, cut_noise=sigma)
    sent = seen[0][2][:B]  # rows [real ; fake]: the real half
    d = client_discriminator(RunSpec(config(tmp_path, plan, "x"), plan), 0)
    with torch.no_grad():
        clean = d.run(first_real_batch(plan, 0), 0, 2)
    residual = (sent - clean).flatten().double()
    n = residual.numel()
    assert abs(residual.mean().item()) < 4 * sigma / math.sqrt(n)
    assert abs(residual.std().item() / sigma - 1) < 4 / math.sqrt(2 * n)
    plain, _ = _spy_run(tmp_path, plan, "plain", {"act_d"})
    torch.testing.assert_close(plain[0][2][:B], clean, atol=1e-6, rtol=0)  # no option: sent as computed


@pytest.mark.parametrize("kw, where", [
    (dict(dp_clip=1.0), "--dp-noise"),
    (dict(dp_clip=1.0, dp_noise=0.0), "--dp-noise"),
    (dict(dp_clip=-1.0, dp_noise=1.0), "--dp-clip"),
    (dict(dp_clip=1.0, dp_noise=1.0, aggregate="swap"), "--aggregate"),
    (dict(dp_clip=1.0, dp_noise=1.0, aggregate="fedavg"), "--aggregate"),
    (dict(secure_agg=True), "--secure-agg"),
    (dict(secure_agg=True, aggregate="swap"), "--secure-agg"),
    (dict(cut_noise=float("nan")), "--cut-noise"),
])
def test_privacy_options_that_do_not_go_together_are_refused(tmp_path, kw, where):
    with pytest.raises(InputError) as e:
        TrainConfig.from_cli(plan_path=tmp_path / "p.json", **kw)
    assert e.value.source == where
    TrainConfig.from_cli(plan_path=tmp_path / "p.json", dp_clip=1.0, dp_noise=1.0, aggregate="fedavg", secure_agg=True)


def test_a_run_says_that_aggregated_weights_leave_the_client(tmp_path):
    base = dict(plan_path=tmp_path / "p.json")
    assert privacy_warnings(TrainConfig(**base)) == []
    (w,) = privacy_warnings(TrainConfig(**base, aggregate="swap"))
    assert "raw data leave" in w and "every client's weights" in w
    (w,) = privacy_warnings(TrainConfig(**base, aggregate="fedavg", secure_agg=True, dp_clip=1.0, dp_noise=1.0))
    assert "raw data still leave" in w and "only the average" in w and "epsilon does not cover it" in w


def test_no_finite_epsilon_is_refused_with_exit_2(tmp_path):
    """Noise so small that the accountant has no finite epsilon: exit 2, one line, before
    any step; so is a client whose shard is smaller than a batch."""
    plan = chain_plan("dcgan", [2])
    cfg = config(tmp_path, plan, rounds=1)
    r = CliRunner().invoke(app, ["train", "--plan", str(cfg.plan_path), "--out", str(tmp_path / "run"),
                                 "--emulate", "none", "--eval-every", "0", "--dp-clip", "1", "--dp-noise", "1e-120"])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "--dp-noise" in lines[0] and "finite epsilon" in lines[0], r.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()
    run(tmp_path, plan, "resumed", rounds=1)
    with pytest.raises(InputError, match="--dp-clip: the run in .* was trained with None, this command says 1.0"):
        run(tmp_path, plan, "resumed", rounds=2, resume=True, dp_clip=1.0, dp_noise=1.0)
    with pytest.raises(InputError, match="fewer than a batch"):
        check_budget({"a": 500, "b": 31}, batch_size=32, noise_multiplier=1.0, steps=10)
