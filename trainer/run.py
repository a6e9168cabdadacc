"""Execute a plan: rounds of federated split-GAN training, metrics, samples, checkpoints.

The local backend runs every role as a thread of this process over
:class:`~trainer.transport.InProcessTransport`; ``trainer.dist`` runs the same roles as
processes. Nothing here prints: ``on_round`` receives each round's metrics.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from planner.errors import InputError
from planner.jsonio import write_atomic
from planner.planfile import load_plan, write_plan
from trainer import checkpoint
from trainer.aggregate import device_exchange, server_combine
from trainer.config import TrainConfig
from trainer.data import load_dataset
from planner.profile import cache_dir
from trainer.federation import Federation, build_federation
from trainer.transport import InProcessTransport, LinkTable, Transport

SAMPLE_GRID = 64


def _threads(targets: dict[str, Callable[[], object]], timeout_s: float) -> None:
    """Run each target in a thread; re-raise the first failure, naming its role."""
    errors: list[tuple[str, BaseException]] = []

    def wrap(name, fn):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below with the role's name
            errors.append((name, e))

    threads = [threading.Thread(target=wrap, args=(n, f), name=n, daemon=True) for n, f in targets.items()]
    for th in threads:
        th.start()
    deadline = time.monotonic() + timeout_s
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    if errors:
        name, e = errors[0]
        raise RuntimeError(f"{name} failed: {e}") from e
    alive = [th.name for th in threads if th.is_alive()]
    if alive:
        raise RuntimeError(f"round did not finish within {timeout_s:.0f} s; still running: {', '.join(alive)}")


def round_local(fed: Federation, t: Transport, cfg: TrainConfig) -> None:
    steps, agg = cfg.steps_per_round, cfg.aggregate
    weights = {c: float(n) for c, n in fed.shard_sizes.items()}

    def server():
        fed.server.run(t, steps)
        if agg != "none":
            server_combine(agg, fed.chains, weights, t, timeout_s=cfg.timeout_s)

    def device(role):
        role.run(t, steps)
        if agg != "none":
            device_exchange(role.name, role.stage, t, timeout_s=cfg.timeout_s)

    targets = {"server": server} | {n: (lambda r=r: device(r)) for n, r in fed.devices.items()}
    # Every recv already gives up after timeout_s, so no step outlasts it: a backstop only.
    _threads(targets, cfg.timeout_s * (steps + 1))


def round_metrics(fed: Federation, t: Transport, *, round_no: int, wall_s: float, steps: int) -> dict:
    s = fed.server
    reported = {c: v for c, v in s.losses.items() if v}
    weights = {c.name: c.weight for c in s.clients}
    n_steps = max((len(v) for v in reported.values()), default=0)
    g_loss = None
    if n_steps:
        per_step = []
        for i in range(n_steps):
            have = {c: v[i][1] for c, v in reported.items() if i < len(v)}
            w = sum(weights[c] for c in have)
            per_step.append(sum(weights[c] * g for c, g in have.items()) / w)
        g_loss = sum(per_step) / len(per_step)
    clients, devices = {}, {}
    for c in fed.plan.planned:
        head = fed.devices[c.stages[0].device]
        done = max(head.steps_done, 1)
        host_wait = sum(fed.devices[st.device].clock.host_wait_s for st in c.stages) / done
        clients[c.name] = {
            "step_time_s": head.chain_s / done, "predicted_step_time_s": c.step_time_s,
            "host_wait_s": host_wait,  # waiting for this machine's cores beyond what emulation hides
            "steps": head.steps_done, "dropped_at_step": s.dropped.get(c.name),
        }
        for st in c.stages:
            r = fed.devices[st.device]
            n = max(r.steps_done, 1)
            devices[st.device] = {
                "client": c.name, "compute_s": r.clock.compute_s / n, "predicted_compute_s": st.compute_s,
                "processing_time_factor": r.clock.factor, "emulated": r.clock.emulate,
                "work_s": r.clock.work_s / n, "bytes_sent": t.log.bytes_sent.get(st.device, 0),
                "bytes_received": t.log.bytes_received.get(st.device, 0),
                "wait_s": t.log.recv_wait_s.get(st.device, 0.0) / n,
            }
    return {
        "round": round_no, "g_loss": g_loss,
        "d_loss": {c: sum(x[0] for x in v) / len(v) for c, v in reported.items()},
        "round_time_s": wall_s, "predicted_round_time_s": fed.plan.round_time_s * steps,
        "clients": clients, "devices": devices,
        "server": {"compute_s": s.clock.compute_s, "bytes_sent": t.log.bytes_sent.get("server", 0),
                   "bytes_received": t.log.bytes_received.get("server", 0)},
    }


def sample_images(fed: Federation, n: int, seed: int) -> torch.Tensor:
    """``n`` images from fixed noise. Batch norm stays in training mode (batch statistics),
    as the generator trains: early running averages lag far behind and make every sample
    look alike. The running averages are put back, so sampling leaves no trace."""
    g = fed.server.generator
    z = torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(seed))
    saved = {k: v.clone() for k, v in g.named_buffers()}
    with torch.no_grad():
        out = g(z)
        for k, v in g.named_buffers():
            v.copy_(saved[k])
    return out


def _train_dist_replanning(cfg: TrainConfig, plan, *, on_round, on_start) -> list[dict]:
    """``train_dist``; with ``replan_on_failure``, a lost device is planned around and the
    run resumes from its last checkpoint, so no completed round is lost."""
    from dataclasses import replace

    from trainer.dist import DeviceFailure, train_dist
    from trainer.replan import without_device

    while True:
        try:
            return train_dist(cfg, plan, on_round=on_round, on_start=on_start)
        except DeviceFailure as e:
            if not cfg.replan_on_failure:
                raise
            plan = without_device(plan, e.device, round_no=e.round_no, digest=checkpoint.plan_digest(plan))
            path = Path(cfg.out_dir) / "plan.json"
            write_plan(plan, path)
            resume = (Path(cfg.out_dir) / "checkpoint" / "state.pt").exists()
            cfg = replace(cfg, plan_path=path, resume=resume)
            if on_start:
                on_start({"replanned": {"lost": e.device, "round": e.round_no, "error": str(e)},
                          "start_round": 0, "rounds": cfg.rounds, "clients": [c.name for c in plan.planned]})


def _read_history(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("round", 0) <= upto]


def train(cfg: TrainConfig, *, on_round: Callable[[dict], None] | None = None,
          on_start: Callable[[dict], None] | None = None, transport: Transport | None = None) -> list[dict]:
    """Train as ``cfg.plan_path`` says; returns every round's metrics (SPEC §4)."""
    from trainer.images import save_grid
    from trainer.plots import plot_run
    from trainer.quality import QualityEvaluator

    plan = load_plan(cfg.plan_path)
    if cfg.backend == "dist":
        return _train_dist_replanning(cfg, plan, on_round=on_round, on_start=on_start)
    dataset = load_dataset(cfg.data, root=cfg.data_root)
    lock = threading.Lock()
    fed = build_federation(plan, cfg, dataset, lock=lock)
    t = transport or InProcessTransport(LinkTable.from_plan(plan), emulate=cfg.emulate == "sleep")
    out = Path(cfg.out_dir)
    ck_dir = out / "checkpoint"
    start, history = 0, []
    if cfg.resume:
        ck = checkpoint.load(fed, ck_dir)
        start = int(ck["round"])
        history = _read_history(out / "metrics.jsonl", start)
    elif (ck_dir / "state.pt").exists():
        raise InputError(str(out), None, "holds a run already; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_plan(plan, out / "plan.json")
    evaluator = None
    if cfg.eval_every:
        evaluator = QualityEvaluator(dataset, cache_dir=cache_dir() / "classifier", seed=cfg.seed)
    if on_start:
        on_start({"start_round": start, "rounds": cfg.rounds, "clients": [c.name for c in plan.planned],
                  "warnings": fed.warnings})
    for r in range(start, cfg.rounds):
        t.log.reset()
        t0 = time.perf_counter()
        round_local(fed, t, cfg)
        m = round_metrics(fed, t, round_no=r + 1, wall_s=time.perf_counter() - t0,
                          steps=cfg.steps_per_round)
        if evaluator and ((r + 1) % cfg.eval_every == 0 or r + 1 == cfg.rounds):
            fake = sample_images(fed, cfg.eval_samples, seed=cfg.seed * 100003 + r)
            if fake.shape[-1] != 28:
                fake = torch.nn.functional.interpolate(fake, size=(28, 28), mode="bilinear", align_corners=False)
            m.update(evaluator.evaluate(fake))
        save_grid(sample_images(fed, SAMPLE_GRID, seed=cfg.seed), out / "samples" / f"round_{r + 1:04d}.png")
        history.append(m)
        write_atomic(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        checkpoint.save(fed, ck_dir, round_done=r + 1, config={k: str(v) for k, v in asdict(cfg).items()})
        plot_run(history, out)
        if on_round:
            on_round(m)
    return history
