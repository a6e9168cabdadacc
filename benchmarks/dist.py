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

from benchmarks.common import machine, md_table, write_section  # noqa: E402
from planner import plan  # noqa: E402
from planner.devices import load_profile  # noqa: E402
from planner.models import build_discriminator  # noqa: E402
from planner.planfile import write_plan  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.run import train  # noqa: E402

FLOAT_BYTES = 4


def expected_bytes_per_step(p) -> dict[str, int]:
    """What each device must send per step, from the plan's tables alone.

    A cut's ``cut_bytes`` is everything crossing it per step, half forward (activations)
    and half back (gradients); the data device also returns the gradient of the fake
    batch to the server, the last device two loss values.
    """
    out = {}
    image = 1
    for s in p.model["input_shape"]:
        image *= s
    for c in p.planned:
        cut = c.costs.cut_bytes
        for i, st in enumerate(c.stages):
            n = 0
            if i + 1 < len(c.stages):
                n += cut[st.end - 1] // 2
            if i > 0:
                n += cut[st.start - 1] // 2
            else:
                n += p.batch_size * image * FLOAT_BYTES
            if i + 1 == len(c.stages):
                n += 2 * FLOAT_BYTES
            out[st.device] = n
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        p = plan(build_discriminator("dcgan"), load_profile("profiles/lab.json"), devices_file="profiles/lab.json")
        write_plan(p, tmp / "plan.json")
        runs = {}
        for backend in ("local", "dist"):
            cfg = TrainConfig(plan_path=tmp / "plan.json", out_dir=tmp / backend, backend=backend, rounds=1,
                              steps_per_round=args.steps, emulate="none", eval_every=0)
            print(f"{backend} ...", flush=True)
            runs[backend] = train(cfg)[-1]
    steps = args.steps
    want = expected_bytes_per_step(p)
    rows = []
    for name in runs["local"]["devices"]:
        lo, di = runs["local"]["devices"][name], runs["dist"]["devices"][name]
        rows.append([lo["client"], name, lo["work_s"], di["work_s"], lo["wait_s"], di["wait_s"],
                     want[name], di["bytes_sent"] // steps, f"{di['bytes_sent'] / steps / want[name]:.4f}"])
    lo_step, di_step = runs["local"]["round_time_s"] / steps, runs["dist"]["round_time_s"] / steps
    body = (f"Machine: {machine()}. Command: `python benchmarks/dist.py --steps {steps}`.\n\n"
            + md_table(["backend", "round s / step (wall)"], [["local (threads)", lo_step], ["dist (gloo, a process per device)", di_step]])
            + f"\n\nratio dist / local: **{di_step / lo_step:.2f}**. The local backend serialises compute through one "
              "lock on 2 cores; dist runs 7 processes of 1 thread each on the same 2 cores.\n\n"
            + md_table(["client", "device", "compute s/step local", "dist", "waiting s/step local", "dist",
                        "bytes/step from plan", "measured (dist)", "ratio"], rows)
            + "\n\nbytes: payload only (the 88-byte header of each dist message is not counted).\n")
    print(body)
    write_section("dist", "## Distributed backend\n\n" + body)


if __name__ == "__main__":
    main()
