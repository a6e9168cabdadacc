"""A switch of plans (``--adapt``) as every role sees it: the server hands its new plan to
every device, and each process, wherever it runs, keeps it beside its share of the run
and resumes on it.

::

    server (after round r)                      device d (any machine)
      | writes DIR/plan-rNNNN.json               |
      |--- round [0] --------------------------->|  this run ends after round r
      |--- plan (the file's bytes) ------------->|  written to d's own DIR/plan-rNNNN.json
      |    (bye: the process group closes)       |
    train() on every rank: resume from round r's checkpoint on the new plan

The plan travels as its JSON file's bytes (a uint8 tensor), nothing pickled; the device
process parses it like any plan file (``planner.planfile.load_plan``) when it resumes.
Under torchrun the group of processes is fixed at launch (``WORLD_SIZE``, ``FSL_RANKS``),
so the server switches only to plans on the same devices (``trainer.adapt.drift``), and each
new group meets under a fresh key prefix of torchrun's store (``trainer.backends.dist``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from planner.jsonio import write_atomic
from trainer.comm.protocol import SERVER


def in_torchrun() -> bool:
    """Whether this process is one rank of a group started outside (``torchrun``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def next_plan_name(round_done: int) -> str:
    """Where ``--adapt`` keeps, in the run folder, a plan it switches to after ``round_done``."""
    return f"plan-r{round_done:04d}.json"


def announce(t, devices: list[str], path: Path) -> None:
    """The server's part: end the run on every device and hand it the new plan."""
    body = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    for d in devices:
        t.send(SERVER, d, torch.tensor([0]), tag="round")
        t.send(SERVER, d, body, tag="plan")


def follow(t, me: str, out_dir: str | Path, round_done: int, *, timeout_s: float) -> list[dict]:
    """A device's part, after its ``round [0]``: keep the server's new plan in this
    process's run folder; returns the record ``train()`` resumes from."""
    body = t.recv(me, SERVER, tag="plan", timeout_s=timeout_s).numpy().tobytes()
    path = Path(out_dir) / next_plan_name(round_done)
    if not path.is_file() or path.read_bytes() != body:  # the server's own file where the folder is shared
        write_atomic(path, body)
    return [{"round": round_done, "plan_switch": {"plan": path.name}}]
