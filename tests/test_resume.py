"""Resume is exact; checkpoints refuse other plans and pickles; train leaves SPEC §4 files."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from planner.errors import InputError
from tests.helpers import chain_plan, final_states, run


@pytest.mark.slow  # a training run of several seconds
def test_resume_is_exact(tmp_path):
    plan = chain_plan("dcgan", [[2, 6], [4]])
    straight = run(tmp_path, plan, "a", rounds=4)
    run(tmp_path, plan, "b", rounds=2)
    resumed = run(tmp_path, plan, "b", rounds=4, resume=True)
    assert [h["g_loss"] for h in straight] == [h["g_loss"] for h in resumed]
    assert [h["d_loss"] for h in straight] == [h["d_loss"] for h in resumed]
    (ga, da), (gb, db) = final_states(tmp_path / "a", plan), final_states(tmp_path / "b", plan)
    for k, v in ga.items():
        assert torch.equal(v, gb[k]), k
    for c in da:
        for k, v in da[c].items():
            assert torch.equal(v, db[c][k]), (c, k)
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    for f in ("plan.json", "metrics.jsonl", "processes.json", "losses.png", "times.png", "samples/round_0004.png"):
        assert (tmp_path / "b" / f).is_file(), f
    kept = sorted(p.name for p in (tmp_path / "b" / "checkpoint").iterdir())
    assert kept == ["client-client0-r0003.pt", "client-client0-r0004.pt", "client-client1-r0003.pt",
                    "client-client1-r0004.pt", "server.pt"]
    for d in rows[-1]["devices"].values():
        assert {"compute_s", "predicted_compute_s", "bytes_sent", "bytes_received"} <= set(d)


def test_resume_with_another_plan_is_an_input_error(tmp_path):
    run(tmp_path, chain_plan("dcgan", [2]), rounds=1)
    with pytest.raises(InputError, match="another plan"):
        run(tmp_path, chain_plan("dcgan", [4]), rounds=2, resume=True)


def test_a_planted_pickle_is_refused(tmp_path):
    plan = chain_plan("dcgan", [2])
    run(tmp_path, plan, rounds=1)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name in ("server.pt", "client-client0-r0001.pt"):
        target = tmp_path / "run" / "checkpoint" / name
        saved = target.read_bytes()
        target.write_bytes(pickle.dumps(Evil()))
        with pytest.raises(InputError, match="not a loadable checkpoint"):
            run(tmp_path, plan, rounds=2, resume=True)
        assert not marker.exists()
        target.write_bytes(saved)


def test_a_missing_client_checkpoint_names_the_file(tmp_path):
    plan = chain_plan("dcgan", [2])
    run(tmp_path, plan, rounds=1)
    (tmp_path / "run" / "checkpoint" / "client-client0-r0001.pt").unlink()
    with pytest.raises(InputError, match="client-client0-r0001.pt: no checkpoint"):
        run(tmp_path, plan, rounds=2, resume=True)


def test_a_run_directory_is_not_overwritten_without_resume(tmp_path):
    plan = chain_plan("dcgan", [2])
    run(tmp_path, plan, rounds=1)
    with pytest.raises(InputError, match="--resume"):
        run(tmp_path, plan, rounds=2)


@pytest.mark.slow  # a training run of several seconds
def test_a_new_plan_resumes_with_weights_and_adam_moments_moved(tmp_path):
    """Two rounds cut after layer 2, then two cut after layers 5 and 8 (a re-plan): the
    same as four rounds on the first plan, since every layer's weights, Adam moments and
    dropout stream move with it."""
    from dataclasses import replace

    from planner.planfile import load_plan
    from trainer.state import plan_digest

    first = chain_plan("dcgan", [2])
    straight = run(tmp_path, first, "a", rounds=4)
    run(tmp_path, first, "b", rounds=2)
    moved = chain_plan("dcgan", [5, 8])
    moved = replace(moved, solver={**moved.solver, "lineage": [plan_digest(load_plan(tmp_path / "b" / "plan.json"))]})
    resumed = run(tmp_path, moved, "b", rounds=4, resume=True)
    assert [h["g_loss"] for h in straight] == pytest.approx([h["g_loss"] for h in resumed], abs=1e-6)
    (ga, da), (gb, db) = final_states(tmp_path / "a", first), final_states(tmp_path / "b", moved)
    for k, v in da["client0"].items():
        torch.testing.assert_close(db["client0"][k], v, atol=1e-6, rtol=0, msg=k)
    for k, v in ga.items():
        torch.testing.assert_close(gb[k], v, atol=1e-6, rtol=0, msg=k)
