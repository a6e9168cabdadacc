"""DP-SGD of a split discriminator (trainer.privacy.dpsgd) against an unsplit reference computed with
torch.func, Poisson sampling against its binomial law, the ledger through a failed and a
resumed run, and what leaves a client under DP."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from typer.testing import CliRunner

from cli import app
from planner.errors import InputError
from tests.helpers import B, chain_plan, config, run, write_factory
from trainer.privacy.accountant import ORDERS
from trainer.backends.local import run_local
from trainer.run.loop import run_role
from trainer.roles.build import RunSpec, client_discriminator
from trainer.roles.device import DeviceRole
from trainer.privacy.dpsgd import SAMPLERS, DeviceDP, check_layers, layer_sq_norms
from trainer.errors import DeviceFailure
from trainer.privacy.options import SecureRandom
from trainer.data.shards import PoissonSampler
from trainer.comm.transport import InProcessTransport


def _google_epsilon(q: float, sigma: float, steps: int, delta: float = 1e-5) -> float:
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    acc = rdp_privacy_accountant.RdpAccountant(orders=list(ORDERS))
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


def _reference_grads(model, real, fake, *, clip: float, sigma: float) -> dict[str, torch.Tensor]:
    """DP-SGD's gradient of the unsplit discriminator, from scratch: each real sample's
    gradient (torch.func.vmap of torch.func.grad) clipped to ``clip`` over all parameters,
    summed, plus the fake rows' batch gradient, over B; plus the noise (all ones here) x SIGMA C / B."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, label):
        out = torch.func.functional_call(model, p, (x.unsqueeze(0),)).reshape(())
        return F.binary_cross_entropy_with_logits(out, label)

    per = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, None))(params, real, torch.tensor(1.0))
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per.values()))
    c = (clip / norms).clamp(max=1.0)
    live = {k: v.clone().requires_grad_() for k, v in params.items()}
    fake_grads = torch.autograd.grad(sum(loss(live, f, torch.tensor(0.0)) for f in fake), list(live.values()))
    return {k: ((per[k] * c.view(-1, *[1] * (per[k].dim() - 1))).sum(0) + g) / B + sigma * clip / B
            for (k, _), g in zip(params.items(), fake_grads)}, c


@pytest.mark.parametrize("micro_batches, recompute, clip", [(1, (), 0.02), (2, (1,), 0.02), (2, (), 1e6)])
def test_split_per_sample_clipping_equals_the_unsplit_reference(tmp_path, monkeypatch, micro_batches, recompute, clip):
    """One DP step of a client on three devices (micro-batches, recomputation) gives every
    parameter the gradient that clipping the WHOLE discriminator's per-sample gradients
    gives; the loss that leaves the client is the fake half only."""
    plan = chain_plan(write_factory(tmp_path), [1, 3], micro_batches=micro_batches, recompute=recompute)
    sigma = 0.7
    monkeypatch.setattr(SecureRandom, "normal", lambda self, shape, dtype=torch.float32: torch.ones(shape, dtype=dtype))
    drawn, grads, apply = [], {}, DeviceDP.apply
    draw = PoissonSampler.next_batch

    def spy_draw(self):
        drawn.append(draw(self))
        return drawn[-1]

    def spy_apply(self, counts, factors):
        apply(self, counts, factors)
        grads.update({k: p.grad.clone() for k, p in self.stage.named_parameters()})

    monkeypatch.setattr(PoissonSampler, "next_batch", spy_draw)
    monkeypatch.setattr(DeviceDP, "apply", spy_apply)
    cfg = config(tmp_path, plan, "dp", rounds=1, steps_per_round=1, dp_noise=sigma, dp_clip=clip)
    t, seen, send = InProcessTransport(), {}, None
    send = t.send

    def spy(src, dst, tensor, *, tag):
        if tag in ("fake", "losses"):
            seen[tag] = tensor.detach().clone()
        return send(src, dst, tensor, tag=tag)

    t.send = spy
    run_local(RunSpec(cfg, plan), run_role, transport=t)
    model = client_discriminator(RunSpec(cfg, plan), 0)
    (real,) = drawn
    assert len(real) > 0
    want, c = _reference_grads(model, real, seen["fake"], clip=clip, sigma=sigma)
    assert set(grads) == set(want)
    assert (c < 0.5).any() if clip < 1 else (c == 1).all()  # clipping at work, or none
    for k in want:  # float32 sums in another order: 1e-7 apart measured
        torch.testing.assert_close(grads[k], want[k], rtol=0, atol=1e-6, msg=k)
    with torch.no_grad():
        fake_half = F.binary_cross_entropy_with_logits(model(seen["fake"]).squeeze(1), torch.zeros(B), reduction="sum") / B
    assert seen["losses"][0].item() == pytest.approx(fake_half.item(), rel=1e-5)


