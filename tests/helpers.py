"""Runs in a temporary folder and what a run leaves behind; plans cut by hand come from
``benchmarks.handplans``."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.handplans import B, chain_plan  # noqa: F401 - tests import them from here
from planner.planfile import Plan, write_plan
from trainer import TrainConfig, train
from trainer.privacy import opened
from trainer.data.datasets import DataSource, load_digits_28
from trainer.data.shards import ShardSampler


# A user factory (planner.usermodel) for 3x16x16 RGB images, small enough to train in seconds.
FACTORY = '''
from torch import nn

WIDTH = {width}


def build():
    d = nn.Sequential(nn.Conv2d(3, WIDTH, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(WIDTH, 16, 4, 2, 1),
                      nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(16 * 4 * 4, 1))
    g = nn.Sequential(nn.Linear(8, 16 * 4 * 4), nn.Unflatten(1, (16, 4, 4)), nn.ReLU(),
                      nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(8, 3, 4, 2, 1), nn.Tanh())
    return {{"discriminator": d, "input_shape": (3, 16, 16), "generator": g, "z_dim": 8}}
'''


def write_factory(folder: Path, *, width: int = 8, extra: str = "") -> str:
    """Write :data:`FACTORY` to ``folder/my_gan.py``; returns its ``--model`` reference."""
    path = folder / "my_gan.py"
    path.write_text(FACTORY.format(width=width) + extra)
    return f"{path}:build"


def config(tmp_path: Path, plan: Plan, out: str = "run", **kw) -> TrainConfig:
    """A quick run's options: few steps, no emulation, no evaluation."""
    write_plan(plan, tmp_path / "plan.json")
    base = dict(plan_path=tmp_path / "plan.json", out_dir=tmp_path / out, steps_per_round=2, emulate="none",
                eval_every=0, timeout_s=8.0)
    return TrainConfig(**(base | kw))


def run(tmp_path: Path, plan: Plan, out: str = "run", **kw) -> list[dict]:
    return train(config(tmp_path, plan, out, **kw))


def final_states(out: Path, plan: Plan) -> tuple[dict, dict[str, dict]]:
    """(the generator's weights, each client's discriminator weights) of a finished run."""
    ck = out / "checkpoint"
    server = torch.load(ck / "server.pt", weights_only=True)
    clients = {}
    for c in plan.planned:
        latest = sorted(ck.glob(f"client-{c.name}-r*.pt"))[-1]
        clients[c.name] = torch.load(latest, weights_only=True)["weights"]
    return server["generator"], clients


def first_real_batch(plan: Plan, k: int, *, seed: int = 0) -> torch.Tensor:
    """The first real batch client ``k``'s data device draws (its sampler replayed)."""
    rows = DataSource("digits", seed=seed).shard_rows([c.data_weight for c in plan.planned], k)
    return ShardSampler(load_digits_28(rows).images, batch_size=plan.batch_size, seed=seed * 31 + k).next_batch()


# --- what a role opened (trainer.privacy.opened) ------------------------------------------------

def files_digest(paths) -> str:
    """sha256 of the sorted real paths, one per line: ``trainer.privacy.opened.paths_digest``'s
    documented format, recomputed here."""
    return "sha256:" + hashlib.sha256("\n".join(sorted(os.path.realpath(p) for p in paths)).encode()).hexdigest()


def digits_file() -> str:
    """scikit-learn's file of all 1,797 digits (real path), found beside its package."""
    import sklearn.datasets

    return os.path.realpath(Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz")


def assert_opened_exactly(row: dict, paths, *, out: Path | None = None) -> None:
    """``row`` (a ``processes.json`` row) opened exactly the data files ``paths`` before its
    hello; with the run folder ``out``, its whole run's record (``opened/<role>.json``) too."""
    got, want = row["opened"], sorted(os.path.realpath(p) for p in paths)
    assert got["data_files"] == dict(Counter(os.path.dirname(p) for p in want)), row["role"]
    assert got["data_files_sha256"] == files_digest(want), row["role"]
    if out is not None:
        assert json.loads((out / "opened" / f"{row['role']}.json").read_text())["data_file_paths"] == want, row["role"]


def opened_by(read: Callable, src: DataSource) -> dict:
    """``{"data": read(), "opened": the files it opened}``, recorded in a thread of its own."""
    out: dict = {}

    def reader() -> None:
        opened.record_thread(src)
        try:
            out["data"] = read()
            out["opened"] = opened.current()
        finally:
            opened.stop_thread()

    t = threading.Thread(target=reader)
    t.start()
    t.join(60)
    return out
