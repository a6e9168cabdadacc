"""Pipelined steps (issue 11), printed and written into BENCHMARKS.md.

On ``profiles/pipeline.json`` (two clients whose data device and 3-4 helpers are all 4-8x
slower than this machine, on fast links), the model is profiled afresh and planned twice
on that profile, ``--objective latency`` (M = 1) and ``--objective throughput``; each plan
is trained under ``--emulate sleep`` (a warm-up round, then timed rounds), and per client
the measured step (data device: fake received to fake gradient sent) is set against the
plan's prediction and against the other objective's. Then a sweep over M = 1, 2, 4, 8, 16
(``--micro-batches M``), predicted and measured, in one figure; and the measured
timeline of the throughput plan's last step beside its plan.

Each client trains alone (a profile of that client only): emulation stretches this
machine's real work by each device's factor, which is faithful only while the host has a
core free whenever an emulated device computes. A throughput plan keeps every device of a
client busy at once; two such clients together would ask this 2-core machine for about
all of its time (the planned step is about the model's raw step here), and the waits for
a core, not the plan, would set the pace (docs/training.md, "Limits").

    python benchmarks/pipeline.py [--steps 3] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.common import ROOT, machine, md_table, median, write_section  # noqa: E402
from planner import plan  # noqa: E402
from planner.devices import parse_profile  # noqa: E402
from planner.jsonio import read_json  # noqa: E402
from planner.models import build_discriminator  # noqa: E402
from planner.planfile import write_plan  # noqa: E402
from planner.profile_cache import micro_batch_profile, profile_model  # noqa: E402
from trainer import TrainConfig, train  # noqa: E402

PROFILE = ROOT / "profiles" / "pipeline.json"
SWEEP = (1, 2, 4, 8, 16)


def measured(history: list[dict]) -> dict[str, dict]:
    """Per client, medians over the timed rounds (the first is a warm-up)."""
    timed = history[1:]
    out = {}
    for c in timed[0]["clients"]:
        rows = [h["clients"][c] for h in timed]
        devices = [d for d, v in timed[0]["devices"].items() if v["client"] == c and v["predicted_compute_s"] > 0]
        compute = [median([h["devices"][d]["compute_s"] / h["devices"][d]["predicted_compute_s"] for h in timed])
                   for d in devices]
        out[c] = {"step": median([r["step_time_s"] for r in rows]), "wait": median([r["host_wait_s"] for r in rows]),
                  "predicted": rows[0]["predicted_step_time_s"], "compute": median(compute)}
    return out


def run(p, tmp: Path, tag: str, rounds: int, steps: int) -> list[dict]:
    write_plan(p, tmp / f"{tag}.json")
    cfg = TrainConfig(plan_path=tmp / f"{tag}.json", out_dir=tmp / tag, rounds=rounds, steps_per_round=steps,
                      emulate="sleep", eval_every=0)
    print(f"  {tag} ...", flush=True)
    return train(cfg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4, help="per run; the first is a warm-up")
    args = ap.parse_args()
    model, raw = build_discriminator("dcgan"), read_json(PROFILE, what="device profile")
    alone = {c["name"]: parse_profile({**raw, "clients": [c]}, source=str(PROFILE)) for c in raw["clients"]}
    mp = profile_model(model, use_cache=False)  # this machine, now
    load_before = os.getloadavg()[1]
    plans = {o: {c: plan(model, devices, objective=o, model_profile=mp, devices_file="profiles/pipeline.json",
                         compare=False, measure_micro_batches=True) for c, devices in alone.items()}
             for o in ("latency", "throughput")}
    figures = ROOT / "benchmarks" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict] = {"latency": {}, "throughput": {}}
    sweep: dict[int, dict] = {m: {} for m in SWEEP}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for c, devices in alone.items():
            for o in runs:
                runs[o].update(measured(run(plans[o][c], tmp, f"{o}-{c}", args.rounds, args.steps)))
            for m in SWEEP:
                p = plan(model, devices, objective="throughput", micro_batches=(m,), model_profile=mp, compare=False,
                         measure_micro_batches=True)
                sweep[m].update(measured(run(p, tmp, f"m{m}-{c}", min(args.rounds, 3), args.steps)))
        first = next(iter(alone))
        shutil.copy(tmp / f"throughput-{first}" / "timeline.png", figures / "pipeline-timeline.png")
    rows, errors = [], []
    for c in runs["latency"]:
        lat, thr = runs["latency"][c], runs["throughput"][c]
        m = next(x.micro_batches for x in plans["throughput"][c].planned if x.name == c)
        for o, r in (("latency", lat), ("throughput", thr)):
            errors.append(abs(r["step"] - r["predicted"]) / r["predicted"])
        rows.append([c, m, lat["predicted"], lat["step"], thr["predicted"], thr["step"], thr["wait"],
                     f"{thr['predicted'] / lat['predicted']:.2f}", f"**{thr['step'] / lat['step']:.2f}**"])
    ratio = max(thr_step / lat_step for thr_step, lat_step in
                ((runs["throughput"][c]["step"], runs["latency"][c]["step"]) for c in runs["latency"]))
    # What a micro-batch costs in the tables each M was planned on (cached while planning, not measured again)
    small = {m: micro_batch_profile(model, mp, m).step_time_s / mp.step_time_s for m in SWEEP}
    srows = [[m, f"{small[m]:.2f}"]
             + [f"{sweep[m][c]['predicted']:.3f} / {sweep[m][c]['step']:.3f} ({sweep[m][c]['compute']:.2f}x)"
                for c in sweep[m]] for m in SWEEP]
    sweep_err = [abs(v["step"] - v["predicted"]) / v["predicted"] for m in SWEEP for v in sweep[m].values()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in sweep[SWEEP[0]]:
        line = ax.plot(SWEEP, [sweep[m][c]["predicted"] for m in SWEEP], "--o", ms=4, label=f"{c} predicted")
        ax.plot(SWEEP, [sweep[m][c]["step"] for m in SWEEP], "-s", ms=4, color=line[0].get_color(),
                label=f"{c} measured")
    ax.set(xscale="log", xlabel="micro-batches M", ylabel="step s (emulated devices)",
           title="throughput plans on profiles/pipeline.json, M forced")
    ax.set_xticks(SWEEP, [str(m) for m in SWEEP])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figures / "pipeline-sweep.png", dpi=110)
    body = (f"Machine: {machine()}. Command: `python benchmarks/pipeline.py --steps {args.steps} --rounds "
            f"{args.rounds}` (`--emulate sleep`; each client trained alone; medians of the timed rounds after a "
            f"warm-up round; the model profiled afresh: {mp.step_time_s * 1e3:.0f} ms per step on this machine). "
            f"Load average {load_before:.1f} at the start, {os.getloadavg()[1]:.1f} at the end.\n\n"
            + md_table(["client", "M (throughput)", "latency plan: predicted s", "measured s",
                        "throughput plan: predicted s", "measured s", "of which host waits s",
                        "predicted ratio", "measured ratio"], rows)
            + f"\n\nMeasured step ratio throughput / latency: at most **{ratio:.2f}** (target <= 0.6). Measured "
              f"against predicted, both objectives: median |error| **{median(errors):.1%}** (target <= 15%).\n\n"
            + "Sweep over M (throughput plan with `--micro-batches M`): predicted / measured step s, and in "
              "brackets the devices' measured compute against the plan's (median over the client's devices). "
              "'tables: M x batch/M': the model's step in the tables each M is planned on (its layers timed at "
              "batch 64 / M, times M: `planner.profile_cache.micro_batch_profile`) against its step at 64 (1.00: "
              "micro-batches cost their share).\n\n"
            + md_table(["M", "tables: M x batch/M"] + list(sweep[SWEEP[0]]), srows)
            + f"\n\nmedian |error| over the sweep {median(sweep_err):.1%}.\n\n"
              "![pipeline sweep](benchmarks/figures/pipeline-sweep.png)\n\n"
              f"The throughput plan's last step as measured for {first}, under its plan (`DIR/timeline.png`):\n\n"
              "![pipeline timeline](benchmarks/figures/pipeline-timeline.png)\n")
    print(body)
    write_section("pipeline", "## Pipelined steps\n\n" + body)


if __name__ == "__main__":
    main()
