"""The cost model against the trainer's own step, in thread CPU time, written into
BENCHMARKS.md ("Cost model").

For each model of ``planner.models`` and a few stage splits at legal cuts, a client's
step runs through ``trainer.roles.device.DeviceRole`` (the trainer's device code path, no
emulation: a thread per device over the in-process transport, one computes at a time,
as the local backend), with each device's compute blocks timed in CPU time of its thread
(``time.thread_time``, as ``--emulate virtual`` charges them). The measured figure is a
device's compute per step (median over steps after a warm-up); the predicted one is its
stage's compute from the plan's tables at that ``M`` (``planner.profile_cache.micro_batch_profile``
over ``planner.costs.planning_units``) plus ``M x overhead_s`` (SPEC §2.1).

"before" predicts as PROFILE_VERSION 5 did, from the same timings: the layers timed alone
summed as they are (not scaled to the whole model's context, ``context_ratio``), the
Adam update counted once per micro-batch, no gradient accumulation and no loss.

    python benchmarks/cost_model.py [--models dcgan,resnet,dcgan64] [--micro-batches 1,4,16] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import commit, machine, md_table, write_section  # noqa: E402
from planner.costs import planning_units  # noqa: E402
from planner.models import build_discriminator  # noqa: E402
from planner.profile import profile_threads  # noqa: E402
from planner.profile_cache import micro_batch_profile, profile_model  # noqa: E402
from trainer.roles.build import adam  # noqa: E402
from trainer.roles.clock import Clock  # noqa: E402
from trainer.roles.device import DeviceRole  # noqa: E402
from trainer.comm.transport import SERVER, InProcessTransport  # noqa: E402

TUNED_ON = ("dcgan",)  # the model the fixes were found on; the others are held out
FINDINGS = """What the systematic errors were, measured this way, and what PROFILE_VERSION 6 does about each:
- M = 1, a stage faster than its layers one by one: each layer timed alone pays its own graph, gradient call and
  output gradient, and its inputs come cold; the whole model in one forward and backward took 0.86x (resnet) to
  0.97x (dcgan) of the sum at batch 64. The layers are now scaled to the whole model timed in the same rounds
  (`planner.layer_context.in_context`). Residual: the ratio is one per model, but the saving sits in the
  full-resolution first layers (the first stage of resnet and dcgan64 is still over-predicted by 30-34 %).
