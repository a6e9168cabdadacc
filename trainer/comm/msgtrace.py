"""Every message a process sends, written down as it is sent, for audits from outside
the roles: off unless ``FSL_MESSAGE_TRACE`` names a folder.

Each process appends one JSON line per message to ``<folder>/<pid>.jsonl``:
``{"seq", "src", "dst", "tag", "round", "dtype", "shape"}`` in the order its roles sent
them (``seq`` counts per process), so the order on each ``(src, dst)`` link is the
order of that file's lines for that link. With ``FSL_MESSAGE_TRACE_PAYLOADS=1`` each
payload is also saved as ``<folder>/<pid>-<seq>.pt`` (with a comma-separated list of
tags, the payloads of those tags only). The environment is read at every
send, so a test may set it for an in-process run, and processes started later (the dist
backend's ``spawn``) inherit it.

``tests/test_sequence.py`` checks the trace against ``trainer.comm.sequence``'s declaration;
``tests/test_raw_images.py`` checks every payload against the real images.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from pathlib import Path

import torch

ENV = "FSL_MESSAGE_TRACE"
PAYLOADS_ENV = "FSL_MESSAGE_TRACE_PAYLOADS"

_lock = threading.Lock()
_seq = itertools.count()


def record(src: str, dst: str, tag: str, round_no: int, payload: torch.Tensor) -> None:
    """Write the message down if ``FSL_MESSAGE_TRACE`` is set (see the module docstring)."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    with _lock:
        seq = next(_seq)
        line = {"seq": seq, "src": src, "dst": dst, "tag": tag, "round": round_no,
                "dtype": str(payload.dtype).removeprefix("torch."), "shape": list(payload.shape)}
        with open(Path(folder) / f"{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        wanted = os.environ.get(PAYLOADS_ENV, "")
        if wanted == "1" or tag in wanted.split(","):
            torch.save(payload.detach().clone(), Path(folder) / f"{os.getpid()}-{seq}.pt")


def read(folder: Path) -> list[dict]:
    """Every process's lines, each with its ``pid``; within a process in send order."""
    rows = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        pid = int(path.stem)
        rows += [json.loads(line) | {"pid": pid} for line in path.read_text().splitlines() if line]
    return rows


def payload(folder: Path, row: dict) -> torch.Tensor:
    """The tensor of a message recorded with ``FSL_MESSAGE_TRACE_PAYLOADS=1``."""
    return torch.load(Path(folder) / f"{row['pid']}-{row['seq']}.pt", weights_only=True)
