"""GAN-quality experiments of ``benchmarks/experiments.py``: number of clients, non-IID
data against aggregation. Each takes the shared context and returns (markdown, image link).
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from benchmarks.common import md_table, median, synthetic_profile
from benchmarks.experiments import Context, save_figure
from benchmarks.exp_timing import make_plan, run_plan

ALPHAS = (0.1, 1.0, 100.0)
AGGREGATES = ("none", "fedavg", "swap")


def _fids(hist: list[dict]) -> list[tuple[int, float]]:
    return [(h["round"], h["fid"]) for h in hist if h.get("fid") is not None]


# -- 3. number of clients -----------------------------------------------------------------

def clients(ctx: Context) -> tuple[str, str]:
    sz = ctx.size
    rounds, steps = sz["clients_rounds"], sz["clients_steps"]
    rows, curves = [], {}
    for k in sz["clients_counts"]:
        p = make_plan(ctx, synthetic_profile(k))
        print(f"   {k} client(s) ...", flush=True)
        hist = run_plan(ctx, p, f"clients-{k}", rounds=rounds, steps_per_round=steps, emulate="none", eval_every=1)
        curves[k] = hist
        last = hist[-1]
        rows.append([k, " / ".join(f"{f:.1f}" for _, f in _fids(hist)), last["kid"], last["g_loss"],
                     " / ".join(f"{h['round_time_s']:.1f}" for h in hist), median([h["round_time_s"] for h in hist])])
    body = (f"`benchmarks.common.synthetic_profile(k)`: the digits split IID over k clients (same total data), "
            f"each client one discriminator at batch 64 per step; {rounds} rounds x {steps} steps, "
            "`--emulate none`, no aggregation, FID every round, seed 0.\n\n"
            + md_table(["clients", "FID per round", "KID (end)", "G loss (last round)", "round s per round",
                        "round s (median)"], rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for k, hist in curves.items():
        a1.plot(*zip(*_fids(hist)), marker="o", label=f"{k} client(s)")
        a2.plot([h["round"] for h in hist], [h["g_loss"] for h in hist], marker="o", label=f"{k} client(s)")
    a1.set(xlabel="round", ylabel="FID (lower is better)", title="FID against round")
    a2.set(xlabel="round", ylabel="generator loss", title="G loss against round")
    a1.legend()
    return body, save_figure(fig, "clients")


# -- 4. non-IID data x aggregation --------------------------------------------------------

def non_iid(ctx: Context) -> tuple[str, str]:
    sz = ctx.size
    rounds, steps, every = sz["niid_rounds"], sz["niid_steps"], sz["niid_eval_every"]
    p = make_plan(ctx, synthetic_profile(3))
    rows, curves = [], {}
    for alpha in ALPHAS:
        for agg in AGGREGATES:
            print(f"   alpha {alpha:g}, aggregate {agg} ...", flush=True)
            hist = run_plan(ctx, p, f"niid-{alpha}-{agg}", rounds=rounds, steps_per_round=steps, emulate="none",
                            eval_every=every, alpha=alpha, aggregate=agg)
            curves[alpha, agg] = _fids(hist)
            rows.append([f"{alpha:g}", agg, hist[-1]["fid"], " / ".join(f"{f:.1f}" for _, f in curves[alpha, agg]),
                         hist[-1]["g_loss"], median([h["round_time_s"] for h in hist])])
    body = (f"3 clients of `synthetic_profile(3)`, the digits split by a Dirichlet(alpha) over labels "
            f"(alpha 100 is close to IID); {rounds} rounds x {steps} steps, `--emulate none`, FID every "
            f"{every} round(s), seed 0.\n\n"
            + md_table(["alpha", "aggregate", "FID (end)", "FID over rounds", "G loss (last round)",
                        "round s (median)"], rows))
    fig, axes = plt.subplots(1, len(ALPHAS), figsize=(4 * len(ALPHAS), 4), sharey=True)
    for ax, alpha in zip(axes, ALPHAS):
        for agg in AGGREGATES:
            ax.plot(*zip(*curves[alpha, agg]), marker="o", label=agg)
        ax.set(title=f"alpha = {alpha:g}", xlabel="round")
    axes[0].set_ylabel("FID (lower is better)")
    axes[0].legend(title="aggregate")
    return body, save_figure(fig, "non-iid")
