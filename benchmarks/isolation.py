"""Does a CPU-bound program beside a run move its virtual times? (issue 22)

The same plan is trained ``--repeats`` times alone and ``--repeats`` times with a process
spinning on a core beside it, alternately (alone, beside, alone, ...), so that the host's
drift over minutes falls on both alike. Each run's client steps (medians of the rounds after
a warm-up round) are compared: beside against alone, raw and with each run scaled by the
host's slowdown timed before and after it (:mod:`planner.host_speed`), and alone against
alone, the noise floor. ``--emulate sleep`` (wall-clock time) is run once each way for
contrast: there the spinning process takes a core from the emulated devices.

    python benchmarks/isolation.py [--profile profiles/lab.json] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

from benchmarks.common import ROOT, machine, md_table, median, write_section  # noqa: E402
from planner import plan  # noqa: E402
from planner.devices import load_profile  # noqa: E402
from planner.host_speed import around  # noqa: E402
from planner.models import build_discriminator  # noqa: E402
from planner.planfile import write_plan  # noqa: E402
from planner.profile_cache import profile_model  # noqa: E402
from trainer import TrainConfig, train  # noqa: E402


def steps(plan_path: Path, out: Path, emulate: str, rounds: int, per_round: int) -> dict[str, float]:
    """Each client's median step over the rounds after the first."""
    history = train(TrainConfig(plan_path=plan_path, out_dir=out, rounds=rounds, steps_per_round=per_round,
                                emulate=emulate, eval_every=0))
    timed = history[1:] or history
    return {c: median([h["clients"][c]["step_time_s"] for h in timed]) for c in timed[0]["clients"]}


def once(plan_path: Path, out: Path, emulate: str, beside: bool, model, mp, rounds: int, per_round: int) -> dict:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if beside else None
    try:
        got, host = around(model, mp, lambda: steps(plan_path, out, emulate, rounds, per_round))
    finally:
        if hog is not None:
            hog.kill()
            hog.wait(10)
    print(f"  {emulate} {'beside' if beside else 'alone'}: host {host:.2f}x the tables'; "
          + ", ".join(f"{c} {s:.3f} s" for c, s in got.items()), flush=True)
    return {"steps": got, "host": host}


def change(a: list[dict], b: list[dict], client: str, scaled: bool) -> float:
    """|median of b / median of a - 1| for ``client``, each run scaled by its host slowdown if asked."""
    def m(runs):
        return median([r["steps"][client] / (r["host"] if scaled else 1.0) for r in runs])
    return abs(m(b) / m(a) - 1)


def spread(runs: list[dict], client: str, scaled: bool) -> float:
    """The largest |x / y - 1| between two runs of the same kind (the noise floor)."""
    xs = [r["steps"][client] / (r["host"] if scaled else 1.0) for r in runs]
    return max(xs) / min(xs) - 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="profiles/lab.json")
    ap.add_argument("--objective", default="latency")
    ap.add_argument("--repeats", type=int, default=3, help="virtual runs alone and beside (alternating)")
    ap.add_argument("--rounds", type=int, default=3, help="per run; the first is a warm-up")
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    t_all = time.perf_counter()
    model = build_discriminator("dcgan")
    mp = profile_model(model)
    p = plan(model, load_profile(ROOT / args.profile), objective=args.objective, model_profile=mp,
             devices_file=args.profile, compare=False)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_plan(p, tmp / "plan.json")
        runs: dict[tuple[str, bool], list[dict]] = {}
        kinds = [("virtual", b) for _ in range(args.repeats) for b in (False, True)] + [("sleep", False), ("sleep", True)]
        for i, (emulate, beside) in enumerate(kinds):
            runs.setdefault((emulate, beside), []).append(
                once(tmp / "plan.json", tmp / f"run{i}", emulate, beside, model, mp, args.rounds, args.steps))
    rows = []
    for c in sorted(runs[("virtual", False)][0]["steps"]):
        alone, beside = runs[("virtual", False)], runs[("virtual", True)]
        rows.append([c, f"{median([r['steps'][c] for r in alone]):.3f}", f"{median([r['steps'][c] for r in beside]):.3f}",
                     f"{change(alone, beside, c, False):.1%} / {change(alone, beside, c, True):.1%}",
                     f"{spread(alone, c, False):.1%} / {spread(alone, c, True):.1%}",
                     f"{change(runs[('sleep', False)], runs[('sleep', True)], c, False):.1%}"])
    header = ["client", "virtual step alone (s)", "beside (s)", "beside vs alone: raw / host-scaled",
              "alone vs alone (noise floor): raw / host-scaled", "sleep: beside vs alone (wall clock)"]
    body = (f"## Virtual times beside a CPU-bound process\n\nMachine: {machine()}. Command: `python benchmarks/isolation.py --profile {args.profile} --objective "
            f"{args.objective} --repeats {args.repeats} --rounds {args.rounds} --steps {args.steps}` "
            f"({time.perf_counter() - t_all:.0f} s). Virtual runs alternate alone and beside a process spinning "
            "on a core (`python -c 'while True: pass'`); medians over runs of each run's median step after a "
            "warm-up round; host-scaled: each run divided by its host slowdown (`planner/host_speed.py`).\n\n"
            + md_table(header, rows) + "\n")
    print(body)
    write_section("isolation", body)


if __name__ == "__main__":
    main()
