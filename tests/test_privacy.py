"""Epsilon (trainer.privacy.accountant) against independent accountants and closed forms, noise on
the first cut (trainer.privacy.options), the secure random source, and which options are refused.
DP-SGD itself is tested in test_dpsgd.py."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import stats

from planner.errors import InputError
from tests.helpers import B, chain_plan, config, first_real_batch, run
from trainer.privacy.accountant import ORDERS, Ledger, check_delta, epsilon, noise_for
from trainer.backends.local import run_local
from trainer.run.loop import run_role
from trainer.roles.build import RunSpec, client_discriminator
from trainer.config import TrainConfig, privacy_warnings
from trainer.privacy.options import SecureRandom
from trainer.comm.transport import InProcessTransport


def _google(q: float, sigma: float, steps: int, delta: float, *, pld: bool = False) -> float:
    """Epsilon of the Poisson-subsampled Gaussian mechanism by Google's dp_accounting (another
    library than the project's Opacus): RDP over the same orders, or the near-exact PLD."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    acc = pld_privacy_accountant.PLDAccountant() if pld else rdp_privacy_accountant.RdpAccountant(orders=list(ORDERS))
    acc.compose(event)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("q, sigma, steps, delta", [
    (32 / 719, 1.0, 300, 1e-5), (0.01, 0.7, 1000, 1e-5), (0.25, 2.0, 50, 1e-3), (1.0, 3.0, 10, 1e-5)])
def test_epsilon_is_what_another_library_computes_and_bounds_the_exact_one(q, sigma, steps, delta):
    ours = epsilon([(q, sigma, steps)], delta=delta)
    # the two libraries bound the RDP of fractional orders by different series: 0.03% apart at most here
    assert ours == pytest.approx(_google(q, sigma, steps, delta), rel=1e-3)
    assert ours >= _google(q, sigma, steps, delta, pld=True) * (1 - 1e-3)  # an upper bound of the PLD's


def test_security_md_example_without_subsampling_is_two_orders_larger():
    """The case the old accounting got wrong: N = 719, B = 32, 300 steps, SIGMA 1. With
    q = 1 (no amplification) RDP gives about 210; Poisson sampling at q = B / N about 5.7."""
    assert epsilon([(1.0, 1.0, 300)], delta=1 / 719) == pytest.approx(210.19, rel=1e-3)
    assert epsilon([(32 / 719, 1.0, 300)], delta=1e-5) == pytest.approx(5.718, rel=1e-3)


def test_epsilon_over_stretches_of_different_noise_composes():
    q, delta = 0.05, 1e-4
    got = epsilon([(q, 1.0, 50), (q, 2.0, 30), (q, 0.8, 5)], delta=delta)
    acc = rdp_privacy_accountant.RdpAccountant(orders=list(ORDERS))
    for sigma, n in ((1.0, 50), (2.0, 30), (0.8, 5)):
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), n)
    assert got == pytest.approx(acc.get_epsilon(delta), rel=1e-3)
    assert epsilon([(q, 1e-300, 1)], delta=delta) == math.inf and epsilon([], delta=delta) == 0


def test_epsilon_without_subsampling_is_the_gaussian_mechanisms():
    """q = 1: T steps of the Gaussian mechanism have RDP T x alpha / (2 sigma^2) (Mironov
    2017, Prop. 7), converted by Balle et al. 2020, Thm. 21; computed here from scratch."""
    sigma, steps, delta = 4.0, 20, 1e-5
    a = np.array(ORDERS)
    want = np.min(steps * a / (2 * sigma**2) - (np.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a))
    assert epsilon([(1.0, sigma, steps)], delta=delta) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("target, q, steps", [(10.0, 32 / 719, 600), (1.0, 0.01, 200), (3.0, 64 / 1000, 100)])
def test_the_noise_chosen_for_a_target_keeps_it_and_no_less_would(target, q, steps):
    sigma = noise_for(target, delta=1e-5, q=q, steps=steps)
    assert _google(q, sigma, steps, 1e-5) <= target
    assert _google(q, sigma * 0.97, steps, 1e-5) > target * 0.99  # not far more noise than needed


