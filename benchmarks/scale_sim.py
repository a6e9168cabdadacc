"""Simulation at scale (issue 22): many clients of four devices each under ``--emulate
virtual`` on this machine, timed against the compute they did, printed and written into
BENCHMARKS.md ("Simulation at scale").

``--clients`` clients of four devices each (:func:`scale_plan`: a hand-cut plan, seeded
random factors) are trained in this process on the local backend with ``fsl train``'s own progress bar (``views.train.TrainProgress``).
Reported: the wall time of the training call; the raw compute, the sum over every device
and the server of the CPU seconds their compute blocks took (``work_s`` in
metrics.jsonl: what the virtual clocks were advanced by, before the factors); the
process's CPU time over the same call from ``getrusage`` (outside the trainer's own
accounting: what the messages, threads and bookkeeping cost on top); and the ratio of wall
time to raw compute.

    python benchmarks/scale_sim.py [--clients 100] [--rounds 2] [--steps 10] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

from rich.console import Console  # noqa: E402

from benchmarks.common import commit, machine, md_table, write_section  # noqa: E402
from benchmarks.handplans import chain_plan  # noqa: E402
from planner.planfile import write_plan  # noqa: E402
from views.train import TrainProgress  # noqa: E402
from trainer import TrainConfig, train  # noqa: E402


CUTS = [1, 4, 7]


def scale_plan(n_clients: int, batch_size: int, seed: int):
    """``n_clients`` clients of four devices each, dcgan cut after layers 1, 4 and 7 (the data
    device first), each device's factor drawn from 0.5-6 (seeded)."""
    rng = random.Random(seed)
    plan = chain_plan("dcgan", CUTS, n_clients=n_clients, batch=batch_size, weights=[1.0] * n_clients)
    clients = tuple(replace(c, processing_time_factor={d: round(rng.uniform(0.5, 6.0), 2) for d in c.costs.devices})
                    for c in plan.clients)
    return replace(plan, clients=clients)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    args = ap.parse_args()
    con = Console()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_plan(scale_plan(args.clients, args.batch_size, args.seed), tmp / "plan.json")
        cfg = TrainConfig(plan_path=tmp / "plan.json", out_dir=tmp / "run", rounds=args.rounds,
                          steps_per_round=args.steps, emulate="virtual", eval_every=0, timeout_s=600.0)
        cpu0, t0 = cpu_s(), time.perf_counter()
        marks = {}  # when the roles had started, and each step ended (perf_counter)

        def on_start(info):
            marks.setdefault("start", (time.perf_counter(), cpu_s()))
            progress.on_start(info)

        def on_step(s):
            marks[(s["round"], s["step"])] = (time.perf_counter(), cpu_s())
            progress.on_step(s)

        with TrainProgress(con, cfg.rounds, cfg.rounds * cfg.steps_per_round) as progress:
            history = train(cfg, on_round=progress.on_round, on_start=on_start, on_step=on_step)
        wall_s, process_cpu_s = time.perf_counter() - t0, cpu_s() - cpu0
    setup_s = marks["start"][0] - t0
    first, last = marks[(1, 1)], marks[(args.rounds, args.steps)]
    devices = {d for m in history for d in m["devices"]}
    compute_s = sum(v["work_s"] * m["clients"][v["client"]]["steps"] for m in history for v in m["devices"].values())
    compute_s += sum(m["server"]["compute_s"] for m in history)
    virtual_s = sum(m["round_time_s"] for m in history)
    load = os.getloadavg()[0]
    header = ["clients", "devices", "rounds x steps", "batch", "wall s", "of it setup s", "raw compute s",
              "wall / compute", "process CPU s", "steps 2..N: wall s / process CPU s", "virtual time s", "load avg"]
    row = [args.clients, len(devices), f"{args.rounds} x {args.steps}", args.batch_size, round(wall_s, 1),
           round(setup_s, 1), round(compute_s, 1), round(wall_s / compute_s, 3), round(process_cpu_s, 1),
           f"{last[0] - first[0]:.1f} / {last[1] - first[1]:.1f}", round(virtual_s, 2), round(load, 2)]
    table = md_table(header, [row])
    con.print(table)
    if args.no_write:
        return
    cmd = f"python benchmarks/scale_sim.py --clients {args.clients} --rounds {args.rounds} --steps {args.steps} " \
          f"--batch-size {args.batch_size}"
    write_section("scale-sim", f"""## Simulation at scale

`{cmd}` ({datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, commit {commit()}, {machine()}).
Every device a thread of one process, one computing at a time (local backend, `--emulate virtual`, dcgan, seeded
random factors from 0.5 to 6, each client cut into four stages after layers 1, 4 and 7). *raw compute* is the CPU seconds of every compute
block (what the virtual clocks advanced by, before each device's factor); *process CPU*
is `getrusage` over the training call, which also counts messages, threads and
bookkeeping; *setup* is the time until every role had started; *virtual time* is the
simulated rounds' length; *load avg* is this machine's 1-minute load when the run ended
(2 cores, shared).

{table}
""")


if __name__ == "__main__":
    main()
