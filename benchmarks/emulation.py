"""What an emulated device's sleep does to the compute after it, by torch thread count,
printed and written into BENCHMARKS.md.

Under ``--emulate sleep`` a device computes a block (a micro-batch's forward or backward
through its stage), then sleeps its emulated extra time. This times dcgan's training
step cut into the trainer's four blocks (discriminator forward on real and fake, its
backward and Adam step, the generator phase's forward, its backward to the images), once
straight through and once with a sleep after each block, alternating, at 1 and at 2
torch threads, with ``OMP_WAIT_POLICY=PASSIVE`` as ``fsl`` sets it. The ratio is why a
device computes on one thread (``trainer.roles.clock.DEVICE_THREADS``).

    python benchmarks/emulation.py [--repeats 15] [--sleep-ms 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import machine, md_table, median, write_section  # noqa: E402
from planner.models import dcgan_discriminator  # noqa: E402

BATCH = 64


def step_blocks(model, optimizer, gap_s: float) -> float:
    """One GAN step's discriminator work in four blocks, ``gap_s`` of sleep after each;
    returns the seconds of work (sleeps excluded)."""
    real_fake = torch.rand(2 * BATCH, 1, 28, 28) * 2 - 1
    fake = (torch.rand(BATCH, 1, 28, 28) * 2 - 1).requires_grad_(True)
    labels = torch.cat([torch.ones(BATCH), torch.zeros(BATCH)])
    out, work = None, 0.0

    def block(fn):
        nonlocal out, work
        t0 = time.perf_counter()
        out = fn()
        work += time.perf_counter() - t0
        if gap_s:
            time.sleep(gap_s)

    def d_backward():
        F.binary_cross_entropy_with_logits(out.squeeze(1), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    block(lambda: model(real_fake))
    block(d_backward)
    block(lambda: model(fake))
    block(lambda: torch.autograd.grad(F.binary_cross_entropy_with_logits(out.squeeze(1), torch.ones(BATCH)), fake))
    return work


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sleep-ms", type=float, default=50.0)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = dcgan_discriminator().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-12)
    gap = args.sleep_ms / 1e3
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for _ in range(3):  # warm-up at this thread count
            step_blocks(model, optimizer, 0.0)
        straight, slept = [], []
        for _ in range(args.repeats):  # alternating, so load elsewhere falls on both alike
            straight.append(step_blocks(model, optimizer, 0.0))
            slept.append(step_blocks(model, optimizer, gap))
        a, b = median(straight), median(slept)
        rows.append([threads, f"{a * 1e3:.1f}", f"{b * 1e3:.1f}", f"**{b / a:.2f}x**"])
        print(rows[-1], flush=True)
    body = (f"Machine: {machine()}. Command: `python benchmarks/emulation.py --repeats {args.repeats} --sleep-ms "
            f"{args.sleep_ms:g}` (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; load average "
            f"{os.getloadavg()[0]:.1f} at the end). dcgan's discriminator work of one step at batch {BATCH}, in the "
            "trainer's four compute blocks; medians of alternating repeats. The work excludes the sleeps: the "
            "ratio is how much slower a block runs after an emulated device slept.\n\n"
            + md_table(["torch threads", "work per step, straight through, ms",
                        f"with {args.sleep_ms:g} ms asleep after each block, ms", "ratio"], rows) + "\n")
    print(body)
    write_section("emulation", "## Compute after an emulated sleep\n\n" + body)


if __name__ == "__main__":
    main()
