"""``train(cfg)``: execute a plan with the chosen backend, re-planning around a lost device.

Nothing here prints: ``on_start`` and ``on_round`` receive the run's start report and
each round's metrics. With ``replan_on_failure``, a device that fails is dropped from its
client's tables (they are in the plan), the client is solved again, and the run resumes
from its last checkpoint, so no completed round is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from planner.errors import InputError
from planner.planfile import load_plan, write_plan
from trainer.backends.dist import run_dist
from trainer.backends.local import run_local
from trainer.build import RunSpec, check_plan_model
from trainer.config import TrainConfig
from trainer.dpsgd import check_layers
from trainer.errors import DeviceFailure
from trainer.replan import without_device
from trainer.state import plan_digest, server_file

BACKENDS = {"local": run_local, "dist": run_dist}
Hook = Callable[[dict], None] | None


def train(cfg: TrainConfig, *, on_round: Hook = None, on_start: Hook = None) -> list[dict]:
    """Train as ``cfg.plan_path`` says; returns every round's metrics (SPEC §4)."""
    plan = load_plan(cfg.plan_path)
    model, _ = check_plan_model(plan, str(cfg.plan_path))  # a wrong plan fails here, before any role starts
    if cfg.dp:  # so does a layer DP-SGD cannot clip per sample
        check_layers(model, option="--dp-epsilon" if cfg.dp_epsilon else "--dp-noise")
    RunSpec(cfg, plan).data.check([c.data_weight for c in plan.planned])  # so does an image folder
    known = {d for c in plan.planned for d in c.costs.devices}
    for name, _, _ in cfg.slowdown:
        if name not in known:
            raise InputError("--slowdown", None, f"{name!r} is no device of a planned client in {cfg.plan_path}")
    while True:
        try:
            history = BACKENDS[cfg.backend](RunSpec(cfg, plan), on_start=on_start, on_round=on_round)
            switch = history[-1].get("plan_switch") if history else None
            if switch is None or history[-1]["round"] >= cfg.rounds:
                return history
            path = Path(cfg.out_dir) / switch["plan"]  # --adapt: go on with the better plan
            plan, cfg = load_plan(path), replace(cfg, plan_path=path, resume=True)
        except DeviceFailure as e:
            devices = {s.device for c in plan.planned for s in c.stages}
            if not cfg.replan_on_failure or e.device not in devices:
                raise
            plan = without_device(plan, e.device, round_no=e.round_no, digest=plan_digest(plan))
            path = Path(cfg.out_dir) / "plan.json"
            write_plan(plan, path)
            cfg = replace(cfg, plan_path=path, resume=server_file(cfg.out_dir).exists())
            if on_start:
                on_start({"replanned": {"lost": e.device, "round": e.round_no, "error": str(e)},
                          "start_round": 0, "rounds": cfg.rounds, "clients": [c.name for c in plan.planned]})
