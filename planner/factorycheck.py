"""A user's model factory is run first in a child process, so that what it does to its
process cannot end or hang the command (``--model-timeout-s``).

``--model path/to/file.py:factory`` executes the user's code (``planner.usermodel``).
Before the command builds the model itself, :func:`vet` builds it once in a forked child
with a time limit: a factory that calls ``sys.exit``, ends its process (``os._exit``, a
signal), or does not return in time is an input error naming the factory (exit 2), not
a command that exits 0 with no output, exits with the factory's code, or waits forever.
Only the verdict comes back (the model is built again in the command's process, where
the factory's validated code then runs as it did in the child); a factory vetted once
per content is not run in a child again. A factory that behaves differently on its
second call is beyond this check.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from pathlib import Path

from planner.errors import InputError
from planner.usermodel import build_model, parse_reference

DEFAULT_TIMEOUT_S = 60.0
_VETTED: set[tuple[str, str]] = set()  # (reference, sha256 of its file) that built fine in a child


def _child(text: str, source: str, field: str | None, conn) -> None:
    try:
        import torch

        torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool
        build_model(text, source=source, field=field)
        conn.send(("ok", None))
    except InputError as e:
        conn.send(("input", (e.source, e.field, e.problem)))
    except BaseException as e:  # noqa: BLE001 - whatever the user's code raises is reported
        conn.send(("input", (source, field, f"{text}: the factory raised {type(e).__name__}: {str(e)[:300]}")))
    finally:
        conn.close()
        os._exit(0)  # a forked child leaves without running the parent's exit handlers


def _key(text: str) -> tuple[str, str]:
    target = text.rsplit(":", 1)[0]
    try:
        return text, hashlib.sha256(Path(target).read_bytes()).hexdigest()
    except OSError:
        return text, ""  # a module reference, or a file build_model will report


def vet(text: str, *, source: str = "--model", field: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """InputError naming ``source`` unless ``text``'s factory builds a valid model in a
    child process within ``timeout_s`` seconds (built-in names need no child)."""
    if not (timeout_s > 0 and timeout_s < 1e6):
        raise InputError("--model-timeout-s", None, f"must be within 0..1e6 seconds, found {timeout_s}")
    if parse_reference(text, source=source, field=field) is None or _key(text) in _VETTED:
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(text, source, field, send), daemon=True)
    child.start()
    send.close()
    answered = receive.poll(timeout_s)
    try:
        verdict = receive.recv() if answered else None
    except EOFError:  # the child ended without a word
        verdict = None
    receive.close()
    child.join(timeout=None if answered else 0)
    if child.is_alive():
        child.kill()
        child.join()
    if not answered:
        raise InputError(source, field, f"{text}: the factory did not return within {timeout_s:g} s "
                         "(--model-timeout-s)")
    if verdict is None:
        code = child.exitcode
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        raise InputError(source, field, f"{text}: the factory ended its process ({how}) instead of returning")
    kind, body = verdict
    if kind == "input":
        raise InputError(*body)
    _VETTED.add(_key(text))
