"""The commands' small promises: help texts as printed, FSL_RANKS outside torchrun said
aloud, metrics.jsonl standard JSON, and what ``--resume`` lets differ."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from cli import app
from trainer.errors import Diverged
from trainer.quality.evaluation import Evaluation
from tests.helpers import chain_plan, run
from trainer.run.rundir import finite_json


def _help(command: str) -> str:
    return " ".join(CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).stdout.split())


def test_help_texts_print_what_they_mean():
    assert "10% shorter" in _help("train") and "%%" not in _help("train")
    assert "file.py:factory" in _help("calibrate")  # not only the built-in models
    assert "--model-timeout-s" in _help("plan")


def test_fsl_ranks_without_torchrun_is_said_not_ignored(tmp_path):
    r = CliRunner().invoke(app, ["calibrate", "--devices", str(tmp_path / "nope.json")],
                           env={"FSL_RANKS": "server=0", "RANK": None, "WORLD_SIZE": None})
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0].startswith("warning: FSL_RANKS is set but this is not a torchrun rank")


def test_metrics_rows_never_hold_nan_literals():
    row = {"round": 1, "g_loss": float("nan"), "clients": {"a": {"d_loss": float("inf"), "x": [1.5, -math.inf]}}}
    text = json.dumps(finite_json(row), allow_nan=False)  # raises on any NaN/Infinity left
    assert json.loads(text) == {"round": 1, "g_loss": None, "clients": {"a": {"d_loss": None, "x": [1.5, None]}}}


@pytest.mark.slow  # the last round is evaluated (FID): ~45 s on the shared VM
def test_resume_may_change_how_the_run_is_watched_and_its_lr(tmp_path):
    """Rounds, evaluation cadence, timeouts, backend and --lr (to go on after a divergence)
    are not what --resume compares."""
    plan = chain_plan("dcgan", [2])
    run(tmp_path, plan, rounds=1, steps_per_round=1)
    rows = run(tmp_path, plan, rounds=2, steps_per_round=1, resume=True, lr=1e-4, timeout_s=30.0, eval_every=2)
    assert [r["round"] for r in rows] == [1, 2]


def test_evaluation_refuses_non_finite_samples():
    """FID on NaN samples ended in a LAPACK crash (exit 139); it is a divergence now. The
    evaluator's scorers are never reached, so none is built here."""
    class NaNGenerator(torch.nn.Module):
        z_dim = 4

        def forward(self, z):
            return torch.full((len(z), 1, 28, 28), float("nan"))

    ev = object.__new__(Evaluation)
    ev.samples, ev.seed = 8, 0
    with pytest.raises(Diverged, match="evaluation: the generator's samples are not finite"):
        ev(NaNGenerator(), 3)
