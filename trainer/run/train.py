"""``train(cfg)``: execute a plan with the chosen backend, re-planning around a lost device.

Nothing here prints: ``on_start``, ``on_round`` and ``on_step`` receive the run's start
report, each round's metrics and ``{"round", "step"}`` after each generator step. With ``replan_on_failure``, a device that fails is dropped from its
client's tables (they are in the plan), the client is solved again, and the run resumes
from its last checkpoint, so no completed round is lost.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from planner.errors import InputError
from planner.factorycheck import vet
from planner.planfile import load_plan, write_plan
from trainer.backends.dist import check_launch, run_dist
from trainer.backends.local import run_local
from trainer.run.loop import run_role
from trainer.roles.build import RunSpec, check_plan_model
from trainer.config import TrainConfig
from trainer.privacy.dpsgd import check_layers
from trainer.errors import DeviceFailure
from trainer.adapt.replan import without_device
from trainer.run.rundir import RunDir, check_resume
from trainer.run.runfile import write_run_file
from trainer.quality.inception import inception_fid
from trainer.state import plan_digest, server_file

BACKENDS = {"local": run_local, "dist": run_dist}
Hook = Callable[[dict], None] | None


def train(cfg: TrainConfig, *, on_round: Hook = None, on_start: Hook = None, on_step: Hook = None) -> list[dict]:
    """Train as ``cfg.plan_path`` says; returns every round's metrics (SPEC §4). A new run
    refused before its first round leaves ``cfg.out_dir`` as it found it."""
    out = Path(cfg.out_dir)
    before = set(out.iterdir()) if out.is_dir() else None  # None: the folder is new
    try:
        return _train(cfg, on_round=on_round, on_start=on_start, on_step=on_step)
    except InputError:
        if not cfg.resume and not server_file(out).exists() and out.is_dir():
            _remove_new(out, before)
        raise


def _remove_new(out: Path, before: set[Path] | None) -> None:
    """Remove what a refused start created in ``out`` (the folder itself if it was new)."""
    for p in [out] if before is None else set(out.iterdir()) - before:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _train(cfg: TrainConfig, *, on_round: Hook, on_start: Hook, on_step: Hook = None) -> list[dict]:
    plan = load_plan(cfg.plan_path)
    check_launch(RunSpec(cfg, plan))  # torchrun's ranks and FSL_RANKS, before anything else
    vet(plan.model["name"], source=str(cfg.plan_path), field="model.name")  # a user factory, in a child first
    model, _ = check_plan_model(plan, str(cfg.plan_path))  # a wrong plan fails here, before any role starts
    if cfg.dp:  # so does a layer DP-SGD cannot clip per sample
        check_layers(model, option="--dp-epsilon" if cfg.dp_epsilon else "--dp-noise")
    if cfg.resume:
        check_resume(cfg, plan)  # so does a resume of another run, before its folder is touched
    RunSpec(cfg, plan).data.check([c.data_weight for c in plan.planned])  # so does an image folder
    if cfg.fid_inception is not None:  # and Inception weights that are missing, wrong, or cannot run here
        inception_fid(cfg.fid_inception)
    known = {d for c in plan.planned for d in c.costs.devices}
    for name, _, at in cfg.slowdown:
        if name not in known:
            raise InputError("--slowdown", None, f"{name!r} is no device of a planned client in {cfg.plan_path}")
        if at > cfg.rounds:
            raise InputError("--slowdown", None, f"{name} slows from round {at}, after the run's last ({cfg.rounds})")
    whole = [c.name for c in plan.planned if len(c.stages) == 1]
    if cfg.cut_noise and whole:  # refused, not ignored: the noise would protect nothing for them
        raise InputError("--cut-noise", None, f"noises the activations a data device sends on, but "
                         f"{', '.join(whole)} keep{'s' * (len(whole) == 1)} the whole model on the data device "
                         "(no cut): plan a cut for every client or drop --cut-noise")
    RunDir.refuse_occupied(cfg)
    if not cfg.resume or server_file(cfg.out_dir).exists():  # a resume of nothing is refused untouched
        write_run_file(cfg, cfg.out_dir)  # the options as given, before a switch or re-plan changes the plan
    while True:
        try:
            history = BACKENDS[cfg.backend](RunSpec(cfg, plan), run_role, on_start=on_start, on_round=on_round,
                                            on_step=on_step)
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