@pytest.mark.parametrize("layer, shape", [
    (torch.nn.Conv2d(3, 8, 5, 2, 2), (6, 3, 28, 28)),  # 196 positions: the per-sample gradient is cheaper
    (torch.nn.Conv2d(16, 32, 5, 2, 2), (6, 16, 8, 8)),  # 16 positions: the ghost norm is cheaper
    (torch.nn.Conv2d(4, 4, 3, 1, 1, bias=False), (6, 4, 5, 5)),
    (torch.nn.Linear(20, 3), (6, 20)),
    (torch.nn.GroupNorm(2, 4), (6, 4, 3, 3)),  # Opacus's grad sampler
])
def test_per_sample_norms_equal_the_per_sample_gradients_norms(layer, shape):
    """Against each sample's gradient computed alone by autograd (a batch of one)."""
    a = torch.randn(shape)
    g = torch.randn(layer(a).shape)
    want = []
    for r in range(shape[0]):
        grads = torch.autograd.grad(layer(a[r:r + 1]), list(layer.parameters()), g[r:r + 1])
        want.append(sum(x.double().pow(2).sum() for x in grads))
    torch.testing.assert_close(layer_sq_norms(layer, a, g), torch.stack(want), rtol=1e-5, atol=0)
    assert type(layer) in SAMPLERS


def test_poisson_sampling_draws_each_record_with_probability_q():
    """Batch sizes follow Binomial(N, q) and each record's inclusion count Binomial(T, q)."""
    n, b, steps = 400, 20, 2000
    s = PoissonSampler(torch.arange(n).float(), batch_size=b, random=SecureRandom())
    counts, sizes = torch.zeros(n), []
    for _ in range(steps):
        idx = s.next_indices()
        sizes.append(len(idx))
        counts[idx] += 1
    q = b / n
    mean_size = sum(sizes) / steps
    assert abs(mean_size - b) < 4 * math.sqrt(n * q * (1 - q) / steps)
    var = torch.tensor(sizes, dtype=torch.float64).var().item()
    assert abs(var / (n * q * (1 - q)) - 1) < 0.15
    assert stats.chisquare(counts.numpy()).pvalue > 1e-4  # no record favoured
    assert len(set(tuple(s.next_indices().tolist()) for _ in range(50))) == 50  # never the same draw


def test_layers_that_mix_samples_are_refused():
    check_layers(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.GroupNorm(1, 2), torch.nn.Linear(2, 1)))
    with pytest.raises(InputError, match=r"layer 1 \(BatchNorm2d\) mixes the samples"):
        check_layers(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)))


def test_a_batchnorm_discriminator_under_dp_is_exit_2_naming_the_layer(tmp_path):
    path = tmp_path / "bn.py"
    path.write_text(write_factory(tmp_path) and (tmp_path / "my_gan.py").read_text().replace(
        "nn.Conv2d(WIDTH, 16, 4, 2, 1),", "nn.Conv2d(WIDTH, 16, 4, 2, 1), nn.BatchNorm2d(16),"))
    plan = chain_plan(f"{path}:build", [2])
    cfg = config(tmp_path, plan)
    r = CliRunner().invoke(app, ["train", "--plan", str(cfg.plan_path), "--out", str(tmp_path / "run"),
                                 "--emulate", "none", "--eval-every", "0", "--dp-epsilon", "5"])
    assert r.exit_code == 2, r.output
    assert "BatchNorm2d" in r.stderr and "mixes the samples" in r.stderr and "Traceback" not in r.output


