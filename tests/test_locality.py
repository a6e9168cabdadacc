"""Each process holds only its own data (processes.json), locally and with a process per role."""

from __future__ import annotations

import json

import pytest

from tests.helpers import chain_plan, run
from trainer.data import DataSource


@pytest.mark.parametrize("backend", ["local", pytest.param("dist", marks=pytest.mark.slow)])
def test_only_data_devices_hold_training_data_and_only_their_shard(tmp_path, backend):
    plan = chain_plan("dcgan", [[2], [4, 7], [5]], weights=[1.0, 2.0, 1.5])
    run(tmp_path, plan, rounds=1, steps_per_round=1, backend=backend, eval_every=1, eval_samples=64)
    rows = {r["role"]: r for r in json.loads((tmp_path / "run" / "processes.json").read_text())["processes"]}
    assert set(rows) == {"server"} | {s.device for c in plan.planned for s in c.stages}
    assert rows["server"]["training_samples"] == 0 and rows["server"]["eval_samples"] == round(1797 * 0.2)
    src = DataSource("digits", seed=0)
    weights = [c.data_weight for c in plan.planned]
    shards = [set(src.shard_rows(weights, k).tolist()) for k in range(len(plan.planned))]
    assert not any(a & b for i, a in enumerate(shards) for b in shards[i + 1:])
    for k, c in enumerate(plan.planned):
        head, *rest = [s.device for s in c.stages]
        assert rows[head]["training_samples"] == len(shards[k])
        assert rows[head]["indices_sha256"] == src.client_data(weights, k, c.name).digest()
        for d in rest:
            assert rows[d]["training_samples"] == 0 and rows[d]["indices_sha256"] is None
    pids = {r["pid"] for r in rows.values()}
    assert len(pids) == (len(rows) if backend == "dist" else 1)
