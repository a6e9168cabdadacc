"""Distributed backend benchmark (issue 4), printed and written into BENCHMARKS.md.

The same plan (``profiles/lab.json``, dcgan, batch 64) trained one round with the local
backend (threads) and with ``--backend dist`` (a process per device over gloo on
127.0.0.1), ``--emulate none``: step time, where the time goes per device (compute,
waiting for peers), and the bytes each device sent per step against what the plan's
``cut_bytes`` say it must.

    python benchmarks/dist.py [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

from benchmarks.common import machine, md_table, median, write_section  # noqa: E402
from planner import plan  # noqa: E402
from planner.devices import load_profile  # noqa: E402
from planner.models import build_discriminator  # noqa: E402
from planner.planfile import write_plan  # noqa: E402
from planner.schedule import bytes_per_step  # noqa: E402
from trainer import TrainConfig, train  # noqa: E402

def expected_bytes_per_step(p) -> dict[str, int]:
    """What each device must send per step, from the plan's tables (``planner.schedule``)."""
    out = {}
    for c in p.planned:
        spans = [(s.start, s.end) for s in c.stages]
        sent = bytes_per_step(spans, list(c.costs.cut_bytes), batch_size=p.batch_size,
                              input_shape=p.model["input_shape"])
        out |= {s.device: n for s, (n, _) in zip(c.stages, sent)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=4, help="per run; the first is a warm-up")
    ap.add_argument("--repeats", type=int, default=2, help="runs per backend, alternating")
    args = ap.parse_args()
    steps, times, last = args.steps, {"local": [], "dist": []}, {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        p = plan(build_discriminator("dcgan"), load_profile("profiles/lab.json"), devices_file="profiles/lab.json")
        write_plan(p, tmp / "plan.json")
        for rep in range(args.repeats):
            for backend in ("local", "dist"):
                cfg = TrainConfig(plan_path=tmp / "plan.json", out_dir=tmp / f"{backend}{rep}", backend=backend,
                                  rounds=args.rounds, steps_per_round=steps, emulate="none", eval_every=0)
                print(f"{backend} {rep + 1}/{args.repeats} ...", flush=True)
                history = train(cfg)
                times[backend] += [m["round_time_s"] / steps for m in history[1:]]
                last[backend] = history[-1]
    want = expected_bytes_per_step(p)
    rows = []
    for name in last["local"]["devices"]:
        lo, di = last["local"]["devices"][name], last["dist"]["devices"][name]
        rows.append([lo["client"], name, lo["work_s"], di["work_s"], lo["wait_s"], di["wait_s"],
                     want[name], di["bytes_sent"] // steps, f"{di['bytes_sent'] / steps / want[name]:.4f}"])
    lo_step, di_step = median(times["local"]), median(times["dist"])
    n = len(times["local"])
    body = (f"Machine: {machine()}. Command: `python benchmarks/dist.py --steps {steps} --rounds {args.rounds} "
            f"--repeats {args.repeats}`.\n\n"
            + md_table(["backend", "s / step (wall, median)"],
                       [["local (threads)", lo_step], ["dist (gloo, a process per role)", di_step]])
            + f"\n\nratio dist / local: **{di_step / lo_step:.2f}** (medians of {n} rounds each: {args.repeats} runs "
              f"per backend, alternating, {args.rounds - 1} timed rounds after a warm-up round, {steps} steps each, "
              "`--emulate none`). The local backend serialises compute through one lock on 2 cores; dist runs "
              f"{len(want) + 1} processes of 1 thread each on the same 2 cores.\n\n"
            + md_table(["client", "device", "compute s/step local", "dist", "waiting s/step local", "dist",
                        "bytes/step from plan", "measured (dist)", "ratio"], rows)
            + "\n\nbytes: a step's payload only (the 96-byte header of each dist message is not counted).\n")
    print(body)
    write_section("dist", "## Distributed backend\n\n" + body)


if __name__ == "__main__":
    main()
