"""How much this host's speed drifts: the same work's CPU time, block after block.

dcgan's whole discriminator step at batch 64 on one torch thread (the profiles' thread,
:func:`planner.host_speed.step_now_s`) is timed in ``--blocks`` blocks of ``--steps``
steps, ``--pause`` seconds apart. Each block's median and minimum CPU time are printed,
and the spread of the medians (largest over smallest, less 1): the drift a plan timed in
one block meets in another, whatever its cost model.

    python benchmarks/host_drift.py [--blocks 10] [--steps 9] [--pause 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, md_table, write_section  # noqa: E402
from planner.host_speed import step_now_s  # noqa: E402
from planner.models import build_discriminator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--steps", type=int, default=9, help="steps timed per block (their median)")
    ap.add_argument("--pause", type=float, default=5.0, help="seconds between blocks")
    args = ap.parse_args()
    model = build_discriminator("dcgan")
    t0, rows, medians = time.perf_counter(), [], []
    for b in range(args.blocks):
        if b:
            time.sleep(args.pause)
        median = step_now_s(model, 64, repeats=args.steps)
        medians.append(median)
        rows.append([b, f"{time.perf_counter() - t0:.0f}", f"{1e3 * median:.1f}"])
        print(rows[-1], flush=True)
    body = ("## How much this host's speed drifts\n\n"
            f"Machine: {machine()}. Command: `python benchmarks/host_drift.py --blocks {args.blocks} --steps "
            f"{args.steps} --pause {args.pause:g}` ({time.perf_counter() - t0:.0f} s). The median CPU time of "
            "dcgan's whole discriminator step (batch 64, one thread) in each block: the same work, timed the "
            f"same way. Spread of the block medians: **{max(medians) / min(medians) - 1:.0%}**.\n\n"
            + md_table(["block", "at s", "median step (ms)"], rows) + "\n")
    print(body)
    write_section("host-drift", body)


if __name__ == "__main__":
    main()
