"""A run's directory (SPEC §4): resume or refuse, history, samples, evaluation, checkpoints.

The server writes ``plan.json``, ``metrics.jsonl``, ``processes.json``, the sample grids,
the plots and ``checkpoint/server.pt``; each client's data device writes its client's
``checkpoint/client-<name>-rNNNN.pt`` (``trainer.state``). On one machine they share the
folder; across machines each keeps its own part in its own ``--out``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from planner.errors import InputError
from planner.jsonio import write_atomic, write_json
from planner.planfile import write_plan
from planner.profile import cache_dir
from trainer import state
from trainer.data import DataSource
from trainer.images import save_grid
from trainer.plots import plot_run
from trainer.quality import QualityEvaluator
from trainer.server import ServerRole

SAMPLE_GRID = 64
EVAL_SIZE = 28  # the quality classifier's input


class RunDir:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.checkpoints = self.out / "checkpoint"
        self.server_file = self.checkpoints / "server.pt"

    # -- the server's part
    def start(self, spec, server: ServerRole) -> tuple[int, list[dict]]:
        """Resume ``server`` from the checkpoint, or refuse to overwrite a run; returns the
        last round done and the history up to it."""
        cfg = spec.cfg
        if not cfg.resume:
            if self.server_file.exists():
                raise InputError(str(self.out), None,
                                 "holds a run already; pass --resume to continue it or choose another --out")
            self.out.mkdir(parents=True, exist_ok=True)
            write_plan(spec.plan, self.out / "plan.json")
            write_atomic(self.out / "metrics.jsonl", "")
            return 0, []
        ck = state.read(self.server_file)
        state.check_owner(ck, fmt=state.SERVER_FORMAT, plan=spec.plan, source=str(self.server_file))
        try:
            server.generator.load_state_dict(ck["generator"])
            server.optimizer.load_state_dict(ck["optimizer"])
            server.z_generator.set_state(ck["z_generator"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise InputError(str(self.server_file), None,
                             f"does not match this run ({type(e).__name__}: {str(e)[:120]})") from None
        write_plan(spec.plan, self.out / "plan.json")
        done = int(ck["round"])
        return done, self.history(upto=done)

    def history(self, *, upto: int) -> list[dict]:
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if r.get("round", 0) <= upto]

    def finish_round(self, spec, server: ServerRole, history: list[dict], round_done: int) -> None:
        """The round's grid, metrics, plots, and the server's checkpoint (last: it names
        the round that is complete)."""
        save_grid(sample_images(server.generator, SAMPLE_GRID, seed=spec.cfg.seed),
                  self.out / "samples" / f"round_{round_done:04d}.png")
        write_atomic(self.out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        plot_run(history, self.out)
        s = server
        ck = {"format": state.SERVER_FORMAT, "round": round_done, "plan": state.plan_digest(spec.plan),
              "config": {k: str(v) for k, v in asdict(spec.cfg).items()},
              "generator": s.generator.state_dict(), "optimizer": s.optimizer.state_dict(),
              "z_generator": s.z_generator.get_state()}
        write_atomic(self.server_file, state.to_bytes(ck))

    def write_next_plan(self, plan, round_done: int) -> str:
        """Where ``--adapt`` keeps a plan it switches to after ``round_done``."""
        name = f"plan-r{round_done:04d}.json"
        write_plan(plan, self.out / name)
        return name

    def write_processes(self, rows: list[dict]) -> None:
        write_json(self.out / "processes.json", {"processes": rows})

    def write_timeline(self, plan, events: list[tuple], *, hosts: set[str]) -> None:
        """The last step of the run as measured: ``timeline.json`` (every event, seconds
        from the step's first) and ``timeline.png``. Timestamps come from each process's
        monotonic clock, comparable only on one host, so a run across hosts writes none."""
        if len(hosts) != 1 or not events:
            return
        t0 = min(e[2] for e in events)
        rows = [{"row": row, "label": label, "start_s": a - t0, "end_s": b - t0} for row, label, a, b in events]
        write_json(self.out / "timeline.json", {"events": rows})

    # -- a data device's part
    def client_file(self, client: str, round_done: int) -> Path:
        return self.checkpoints / f"client-{client}-r{round_done:04d}.pt"

    def save_client(self, client: str, round_done: int, ck: dict) -> None:
        write_atomic(self.client_file(client, round_done), state.to_bytes(ck))
        for old in self.checkpoints.glob(f"client-{client}-r*.pt"):
            if int(old.stem.rsplit("-r", 1)[1]) < round_done - 1:
                old.unlink(missing_ok=True)

    def load_client(self, client: str, round_done: int, plan) -> dict:
        path = self.client_file(client, round_done)
        ck = state.read(path)
        state.check_owner(ck, fmt=state.CLIENT_FORMAT, plan=plan, source=str(path))
        if ck.get("round") != round_done or ck.get("client") != client:
            raise InputError(str(path), "round", f"holds {ck.get('client')!r} round {ck.get('round')}, "
                             f"expected {client!r} round {round_done}")
        return ck


def sample_images(generator: torch.nn.Module, n: int, seed: int) -> torch.Tensor:
    """``n`` images from fixed noise. Batch norm stays in training mode (batch statistics),
    as the generator trains: early running averages lag far behind and make every sample
    look alike. The running averages are put back, so sampling leaves no trace."""
    g = generator
    z = torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(seed))
    saved = {k: v.clone() for k, v in g.named_buffers()}
    with torch.no_grad():
        out = g(z)
        for k, v in g.named_buffers():
            v.copy_(saved[k])
    return out


class Evaluation:
    """FID, KID and classifier scores of the generator against the held-out split, which
    no client trains on (``DataSource.held_out``); the classifier is trained on it too."""

    def __init__(self, data: DataSource, *, seed: int, samples: int):
        self.held_out = data.held_out()
        self.quality = QualityEvaluator(self.held_out, cache_dir=cache_dir() / "classifier", seed=seed)
        self.seed, self.samples = seed, samples

    def __call__(self, generator: torch.nn.Module, round_done: int) -> dict:
        fake = sample_images(generator, self.samples, seed=self.seed * 100003 + round_done)
        if fake.shape[-1] != EVAL_SIZE:
            fake = F.interpolate(fake, size=(EVAL_SIZE, EVAL_SIZE), mode="bilinear", align_corners=False)
        return self.quality.evaluate(fake)
