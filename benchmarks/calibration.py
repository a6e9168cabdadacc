"""Calibration (issue 13): links on the namespace testbed, the cost model with and without
``fsl calibrate``, and a device that slows down mid-run with and without ``--adapt``.

    python benchmarks/calibration.py [--repeats 5]   (writes BENCHMARKS.md#calibration)

(a) Testbed (``benchmarks.testbed``, needs root): the server and three devices each in a
    network namespace, their veths shaped by ``tc tbf``; ``fsl calibrate`` runs there as
    torchrun ranks and measures every link; then a cut's four messages per step are sent
    for real between two devices (``benchmarks.cutprobe``), against the plan's predicted
    transfer on the calibrated link.
(b) Cost model: ``profiles/lab.json`` at batch 8 under ``--emulate sleep``, per repeat a
    fresh host profile and a fresh calibration; the plan on each trained one round
    (after a warm-up round) and the per-device compute per step compared with the plan's.
    The noise floor: the uncalibrated plan trained a second time in the same repeat.
(c) Drift: a 3-device client, its planned fast device slowed 4x at round 3 of 8, with
    and without ``--adapt``; against the prediction of the plan made knowing the slowdown.

Every process here runs with glibc's mmap threshold pinned (the script re-executes
itself so): unpinned, a process's largest layer takes 21 or 29 ms by chance (see
``tests/test_calibrate_run``), a noise that is the host's, not the cost model's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}
if __name__ == "__main__" and any(os.environ.get(k) != v for k, v in PINNED_MALLOC.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **PINNED_MALLOC})

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.common import ROOT, commit, machine, md_table, write_section  # noqa: E402
from benchmarks.exp_context import save_figure  # noqa: E402
from benchmarks.testbed import Testbed, unavailable  # noqa: E402
from planner import plan  # noqa: E402
from planner.calibration import calibrated_profile  # noqa: E402
from planner.costs import client_problem, planning_units  # noqa: E402
from planner.devices import load_profile, parse_profile  # noqa: E402
from planner.jsonio import read_json  # noqa: E402
from planner.models import dcgan_discriminator  # noqa: E402
from planner.planfile import write_plan  # noqa: E402
from planner.profile import measure  # noqa: E402
from trainer import TrainConfig, train  # noqa: E402
from trainer.adapt.calibrate import CalibrationJob, calibrate  # noqa: E402

BATCH = 8
LAB = ROOT / "profiles" / "lab.json"
RATES = {"server": None, "a": 10.0, "b": 40.0, "c": 80.0}  # Mbps per role's veth; None: not shaped
DRIFT = {"schema": "fsl-devices/1", "clients": [{"name": "lab", "devices": [
    {"name": "phone", "processing_time_factor": 6.0, "capacity": "4GB", "bandwidth_mbps": 10000, "holds_data": True},
    {"name": "laptop", "processing_time_factor": 1.0, "capacity": "4GB", "bandwidth_mbps": 10000},
    {"name": "spare", "processing_time_factor": 3.0, "capacity": "4GB", "bandwidth_mbps": 10000}]}]}
SLOWED, SLOWDOWN, AT_ROUND, ROUNDS, STEPS = "laptop", 4.0, 3, 8, 3


def load() -> str:
    return "{:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())


# -- (a) the namespace testbed ----------------------------------------------------------

def testbed(tmp: Path) -> str:
    why = unavailable()
    if why:
        return f"Not run here: {why}."
    model = dcgan_discriminator()
    devices = [{"name": r, "processing_time_factor": 1.0, "capacity": "1GB", "bandwidth_mbps": 1000,
                "holds_data": r == "a"} for r in RATES if r != "server"]
    (tmp / "tb.json").write_text(json.dumps({"schema": "fsl-devices/1", "clients": [{"name": "home", "devices": devices}]}))
    ranks = {r: i for i, r in enumerate(RATES)}
    with Testbed(RATES) as tb:
        t0 = time.perf_counter()
        codes = tb.wait(tb.launch(ranks, ["calibrate", "--devices", str(tmp / "tb.json"), "--out",
                                          str(tmp / "tb-cal.json"), "--batch-size", str(BATCH), "--repeats", "1",
                                          "--measurements", str(tmp / "tb-fits.json"), "--timeout-s", "120",
                                          "--emulate", "none"],
                                  logs=tmp), 300)
        cal_s = time.perf_counter() - t0
        if set(codes.values()) != {0}:
            raise RuntimeError(f"calibration on the testbed failed: {codes}; "
                               + (tmp / "server.log").read_text()[-2000:])
        prof = load_profile(tmp / "tb-cal.json")
        mp = measure(model, batch_size=BATCH, repeats=3, warmup=1)
        units = planning_units(model, mp)
        problem = client_problem(prof.clients[0], units, mp, budget_s=None)
        names = list(problem.devices)
        cuts = [(k, u) for k, u in enumerate(units[:-1]) if k in (0, 3, 6, 9) or len(units) <= 4]
        sender, receiver = "b", "c"
        (tmp / "cuts.json").write_text(json.dumps([{"layer": u.name, "batch_bytes": mp.layers[u.last].output_bytes}
                                                   for _, u in cuts]))
        codes = tb.wait(tb.launch({sender: 0, receiver: 1}, [sender, receiver, str(tmp / "cuts.json"),
                                                             str(tmp / "cut-times.json")],
                                  module="benchmarks.cutprobe", logs=tmp), 300)
        if set(codes.values()) != {0}:
            raise RuntimeError(f"cut probe failed: {codes}; " + (tmp / f"{sender}.log").read_text()[-2000:])
    fits = read_json(tmp / "tb-fits.json", what="measurements")
    shaped = lambda a, b: min(x for x in (RATES[a], RATES[b]) if x is not None)  # noqa: E731
    rows = []
    for x in fits["links"]["home"]:
        rows.append([f"{x['a']} - {x['b']}", shaped(x["a"], x["b"]), x["bytes_per_s"] * 8 / 1e6, x["intercept_s"] * 1e3])
    for d, x in fits["server_links"].items():
        rows.append([f"server - {d}", shaped("server", d), x["bytes_per_s"] * 8 / 1e6, x["intercept_s"] * 1e3])
    link_rows = [[n, f"{s:g}", f"{m:.2f}", f"{m / s - 1:+.1%}", f"{ms:.2f}"] for n, s, m, ms in rows]
    measured = {r["layer"]: r for r in json.loads((tmp / "cut-times.json").read_text())}
    a, b = names.index(sender), names.index(receiver)
    cut_rows = []
    for k, u in cuts:
        predicted = problem.transfer_s(a, b, k)
        m = statistics.median(measured[u.name]["seconds"])
        cut_rows.append([u.name, f"{measured[u.name]['bytes'] / 1e6:.2f}", f"{predicted:.3f}", f"{m:.3f}",
                         f"{(m - predicted) / predicted:+.1%}"])
    worst = max(abs(m / s - 1) for _, s, m, _ in rows)
    return (f"Roles in network namespaces joined by a bridge; each role's veth shaped both ways by `tc tbf` "
            f"(rates {', '.join(f'{r} {v:g} Mbps' for r, v in RATES.items() if v)}; the server's not shaped; a link "
            f"moves at the smaller rate of its ends). `fsl calibrate` ran there as torchrun ranks in {cal_s:.0f} s. "
            f"Worst calibrated bandwidth against the shaped rate: {worst:.1%} (target 10%: "
            f"{'met' if worst <= 0.10 else 'not met'}). The intercept is two messages' fixed cost (no latency can "
            "be shaped here: no netem).\n\n"
            + md_table(["link", "shaped Mbps", "calibrated Mbps", "error", "intercept ms"], link_rows)
            + f"\n\nA cut's traffic of one step (its four messages, `planner.schedule`, batch {BATCH}) sent for real "
              f"from {sender} to {receiver} (median of 3, after a warm-up), against the plan's transfer time on the "
              "calibrated link (bytes / bandwidth + latency):\n\n"
            + md_table(["cut after", "MB per step", "predicted s", "measured s", "error"], cut_rows))


# -- (b) the cost model with and without calibration --------------------------------------

def _train(plan_path: Path, out: Path, *, rounds: int, steps: int, **kw) -> list[dict]:
    cfg = TrainConfig(plan_path=plan_path, out_dir=out, rounds=rounds, steps_per_round=steps, emulate="sleep",
                      eval_every=0, timeout_s=120.0, **kw)
    return train(cfg)


def _device_pairs(history: list[dict]) -> dict[str, tuple[float, float]]:
    """Per device of the last round: (predicted, measured) compute per step."""
    return {n: (d["predicted_compute_s"], d["compute_s"]) for n, d in history[-1]["devices"].items()
            if d["processing_time_factor"] >= 1}


def cost_model(tmp: Path, repeats: int) -> tuple[str, list]:
    model = dcgan_discriminator()
    errs: dict[str, list[float]] = {"factor x host profile": [], "calibrated": []}
    noise: list[float] = []
    per_repeat = []
    for r in range(repeats):
        print(f"cost model: repeat {r + 1}/{repeats} (load {load()})", flush=True)
        host = measure(model, batch_size=BATCH)
        cal = calibrate(CalibrationJob(profile=str(LAB), model="dcgan", batch_size=BATCH, links=False, timeout_s=300))
        raw = read_json(LAB, what="device profile")
        profiles = {"factor x host profile": parse_profile(raw),
                    "calibrated": parse_profile(calibrated_profile(raw, cal))}
        row = [r + 1, load()]
        plans = {}
        for label, prof in profiles.items():
            plans[label] = tmp / f"plan-{r}-{label[:4]}.json"
            write_plan(plan(model, prof, batch_size=BATCH, model_profile=host, compare=False), plans[label])
            pairs = _device_pairs(_train(plans[label], tmp / f"run-{r}-{label[:4]}", rounds=2, steps=3))
            e = [(m - p_) / p_ for p_, m in pairs.values()]
            errs[label] += e
            row += [f"{statistics.median(map(abs, e)):.1%}", f"{statistics.median(e):+.1%}"]
            if label == "factor x host profile":
                first = pairs
        again = _device_pairs(_train(plans["factor x host profile"], tmp / f"run-{r}-again", rounds=2, steps=3))
        floor = [abs(again[n][1] / first[n][1] - 1) for n in first if n in again]
        noise += floor
        row.append(f"{statistics.median(floor):.1%}")
        per_repeat.append(row)
    rows = []
    for label, e in errs.items():
        med, bias = statistics.median(map(abs, e)), statistics.median(e)
        rows.append([label, len(e), f"{med:.1%}", f"{max(map(abs, e)):.1%}", f"{bias:+.1%}",
                     "met" if med <= 0.10 and abs(bias) <= 0.05 else "not met"])
    rows.append(["noise floor: the same plan timed twice", len(noise), f"{statistics.median(noise):.1%}",
                 f"{max(noise):.1%}", "-", "-"])
    floor = statistics.median(noise)
    reading = (f"The noise floor, {floor:.1%}, is {'above' if floor > 0.10 else 'within'} the 10% target at this "
               "load: the same plan's devices timed in two runs a minute apart differ by that much. "
               f"Calibration {'lowered' if statistics.median(map(abs, errs['calibrated'])) < statistics.median(map(abs, errs['factor x host profile'])) else 'did not lower'} "
               "the median error here. Both tables are taken at one moment and training runs at another; on "
               "this shared VM the moments differ by more than the devices do.")
    body = (f"`profiles/lab.json`, batch {BATCH}, `--emulate sleep`, local backend; {repeats} repeats, each with "
            "a fresh host profile (`planner.profile.measure`, 11 passes, one thread) and a fresh `fsl calibrate` (5 passes per "
            "device); each plan trained 2 rounds of 3 steps and the second round's per-device compute per step "
            "compared with the plan's: error = (measured - predicted) / predicted, over every planned device of "
            "every repeat. Targets: median absolute error <= 10%, |signed bias| <= 5%.\n\n"
            + md_table(["tables", "device-steps", "median abs. error", "worst", "median signed (bias)", "target"],
                       rows)
            + "\n\nPer repeat (load average 1 / 5 / 15 min at its start):\n\n"
            + md_table(["repeat", "load", "factor: median abs.", "factor: bias", "calibrated: median abs.",
                        "calibrated: bias", "noise floor"], per_repeat)
            + "\n\n" + reading)
    return body, errs


# -- (c) drift -------------------------------------------------------------------------------

def drift(tmp: Path) -> tuple[str, str]:
    model = dcgan_discriminator()
    host = measure(model, batch_size=BATCH, repeats=5, warmup=1)
    p = plan(model, parse_profile(DRIFT), batch_size=BATCH, model_profile=host, compare=False)
    assert SLOWED in {s.device for s in p.planned[0].stages}, "the slowed device must be in the plan"
    write_plan(p, tmp / "drift-plan.json")
    slowed = json.loads(json.dumps(DRIFT))
    for d in slowed["clients"][0]["devices"]:
        if d["name"] == SLOWED:
            d["processing_time_factor"] *= SLOWDOWN
    best = plan(model, parse_profile(slowed), batch_size=BATCH, model_profile=host, compare=False)
    stale = p.round_time_s * STEPS  # the first plan's prediction before the slowdown
    optimum = best.round_time_s * STEPS
    series = {}
    switches = []
    for label, adapt in (("without --adapt", False), ("with --adapt", True)):
        print(f"drift: {label} (load {load()})", flush=True)
        h = _train(tmp / "drift-plan.json", tmp / f"drift-{adapt}", rounds=ROUNDS, steps=STEPS, adapt=adapt,
                   slowdown=((SLOWED, SLOWDOWN, AT_ROUND),))
        series[label] = [m["round_time_s"] for m in h]
        switches += [m["plan_switch"] for m in h if m.get("plan_switch")]
    rows = [[r + 1, f"{a:.2f}", f"{b:.2f}", f"{b / optimum - 1:+.1%}"]
            for r, (a, b) in enumerate(zip(series["without --adapt"], series["with --adapt"]))]
    by5 = series["with --adapt"][4] / optimum - 1
    sw = "; ".join(f"after round {w['round']} (round {w['round'] + 1} is the first on the new plan): predicted "
                   f"{w['old_round_s']:.3f} -> {w['new_round_s']:.3f} s per step ({w['why']})"
                   for w in switches) or "none"
    first_on_new = switches[0]["round"] + 1 if switches else None
    settled = [f"{b / optimum - 1:+.1%}" for b in series["with --adapt"][first_on_new - 1:]] if first_on_new else []
    body = (f"One client (`phone` x6 holds the data, `laptop` x1, `spare` x3), batch {BATCH}, `--emulate sleep`, "
            f"{ROUNDS} rounds of {STEPS} steps; `--slowdown {SLOWED}={SLOWDOWN:g}@{AT_ROUND}` slows the planned "
            f"`{SLOWED}`. Predicted round: the first plan {stale:.2f} s; the plan made knowing the slowdown (the new "
            f"optimum) {optimum:.2f} s. Switches with `--adapt`: {sw}. Round 5 with `--adapt` is {by5:+.1%} off the "
            f"new optimum's prediction (target within 10%: {'met' if abs(by5) <= 0.10 else 'not met'}); from the "
            f"first round on the new plan on: {', '.join(settled) or '-'}. The first plan's own rounds 1-2 ran "
            f"{series['with --adapt'][0] / stale - 1:+.1%} and {series['with --adapt'][1] / stale - 1:+.1%} off its "
            "prediction: the cost model's error before any drift (part (b)). Round times are wall seconds, "
            "evaluation off.\n\n"
            + md_table(["round", "without --adapt s", "with --adapt s", "with --adapt vs new optimum"], rows))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = list(range(1, ROUNDS + 1))
    for label, ys in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.axhline(optimum, color="k", ls="--", lw=1, label="new optimum's prediction")
    ax.axhline(stale, color="grey", ls=":", lw=1, label="first plan's prediction")
    ax.axvline(AT_ROUND - 0.5, color="r", lw=0.8, alpha=0.6)
    ax.set(xlabel="round", ylabel="round time s", title=f"{SLOWED} slowed {SLOWDOWN:g}x from round {AT_ROUND}")
    ax.legend(fontsize=8)
    return body, save_figure(fig, "calibration-drift")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    start_load, t0 = load(), time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.environ.setdefault("FSL_CACHE_DIR", str(tmp / "cache"))
        print(f"testbed (load {load()})", flush=True)
        tb = testbed(tmp)
        cm, _ = cost_model(tmp, args.repeats)
        dr, fig = drift(tmp)
    minutes = (time.perf_counter() - t0) / 60
    text = "\n".join([
        "## Calibration (`fsl calibrate`, the testbed, `--adapt`)", "",
        f"Made by `python benchmarks/calibration.py --repeats {args.repeats}` at commit {commit()} on {machine()}, "
        f"in {minutes:.0f} min. The machine is shared: load average (1 / 5 / 15 min) {start_load} at the start and "
        f"{load()} at the end, on 2 cores. glibc's mmap threshold pinned in every process (module docstring).", "",
        "### (a) Links on the namespace testbed", "", tb, "",
        "### (b) Cost model with and without calibration", "", cm, "",
        "### (c) A device slowed 4x at round 3 of 8", "", dr, "", fig,
    ])
    write_section("calibration", text)
    print(text)


if __name__ == "__main__":
    main()
