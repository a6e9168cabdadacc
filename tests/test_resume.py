"""Resume is exact; checkpoints refuse other plans and pickles; train leaves SPEC §4 files."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from planner.errors import InputError
from planner.planfile import write_plan
from tests.test_trainer import chain_plan, tiny_dataset
from trainer.config import TrainConfig
from trainer.run import train


@pytest.fixture(autouse=True)
def tiny_data(monkeypatch):
    monkeypatch.setattr("trainer.run.load_dataset", lambda name, root=None: tiny_dataset(96))


def _cfg(tmp_path, plan, out, **kw):
    write_plan(plan, tmp_path / "plan.json")
    return TrainConfig(plan_path=tmp_path / "plan.json", out_dir=out, steps_per_round=2, emulate="none",
                       eval_every=0, **kw)


def _params(out):
    ck = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    return ck


def test_resume_is_exact(tmp_path):
    plan = chain_plan("dcgan", [2, 6], n_clients=2)
    straight = train(_cfg(tmp_path, plan, tmp_path / "a", rounds=4))
    train(_cfg(tmp_path, plan, tmp_path / "b", rounds=2))
    resumed = train(_cfg(tmp_path, plan, tmp_path / "b", rounds=4, resume=True))
    assert [h["g_loss"] for h in straight] == [h["g_loss"] for h in resumed]
    assert [h["d_loss"] for h in straight] == [h["d_loss"] for h in resumed]
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    for k, v in a["server"]["generator"].items():
        assert torch.equal(v, b["server"]["generator"][k]), k
    for c in a["clients"]:
        for k, v in a["clients"][c]["discriminator"].items():
            assert torch.equal(v, b["clients"][c]["discriminator"][k]), (c, k)
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    for f in ("plan.json", "metrics.jsonl", "losses.png", "times.png", "samples/round_0004.png"):
        assert (tmp_path / "b" / f).is_file(), f
    row = rows[-1]
    for d in row["devices"].values():
        assert {"compute_s", "predicted_compute_s", "bytes_sent", "bytes_received"} <= set(d)


def test_resume_with_another_plan_is_an_input_error(tmp_path):
    plan = chain_plan("dcgan", [2], n_clients=1)
    train(_cfg(tmp_path, plan, tmp_path / "run", rounds=1))
    other = chain_plan("dcgan", [4], n_clients=1)
    with pytest.raises(InputError, match="another plan"):
        train(_cfg(tmp_path, other, tmp_path / "run", rounds=2, resume=True))


def test_a_planted_pickle_is_refused(tmp_path):
    plan = chain_plan("dcgan", [2], n_clients=1)
    train(_cfg(tmp_path, plan, tmp_path / "run", rounds=1))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "run" / "checkpoint" / "state.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(InputError, match="not a loadable checkpoint"):
        train(_cfg(tmp_path, plan, tmp_path / "run", rounds=2, resume=True))
    assert not marker.exists()


def test_a_run_directory_is_not_overwritten_without_resume(tmp_path):
    plan = chain_plan("dcgan", [2], n_clients=1)
    train(_cfg(tmp_path, plan, tmp_path / "run", rounds=1))
    with pytest.raises(InputError, match="--resume"):
        train(_cfg(tmp_path, plan, tmp_path / "run", rounds=2))
