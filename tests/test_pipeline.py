"""Pipelined and recomputing steps compute the sequential step's update (issues 11, 12)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import chain_plan, final_states, run
from trainer.roles import build

CUTS = [2, 6]  # three stages: conv block A | block B | block C and the dense layer


def _assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, atol=atol, rtol=0, msg=k)


def _bytes(out) -> dict[str, tuple[int, int]]:
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {d: (v["bytes_sent"], v["bytes_received"]) for d, v in last["devices"].items()}


def _sgd(module: torch.nn.Module, lr: float) -> torch.optim.Optimizer | None:
    params = list(module.parameters())
    return torch.optim.SGD(params, lr=0.01) if params else None  # 1e-4..1e-3 a step, well over 1e-5


@pytest.mark.parametrize("backend", ["local", pytest.param("dist", marks=pytest.mark.slow)])
def test_pipelined_steps_equal_the_sequential_step(tmp_path, backend):
    """With Adam, generator and discriminator after one step with M = 2 and 4 equal
    M = 1 (dropout masks included), and the same bytes cross every cut, in M pieces.

    Over several steps Adam's update is ill-conditioned, whatever the trainer does:
    components whose gradient is float noise around zero move by +-lr whichever way the
    noise falls (once, with a throwaway script, a 1e-7 relative change of the fake
    images' gradient at M = 1 moved the generator by 3e-4 after two steps), and summing a
    batch in M pieces changes the last bits. So 3 steps are compared under SGD (below), where float noise stays
    float noise."""
    runs = {}
    for m in (1, 2, 4):
        runs[m] = run(tmp_path, chain_plan("dcgan", CUTS, micro_batches=m), f"m{m}", rounds=1, steps_per_round=1,
                      backend=backend)
    g1, d1 = final_states(tmp_path / "m1", chain_plan("dcgan", CUTS))
    for m in (2, 4):
        g, d = final_states(tmp_path / f"m{m}", chain_plan("dcgan", CUTS))
        _assert_same(g1, g, 1e-5)
        _assert_same(d1["client0"], d["client0"], 1e-5)
        assert runs[m][0]["g_loss"] == pytest.approx(runs[1][0]["g_loss"], abs=1e-5)
        assert runs[m][0]["d_loss"]["client0"] == pytest.approx(runs[1][0]["d_loss"]["client0"], abs=1e-5)
        assert _bytes(tmp_path / f"m{m}") == _bytes(tmp_path / "m1")


def test_three_pipelined_steps_equal_three_sequential_steps(tmp_path, monkeypatch):
    """Parameters after 3 steps with M = 2 and 4 equal M = 1 to 1e-5, every role
    stepping with SGD (the schedule, accumulation and masks are what is tested)."""
    monkeypatch.setattr(build, "adam", _sgd)
    for m in (1, 2, 4):
        run(tmp_path, chain_plan("dcgan", CUTS, micro_batches=m), f"m{m}", rounds=1, steps_per_round=3)
    g1, d1 = final_states(tmp_path / "m1", chain_plan("dcgan", CUTS))
    for m in (2, 4):
        g, d = final_states(tmp_path / f"m{m}", chain_plan("dcgan", CUTS))
        _assert_same(g1, g, 1e-5)
        _assert_same(d1["client0"], d["client0"], 1e-5)


def test_recomputation_changes_nothing_but_memory_and_time(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "adam", _sgd)  # see test_pipelined_steps_equal_the_sequential_step
    run(tmp_path, chain_plan("dcgan", CUTS), "plain", rounds=1, steps_per_round=3)
    run(tmp_path, chain_plan("dcgan", CUTS, recompute=(0, 1, 2)), "recompute", rounds=1, steps_per_round=3)
    run(tmp_path, chain_plan("dcgan", CUTS, recompute=(0, 2), micro_batches=4), "both", rounds=1, steps_per_round=3)
    g, d = final_states(tmp_path / "plain", chain_plan("dcgan", CUTS))
    for out, atol in (("recompute", 1e-6), ("both", 1e-5)):
        g2, d2 = final_states(tmp_path / out, chain_plan("dcgan", CUTS))
        _assert_same(g, g2, atol)
        _assert_same(d["client0"], d2["client0"], atol)


def _one_step_gradients(tmp_path, m: int):
    """One device holding the whole model, stepped once by hand with a fake server; no
    optimizer, so the accumulated gradients stay for inspection."""
    from tests.helpers import config
    from trainer.roles.build import RunSpec, build_device
    from trainer.comm.transport import SERVER, InProcessTransport

    plan = chain_plan("dcgan", [], micro_batches=m)
    spec = RunSpec(config(tmp_path, plan, f"g{m}"), plan)
    role = build_device(spec, "c0-d0").role
    role.optimizer = None
    t = InProcessTransport()
    fake = torch.randn(plan.batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(5)).tanh()
    t.send(SERVER, "c0-d0", fake, tag="fake")
    role.step(t)
    fake_grad = t.recv(SERVER, "c0-d0", tag="fake_grad", timeout_s=5)
    losses = t.recv(SERVER, "c0-d0", tag="losses", timeout_s=5)
    return {n: p.grad for n, p in role.stage.named_parameters()}, fake_grad, losses


def test_micro_batches_accumulate_the_whole_batch_gradient(tmp_path):
    """Before any optimizer: the weights' gradients, the fake images' gradient and the
    losses of M = 4 equal M = 1 (Adam would hide a wrongly scaled gradient)."""
    grads1, fake1, loss1 = _one_step_gradients(tmp_path, 1)
    grads4, fake4, loss4 = _one_step_gradients(tmp_path, 4)
    _assert_same(grads1, grads4, 1e-6)
    torch.testing.assert_close(fake4, fake1, atol=1e-7, rtol=0)
    torch.testing.assert_close(loss4, loss1, atol=1e-6, rtol=0)
    assert all(g.abs().sum() > 0 for g in grads1.values())


def test_each_device_takes_its_work_as_it_comes(tmp_path):
    """Which micro-batch work a device does next: the data device and the last device
    their forwards first (GPipe, as SPEC §2.1 predicts), a device in between whatever its
    neighbours hand it first, and a waiting gradient before a waiting activation."""
    from tests.helpers import config
    from trainer.roles.build import RunSpec, build_device
    from trainer.comm.transport import InProcessTransport

    plan = chain_plan("dcgan", CUTS, micro_batches=4)
    spec = RunSpec(config(tmp_path, plan), plan)
    first, middle, last = (build_device(spec, f"c0-d{k}").role for k in range(3))
    b = 2 * plan.batch_size // 4  # phase d: a micro-batch is [real_i ; fake_i]
    outs = [torch.zeros(b, 128, 7, 7)] * 4
    t = InProcessTransport()

    assert first._next_work(t, "d", 0, 0, outs)[0] == "F"
    assert first._next_work(t, "d", 3, 0, outs)[0] == "F"  # its inputs are here: no waiting
    t.send("c0-d1", "c0-d2", torch.ones(b, 128, 7, 7), tag="act_d")
    assert last._next_work(t, "d", 1, 0, outs)[0] == "F"  # a forward is left: it waits for it
    assert last._next_work(t, "d", 4, 0, outs) == ("B", None)  # all forwards done: its backwards
    t.send("c0-d0", "c0-d1", torch.ones(b, 64, 14, 14), tag="act_d")
    assert middle._next_work(t, "d", 0, 0, outs)[0] == "F"  # only an activation has come
    t.send("c0-d0", "c0-d1", torch.ones(b, 64, 14, 14), tag="act_d")
    t.send("c0-d2", "c0-d1", torch.full((b, 128, 7, 7), 2.0), tag="grad_d")
    kind, grad = middle._next_work(t, "d", 1, 0, outs)  # both wait: the gradient first
    assert kind == "B" and grad.shape == (b, 128, 7, 7) and grad[0, 0, 0, 0] == 2.0
    assert middle._next_work(t, "d", 1, 1, outs)[0] == "F"  # then the activation
    t.send("c0-d2", "c0-d1", torch.full((b, 128, 7, 7), 3.0), tag="grad_d")
    assert middle._next_work(t, "d", 4, 1, outs)[0] == "B"  # all forwards done: only gradients