@pytest.mark.slow
def test_failed_and_resumed_rounds_are_charged_and_the_budget_ends_the_run(tmp_path, monkeypatch):
    """3 rounds of 3 steps planned at epsilon 4; round 2 fails at its second step. The ledger
    has 5 steps (3 + the 2 begun), not the checkpoint's 3. Resumed, round 2 runs again (8
    charged); a third round would pass 4, so the run stops there, exit 0, with the reason."""
    plan = chain_plan("dcgan", [2])
    forward, calls = DeviceRole._forward, {"n": 0}

    def failing(self, x):  # the loss device fails on step 5's first activation: its data device charged step 5
        if self.next is None:
            calls["n"] += 1  # two forwards a step (phases d and g)
            if calls["n"] == 9:
                raise RuntimeError("device unplugged")
        return forward(self, x)

    monkeypatch.setattr(DeviceRole, "_forward", failing)
    with pytest.raises(DeviceFailure):
        run(tmp_path, plan, rounds=3, steps_per_round=3, dp_epsilon=4.0)
    ledger = json.loads((tmp_path / "run" / "privacy" / "client0.json").read_text())
    assert sum(n for _, _, n in ledger["segments"]) == 5
    monkeypatch.setattr(DeviceRole, "_forward", forward)
    history = run(tmp_path, plan, rounds=3, steps_per_round=3, dp_epsilon=4.0, resume=True)
    last = history[-1]
    assert last["round"] == 2 and "another round would reach" in last["privacy_stop"]
    q, sigma, steps = json.loads((tmp_path / "run" / "privacy" / "client0.json").read_text())["segments"][0]
    assert steps == 8 == last["clients"]["client0"]["dp_steps"]
    # against Google's dp_accounting, not the project's accountant (RDP over the same orders)
    assert _google_epsilon(q, sigma, 8) <= 4.0 * (1 + 1e-3) and _google_epsilon(q, sigma, 11) > 4.0
    assert last["clients"]["client0"]["epsilon"] == pytest.approx(_google_epsilon(q, sigma, 8), rel=1e-3)
    assert last["d_loss"] == {"client0": None} and "client0" in last["d_loss_fake"]  # withheld, SPEC's key kept
    again = run(tmp_path, plan, rounds=3, steps_per_round=3, dp_epsilon=4.0, resume=True)  # no room left: no step
    assert again[-1]["round"] == 2 and json.loads((tmp_path / "run" / "privacy" / "client0.json").read_text())[
        "segments"][0][2] == 8


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "dist"])
def test_dp_trains_a_pipelined_recomputing_compressed_plan_on_both_backends(tmp_path, backend):
    """Three stages, M = 2, a recomputing stage and an int8 cut, two clients with fedavg
    (DP weights may leave): epsilon in metrics.jsonl is what Google's dp_accounting gives
    for the logged q, SIGMA, steps and delta, and within --dp-epsilon."""
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    from trainer.privacy.accountant import ORDERS

    plan = chain_plan("dcgan", [2, 6], n_clients=2, micro_batches=2, recompute=(1,), codecs={0: "int8"})
    history = run(tmp_path, plan, rounds=2, steps_per_round=2, backend=backend, dp_epsilon=10.0, aggregate="fedavg")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "NaN" not in lines[-1]
    for name, c in history[-1]["clients"].items():
        assert c["dp_steps"] == 4 and len(c["dp_batch_sizes"]) == 2 and name in history[-1]["d_loss_fake"]
        acc = rdp_privacy_accountant.RdpAccountant(orders=list(ORDERS))
        acc.compose(dp_accounting.PoissonSampledDpEvent(c["dp_q"], dp_accounting.GaussianDpEvent(c["dp_noise"])), 4)
        assert c["epsilon"] == pytest.approx(acc.get_epsilon(c["delta"]), rel=1e-3)
        assert c["epsilon"] <= 10.0 and c["delta"] == 1e-5


@pytest.mark.slow
def test_a_client_dropped_by_the_deadline_under_dp_is_charged_and_the_others_go_on(tmp_path):
    """Client 1 (20x slower) is dropped at its first step: its ledger holds the step it
    began, client 0 finishes every step, and both report epsilon."""
    plan = chain_plan("dcgan", [5], n_clients=2)
    fast, slow = plan.clients
    plan = replace(plan, clients=(replace(fast, processing_time_factor={d: 1.0 for d in fast.processing_time_factor}),
                                  replace(slow, processing_time_factor={d: 20.0 for d in slow.processing_time_factor})))
    (m,) = run(tmp_path, plan, rounds=1, steps_per_round=4, emulate="sleep", deadline_s=6.0, timeout_s=30.0,
               dp_epsilon=10.0)
    assert m["clients"]["client1"]["dropped_at_step"] == 0 and m["clients"]["client0"]["steps"] == 4
    assert m["clients"]["client0"]["dp_steps"] == 4 and m["clients"]["client1"]["dp_steps"] >= 1
    assert all(0 < c["epsilon"] <= 10 for c in m["clients"].values())
