"""Network experiments of ``benchmarks/experiments.py``: bytes on each link against the
plan and where the optimal cut moves with bandwidth (communication), and a straggler with
and without a deadline. Each takes the shared context and returns (markdown, image link).
"""

from __future__ import annotations

import json

import matplotlib.pyplot as plt

from benchmarks.common import ROOT, md_table, median, synthetic_profile
from benchmarks.exp_context import Context
from benchmarks.exp_setup import make_plan, run_plan
from planner.planfile import Plan, PlannedClient
from planner.schedule import bytes_per_step


# -- 5. communication ---------------------------------------------------------------------

def expected_bytes(p: Plan, c: PlannedClient) -> dict[str, tuple[int, int]]:
    """Per device, (sent, received) bytes per step the plan implies (``planner.schedule``)."""
    spans = [(s.start, s.end) for s in c.stages]
    both = bytes_per_step(spans, list(c.costs.cut_bytes), batch_size=p.batch_size, input_shape=p.model["input_shape"])
    return {s.device: b for s, b in zip(c.stages, both)}


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
    return body, ctx.save_figure(fig, "communication")


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
    return body, ctx.save_figure(fig, "straggler")
