"""Plan experiments of ``benchmarks/experiments.py``: each solver's plan trained and
timed (plan quality), and the cost model's predictions against those runs. Each takes the
shared context and returns (markdown, image link).
"""

from __future__ import annotations

import json

import matplotlib.pyplot as plt

from benchmarks.common import ROOT, md_table, median
from benchmarks.exp_context import Context
from benchmarks.exp_setup import BASELINES, plans_for, random_fleet, run_plan
from planner.planfile import PlannedClient

ILP_AGAIN = "ilp (again)"  # the ILP's plan, run a second time at the end of its group


# -- 1. plan quality ----------------------------------------------------------------------

def plan_quality_runs(ctx: Context) -> list[dict]:
    if "pq" in ctx.cache:
        return ctx.cache["pq"]
    steps = ctx.size["pq_steps"]
    profiles = {p.name: json.loads(p.read_text()) for p in sorted((ROOT / "profiles").glob("*.json"))}
    profiles["random (seed 0)"] = random_fleet(ctx.size["pq_random_clients"])
    runs = []
    for pname, prof in profiles.items():
        # profile afresh for every device profile, as `fsl plan --no-cache` would: this
        # machine's speed drifts ~10% over minutes, so predictions come from its speed now
        ctx.cache.pop("model", None)
        plans, notes = plans_for(ctx, prof)
        # the ILP's plan runs first and again last, so its measurement brackets the
        # baselines' and drift during the group cancels out of the ratios
        for s, p in [*plans.items(), (ILP_AGAIN, plans["ilp"])]:
            print(f"   {pname} / {s}: predicted round {p.round_time_s * steps:.1f} s", flush=True)
            # round 1 is an untimed warm-up: a federation's first steps pay one-off costs
            # (allocations, Adam's state, first kernels) that no later step pays
            m = run_plan(ctx, p, f"pq-{len(runs)}", rounds=2, steps_per_round=steps, emulate="sleep", eval_every=0)[-1]
            runs.append({"profile": pname, "solver": s, "plan": p, "m": m, "notes": notes})
    ctx.cache["pq"] = runs
    return runs


def ilp_reference(runs: list[dict]) -> dict[str, dict]:
    """Per device profile, the ILP plan's metrics as the mean of its two runs (first and last)."""
    out = {}
    for r in runs:
        if r["solver"] not in ("ilp", ILP_AGAIN):
            continue
        ref = out.setdefault(r["profile"], {"runs": []})
        ref["runs"].append(r["m"])
    for ref in out.values():
        ms = ref.pop("runs")
        ref["predicted_round_time_s"] = ms[0]["predicted_round_time_s"]
        ref["round_time_s"] = sum(m["round_time_s"] for m in ms) / len(ms)
        ref["clients"] = {n: {"predicted_step_time_s": c["predicted_step_time_s"],
                              "step_time_s": sum(m["clients"][n]["step_time_s"] for m in ms) / len(ms)}
                          for n, c in ms[0]["clients"].items()}
    return out


