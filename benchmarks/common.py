"""Shared pieces of the benchmark scripts: machine description, tables, BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{platform.node()}: {os.cpu_count()} cores ({cpu}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}; run {when} at commit {commit()}")


def commit() -> str:
    """The checkout's commit, with ``+changes`` when the code (not the results) differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        code = ["planner", "trainer", "benchmarks", "cli.py", "profiles", "examples"]
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *code], cwd=ROOT).returncode != 0
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def median(xs) -> float:
    return statistics.median(xs)


def md_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def write_section(name: str, body: str, *, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section between markers ``<!-- name -->`` in ``path``
    (BENCHMARKS.md unless told)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number here was printed by the command shown with it.\n"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def synthetic_profile(n_clients: int, *, devices: list[dict] | None = None, budget_s: float | None = None) -> dict:
    """``n_clients`` identical clients (a data holder and two helpers by default)."""
    devices = devices or [
        {"name": "phone", "processing_time_factor": 3.0, "capacity": "256MB", "bandwidth_mbps": 300,
         "latency_ms": 5, "holds_data": True},
        {"name": "laptop", "processing_time_factor": 1.0, "capacity": "2GB", "bandwidth_mbps": 400, "latency_ms": 2},
    ]
    clients = []
    for i in range(n_clients):
        devs = [{**d, "name": f"k{i}-{d['name']}"} for d in devices]
        clients.append({"name": f"client-{i}", "data_weight": 1.0, "devices": devs})
    prof = {"schema": "fsl-devices/1", "clients": clients}
    if budget_s is not None:
        prof["budget"] = {"step_time_s": budget_s}
    return prof
