"""Checkpoints: everything ``--resume`` needs, written atomically, loaded without pickles.

After a device is lost, a re-planned plan (``solver.replanned_from`` = the checkpoint's
plan) may resume it: weights, generator, samplers and the Adam state of every stage that
kept its layers carry over.

``DIR/checkpoint/state.pt`` holds tensors, numbers, strings, lists and dicts only, and
is read with ``torch.load(..., weights_only=True)``: a file that needs arbitrary
unpickling is refused. It is written to a temp file, fsynced and renamed, so a crash
mid-write leaves the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from planner.errors import InputError
from planner.jsonio import write_atomic
from planner.models import SeededDropout
from trainer.federation import Federation

FORMAT = "fsl-checkpoint/1"


def plan_digest(plan) -> str:
    """Identity of a plan's content (what the checkpoint must match)."""
    body = json.dumps(plan.to_json(), sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def _dropout_states(model) -> dict[str, torch.Tensor]:
    return {str(i): m.generator.get_state() for i, m in enumerate(model.layers) if isinstance(m, SeededDropout)}


def state_of(fed: Federation, *, round_done: int, config: dict) -> dict:
    s = fed.server
    return {
        "format": FORMAT,
        "round": round_done,
        "plan": plan_digest(fed.plan),
        "config": config,
        "server": {"generator": s.generator.state_dict(), "optimizer": s.optimizer.state_dict(),
                   "z_generator": s.z_generator.get_state()},
        "clients": {c: {"discriminator": d.state_dict(), "dropout": _dropout_states(d)}
                    for c, d in fed.discriminators.items()},
        "devices": {n: {"stage": [r.stage.start, r.stage.end],
                        "optimizer": r.optimizer.state_dict() if r.optimizer is not None else {},
                        "sampler": r.sampler.state_dict() if r.sampler is not None else {}}
                    for n, r in fed.devices.items()},
    }


def save(fed: Federation, directory: Path, *, round_done: int, config: dict) -> None:
    buf = io.BytesIO()
    torch.save(state_of(fed, round_done=round_done, config=config), buf)
    write_atomic(Path(directory) / "state.pt", buf.getvalue())


def load(fed: Federation, directory: Path) -> dict:
    """Restore ``fed`` in place; returns the checkpoint (``round``, ``config``)."""
    path = Path(directory) / "state.pt"
    if not path.is_file():
        raise InputError(str(path), None, "no checkpoint to resume from")
    try:
        ck = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # truncated, corrupt, or a pickle that is not plain data
        raise InputError(str(path), None, f"not a loadable checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise InputError(str(path), "format", f"expected {FORMAT}")
    replanned = fed.plan.solver.get("replanned_from") == ck.get("plan")
    if ck.get("plan") != plan_digest(fed.plan) and not replanned:
        raise InputError(str(path), "plan", "the checkpoint was written for another plan; "
                         "resume with the plan in its run directory, or train into a new --out")
    try:
        s = fed.server
        s.generator.load_state_dict(ck["server"]["generator"])
        s.optimizer.load_state_dict(ck["server"]["optimizer"])
        s.z_generator.set_state(ck["server"]["z_generator"])
        for c, d in fed.discriminators.items():
            d.load_state_dict(ck["clients"][c]["discriminator"])
            for i, state in ck["clients"][c]["dropout"].items():
                d.layers[int(i)].generator.set_state(state)
        for n, r in fed.devices.items():
            same_stage = n in ck["devices"] and ck["devices"][n].get("stage") == [r.stage.start, r.stage.end]
            if r.optimizer is not None and same_stage:  # a re-planned stage starts with fresh Adam moments
                r.optimizer.load_state_dict(ck["devices"][n]["optimizer"])
            if r.sampler is not None:
                r.sampler.load_state_dict(ck["devices"][n]["sampler"], source=str(path))
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise InputError(str(path), None, f"does not match this run ({type(e).__name__}: {str(e)[:120]})") from None
    return ck