def plan_quality(ctx: Context) -> tuple[str, str]:
    runs = plan_quality_runs(ctx)
    ilp = ilp_reference(runs)
    rows, crows, pts, notes = [], [], [], {}
    for r in runs:
        b, m = ilp[r["profile"]], r["m"]
        notes[r["profile"]] = r["notes"]
        pr, mr = m["predicted_round_time_s"] / b["predicted_round_time_s"], m["round_time_s"] / b["round_time_s"]
        rows.append([r["profile"], r["solver"], f"{len(m['clients'])}/{len(b['clients'])}",
                     m["predicted_round_time_s"], m["round_time_s"], pr, mr])
        if r["solver"] in BASELINES:
            pts.append((pr, mr, r["solver"], "round"))
        for name, c in m["clients"].items():
            cb = b["clients"][name]
            cp, cm = c["predicted_step_time_s"] / cb["predicted_step_time_s"], c["step_time_s"] / cb["step_time_s"]
            if r["solver"] in BASELINES:
                crows.append([r["profile"], name, r["solver"], c["predicted_step_time_s"], c["step_time_s"], cp, cm])
                pts.append((cp, cm, r["solver"], "client"))
    steps = ctx.size["pq_steps"]
    body = (f"Each plan trained for 2 rounds of {steps} step(s), `--emulate sleep`, eval off, seed 0; the second "
            "round is the one timed (the first pays one-off start-up costs). The model is profiled afresh before "
            "each device profile's plans. "
            f"The ILP's plan runs first and again last in each profile's group ('{ILP_AGAIN}'); ratios are to the "
            "mean of its two runs (> 1: slower than the ILP), so the two ILP rows show how far the same plan "
            "moves in a minute on this machine. 'clients': planned by "
            "this solver / by the ILP; where a baseline places fewer clients its round time leaves the missing "
            "(often the slowest) client out, so compare those rows per client.\n\n"
            + md_table(["profile", "solver", "clients", "predicted round s", "measured round s", "predicted / ILP",
                        "measured / ILP"], rows)
            + "\n\nPer client, step time (baselines only):\n\n"
            + md_table(["profile", "client", "solver", "predicted step s", "measured step s", "predicted / ILP",
                        "measured / ILP"], crows))
    noted = [f"- {p}: {n}" for p, ns in notes.items() for n in ns]
    if noted:
        body += "\n\nWhat had to give, so that every solver yields a plan:\n\n" + "\n".join(noted)
    fig, ax = plt.subplots(figsize=(6, 5))
    for s, color in zip(BASELINES, ("C0", "C1", "C2")):
        for kind, marker in (("round", "s"), ("client", "o")):
            xy = [(x, y) for x, y, sv, k in pts if sv == s and k == kind]
            if xy:
                ax.scatter(*zip(*xy), c=color, marker=marker, alpha=0.7, label=f"{s} ({kind})")
    lim = [min(min(p[0], p[1]) for p in pts) * 0.9, max(max(p[0], p[1]) for p in pts) * 1.1] if pts else [0.5, 2]
    ax.plot(lim, lim, "k--", lw=1, label="y = x")
    ax.set(xscale="log", yscale="log", xlabel="predicted time / ILP's", ylabel="measured time / ILP's",
           title="Plan quality against the ILP")
    ax.legend(fontsize=8)
    return body, ctx.save_figure(fig, "plan-quality")


# -- 2. cost model ------------------------------------------------------------------------

def _same_stages(a: PlannedClient, b: PlannedClient) -> bool:
    return [(s.device, s.start, s.end) for s in a.stages] == [(s.device, s.start, s.end) for s in b.stages]


def repeat_spread(runs: list[dict]) -> list[float]:
    """|measured step ratio - 1| of clients whose plan in a later run of the group (the ILP's
    second run, or a baseline that chose the same stages) is the ILP's own, stage for stage:
    the same work timed twice, up to a minute or two apart. This machine's noise."""
    ilp = {r["profile"]: r for r in runs if r["solver"] == "ilp"}
    out = []
    for r in runs:
        if r["solver"] == "ilp":
            continue  # the first ILP run is the reference; 'ilp (again)' is compared with it
        b = ilp[r["profile"]]
        mine = {c.name: c for c in r["plan"].planned}
        for c in b["plan"].planned:
            if c.name in mine and _same_stages(c, mine[c.name]):
                out.append(abs(r["m"]["clients"][c.name]["step_time_s"] / b["m"]["clients"][c.name]["step_time_s"] - 1))
    return out


