"""The split run against an unsplit reference; privacy of the raw data; resume."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from planner.models import Generator, SeededDropout, build_discriminator
from planner.planfile import Plan, PlannedClient, PlannedStage, write_plan
from planner import check
from planner.problem import ClientProblem, Stage
from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.federation import build_federation
from trainer.run import round_local
from trainer.transport import InProcessTransport

B = 8


def chain_plan(model_name: str, cuts: list[int], *, n_clients: int = 1) -> Plan:
    """A plan with stages cut after the given layers (chain models), on fresh devices."""
    model = build_discriminator(model_name)
    L = len(model)
    bounds = [0] + [c + 1 for c in cuts] + [L]
    clients = []
    for ci in range(n_clients):
        names = tuple(f"c{ci}-d{i}" for i in range(len(bounds) - 1))
        n = len(names)
        costs = ClientProblem(
            devices=names, data_device=0, compute_s=tuple((0.001,) * L for _ in names),
            memory_bytes=tuple((1,) * L for _ in names), capacity_bytes=(10**9,) * n,
            cut_bytes=(1,) * (L - 1), link_bytes_per_s=tuple(tuple(0.0 if a == b else 1e12 for b in range(n)) for a in range(n)),
            link_latency_s=tuple((0.0,) * n for _ in range(n)))
        stages = tuple(PlannedStage(names[i], bounds[i], bounds[i + 1], 0.001, 0.0, 1) for i in range(n))
        step = check.step_time_s(costs, [Stage(i, bounds[i], bounds[i + 1]) for i in range(n)])
        clients.append(PlannedClient(name=f"client{ci}", status="planned", reason=None, step_time_s=step,
                                     stages=stages, costs=costs, data_weight=1.0 + ci,
                                     processing_time_factor={d: 1.0 for d in names}))
    layers = [{"name": nd.name, "flops": 0, "param_bytes": 0, "output_bytes": 0, "model_layers": [i, i + 1]}
              for i, nd in enumerate(model.nodes)]
    return Plan(model={"name": model_name, "fingerprint": model.fingerprint(), "input_shape": list(model.input_shape),
                       "layers": layers},
                batch_size=B, objective="latency", solver={"name": "test", "status": "heuristic", "seconds": 0},
                devices_file=None, round_time_s=0.01, clients=tuple(clients))


def tiny_dataset(n: int = 64) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(images=torch.rand(n, 1, 28, 28, generator=g) * 2 - 1, labels=torch.arange(n) % 10, name="tiny")


def run_split(plan: Plan, tmp_path: Path, *, steps: int = 1, keep_messages=False, **kw):
    write_plan(plan, tmp_path / "plan.json")
    cfg = TrainConfig(plan_path=tmp_path / "plan.json", steps_per_round=steps, emulate="none", eval_every=0, **kw)
    fed = build_federation(plan, cfg, tiny_dataset(), lock=threading.Lock())
    t = InProcessTransport(emulate=False, keep_messages=keep_messages)
    round_local(fed, t, cfg)
    return fed, t


def unsplit_step(plan: Plan, fed_seed: int, real: torch.Tensor, z: torch.Tensor, dropout_seed: int):
    """The same algorithm in one piece, written independently of trainer/."""
    torch.manual_seed(fed_seed + 1)
    d = build_discriminator(plan.model["name"])
    for i, layer in enumerate(d.layers):
        if isinstance(layer, SeededDropout):
            layer.reseed(dropout_seed * 1009 + i)
    torch.manual_seed(fed_seed)
    g = Generator()
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    fake = g(z)
    out = d(torch.cat([real, fake.detach()])).squeeze(1)
    loss_d = F.binary_cross_entropy_with_logits(out[:B], torch.ones(B)) + \
        F.binary_cross_entropy_with_logits(out[B:], torch.zeros(B))
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    loss_g = F.binary_cross_entropy_with_logits(d(fake).squeeze(1), torch.ones(B))
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    return d, g, loss_d.item(), loss_g.item()


@pytest.mark.parametrize("trial", range(4))
def test_split_equals_unsplit(tmp_path, trial):
    rng = random.Random(trial)
    L = len(build_discriminator("dcgan"))
    cuts = sorted(rng.sample(range(L - 1), rng.randint(1, 4)))
    plan = chain_plan("dcgan", cuts)
    fed, _ = run_split(plan, tmp_path)
    # the reference sees the same real batch and z: replay the samplers' generators
    from trainer.data import ShardSampler, shard_iid
    images = tiny_dataset().images
    shard = shard_iid(len(images), [1.0], seed=0)[0]
    real = ShardSampler(images[torch.as_tensor(shard)], batch_size=B, seed=0).next_batch()
    z = torch.randn(B, 100, generator=torch.Generator().manual_seed(12345))
    d, g, loss_d, loss_g = unsplit_step(plan, 0, real, z, dropout_seed=0)
    (d_loss_split, g_loss_split), = fed.server.losses["client0"]
    assert d_loss_split == pytest.approx(loss_d, abs=1e-6)
    assert g_loss_split == pytest.approx(loss_g, abs=1e-6)
    for a, b in zip(fed.discriminators["client0"].parameters(), d.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    for a, b in zip(fed.server.generator.parameters(), g.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_raw_images_never_leave_the_data_device(tmp_path):
    plan = chain_plan("dcgan", [2, 5], n_clients=2)
    fed, t = run_split(plan, tmp_path, steps=2, keep_messages=True)
    images = tiny_dataset().images
    real_rows = {tuple(img.flatten()[:32].tolist()) for img in images}
    assert t.log.messages, "the transport carried nothing"
    shapes = set()
    for src, dst, tag, nbytes in t.log.messages:
        shapes.add(tag)
        if src.endswith("-d0") and dst != "server":
            assert tag in ("act_d", "act_g"), tag
    # inspect the payloads themselves: no message holds a row of a real image
    t2 = InProcessTransport(emulate=False)
    sent = []
    orig = t2.send

    def spy(src, dst, tensor, *, tag):
        sent.append((src, dst, tag, tensor.detach().clone()))
        orig(src, dst, tensor, tag=tag)

    t2.send = spy
    write_plan(plan, tmp_path / "plan.json")
    cfg = TrainConfig(plan_path=tmp_path / "plan.json", steps_per_round=2, emulate="none", eval_every=0)
    fed = build_federation(plan, cfg, tiny_dataset(), lock=threading.Lock())
    round_local(fed, t2, cfg)
    assert sent
    for src, dst, tag, tensor in sent:
        if tensor.dim() == 4 and tensor.shape[1:] == (1, 28, 28):
            assert tag in ("fake", "fake_grad"), (src, dst, tag)
            for img in tensor:
                assert tuple(img.flatten()[:32].tolist()) not in real_rows
    assert {"act_d", "grad_d", "act_g", "grad_g", "fake", "fake_grad", "losses"} <= shapes | {x[2] for x in sent}


def test_fedavg_makes_discriminators_equal(tmp_path):
    plan = chain_plan("dcgan", [5], n_clients=2)
    # client1 is cut elsewhere: fedavg must still align layers
    fed, _ = run_split(plan, tmp_path, steps=2, aggregate="fedavg")
    a, b = fed.discriminators["client0"], fed.discriminators["client1"]
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_deadline_drops_the_straggler(tmp_path):
    """A client 50x slower than the deadline allows is dropped from the round; the rest train."""
    from dataclasses import replace

    plan = chain_plan("dcgan", [5], n_clients=2)
    slow = plan.clients[1]
    slow = replace(slow, processing_time_factor={d: 50.0 for d in slow.processing_time_factor})
    plan = replace(plan, clients=(plan.clients[0], slow))
    write_plan(plan, tmp_path / "plan.json")
    cfg = TrainConfig(plan_path=tmp_path / "plan.json", steps_per_round=3, emulate="sleep", eval_every=0,
                      deadline_s=0.6)
    fed = build_federation(plan, cfg, tiny_dataset(), lock=threading.Lock())
    t = InProcessTransport(emulate=True)
    round_local(fed, t, cfg)
    assert "client1" in fed.server.dropped and "client0" not in fed.server.dropped
    assert len(fed.server.losses["client0"]) == 3
    assert len(fed.server.losses.get("client1", [])) < 3
