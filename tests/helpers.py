"""Plans cut by hand, runs in a temporary folder, and what a run leaves behind."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from planner import check
from planner.planfile import Plan, PlannedClient, PlannedStage, round_time_s, write_plan
from planner.codecs import BYTES_RATIO
from planner.problem import ClientProblem, Codec, RecomputeTables, Stage
from planner.schedule import cut_bytes_per_step
from planner.usermodel import build_model
from trainer import TrainConfig, opened, train
from trainer.data import DataSource, load_digits_28
from trainer.shards import ShardSampler

B = 8  # batch size of the hand-cut plans


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


def chain_plan(model_name: str, cuts: list[int] | list[list[int]], *, n_clients: int = 1,
               weights: list[float] | None = None, batch: int = B, micro_batches: int = 1,
               recompute: tuple[int, ...] = (), codecs: dict[int, str] | None = None) -> Plan:
    """A plan cutting a chain model (a built-in name or a factory reference) after the given layers, on fresh devices ``c<i>-d<j>``.

    ``cuts`` is one list for every client or a list per client; client ``i`` has
    ``data_weight`` ``weights[i]`` (default ``1 + i``). Every client runs ``micro_batches``
    micro-batches (a ``throughput`` plan when more than one); the stages numbered in
    ``recompute`` recompute their activations; ``codecs[k]`` encodes the cut after stage k."""
    codecs = codecs or {}
    objective = "throughput" if micro_batches > 1 else "latency"
    model = build_model(model_name)
    L = len(model)
    per_client = cuts if cuts and isinstance(cuts[0], list) else [cuts] * n_clients
    with torch.no_grad():
        x, out_bytes = torch.zeros(batch, *model.input_shape), []
        for i in range(L):
            x = model.run(x, i, i + 1)
            out_bytes.append(x.numel() * x.element_size())
    clients = []
    for ci, client_cuts in enumerate(per_client):
        bounds = [0] + [c + 1 for c in client_cuts] + [L]
        names = tuple(f"c{ci}-d{i}" for i in range(len(bounds) - 1))
        n = len(names)
        zeros = tuple((0.0,) * (L - 1) for _ in names)
        costs = ClientProblem(
            devices=names, data_device=0, compute_s=tuple((0.001,) * L for _ in names),
            memory_bytes=tuple((1,) * L for _ in names), capacity_bytes=(10**9,) * n,
            cut_bytes=tuple(cut_bytes_per_step(b) for b in out_bytes[:-1]),
            link_bytes_per_s=tuple(tuple(0.0 if a == b else 1e12 for b in range(n)) for a in range(n)),
            link_latency_s=tuple((0.0,) * n for _ in range(n)), micro_batch_choices=(micro_batches,),
            recompute=RecomputeTables(compute_s=tuple((0.002,) * L for _ in names),
                                      memory_bytes=tuple((1,) * L for _ in names)) if recompute else None,
            codecs=tuple(Codec(c, BYTES_RATIO[c], zeros) for c in sorted(set(codecs.values()) - {"none"})))
        stages = [Stage(i, bounds[i], bounds[i + 1], i in recompute, codecs.get(i, "none")) for i in range(n)]
        transfers = check.cut_transfer_s(costs, stages) + [0.0]
        planned = tuple(PlannedStage(names[i], s.start, s.end, check.stage_compute_s(costs, s), transfers[i],
                                     check.stage_memory_bytes(costs, s), recompute=s.recompute, codec=s.codec)
                        for i, s in enumerate(stages))
        clients.append(PlannedClient(
            name=f"client{ci}", status="planned", reason=None,
            step_time_s=check.step_time_s(costs, stages, micro_batches), stages=planned, costs=costs,
            data_weight=weights[ci] if weights else 1.0 + ci, processing_time_factor={d: 1.0 for d in names},
            micro_batches=micro_batches))
    layers = [{"name": nd.name, "flops": 0, "param_bytes": 0, "output_bytes": ob, "model_layers": [i, i + 1]}
              for i, (nd, ob) in enumerate(zip(model.nodes, out_bytes))]
    return Plan(model={"name": model_name, "fingerprint": model.fingerprint(), "input_shape": list(model.input_shape),
                       "layers": layers},
                batch_size=batch, objective=objective, solver={"name": "test", "status": "heuristic", "seconds": 0},
                devices_file=None, round_time_s=round_time_s(clients, None), clients=tuple(clients))


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


# --- what a role opened (trainer.opened) ------------------------------------------------

def files_digest(paths) -> str:
    """sha256 of the sorted real paths, one per line: ``trainer.opened.paths_digest``'s
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
