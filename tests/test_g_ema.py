"""``--g-ema``: samples and quality from a moving average of the generator's weights,
checked against the formula applied by hand to the weights before and after a step."""

from __future__ import annotations

import torch

from tests.helpers import chain_plan, config, run
from trainer import state
from trainer.roles.build import RunSpec, build_server


def test_the_average_after_one_step_is_decay_times_before_plus_the_rest_times_after(tmp_path):
    plan = chain_plan("dcgan", [5], n_clients=1)
    decay = 0.75
    run(tmp_path, plan, rounds=1, steps_per_round=1, g_ema=decay)
    ck = state.read(tmp_path / "run" / "checkpoint" / "server.pt")
    before = build_server(RunSpec(config(tmp_path, plan, out="fresh", g_ema=decay), plan)).generator.state_dict()
    after, ema = ck["generator"], ck["generator_ema"]
    params = [k for k in after if k in dict(build_server(RunSpec(config(tmp_path, plan, out="f2"), plan))
                                             .generator.named_parameters())]
    assert params and set(ema) == set(after)
    moved = 0
    for k in params:
        want = decay * before[k] + (1 - decay) * after[k]
        assert torch.allclose(ema[k], want, atol=1e-6), k
        moved += int(not torch.equal(after[k], before[k]))
    assert moved > 0  # the step changed the generator, so the average is not trivially G
    for k in set(after) - set(params):  # buffers (batch norm's running statistics) follow G's
        assert torch.equal(ema[k], after[k]), k


def test_no_average_unless_asked(tmp_path):
    plan = chain_plan("dcgan", [5], n_clients=1)
    run(tmp_path, plan, rounds=1, steps_per_round=1)
    assert "generator_ema" not in state.read(tmp_path / "run" / "checkpoint" / "server.pt")
