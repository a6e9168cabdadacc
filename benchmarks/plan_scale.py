"""The planner at scale (issue 22, item 4): ``fsl plan`` on the 15-unit ``resnet`` for
fleets of 8-device clients, cold (an empty profile cache: profiling included), every
client proven optimal, written into BENCHMARKS.md ("Planner at scale").

Fleets come from ``benchmarks/fleet_profiles.py`` (seeded; a tenth of the clients copy one
of 20 standard kits, the rest are drawn device by device), so the table reports how many
distinct problems were solved. Each run is a fresh ``fsl plan`` process, timed from
outside: wall seconds, and CPU seconds of it and its children (worker processes and CBC).
The plan it wrote is then read back with ``load_plan`` (SPEC §2 checks, every client's
step recomputed from its tables), outside the timed part.

    python benchmarks/plan_scale.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, commit, machine, md_table, write_section  # noqa: E402
from benchmarks.fleet_profiles import fleet  # noqa: E402
from planner.planfile import load_plan  # noqa: E402

RUNS = ((10_000, "latency"), (1_000, "throughput"))
QUICK_RUNS = ((500, "latency"), (50, "throughput"))
TARGET_S = 60.0


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_one(n: int, objective: str, folder: Path) -> list:
    devices = folder / f"fleet-{n}.json"
    devices.write_text(json.dumps(fleet(n, devices=8, seed=0)))
    out = folder / f"plan-{objective}-{n}.json"
    cache = folder / f"cache-{objective}-{n}"  # empty: cold
    command = ["fsl", "plan", "--devices", str(devices), "--model", "resnet", "--out", str(out)]
    if objective != "latency":
        command += ["--objective", objective]
    shown = " ".join(["fsl", "plan", "--devices", f"fleet-{n}.json", *command[4:6], "--out", "plan.json",
                      *command[8:]])
    load0, cpu0, t0 = os.getloadavg()[0], _children_cpu_s(), time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "FSL_CACHE_DIR": str(cache), "COLUMNS": "120"},
                          capture_output=True, text=True, timeout=3600)
    wall, cpu, load1 = time.perf_counter() - t0, _children_cpu_s() - cpu0, os.getloadavg()[0]
    if done.returncode != 0:
        raise SystemExit(f"{shown} exited {done.returncode}: {done.stderr[-2000:]}")
    print(f"{shown}: {wall:.1f} s wall, {cpu:.1f} s CPU, load {load0:.1f} / {load1:.1f}", flush=True)
    t0 = time.perf_counter()
    p = load_plan(out)  # raises on any SPEC violation
    check_s = time.perf_counter() - t0
    planned = len(p.planned)
    print(done.stdout[-3000:])
    return [f"`{shown}`", objective, n, f"{wall:.1f}", "yes" if wall <= TARGET_S else "no", f"{cpu:.1f}",
            f"{load0:.1f} / {load1:.1f}", p.solver["distinct_problems"], p.solver["workers"],
            f"{p.solver['seconds']:.1f}", f"{planned} / {n - planned}", p.solver["status"],
            f"{out.stat().st_size / 1e6:.0f}", f"{check_s:.1f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small fleets (a smoke run; BENCHMARKS.md not written)")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="plan-scale-") as tmp:
        for n, objective in QUICK_RUNS if a.quick else RUNS:
            rows.append(run_one(n, objective, Path(tmp)))
            print(rows[-1], flush=True)
    header = ["command (fleet: `python benchmarks/fleet_profiles.py N --seed 0`)", "objective", "clients",
              "wall s", f"<= {TARGET_S:.0f} s", "CPU s (with workers, CBC)", "load avg start / end",
              "distinct problems", "workers", "solve s (solver.seconds)", "planned / excluded", "status",
              "plan MB", "load_plan check s"]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = ("## Planner at scale\n\n"
            f"Machine: {machine()}. Date: {now}. Commit: {commit()}. Command: `python benchmarks/plan_scale.py`. "
            "Each row is one cold `fsl plan` (empty profile cache, so profiling the model, and for throughput "
            "each M's micro-batch size, is included), timed from outside the process; the plan is then read "
            "back with `load_plan`, which re-checks every client against SPEC §2 (not timed). Clients of 8 "
            "devices; a tenth copy one of 20 kits, so distinct problems < clients. The 2-core VM is shared with "
            "other sessions: the load average says how many runnable processes competed, and CPU seconds are "
            "the less load-sensitive figure.\n\n" + md_table(header, rows) + "\n")
    print(body)
    if not a.quick:
        write_section("plan-scale", body)


if __name__ == "__main__":
    main()