def test_the_ledger_charges_every_step_and_survives_the_file(tmp_path):
    path = tmp_path / "privacy" / "c.json"
    path.parent.mkdir()
    led = Ledger.open(path, client="c", records=1000, batch_size=50, delta=1e-5, clip=1.0, target_epsilon=None)
    for _ in range(7):
        led.charge(1.1, path)
    led.charge(1.3, path)
    again = Ledger.open(path, client="c", records=1000, batch_size=50, delta=1e-5, clip=1.0, target_epsilon=None)
    assert again.segments == [[0.05, 1.1, 7], [0.05, 1.3, 1]] and again.steps == 8
    assert again.epsilon() == pytest.approx(epsilon([(0.05, 1.1, 7), (0.05, 1.3, 1)], delta=1e-5))
    with pytest.raises(InputError, match="1000 records in batches of 50"):
        Ledger.open(path, client="c", records=999, batch_size=50, delta=1e-5, clip=1.0, target_epsilon=None)


def test_delta_must_be_below_one_over_n_and_batches_within_n():
    check_delta(1e-5, {"a": 700}, 32)
    with pytest.raises(InputError, match="1 / N"):
        check_delta(1 / 700, {"a": 700}, 32)
    with pytest.raises(InputError, match="fewer than a batch"):
        check_delta(1e-5, {"a": 500, "b": 31}, 32)


def test_secure_random_is_standard_normal_and_never_replays():
    z = SecureRandom().normal((200_000,), torch.float64).numpy()
    assert abs(z.mean()) < 4 / math.sqrt(len(z)) and abs(z.var() - 1) < 4 * math.sqrt(2 / len(z))
    assert stats.kstest(z, "norm").pvalue > 1e-3
    u = SecureRandom().uniform(100_000)
    assert 0 <= u.min() and u.max() < 1 and stats.kstest(u, "uniform").pvalue > 1e-3
    assert not torch.equal(SecureRandom().normal((8,)), SecureRandom().normal((8,)))  # fresh key each time
    key = bytes(range(32))
    assert torch.equal(SecureRandom(key).normal((8,)), SecureRandom(key).normal((8,)))


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
    return seen, run_local(RunSpec(cfg, plan), run_role, transport=t)


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
    (dict(dp_clip=1.0), "--dp-clip"),
    (dict(dp_noise=0.0), "--dp-noise"),
    (dict(dp_epsilon=-1.0), "--dp-epsilon"),
    (dict(dp_epsilon=1.0, dp_noise=1.0), "--dp-noise"),
    (dict(dp_clip=-1.0, dp_noise=1.0), "--dp-clip"),
    (dict(dp_epsilon=1.0, dp_delta=1.0), "--dp-delta"),
    (dict(secure_agg=True), "--secure-agg"),
    (dict(secure_agg=True, aggregate="swap"), "--secure-agg"),
    (dict(cut_noise=float("nan")), "--cut-noise"),
])
def test_privacy_options_that_do_not_go_together_are_refused(tmp_path, kw, where):
    with pytest.raises(InputError) as e:
        TrainConfig.from_cli(plan_path=tmp_path / "p.json", **kw)
    assert e.value.source == where
    for ok in (dict(dp_epsilon=10.0, aggregate="fedavg"), dict(dp_noise=1.0, aggregate="swap")):
        TrainConfig.from_cli(plan_path=tmp_path / "p.json", **ok)  # DP weights may leave: post-processing


def test_a_run_says_when_weights_without_dp_leave_the_client(tmp_path):
    base = dict(plan_path=tmp_path / "p.json")
    assert privacy_warnings(TrainConfig(**base)) == []
    (w,) = privacy_warnings(TrainConfig(**base, aggregate="swap"))
    assert "raw data leave" in w and "without DP" in w
    (w,) = privacy_warnings(TrainConfig(**base, aggregate="fedavg", secure_agg=True))
    assert "only the average" in w
    assert privacy_warnings(TrainConfig(**base, aggregate="fedavg", secure_agg=True, dp_epsilon=3.0)) == []


def test_a_resume_that_adds_dp_is_refused_naming_the_option(tmp_path):
    plan = chain_plan("dcgan", [2])
    run(tmp_path, plan, "resumed", rounds=1)
    with pytest.raises(InputError, match="--dp-noise: the run in .* was trained with None, this command says 1.0"):
        run(tmp_path, plan, "resumed", rounds=2, resume=True, dp_noise=1.0)
