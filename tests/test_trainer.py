"""The split run against references written independently of trainer/: one piece, the
generator's weighted feedback, fedavg and swap; the deadline. That raw images never leave
the data device: ``tests/test_raw_images.py``."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from planner.models import Generator, SeededDropout, build_discriminator
from tests.helpers import B, chain_plan, final_states, first_real_batch, run


def reference_step(plan, *, seed: int = 0, feedback: str = "mean"):
    """One step of every client's whole discriminator and the generator, in one piece:
    (discriminators, generator, [(d_loss, g_loss)] per client). ``feedback="sum"``: the
    generator steps on the unweighted sum of the clients' gradients."""
    ds = []
    for k in range(len(plan.planned)):
        torch.manual_seed(seed + 1)
        d = build_discriminator(plan.model["name"])
        for i, layer in enumerate(d.layers):
            if isinstance(layer, SeededDropout):
                layer.reseed((seed * 7919 + k) * 1009 + i)
        ds.append(d)
    torch.manual_seed(seed)
    g = Generator()
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    z = torch.randn(B, 100, generator=torch.Generator().manual_seed(seed + 12345))
    fake = g(z)
    losses = []
    for k, d in enumerate(ds):
        opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
        out = d(torch.cat([first_real_batch(plan, k, seed=seed), fake.detach()])).squeeze(1)
        loss_d = F.binary_cross_entropy_with_logits(out[:B], torch.ones(B)) + \
            F.binary_cross_entropy_with_logits(out[B:], torch.zeros(B))
        opt.zero_grad()
        loss_d.backward()
        opt.step()
        losses.append(loss_d.item())
    w = [c.data_weight for c in plan.planned]
    g_losses = [F.binary_cross_entropy_with_logits(d(fake).squeeze(1), torch.ones(B)) for d in ds]
    # d/dG of sum_k w_k loss_k / sum w, summed in client order as the server does: Adam's
    # first step is about lr x sign(gradient), so a different summation order would move
    # near-zero entries by up to lr and hide what this test is for
    grads = [torch.autograd.grad(lk, fake, retain_graph=True)[0] for lk in g_losses]
    opt_g.zero_grad()
    scale = [1.0] * len(w) if feedback == "sum" else [wk / sum(w) for wk in w]
    fake.backward(sum(fk * sk for fk, sk in zip(grads, scale)))
    opt_g.step()
    return ds, g, [(ld, lg.item()) for ld, lg in zip(losses, g_losses)]


def assert_states_equal(got: dict, module: torch.nn.Module, atol: float = 1e-6) -> None:
    want = module.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, atol=atol, rtol=0, msg=k)


@pytest.mark.parametrize("trial", range(3))
def test_split_equals_unsplit(tmp_path, trial):
    rng = random.Random(trial)
    L = len(build_discriminator("dcgan"))
    plan = chain_plan("dcgan", sorted(rng.sample(range(L - 1), rng.randint(1, 4))))
    (m,) = run(tmp_path, plan, rounds=1, steps_per_round=1)
    ds, g, losses = reference_step(plan)
    assert m["d_loss"]["client0"] == pytest.approx(losses[0][0], abs=1e-6)
    assert m["g_loss"] == pytest.approx(losses[0][1], abs=1e-6)
    gen, discs = final_states(tmp_path / "run", plan)
    assert_states_equal(discs["client0"], ds[0])
    assert_states_equal(gen, g)


def test_generator_feedback_is_weighted_by_data_weight(tmp_path):
    """Two clients of data_weight 1 and 3, cut differently: the generator's step follows
    the weighted mean of their feedback (a plain mean would move it elsewhere)."""
    plan = chain_plan("dcgan", [[2], [4, 7]], weights=[1.0, 3.0])
    (m,) = run(tmp_path, plan, rounds=1, steps_per_round=1)
    ds, g, losses = reference_step(plan)
    gen, discs = final_states(tmp_path / "run", plan)
    assert_states_equal(gen, g)
    for k, c in enumerate(plan.planned):
        assert_states_equal(discs[c.name], ds[k])
        assert m["d_loss"][c.name] == pytest.approx(losses[k][0], abs=1e-6)
    assert m["g_loss"] == pytest.approx((losses[0][1] + 3 * losses[1][1]) / 4, abs=1e-6)
    assert abs(losses[0][1] - losses[1][1]) > 1e-4  # else the weighting would not show


