"""A run's directory as the server keeps it (SPEC §4): resume or refuse, history, samples,
plots, ``processes.json``, the timeline and ``checkpoint/server.pt``.

Each client's data device writes its client's ``checkpoint/client-<name>-rNNNN.pt``
(``trainer.state.ClientFiles``). On one machine they share the folder; across machines
each keeps its own part in its own ``--out``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields
from pathlib import Path

from planner.errors import InputError
from planner.jsonio import read_json, write_atomic, write_json
from planner.planfile import write_plan
from planner.timeline import Box, draw, predicted_boxes
from trainer import state
from trainer.run.board import Board
from trainer.config import SAME_ON_RESUME
from trainer.quality.evaluation import sample_images
from trainer.run.images import save_grid
from trainer.run.plots import plot_run
from trainer.roles.generator import ServerRole
from trainer.comm.switch import next_plan_name
from trainer.run.runfile import to_toml

SAMPLE_GRID = 64
TIMELINE_CLIENTS = 8  # timeline.png draws the clients whose last step took longest


def finite_json(obj):
    """``obj`` with every NaN or infinity as None (null): metrics.jsonl stays standard JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def check_resume(cfg, plan) -> None:
    """Refuse (InputError) a ``--resume`` whose options or plan differ from the run saved
    in ``cfg.out_dir``, before anything there is touched: each option of
    ``SAME_ON_RESUME`` with its saved and its new value; the model's fingerprint; the plan.
    A run folder without the server's checkpoint (another machine's, under torchrun) is
    the server's to check."""
    path = state.server_file(cfg.out_dir)
    if not path.is_file():
        return
    ck = state.read(path)
    saved = ck.get("config", {})
    defaults = {f.name: f.default for f in fields(cfg)}
    for name in SAME_ON_RESUME:
        if name not in defaults:
            continue
        was, now = saved.get(name, str(defaults[name])), str(getattr(cfg, name))
        if was != now:
            raise InputError(f"--{name.replace('_', '-')}", None, f"the run in {cfg.out_dir} was trained with {was}, "
                             f"this command says {now}; --resume continues the same run (or train into a new --out)")
    old = cfg.out_dir / "plan.json"
    if old.is_file():
        was = read_json(old, what="plan").get("model", {}).get("fingerprint")
        if was != plan.model["fingerprint"]:
            raise InputError(str(cfg.plan_path), "model.fingerprint", f"the run in {cfg.out_dir} trained model "
                             f"{was}, this plan's is {plan.model['fingerprint']}; --resume continues the same model")
    state.check_owner(ck, fmt=state.SERVER_FORMAT, plan=plan, source=str(path))


class RunDir:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.server_file = state.server_file(self.out)
        self.board: Board | None = None  # --tensorboard, from start() on

    @staticmethod
    def refuse_occupied(cfg) -> None:
        """A new run (no ``--resume``) never writes over a run's folder."""
        if not cfg.resume and state.server_file(cfg.out_dir).exists():
            raise InputError(str(cfg.out_dir), None,
                             "holds a run already; pass --resume to continue it or choose another --out")

    # -- the server's part
    def start(self, spec, server: ServerRole) -> tuple[int, list[dict]]:
        """Resume ``server`` from the checkpoint, or refuse to overwrite a run; returns the
        last round done and the history up to it."""
        done, history = self._restore(spec, server)
        if spec.cfg.tensorboard:
            self.board = Board(self.out, first_round=done + 1, config_text=to_toml(spec.cfg))
        return done, history

    def _restore(self, spec, server: ServerRole) -> tuple[int, list[dict]]:
        cfg = spec.cfg
        if not cfg.resume:
            self.refuse_occupied(cfg)
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
            if server.ema is not None:
                server.ema.load_state_dict(ck["generator_ema"])
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
        grid = self.out / "samples" / f"round_{round_done:04d}.png"
        save_grid(sample_images(server.sampler, SAMPLE_GRID, seed=spec.cfg.seed), grid)
        rows = [finite_json(h) for h in history]
        write_atomic(self.out / "metrics.jsonl", "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))
        if self.board is not None:
            self.board.add_round(rows[-1], grid)
        plot_run(history, self.out)
        s = server
        ck = {"format": state.SERVER_FORMAT, "round": round_done, "plan": state.plan_digest(spec.plan),
              "config": {k: str(v) for k, v in asdict(spec.cfg).items()},
              "generator": s.generator.state_dict(), "optimizer": s.optimizer.state_dict(),
              "z_generator": s.z_generator.get_state()}
        if s.ema is not None:
            ck["generator_ema"] = s.ema.state_dict()
        write_atomic(self.server_file, state.to_bytes(ck))

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None

    def write_next_plan(self, plan, round_done: int) -> str:
        """Where ``--adapt`` keeps a plan it switches to after ``round_done``."""
        name = next_plan_name(round_done)
        write_plan(plan, self.out / name)
        return name

    def write_processes(self, rows: list[dict]) -> None:
        write_json(self.out / "processes.json", {"processes": rows})

    def write_timeline(self, plan, events: list[tuple], *, hosts: set[str]) -> None:
        """The last step of the run as measured: ``timeline.json`` (every event, seconds
        from the step's first) and ``timeline.png`` (per client, the plan's schedule above
        the measured one, each from the client's first event). Timestamps come from each
        process's monotonic clock, comparable only on one host, so a run across hosts
        writes none."""
        if len(hosts) != 1 or not events:
            return
        t0 = min(e[2] for e in events)
        rows = [{"row": row, "label": label, "start_s": a - t0, "end_s": b - t0} for row, label, a, b in events]
        write_json(self.out / "timeline.json", {"events": rows})
        panels = []
        for c in plan.planned:
            names = [s.device for s in c.stages]
            links = [f"{a}→{b}" for a, b in zip(names, names[1:])]
            mine = [r for pair in zip(names, links + [None]) for r in pair if r is not None]  # chain order
            seen = [e for e in rows if e["row"] in mine]
            if not seen:  # dropped before its last step
                continue
            start = min(e["start_s"] for e in seen)
            measured = [Box(e["row"], e["start_s"] - start, e["end_s"] - start, e["label"],
                            "compute" if e["row"] in names else "transfer")
                        for e in sorted(seen, key=lambda e: mine.index(e["row"]))]
            end = max(b.end_s for b in measured)
            panels.append((end, [(f"{c.name} planned: M = {c.micro_batches}, step {c.step_time_s:.3f} s",
                                  predicted_boxes(c)), (f"{c.name} measured (the run's last step): {end:.3f} s", measured)]))
        worst = sorted(panels, key=lambda p: -p[0])[:TIMELINE_CLIENTS]  # a picture of 100 clients shows none
        if worst:  # none when every client was dropped before its last step
            draw([panel for _, pair in worst for panel in pair], self.out / "timeline.png")
