"""What a role must save to continue exactly, and the one serializer for it.

A state is a dict of tensors, numbers, strings, lists and dicts. It travels between
processes as a uint8 tensor holding a ``torch.save`` buffer (:func:`pack`) and lands on
disk as the same bytes; both are read back with ``torch.load(weights_only=True)``, so
nothing that needs arbitrary unpickling is ever accepted.

Checkpoints (``DIR/checkpoint/``) stay with their owners:

- ``server.pt``: the generator, its Adam state and noise stream, the round, the plan's
  digest and the run's options; written last, so it names the round that is complete.
- ``client-<name>-rNNNN.pt``: written by each client's data device, the only device its
  client trusts with everything: the client's whole discriminator (gathered from its
  devices), its Adam state per parameter, the dropout streams and the data sampler. Discriminator weights never reach the server this way. The last two
  rounds are kept, so a crash between a client's file and the server's leaves a
  consistent pair.

After a device is lost, or when the plan changes, a new plan may resume: each new stage
gets its layers' weights and Adam moments from the client's file, whichever device held
them before (``trainer.roles.checkpoint``: a device's part of these files).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from planner.errors import InputError
from planner.jsonio import write_atomic

SERVER_FORMAT = "fsl-checkpoint/2 server"
CLIENT_FORMAT = "fsl-checkpoint/2 client"


def pack(obj: dict) -> torch.Tensor:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def to_bytes(obj: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def unpack(t: torch.Tensor, *, source: str) -> dict:
    return _load(io.BytesIO(t.numpy().tobytes()), source)


def read(path: Path) -> dict:
    if not path.is_file():
        raise InputError(str(path), None, "no checkpoint to resume from")
    return _load(path, str(path))


def _load(f, source: str) -> dict:
    try:
        obj = torch.load(f, weights_only=True, map_location="cpu")
    except Exception as e:  # truncated, corrupt, or a pickle that is not plain data
        raise InputError(source, None, f"not a loadable checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise InputError(source, None, f"not a loadable checkpoint (a {type(obj).__name__}, expected a dict)")
    return obj


def plan_digest(plan) -> str:
    """Identity of a plan's content (what a checkpoint must match)."""
    body = json.dumps(plan.to_json(), sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def check_owner(ck: dict, *, fmt: str, plan, source: str) -> None:
    """``ck`` must be a checkpoint of kind ``fmt`` written for ``plan`` (or for a plan it
    was re-planned from)."""
    if ck.get("format") != fmt:
        raise InputError(source, "format", f"expected {fmt}, found {ck.get('format')!r}")
    if ck.get("plan") not in (plan_digest(plan), *plan.solver.get("lineage", [])):
        raise InputError(source, "plan", "the checkpoint was written for another plan; "
                         "resume with the plan in its run directory, or train into a new --out")


def server_file(out: str | Path) -> Path:
    """The server's checkpoint in run directory ``out``: it names the last complete round."""
    return Path(out) / "checkpoint" / "server.pt"


class ClientFiles:
    """A data device's checkpoints of its client, in ``DIR/checkpoint``: one file a round,
    the last two kept."""

    def __init__(self, out: str | Path):
        self.folder = Path(out) / "checkpoint"

    def path(self, client: str, round_done: int) -> Path:
        return self.folder / f"client-{client}-r{round_done:04d}.pt"

    def save(self, client: str, round_done: int, ck: dict) -> None:
        write_atomic(self.path(client, round_done), to_bytes(ck))
        for old in self.folder.glob(f"client-{client}-r*.pt"):
            if int(old.stem.rsplit("-r", 1)[1]) < round_done - 1:
                old.unlink(missing_ok=True)

    def load(self, client: str, round_done: int, plan) -> dict:
        path = self.path(client, round_done)
        ck = read(path)
        check_owner(ck, fmt=CLIENT_FORMAT, plan=plan, source=str(path))
        if ck.get("round") != round_done or ck.get("client") != client:
            raise InputError(str(path), "round", f"holds {ck.get('client')!r} round {ck.get('round')}, "
                             f"expected {client!r} round {round_done}")
        return ck
