"""A run's options as a TOML file: ``fsl train --config run.toml`` reads one, and every run
writes its resolved options to ``DIR/config.toml``.

Keys are the names of ``fsl train``'s flags without the leading dashes, spelt with
dashes or underscores (``steps-per-round`` or ``steps_per_round``; this module writes
dashes); ``--plan`` is ``plan``, ``--out`` is ``out``, a ``--x/--no-x`` switch is
``x = true | false``, ``--slowdown`` takes a list of ``"DEVICE=FACTOR@ROUND"`` strings.
Paths are read as on the command line, relative to the folder ``fsl`` runs in. An option
not set has no key (TOML has no null); it keeps its default. ``--config`` and
``--print-config`` are not keys: they are about the file, not the run. Values are checked here with the file and key in the message (an integer where a
float goes is taken: ``lr = 1`` is 1.0); ranges are checked by ``TrainConfig.validate``.
"""

from __future__ import annotations

import tomllib
import typing
from dataclasses import fields
from pathlib import Path, PurePath

import tomli_w

from planner.errors import InputError
from planner.jsonio import write_atomic
from trainer.config import TrainConfig, parse_slowdown, tensorboard_installed

FLAG_NAMES = {"plan_path": "plan", "out_dir": "out"}  # fields whose flag has another name
NOT_FLAGS = ("eval_samples",)  # fields that no flag sets
CONFIG_FILE = "config.toml"


def keys() -> dict[str, str]:
    """Each key, dashed as its flag, -> the TrainConfig field it sets."""
    return {FLAG_NAMES.get(f.name, f.name).replace("_", "-"): f.name
            for f in fields(TrainConfig) if f.name not in NOT_FLAGS}


def _kind(field: str) -> type:
    """The plain type a field holds: bool, int, float, str, Path or tuple (slowdown)."""
    hint = typing.get_type_hints(TrainConfig)[field]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return tuple
    return args[0] if args else hint


def read_run_file(path: str | Path) -> dict[str, object]:
    """The options ``path`` sets, as TrainConfig field -> value; InputError (the file and
    the key) for a missing or malformed file, an unknown key, or a value of the wrong type."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(str(p), None, "no such file (--config)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(str(p), None, f"cannot read it: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(str(p), None, f"not valid TOML: {e}") from None
    known, out, seen = keys(), {}, {}
    for key, value in raw.items():
        dashed = key.replace("_", "-")
        if dashed not in known:
            hint = " (it names this file on the command line; a run file cannot name another)" \
                if dashed == "config" else ""
            raise InputError(str(p), key, f"unknown key{hint}; the keys are fsl train's flags: "
                             f"{', '.join(sorted(known))}")
        if dashed in seen:
            raise InputError(str(p), key, f"given twice (also as {seen[dashed]!r})")
        seen[dashed] = key
        field = known[dashed]
        out[field] = _value(p, key, _kind(field), value)
    return out


def _value(p: Path, key: str, kind: type, value):
    def wrong(expected: str) -> InputError:
        return InputError(str(p), key, f"expected {expected}, found {value!r} ({type(value).__name__})")

    if kind is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if kind in (str, Path):
        if not isinstance(value, str):
            raise wrong("a string")
        return Path(value) if kind is Path else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise wrong('a list of "DEVICE=FACTOR@ROUND" strings')
    try:
        return tuple(parse_slowdown(v) for v in value)
    except InputError as e:
        raise InputError(str(p), key, e.problem) from None


def to_toml(cfg: TrainConfig) -> str:
    """``cfg`` as a run file that ``read_run_file`` reads back to the same options."""
    doc = {}
    for key, field in keys().items():
        v = getattr(cfg, field)
        if v is None:
            continue
        if isinstance(v, PurePath):
            v = str(v)
        elif field == "slowdown":
            v = [f"{d}={factor!r}@{at}" for d, factor, at in v]
        doc[key] = v
    head = ("# The resolved options of `fsl train` (file, flags and defaults; trainer/run/runfile.py).\n"
            "# Repeat the run: fsl train --config THIS_FILE --out NEW_DIR --no-resume\n"
            "# (paths are relative to the folder fsl ran in; an option without a key was not set)\n")
    return head + tomli_w.dumps(doc)


def write_run_file(cfg: TrainConfig, out_dir: str | Path) -> None:
    write_atomic(Path(out_dir) / CONFIG_FILE, to_toml(cfg))


def resolve(given: dict[str, object], typed: typing.Callable[[str], bool], config: Path | None) -> TrainConfig:
    """``fsl train``'s options: ``config``'s keys (:func:`read_run_file`), then every flag
    ``typed`` on the command line over them, then the defaults. ``given``: every flag's
    value by parameter name. A value from the file that fails a check names the file and
    its key."""
    given = {**given, "slowdown": tuple(parse_slowdown(x) for x in given["slowdown"])}
    from_file = read_run_file(config) if config is not None else {}
    for name, value in from_file.items():
        if not typed(name):
            given[name] = value
    if given["tensorboard"] is None:
        given["tensorboard"] = tensorboard_installed()
    if given["emulate"] is None:  # the local backend's devices on virtual clocks; real processes sleep
        given["emulate"] = "virtual" if given["backend"] == "local" else "sleep"
    if given["plan_path"] is None:
        raise InputError("--plan", None, "missing: give --plan PLAN, or plan = \"PLAN\" in a --config file")
    try:
        return TrainConfig.from_cli(**given)
    except InputError as e:
        key = e.source.removeprefix("--")
        if e.field is None and keys().get(key) in from_file and not typed(keys()[key]):
            raise InputError(str(config), key, e.problem) from None
        raise