- M > 1, micro-batches slower than their tables: the last device computes the loss per micro-batch (0.2-0.3 ms,
  in no layer's table before) and a layer with weights accumulates its gradients M - 1 times; the other way, the Adam update,
  timed in every micro-batch's table, runs once per step. Residual: a device running many micro-batches' forwards
  before their backwards works on colder activations than a layer timed alone (timing the whole model that way
  over-predicted split stages at M = 16 by 13-32 %, so it is not modelled).
- Wall time measured the host: with 6 engineers on 2 cores (load average 20-38 during this run) the same
  measurement repeated varies by up to 17 %; profiles, calibration and this benchmark now use thread CPU time, as
  `--emulate virtual` charges a device's work, which leaves cache and memory contention but not waiting for cores."""


@dataclass
class CpuClock(Clock):
    """A device's compute blocks timed in CPU seconds of the thread that runs them."""

    @contextmanager
    def compute(self, label: str | None = None, *, codec: bool = False):
        if self.lock is not None:
            self.lock.acquire()
        c0 = time.thread_time()
        try:
            yield
        finally:
            work = time.thread_time() - c0
            if self.lock is not None:
                self.lock.release()
            self.work_s += work
            self.compute_s += work


class _Batch:
    def __init__(self, x: torch.Tensor):
        self.x = x

    def next_batch(self) -> torch.Tensor:
        return self.x


def measured_s(model, bounds: list[int], m: int, batch: int, steps: int) -> list[float]:
    """Per stage ``bounds[k]..bounds[k+1]``: its device's compute CPU seconds per step
    through ``DeviceRole.step``, the median over ``steps`` after one warm-up step."""
    names = [f"d{k}" for k in range(len(bounds) - 1)]
    shapes, x = {}, torch.zeros(2, *model.input_shape)
    with torch.no_grad():
        for a, b in zip(bounds, bounds[1:]):
            shapes[a], x = tuple(x.shape[1:]), model.run(x, a, b)
    gen = torch.Generator().manual_seed(0)
    real, fake = (torch.rand((batch, *model.input_shape), generator=gen) * 2 - 1 for _ in range(2))
    lock = threading.Lock()
    roles = [DeviceRole(name=names[k], client="c", stage=model.segment(a, b), optimizer=adam(model.segment(a, b), 1e-12),
                        prev=names[k - 1] if k else None, next=names[k + 1] if k + 1 < len(names) else None,
                        batch_size=batch, sampler=_Batch(real) if k == 0 else None, clock=CpuClock(lock=lock),
                        timeout_s=600, micro_batches=m, input_shape=shapes[a])
             for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    t = InProcessTransport()
    per_step: dict[str, list[float]] = {n: [] for n in names}

    def play(role: DeviceRole) -> None:
        for _ in range(steps + 1):
            before = role.clock.work_s
            role.step(t)
            per_step[role.name].append(role.clock.work_s - before)

    threads = [threading.Thread(target=play, args=(r,), daemon=True) for r in roles]
    for th in threads:
        th.start()
    for _ in range(steps + 1):
        t.send(SERVER, names[0], fake.clone(), tag="fake")
        t.recv(SERVER, names[0], tag="fake_grad", timeout_s=600)
        t.recv(SERVER, names[-1], tag="losses", timeout_s=600)
    for th in threads:
        th.join(timeout=60)
    return [statistics.median(per_step[n][1:]) for n in names]


def predicted_s(model, prof, bounds: list[int], m: int) -> list[tuple[float, float]]:
    """Per stage, ``(after, before)``: the plan's compute at ``m`` plus ``m x overhead_s``,
    and PROFILE_VERSION 5's sum of layers timed alone (module docstring)."""
    mp = micro_batch_profile(model, prof, m)
    out = []
    for a, b in zip(bounds, bounds[1:]):
        layers = mp.layers[a:b]
        after = sum(u.time_s for u in planning_units(model, mp) if a <= u.first and u.last < b) + m * prof.overhead_s
        # each layer's timing alone: time_s = update + M x ratio x (alone - update)
        last = len(model) - 1 if b == len(model) else None
        before = m * prof.overhead_s + sum(
            m * x.update_s + (x.time_s - x.update_s - (m - 1) * x.accumulate_s - (m * mp.loss_s if a + i == last else 0.0))
            / mp.context_ratio for i, x in enumerate(layers))
        out.append((after, before))
    return out


def splits(model, prof) -> list[list[int]]:
    """The whole model as one stage, and three stages cut at the legal cuts nearest a
    third and two thirds of its layers."""
    starts = [u.first for u in planning_units(model, prof)][1:]
    L = len(model)
    thirds = sorted({min(starts, key=lambda s: abs(s - L * q)) for q in (1 / 3, 2 / 3)})
    return [[0, L], [0, *thirds, L]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dcgan,resnet,dcgan64")
    ap.add_argument("--micro-batches", default="1,4,16")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    ms = [int(m) for m in args.micro_batches.split(",")]
    rows, errs = [], {"after": {}, "before": {}}
    with profile_threads():
        for name in args.models.split(","):
            model = build_discriminator(name)
            prof = profile_model(model, batch_size=args.batch_size)
            for bounds in splits(model, prof):
                for m in ms:
                    meas = measured_s(model, bounds, m, args.batch_size, args.steps)
                    for (a, b), got, (after, before) in zip(zip(bounds, bounds[1:]), meas, predicted_s(model, prof, bounds, m)):
                        held = "tuned" if name in TUNED_ON else "held out"
                        row = [name, held, f"{a}..{b - 1}", m, f"{before:.4f}", f"{after:.4f}", f"{got:.4f}",
                               f"{before / got - 1:+.1%}", f"{after / got - 1:+.1%}"]
                        print(" ".join(map(str, row)), flush=True)
                        rows.append(row)
                        errs["after"].setdefault(held, []).append(abs(after / got - 1))
                        errs["before"].setdefault(held, []).append(abs(before / got - 1))
    def med(kind: str, group: str) -> str:
        xs = errs[kind].get(group)
        return f"{statistics.median(xs):.1%} (worst {max(xs):.1%})" if xs else "none"

    summary = (f"median |predicted / measured - 1| on the held-out models: before {med('before', 'held out')}, "
               f"after {med('after', 'held out')}; on dcgan (tuned on): before {med('before', 'tuned')}, "
               f"after {med('after', 'tuned')}")
    print(summary)
    if args.no_write:
        return
    cmd = "python benchmarks/cost_model.py " + " ".join(sys.argv[1:])
    body = "\n".join([
        "## Cost model",
        "",
        f"`{cmd.strip()}` on {datetime.now(timezone.utc):%Y-%m-%d}, commit {commit()}, {machine()}.",
        "",
        "A device's compute per step in the trainer's own step (`DeviceRole.step`, thread CPU time of its compute",
        "blocks, one torch thread, the median of the steps after a warm-up) against the plan's tables for its stage at",
        "that M (the layers' `time_s` plus M x `overhead_s`). \"before\": each layer's timing alone summed, the Adam",
        "update once per micro-batch, no accumulation, no loss (PROFILE_VERSION 5's model, same timings). Error = predicted / measured - 1.",
        "",
        md_table(["model", "", "stage layers", "M", "before s", "predicted s", "measured s", "before error", "error"], rows),
        "",
        summary + ".",
        "",
        FINDINGS,
    ])
    write_section("cost-model", body)


if __name__ == "__main__":
    main()