def cost_model(ctx: Context) -> tuple[str, str]:
    runs = plan_quality_runs(ctx)
    dev, cli, own, rnd, rnd_g, named, fast = [], [], [], [], [], [], []
    for r in runs:
        m = r["m"]
        for n, d in m["devices"].items():
            if d["processing_time_factor"] < 1:  # faster than this host: cannot be emulated
                fast.append(f"{n} ({r['profile']}, {r['solver']}, factor {d['processing_time_factor']:g})")
                continue
            dev.append((d["predicted_compute_s"], d["compute_s"]))
            named.append((r["profile"], r["solver"], n, d))
        cli += [(c["predicted_step_time_s"], c["step_time_s"]) for c in m["clients"].values()]
        own += [(c["predicted_step_time_s"], c["step_time_s"] - c["host_wait_s"]) for c in m["clients"].values()]
        rnd.append((m["predicted_round_time_s"], m["round_time_s"]))
        rnd_g.append((m["predicted_round_time_s"], m["round_time_s"] - m["server"]["compute_s"]))
    rows = []
    for what, xs in (("compute per device per step", dev), ("step time per client", cli),
                     ("step time per client, this host's core waits set apart", own), ("round time", rnd),
                     ("round time less the server's generator work", rnd_g)):
        errs = [(m - p) / p for p, m in xs]
        rows.append([what, len(xs), f"{median([abs(e) for e in errs]):.1%}", f"{max(abs(e) for e in errs):.1%}",
                     f"{median(errs):+.1%}"])
    spread = repeat_spread(runs)
    if spread:
        rows.append(["noise floor: the same client plan timed in two runs", len(spread), f"{median(spread):.1%}",
                     f"{max(spread):.1%}", "-"])
    body = (f"All {len(runs)} runs of plan-quality (the timed round of {ctx.size['pq_steps']} step(s) each, "
            "`--emulate sleep`); error = (measured - predicted) / predicted. Target: median absolute error within "
            "10%. 'Core waits' are the seconds a device waited for this 2-core host beyond what its emulated "
            "slowdown could hide (`host_wait_s`): an artefact of emulating many devices on one machine. The noise "
            "floor compares clients whose plan in a later run of the group (the ILP's second run, or a baseline "
            "that chose the same stages) is stage for stage the ILP's: identical work, timed twice."
            "\n\n"
            + md_table(["quantity", "n", "median abs. error", "worst abs. error", "median error (signed)"], rows))
    worst = sorted(named, key=lambda x: -abs(x[3]["compute_s"] / x[3]["predicted_compute_s"] - 1))[:5]
    body += ("\n\nThe five devices predicted worst (a device's measured compute is its raw work on this host times "
             "its factor, so an error in the work is multiplied by nothing but shows in full):\n\n"
             + md_table(["profile", "solver", "device", "factor", "predicted compute s/step", "measured", "raw work s",
                         "error"],
                        [[p_, s_, n, d["processing_time_factor"], d["predicted_compute_s"], d["compute_s"], d["work_s"],
                          f"{d['compute_s'] / d['predicted_compute_s'] - 1:+.1%}"] for p_, s_, n, d in worst]))
    if fast:
        body += ("\n\nLeft out of the device rows: devices faster than this host (`processing_time_factor` < 1), "
                 "which `--emulate sleep` runs at this host's speed (the run warns): " + "; ".join(fast) + ".")
    body += ("\n\nThe plan's round time is its slowest client's step times the steps; the server's generator "
             "step (forward and backward, once per step, on the server's own hardware, which the device profile "
             "does not describe) comes on top, hence the last row.")
    fig, ax = plt.subplots(figsize=(6, 5))
    for (label, xs), marker in zip((("device compute / step", dev), ("client step time", cli)), ("o", "s")):
        ax.scatter(*zip(*xs), marker=marker, alpha=0.6, label=label)
    allv = [v for xs in (dev, cli) for pair in xs for v in pair if v > 0]
    lim = [min(allv) * 0.8, max(allv) * 1.25]
    ax.plot(lim, lim, "k--", lw=1, label="y = x")
    for k, ls in ((1.1, ":"), (1 / 1.1, ":")):
        ax.plot(lim, [v * k for v in lim], "k", ls=ls, lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="predicted s", ylabel="measured s",
           title="Cost model (dotted: +-10%)")
    ax.legend(fontsize=8)
    return body, ctx.save_figure(fig, "cost-model")
