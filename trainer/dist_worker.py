"""One rank of the ``dist`` backend: the server or one device, round after round.

Every rank builds the whole federation from the seed (same seed, same weights) and
keeps only its role; the server keeps the others as a mirror that it fills from the
devices' reports, so metrics and checkpoints are the local backend's, byte for byte in
layout. Between the roles' own messages (``trainer.roles``) the ranks exchange::

    server                                   device d
      |--- start [start_round] ------------------->|   once
      |--- state (resume only) ------------------->|   d's saved stage state
      |--- round [r] ----------------------------->|   every round
      |    ServerRole.run  <-- roles' messages -->  |   DeviceRole.run
      |    server_combine  <-- weights ---------->  |   device_exchange (if aggregating)
      |<-- metrics [compute_s, work_s, bytes_sent, bytes_received, wait_s, steps_done, chain_s]
      |<-- state: d's stage parameters, optimizer, dropout and sampler state
      | metrics.jsonl, samples, checkpoint (trainer.checkpoint, one file as local)

A state travels as a uint8 tensor holding a ``torch.save`` buffer of tensors, numbers
and dicts, read back with ``torch.load(weights_only=True)`` like a checkpoint: nothing
that needs arbitrary unpickling is accepted.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from planner.jsonio import write_atomic
from planner.models import SeededDropout
from planner.planfile import write_plan
from trainer import checkpoint
from trainer.aggregate import device_exchange, server_combine
from trainer.federation import Federation, build_federation
from trainer.transport import SERVER, LinkTable, TransferLog

BETWEEN_ROUNDS_S = 600.0  # extra wait for the server's work between rounds (eval, samples, checkpoint)
METRICS = ("compute_s", "work_s", "bytes_sent", "bytes_received", "wait_s", "steps_done", "chain_s")


class RankFailure(Exception):
    """What went wrong in one rank, and in which round (1-based)."""

    def __init__(self, role: str, round_no: int, cause: BaseException):
        self.role, self.round_no, self.cause = role, round_no, cause
        self.peer = getattr(cause, "src", None)
        super().__init__(f"{role} failed in round {round_no}: {type(cause).__name__}: {cause}")


def pack(obj: dict) -> torch.Tensor:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def unpack(t: torch.Tensor) -> dict:
    return torch.load(io.BytesIO(t.numpy().tobytes()), weights_only=True, map_location="cpu")


def device_state(fed: Federation, name: str) -> dict:
    """Everything of device ``name`` that a checkpoint holds."""
    r = fed.devices[name]
    d = fed.discriminators[r.client]
    seg = r.stage
    return {"stage": seg.state_dict(), "optimizer": r.optimizer.state_dict(),
            "dropout": {str(i): d.layers[i].generator.get_state() for i in range(seg.start, seg.end)
                        if isinstance(d.layers[i], SeededDropout)},
            "sampler": r.sampler.state_dict() if r.sampler is not None else {}}


def load_device_state(fed: Federation, name: str, state: dict) -> None:
    r = fed.devices[name]
    d = fed.discriminators[r.client]
    r.stage.load_state_dict(state["stage"])
    r.optimizer.load_state_dict(state["optimizer"])
    for i, s in state["dropout"].items():
        d.layers[int(i)].generator.set_state(s)
    if r.sampler is not None:
        r.sampler.load_state_dict(state["sampler"], source=f"state of {name}")


def peers_of(fed: Federation, me: str) -> list[str]:
    if me == SERVER:
        return list(fed.devices)
    r = fed.devices[me]
    return [SERVER] + [p for p in (r.prev, r.next) if p is not None]


def run_rank(cfg, plan, dataset, *, me: str, ranks: dict[str, int], report) -> list[dict]:
    """Play role ``me`` for the whole run; the process group is already up.

    ``report(kind, body)`` (server only) gets ``("start", info)`` and ``("round", metrics)``.
    Returns the run's metrics on the server, ``[]`` on a device.
    """
    from trainer.dist import DistTransport

    torch.set_num_threads(1)
    fed = build_federation(plan, cfg, dataset)
    t = DistTransport(me, ranks, peers_of(fed, me), links=LinkTable.from_plan(plan),
                      emulate=cfg.emulate == "sleep")
    history = _serve(fed, t, cfg, report, dataset) if me == SERVER else _device(fed, t, cfg, me)
    t.close(timeout_s=cfg.timeout_s)
    return history


def _device(fed: Federation, t, cfg, me: str) -> list[dict]:
    role, long_wait = fed.devices[me], cfg.timeout_s + BETWEEN_ROUNDS_S
    r = 0
    try:
        start = int(t.recv(me, SERVER, tag="start", timeout_s=long_wait).item())
        r = start + 1
        if cfg.resume:
            load_device_state(fed, me, unpack(t.recv(me, SERVER, tag="state", timeout_s=long_wait)))
        for r in range(start + 1, cfg.rounds + 1):
            t.recv(me, SERVER, tag="round", timeout_s=long_wait)
            t.log.reset()
            role.run(t, cfg.steps_per_round)
            if cfg.aggregate != "none":
                device_exchange(me, role.stage, t, timeout_s=cfg.timeout_s)
            log = t.log
            row = [role.clock.compute_s, role.clock.work_s, log.bytes_sent.get(me, 0), log.bytes_received.get(me, 0),
                   log.recv_wait_s.get(me, 0.0), role.steps_done, role.chain_s]
            t.send(me, SERVER, torch.tensor(row, dtype=torch.float64), tag="metrics")
            t.send(me, SERVER, pack(device_state(fed, me)), tag="state")
    except Exception as e:
        raise RankFailure(me, r, e) from e
    return []


def _mirror(fed: Federation, name: str, row: list[float], log: TransferLog) -> None:
    """Put device ``name``'s reported round into the server's copy of its role."""
    m = dict(zip(METRICS, row))
    r = fed.devices[name]
    r.clock.compute_s, r.clock.work_s = m["compute_s"], m["work_s"]
    r.steps_done, r.chain_s = int(m["steps_done"]), m["chain_s"]
    log.bytes_sent[name] = int(m["bytes_sent"])
    log.bytes_received[name] = int(m["bytes_received"])
    log.recv_wait_s[name] = m["wait_s"]


def _serve(fed: Federation, t, cfg, report, dataset) -> list[dict]:
    from trainer.images import save_grid
    from trainer.plots import plot_run
    from trainer.quality import QualityEvaluator
    from trainer.run import SAMPLE_GRID, _read_history, round_metrics, sample_images
    from planner.profile import cache_dir

    out = Path(cfg.out_dir)
    ck_dir = out / "checkpoint"
    start, history, r = 0, [], 0
    if cfg.resume:
        ck = checkpoint.load(fed, ck_dir)
        start = int(ck["round"])
        history = _read_history(out / "metrics.jsonl", start)
    out.mkdir(parents=True, exist_ok=True)
    write_plan(fed.plan, out / "plan.json")
    evaluator = None
    if cfg.eval_every:
        evaluator = QualityEvaluator(dataset, cache_dir=cache_dir() / "classifier", seed=cfg.seed)
    try:
        for n in fed.devices:
            t.send(SERVER, n, torch.tensor([start]), tag="start")
            if cfg.resume:
                t.send(SERVER, n, pack(device_state(fed, n)), tag="state")
        report("start", {"start_round": start, "rounds": cfg.rounds,
                         "clients": [c.name for c in fed.plan.planned]})
        weights = {c: float(n) for c, n in fed.shard_sizes.items()}
        for r in range(start + 1, cfg.rounds + 1):
            for n in fed.devices:
                t.send(SERVER, n, torch.tensor([r]), tag="round")
            t.log.reset()
            t0 = time.perf_counter()
            fed.server.run(t, cfg.steps_per_round)
            if cfg.aggregate != "none":
                server_combine(cfg.aggregate, fed.chains, weights, t, timeout_s=cfg.timeout_s)
            wall_s = time.perf_counter() - t0
            log = TransferLog()
            log.bytes_sent[SERVER] = t.log.bytes_sent.get(SERVER, 0)  # before the reports below
            log.bytes_received[SERVER] = t.log.bytes_received.get(SERVER, 0)
            for n in fed.devices:
                _mirror(fed, n, t.recv(SERVER, n, tag="metrics", timeout_s=cfg.timeout_s).tolist(), log)
            for n in fed.devices:
                load_device_state(fed, n, unpack(t.recv(SERVER, n, tag="state", timeout_s=cfg.timeout_s)))
            m = round_metrics(fed, SimpleNamespace(log=log), round_no=r, wall_s=wall_s, steps=cfg.steps_per_round)
            if evaluator and (r % cfg.eval_every == 0 or r == cfg.rounds):
                fake = sample_images(fed, cfg.eval_samples, seed=cfg.seed * 100003 + r - 1)
                if fake.shape[-1] != 28:
                    fake = F.interpolate(fake, size=(28, 28), mode="bilinear", align_corners=False)
                m.update(evaluator.evaluate(fake))
            save_grid(sample_images(fed, SAMPLE_GRID, seed=cfg.seed), out / "samples" / f"round_{r:04d}.png")
            history.append(m)
            write_atomic(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
            checkpoint.save(fed, ck_dir, round_done=r, config={k: str(v) for k, v in asdict(cfg).items()})
            plot_run(history, out)
            report("round", m)
    except Exception as e:
        raise RankFailure(SERVER, r, e) from e
    return history