def test_summed_feedback_against_an_independent_computation(tmp_path):
    """``--feedback sum``: the generator steps on the plain sum of the clients' gradients,
    so data weights 1 and 3 no longer count; it ends where the weighted mean does not."""
    plan = chain_plan("dcgan", [[2], [4, 7]], weights=[1.0, 3.0])
    (m,) = run(tmp_path, plan, rounds=1, steps_per_round=1, feedback="sum")
    gen, discs = final_states(tmp_path / "run", plan)
    ds, g, losses = reference_step(plan, feedback="sum")
    assert_states_equal(gen, g)
    for k, c in enumerate(plan.planned):
        assert_states_equal(discs[c.name], ds[k])
    _, g_mean, _ = reference_step(plan)
    moved = max((g.state_dict()[k] - v).abs().max().item() for k, v in g_mean.state_dict().items())
    assert moved > 1e-5  # the weighted mean would have stepped elsewhere
    assert m["g_loss"] == pytest.approx((losses[0][1] + 3 * losses[1][1]) / 4, abs=1e-6)  # the metric stays weighted


def _params(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(("weight", "bias"))}


@pytest.mark.parametrize("mode", ["fedavg", "swap"])
def test_aggregation_against_an_independent_computation(tmp_path, mode):
    """Three clients cut at different places, unequal shards: after a round, fedavg gives
    every client the sample-weighted average of all, swap gives client i client i-1's."""
    plan = chain_plan("dcgan", [[2], [5], [2, 6]], weights=[1.0, 2.0, 3.0])
    run(tmp_path, plan, "none", rounds=1, steps_per_round=1)
    run(tmp_path, plan, mode, rounds=1, steps_per_round=1, aggregate=mode)
    _, before = final_states(tmp_path / "none", plan)
    _, after = final_states(tmp_path / mode, plan)
    rows = json.loads((tmp_path / mode / "processes.json").read_text())["processes"]
    n = {r["client"]: r["training_samples"] for r in rows if r["training_samples"]}
    names = [c.name for c in plan.planned]
    assert len(set(n.values())) == 3  # unequal shards, so a plain mean would differ
    key = "layers.0.weight"
    assert not torch.equal(before[names[0]][key], before[names[1]][key])  # clients differ before combining
    for i, c in enumerate(names):
        if mode == "fedavg":
            want = {k: sum(n[o] * before[o][k] for o in names) / sum(n.values()) for k in _params(before[c])}
        else:
            want = _params(before[names[i - 1]])
        for k, v in want.items():
            torch.testing.assert_close(after[c][k], v, atol=1e-6, rtol=0, msg=f"{c} {k}")


@pytest.mark.slow  # timing: a 30 s round against 1 s timeouts
def test_deadline_releases_a_dropped_client_at_once(tmp_path):
    """A client slower than the deadline allows (each of its compute phases within
    --timeout-s, its step not) is dropped at its first step; its devices stop at once, so
    the rest of the round may last many times --timeout-s."""
    plan = chain_plan("dcgan", [5], n_clients=2)
    fast, slow = plan.clients
    plan = replace(plan, clients=(
        replace(fast, processing_time_factor={d: 2.0 for d in fast.processing_time_factor}),
        replace(slow, processing_time_factor={d: 20.0 for d in slow.processing_time_factor})))
    timeout_s, steps, deadline_s = 1.0, 60, 30.0
    (m,) = run(tmp_path, plan, rounds=1, steps_per_round=steps, emulate="sleep", deadline_s=deadline_s,
               timeout_s=timeout_s)
    assert m["clients"]["client1"]["dropped_at_step"] == 0 and m["clients"]["client0"]["dropped_at_step"] is None
    assert m["clients"]["client0"]["steps"] == steps and m["clients"]["client1"]["steps"] == 0
    drop_s = deadline_s / steps  # the first step's deadline
    assert m["round_time_s"] - drop_s >= 3 * timeout_s, "the test needs a round that outlasts 3 timeouts"
