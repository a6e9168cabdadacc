"""What every role's program shares: where it is, what it says about itself, how long it
waits between rounds."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from trainer.privacy import opened

BETWEEN_ROUNDS_S = 600.0  # extra wait for the server's work between rounds (evaluation, samples, checkpoint)
Report = Callable[[str, dict], None]  # (kind, body): "start" once, then "round" after each


@dataclass
class Where:
    """The round a role is in, for the error it may raise."""

    round: int = 0


def hello(me: str, client: str | None, data) -> dict:
    """What a process tells the server once (``processes.json``): who, where, what data it
    holds (as it says) and every file it opened so far (as the interpreter saw it:
    ``trainer.privacy.opened``; None where nothing records)."""
    return {"role": me, "client": client, "host": socket.gethostname(), "pid": os.getpid(),
            "training_samples": 0 if data is None else len(data),
            "indices_sha256": None if data is None else data.digest(),
            "data": None if data is None else data.name, "opened": opened.current()}
