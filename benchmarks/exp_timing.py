"""Timing experiments of ``benchmarks/experiments.py``: plan quality, the cost model,
communication, stragglers. Each takes the shared context and returns (markdown, image link).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import matplotlib.pyplot as plt

from benchmarks.common import ROOT, md_table, median, synthetic_profile
from benchmarks.experiments import Context, save_figure
from planner import check, plan, solve_client
from planner.devices import parse_profile
from planner.models import SEED_PARTS, build_discriminator
from planner.planfile import Plan, PlannedClient, PlannedStage, write_plan
from planner.profile import profile_model
from trainer.config import TrainConfig
from trainer.run import train

SOLVERS = ("ilp", "fsl-gan", "uniform", "params")
BASELINES = SOLVERS[1:]
ILP_AGAIN = "ilp (again)"  # the ILP's plan, run a second time at the end of its group


# -- planning helpers ---------------------------------------------------------------------

def model_and_profile(ctx: Context):
    if "model" not in ctx.cache:
        model = build_discriminator("dcgan")
        ctx.cache["model"] = (model, profile_model(model, batch_size=64, use_cache=False))  # this machine, now
    return ctx.cache["model"]


def make_plan(ctx: Context, prof: dict, solver: str = "ilp") -> Plan:
    model, mp = model_and_profile(ctx)
    return plan(model, parse_profile(prof), solver=solver, model_profile=mp, compare=False)


def without_budget(prof: dict) -> dict:
    return {**{k: v for k, v in prof.items() if k != "budget"},
            "clients": [{k: v for k, v in c.items() if k != "budget"} for c in prof["clients"]]}


def _seed_parts(p: Plan) -> tuple[int, ...]:
    starts = {layer["model_layers"][0]: i for i, layer in enumerate(p.model["layers"])}
    return tuple(starts[x] for x in SEED_PARTS[p.model["name"]] if x in starts)


def solve_by_hand(ilp: Plan, solver: str) -> Plan:
    """``solver`` on each client's tables of ``ilp`` (budget ignored), as ``plan()`` would;
    a client the solver finds no placement for is excluded with the reason 'no placement'."""
    clients = []
    for c in ilp.clients:
        p = replace(c.costs, budget_s=None)
        sol = solve_client(p, solver=solver, parts=_seed_parts(ilp))
        if not sol.stages:
            clients.append(replace(c, status="excluded", reason=f"{solver}: no placement within capacity",
                                   step_time_s=None, stages=(), solver_status=sol.status))
            continue
        transfers = check.cut_transfer_s(p, sol.stages) + [0.0]
        stages = tuple(PlannedStage(device=p.devices[s.device], start=s.start, end=s.end,
                                    compute_s=check.stage_compute_s(p, s), transfer_s=t,
                                    memory_bytes=check.stage_memory_bytes(p, s))
                       for s, t in zip(sol.stages, transfers))
        clients.append(PlannedClient(name=c.name, status="planned", reason=None,
                                     step_time_s=check.step_time_s(p, sol.stages), stages=stages, costs=p,
                                     data_weight=c.data_weight, solver_status=sol.status,
                                     processing_time_factor=c.processing_time_factor))
    planned = [c.step_time_s for c in clients if c.status == "planned"]
    return replace(ilp, solver={**ilp.solver, "name": solver, "status": "heuristic"},
                   round_time_s=max(planned) if planned else None, clients=tuple(clients))


def plans_for(ctx: Context, prof: dict) -> tuple[dict[str, Plan], list[str]]:
    """One plan per solver on the clients the ILP plans within budget, and notes on what
    had to give: clients the ILP excludes, budgets removed, clients a baseline cannot place."""
    notes = []
    ilp = make_plan(ctx, prof)
    out = [c for c in ilp.clients if c.status != "planned"]
    if out:
        notes += [f"{c.name} left out for every solver: the ILP excludes it ({c.reason})" for c in out]
        keep = {c.name for c in ilp.planned}
        prof = {**prof, "clients": [c for c in prof["clients"] if c["name"] in keep]}
        ilp = make_plan(ctx, prof)
    plans = {"ilp": ilp}
    for s in BASELINES:
        try:
            p = make_plan(ctx, prof, s)
            if len(p.planned) == len(ilp.planned):
                plans[s] = p
                continue
        except Exception:  # noqa: BLE001 - a solver that cannot plan within budget or capacity
            pass
        notes.append(f"{s}: budget removed (it cannot plan every client within it)")
        try:
            p = make_plan(ctx, without_budget(prof), s)
            if len(p.planned) < len(ilp.planned):
                raise ValueError("still excludes a client")
        except Exception:  # noqa: BLE001 - capacity: solve the ILP's tables by hand, marking misses
            p = solve_by_hand(make_plan(ctx, without_budget(prof)), s)
            notes += [f"{s}: no plan for {c.name} ({c.reason})" for c in p.clients if c.status != "planned"]
        plans[s] = p
    return plans, notes


def random_fleet(n_clients: int, *, seed: int = 0) -> dict:
    """Seeded heterogeneous clients of 3 devices, kept small enough to run."""
    rng = random.Random(seed)
    clients = []
    for c in range(n_clients):
        devs = [{"name": f"r{c}-d{d}", "processing_time_factor": round(rng.uniform(1, 6), 2),
                 "capacity": rng.choice(["64MB", "128MB", "512MB", "2GB"] if d == 0 else ["32MB", "128MB", "2GB"]),
                 "bandwidth_mbps": rng.choice([50, 100, 300, 1000]), "latency_ms": rng.choice([1, 5, 10]),
                 "holds_data": d == 0} for d in range(3)]
        clients.append({"name": f"rand-{c}", "devices": devs})
    return {"schema": "fsl-devices/1", "clients": clients}


def run_plan(ctx: Context, p: Plan, tag: str, **cfg) -> list[dict]:
    out = ctx.out(tag)
    write_plan(p, out / "plan.json")
    return train(TrainConfig(plan_path=out / "plan.json", out_dir=out / "run", **{"seed": 0, **cfg}))


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
    return body, save_figure(fig, "plan-quality")


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
    return body, save_figure(fig, "cost-model")


# -- 5. communication ---------------------------------------------------------------------

def expected_bytes(p: Plan, c: PlannedClient) -> dict[str, tuple[float, float]]:
    """Per device, (sent, received) bytes per step the plan implies: half of each adjacent
    cut's ``cut_bytes`` each way, the fake images in and their gradient out on the data
    device (batch x image x 4 bytes), 8 bytes of losses out of the last device."""
    image = p.batch_size * math.prod(p.model["input_shape"]) * 4
    n, cut = len(c.stages), c.costs.cut_bytes
    out = {}
    for i, s in enumerate(c.stages):
        after = cut[s.end - 1] / 2 if i < n - 1 else 0  # forward half out, backward half in
        before = cut[c.stages[i - 1].end - 1] / 2 if i > 0 else 0  # forward half in, backward half out
        sent = after + before + (image if i == 0 else 0) + (8 if i == n - 1 else 0)
        out[s.device] = (sent, after + before + (image if i == 0 else 0))
    return out


def bandwidth_sweep(ctx: Context, points: int) -> list[dict]:
    rows = []
    for i in range(points):
        bw = 10 ** (4 * i / (points - 1))
        dev = dict(capacity="8GB", bandwidth_mbps=round(bw, 3), latency_ms=5)
        prof = {"schema": "fsl-devices/1", "clients": [{"name": "one", "devices": [
            {"name": "phone", "processing_time_factor": 4.0, "holds_data": True, **dev},
            {"name": "laptop", "processing_time_factor": 1.0, **dev}]}]}
        p = make_plan(ctx, prof)
        c = p.planned[0]
        names = [layer["name"] for layer in p.model["layers"]]
        k = c.stages[0].end
        cut = f"{names[k - 1]} / {names[k]}" if k < len(names) else "none: all on phone"
        rows.append({"bw": bw, "k": k, "cut": cut,
                     "step": c.step_time_s, "share": sum(s.transfer_s for s in c.stages) / c.step_time_s})
    return rows


def communication(ctx: Context) -> tuple[str, str]:
    steps = ctx.size["comm_steps"]
    prof = json.loads((ROOT / "profiles" / "lab.json").read_text())
    p = make_plan(ctx, prof)
    m = run_plan(ctx, p, "comm", rounds=1, steps_per_round=steps, emulate="none", eval_every=0)[-1]
    rows = []
    for c in p.planned:
        exp = expected_bytes(p, c)
        for i, s in enumerate(c.stages):
            d = m["devices"][s.device]
            sent, recv = d["bytes_sent"] / steps, d["bytes_received"] / steps
            (es, er), where = exp[s.device], f"{s.device} (stage {i + 1}/{len(c.stages)})"
            rows.append([c.name, where, f"{sent:,.0f}", f"{es:,.0f}", f"{sent / es - 1:+.2%}",
                         f"{recv:,.0f}", f"{er:,.0f}", f"{recv / er - 1:+.2%}"])
    sweep = bandwidth_sweep(ctx, ctx.size["comm_points"])
    srows = [[f"{r['bw']:.3g}", r["k"], r["cut"], r["step"], f"{r['share']:.1%}"] for r in sweep]
    body = ("### (a) Bytes per step, measured against the plan's `cut_bytes`\n\n"
            f"profiles/lab.json, ILP plan, 1 round of {steps} step(s), `--emulate none`. Expected: half of each "
            "adjacent cut's `cut_bytes` each way, the fake images and their gradient (batch x 784 x 4 bytes) on "
            "the data device, 8 bytes of losses from the last device.\n\n"
            + md_table(["client", "device", "sent B/step", "expected", "diff", "received B/step", "expected", "diff"],
                       rows)
            + "\n\n### (b) Where the optimal cut moves with bandwidth (planning only)\n\n"
            "One client: a phone holding the data (processing_time_factor 4) and a laptop (factor 1), both 8GB, "
            "latency 5 ms, the link's bandwidth swept on a log grid; ILP plans.\n\n"
            + md_table(["bandwidth Mbps", "layers on phone", "cut after / before", "step s", "transfer share"], srows))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.step([r["bw"] for r in sweep], [r["k"] for r in sweep], where="mid", color="C0", marker="o")
    ax.set(xscale="log", xlabel="link bandwidth (Mbps)", ylabel="layers on the phone (cut position)",
           title="Optimal cut against bandwidth")
    ax2 = ax.twinx()
    ax2.plot([r["bw"] for r in sweep], [r["step"] for r in sweep], color="C1", ls="--", marker="s")
    ax2.set_ylabel("planned step time (s)", color="C1")
    return body, save_figure(fig, "communication")


# -- 6. straggler -------------------------------------------------------------------------

def straggler(ctx: Context) -> tuple[str, str]:
    sz = ctx.size
    rounds, steps, slow = sz["strag_rounds"], sz["strag_steps"], sz["strag_slow"]
    prof = synthetic_profile(3)
    slow_name = prof["clients"][-1]["name"]
    for d in prof["clients"][-1]["devices"]:
        d["processing_time_factor"] *= slow
    p = make_plan(ctx, prof)
    fast_s = max(c.step_time_s for c in p.planned if c.name != slow_name) * steps
    deadline = round(sz["strag_slack"] * fast_s, 2)
    rows, series = [], {}
    for label, dl in (("no deadline", None), (f"--deadline-s {deadline}", deadline)):
        hist = run_plan(ctx, p, f"strag-{dl}", rounds=rounds, steps_per_round=steps, emulate="sleep",
                        eval_every=rounds, deadline_s=dl)
        series[label] = [h["round_time_s"] for h in hist]
        dropped = "; ".join(f"r{h['round']}: " + (", ".join(f"{n} at step {c['dropped_at_step']}"
                                                           for n, c in h["clients"].items()
                                                           if c["dropped_at_step"] is not None) or "none")
                            for h in hist)
        steps_slow = [h["clients"][slow_name]["steps"] for h in hist]
        measured = ", ".join(f"{n} {median([h['clients'][n]['step_time_s'] for h in hist]):.2f}"
                             for n in hist[-1]["clients"])
        rows.append([label, median(series[label]), hist[-1]["predicted_round_time_s"], hist[-1]["fid"],
                     measured, dropped, "/".join(map(str, steps_slow))])
    body = (f"3 clients of `synthetic_profile(3)`; {slow_name}'s devices {slow:g}x slower. ILP plan: predicted "
            f"step {', '.join(f'{c.name} {c.step_time_s:.2f} s' for c in p.planned)}. Deadline = "
            f"{sz['strag_slack']:g} x the fast clients' predicted round ({fast_s:.2f} s) = {deadline} s. "
            f"{rounds} round(s) x {steps} steps, `--emulate sleep`, FID at the end, seed 0.\n\n"
            + md_table(["setting", "round s (median)", "predicted round s (plan)", "FID (end)",
                        "measured step s (median)", "dropped", f"steps done by {slow_name} per round"], rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.4
    for j, (label, ts) in enumerate(series.items()):
        ax.bar([i + j * width for i in range(len(ts))], ts, width, label=label)
    ax.set(xlabel="round", ylabel="round time (s)", title="Straggler with and without a deadline")
    ax.set_xticks([i + width / 2 for i in range(rounds)], [str(i + 1) for i in range(rounds)])
    ax.legend()
    return body, save_figure(fig, "straggler")
