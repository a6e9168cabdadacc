"""A run's folder read back from its files (SPEC §4), for ``fsl report``: each round's
row of ``metrics.jsonl``, the plan, the resolved options (``config.toml``), the sample
grids and the figures the run drew. Nothing here trains or draws; a file that is absent
is left out (a run of an older version, a run still in its first round)."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from planner.errors import InputError

FIGURES = ("losses.png", "times.png", "timeline.png")
QUALITY = ("fid", "kid", "confidence")


@dataclass(frozen=True)
class RoundRow:
    """One round as the report shows it (from its row of metrics.jsonl)."""

    round: int
    g_loss: float | None  # the generator's loss, mean over the round's steps
    d_loss: dict[str, float | None]  # per client; under DP its fake half (d_loss_fake)
    quality: dict[str, float]  # fid, kid, confidence, when the round was evaluated
    round_time_s: float | None  # measured, the whole round
    predicted_round_time_s: float | None  # the plan's round time x steps
    epsilon: dict[str, float]  # per client under DP-SGD, spent so far
    notes: tuple[str, ...]  # a plan switch, a skipped aggregation, a privacy stop


@dataclass(frozen=True)
class RunFolder:
    path: Path
    history: tuple[dict, ...]  # metrics.jsonl, one dict per round
    rows: tuple[RoundRow, ...]
    plan: dict | None  # plan.json
    config: dict | None  # config.toml (key -> value)
    grids: dict[int, Path]  # round -> samples/round_NNNN.png
    figures: dict[str, Path]  # file name -> path, for those of FIGURES the run drew


def _row(m: dict) -> RoundRow:
    d = m.get("d_loss_fake") if any(v is not None for v in (m.get("d_loss_fake") or {}).values()) else m.get("d_loss")
    notes = []
    if m.get("plan_switch"):
        notes.append(f"switched to {m['plan_switch'].get('plan')}")
    for key in ("aggregation_skipped", "privacy_stop"):
        if m.get(key):
            notes.append(str(m[key]))
    return RoundRow(round=int(m["round"]), g_loss=m.get("g_loss"), d_loss=dict(d or {}),
                    quality={k: m[k] for k in QUALITY if m.get(k) is not None},
                    round_time_s=m.get("round_time_s"), predicted_round_time_s=m.get("predicted_round_time_s"),
                    epsilon={c: v["epsilon"] for c, v in (m.get("clients") or {}).items() if "epsilon" in v},
                    notes=tuple(notes))


def _history(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(str(path), f"line {i}", f"not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("round"), int):
            raise InputError(str(path), f"line {i}", "expected an object with an integer round")
        rows.append(row)
    return rows


def read_run(path: str | Path) -> RunFolder:
    """The run in folder ``path``; InputError if it holds no metrics.jsonl or a broken one."""
    p = Path(path)
    metrics = p / "metrics.jsonl"
    if not p.is_dir():
        raise InputError(str(p), None, "no such folder (a run's --out)")
    if not metrics.is_file():
        raise InputError(str(p), None, "holds no metrics.jsonl: not the --out of fsl train")
    history = _history(metrics)
    plan = config = None
    if (p / "plan.json").is_file():
        try:
            plan = json.loads((p / "plan.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(str(p / "plan.json"), None, f"not JSON ({e.msg})") from None
    if (p / "config.toml").is_file():
        try:
            config = tomllib.loads((p / "config.toml").read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise InputError(str(p / "config.toml"), None, f"not valid TOML: {e}") from None
    grids = {}
    for f in sorted((p / "samples").glob("round_*.png")):
        match = re.fullmatch(r"round_(\d+)\.png", f.name)
        if match:
            grids[int(match.group(1))] = f
    return RunFolder(path=p, history=tuple(history), rows=tuple(_row(m) for m in history), plan=plan,
                     config=config, grids=grids, figures={n: p / n for n in FIGURES if (p / n).is_file()})


def spaced(n: int, at_most: int) -> list[int]:
    """At most ``at_most`` of the indices 0..n-1, evenly spaced, the first and last always."""
    if n <= at_most:
        return list(range(n))
    step = (n - 1) / (at_most - 1)
    return sorted({round(i * step) for i in range(at_most)})


def shown_grids(run: RunFolder, *, at_most: int = 6) -> list[int]:
    """The rounds whose grids a report shows: evenly spaced over the run, the last always."""
    rounds = sorted(run.grids)
    return [rounds[i] for i in spaced(len(rounds), at_most)]
