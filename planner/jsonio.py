"""Reading and writing JSON files at the edge: strict, bounded, atomic."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from planner.errors import InputError

MAX_FILE_BYTES = 64 * 1024 * 1024


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice in one object")
        out[k] = v
    return out


def read_json(path: str | Path, *, what: str = "file", max_bytes: int = MAX_FILE_BYTES) -> Any:
    """Parse a JSON file strictly: UTF-8, no NaN/Infinity, at most ``max_bytes``, bounded depth."""
    p = Path(path)
    if not p.exists():
        raise InputError(str(path), None, f"{what} not found")
    if p.is_dir():
        raise InputError(str(path), None, f"is a directory, expected a JSON {what}")
    if p.stat().st_size > max_bytes:
        raise InputError(str(path), None, f"{p.stat().st_size} bytes, larger than the {max_bytes} allowed")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(str(path), None, f"not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise InputError(str(path), None, f"cannot be read: {e.strerror}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise InputError(str(path), None, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:
        raise InputError(str(path), None, f"not valid JSON: {e}") from None
    except RecursionError:
        raise InputError(str(path), None, "JSON nested too deeply") from None


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename over ``path``.

    A crash at any point leaves either the old file or the new one, never a torn one.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """``obj`` as JSON, atomically; ``indent`` None: compact (json's C encoder, several
    times faster: for files nobody reads by eye, like a plan of thousands of clients)."""
    text = json.dumps(obj, indent=indent, allow_nan=False, separators=None if indent else (",", ":"))
    write_atomic(path, text + "\n")


def _nearest_existing(p: Path, option: str, what: str) -> Path:
    """The closest existing ancestor of ``p``: it must be a writable folder."""
    above = p.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise InputError(option, None, f"{p}: {above} is a file, not a folder, so no {what} can be written under it")
    _probe_write(above, option, p)
    return above


def _probe_write(folder: Path, option: str, target: Path) -> None:
    """Create and remove a file in ``folder``: permissions, read-only mounts and
    pseudo file systems all answer the same way (``os.access`` says yes to root)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fsl-probe.", dir=folder)
    except OSError as e:
        raise InputError(option, None, f"{target}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_file(path: str | Path, option: str) -> None:
    """InputError naming ``option`` unless a file can be written at ``path``: not a
    folder, not under a file, its folder (or the nearest existing one) writable.
    Checked before any work, so a long job never ends unable to write its result."""
    p = Path(path)
    if p.is_dir():
        raise InputError(option, None, f"{p} is a folder, expected a file to write")
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(option, None, f"{p} is not writable")
    _nearest_existing(p, option, "file")


def check_output_dir(path: str | Path, option: str) -> None:
    """InputError naming ``option`` unless ``path`` is, or can be made, a writable folder."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise InputError(option, None, f"{p} exists and is not a folder")
        _probe_write(p, option, p)
        return
    _nearest_existing(p, option, "folder")
