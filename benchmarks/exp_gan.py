"""GAN-quality experiments of ``benchmarks/experiments.py``: number of clients, non-IID
data against aggregation. Each takes the shared context and returns (markdown, image link).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.common import md_table, median, synthetic_profile
from benchmarks.exp_context import Context
from benchmarks.exp_setup import make_plan, run_plan
from trainer.data.datasets import DataSource, digits_labels

ALPHAS = (0.1, 1.0, 100.0)
AGGREGATES = ("none", "fedavg", "swap")


def shard_labels(alpha: float, n_clients: int, *, seed: int = 0) -> list[str]:
    """Per client, the labels that make up 90% of its Dirichlet(alpha) shard, as the data
    devices draw it (equal weights): what 'non-IID' means at this alpha."""
    labels, out = digits_labels(), []
    src = DataSource("digits", alpha=alpha, seed=seed)
    for k in range(n_clients):
        counts = np.bincount(labels[src.shard_rows([1.0] * n_clients, k)], minlength=10)
        order, covered, keep = np.argsort(-counts), 0, []
        for c in order:
            if covered >= 0.9 * counts.sum():
                break
            keep.append(int(c))
            covered += counts[c]
        out.append("{" + ",".join(map(str, sorted(keep))) + "}")
    return out


def _fids(hist: list[dict]) -> list[tuple[int, float]]:
    return [(h["round"], h["fid"]) for h in hist if h.get("fid") is not None]


# -- 3. number of clients -----------------------------------------------------------------

def clients(ctx: Context) -> tuple[str, str]:
    sz = ctx.size
    rounds, steps, every = sz["clients_rounds"], sz["clients_steps"], sz["clients_eval_every"]
    rows, curves = [], {}
    for k in sz["clients_counts"]:
        p = make_plan(ctx, synthetic_profile(k))
        print(f"   {k} client(s) ...", flush=True)
        hist = run_plan(ctx, p, f"clients-{k}", rounds=rounds, steps_per_round=steps, emulate="none",
                        eval_every=every)
        curves[k] = hist
        last = hist[-1]
        rows.append([k, " / ".join(f"{f:.1f}" for _, f in _fids(hist)), last["kid"], last["class_score"],
                     median([h["g_loss"] for h in hist[-3:]]), median([h["round_time_s"] for h in hist]),
                     p.round_time_s * steps])
    body = (f"`benchmarks.common.synthetic_profile(k)`: the digits split IID over k clients (same total data), "
            f"each client one discriminator (phone + laptop) at batch 64 per step; {rounds} rounds x {steps} steps "
            f"({rounds * steps} generator steps), `--emulate none`, no aggregation, FID every {every} rounds on 500 "
            "samples, seed 0. 'Class score' is exp(E KL(p(y|x) || p(y))) of the local classifier (10 = ten "
            "confident, equally used classes). 'Measured round s' is this host running every client's devices on "
            "its 2 cores; 'planned round s' is the plan's, where each client's devices run in parallel as they "
            "would in a deployment.\n\n"
            + md_table(["clients", "FID at each evaluation", "KID (end)", "class score (end)",
                        "G loss (median, last 3 rounds)", "measured round s (median)", "planned round s"], rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for k, hist in curves.items():
        a1.plot(*zip(*_fids(hist)), marker="o", label=f"{k} client(s)")
        a2.plot([h["round"] for h in hist], [h["g_loss"] for h in hist], marker=".", label=f"{k} client(s)")
    a1.set(xlabel="round", ylabel="FID (lower is better)", title="FID against round")
    a2.set(xlabel="round", ylabel="generator loss", title="G loss against round")
    a1.legend()
    return body, ctx.save_figure(fig, "clients")


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
                         hist[-1]["class_score"], median([h["g_loss"] for h in hist[-3:]]),
                         median([h["round_time_s"] for h in hist])])
    skew, again = ALPHAS[0], []
    for seed in sz["niid_extra_seeds"]:  # the most skewed setting again: does the order hold?
        for agg in AGGREGATES:
            print(f"   alpha {skew:g}, aggregate {agg}, seed {seed} ...", flush=True)
            hist = run_plan(ctx, p, f"niid-{skew}-{agg}-s{seed}", rounds=rounds, steps_per_round=steps,
                            emulate="none", eval_every=every, alpha=skew, aggregate=agg, seed=seed)
            again.append([seed, agg, " ".join(shard_labels(skew, 3, seed=seed)), hist[-1]["fid"],
                          " / ".join(f"{f:.1f}" for _, f in _fids(hist)), hist[-1]["class_score"]])
    shards = "; ".join(f"alpha {a:g}: " + " ".join(shard_labels(a, 3)) for a in ALPHAS)
    body = (f"3 clients of `synthetic_profile(3)`, the digits split by a Dirichlet(alpha) over labels "
            f"(alpha 100 is close to IID); {rounds} rounds x {steps} steps, `--emulate none`, FID every "
            f"{every} round(s) on 500 samples, seed 0. Labels making up 90% of each client's shard: {shards}. "
            "Aggregation runs after every round: `fedavg` averages the discriminators (weighted by shard size), "
            "`swap` passes each discriminator on to the next client.\n\n"
            + md_table(["alpha", "aggregate", "FID (end)", "FID at each evaluation", "class score (end)",
                        "G loss (median, last 3 rounds)", "round s (median)"], rows))
    if again:
        body += (f"\n\nAlpha {skew:g} again with other seeds (a new Dirichlet draw, initialisation and noise):\n\n"
                 + md_table(["seed", "aggregate", "labels making up 90% of each shard", "FID (end)",
                             "FID at each evaluation", "class score (end)"], again))
    fig, axes = plt.subplots(1, len(ALPHAS), figsize=(4 * len(ALPHAS), 4), sharey=True)
    for ax, alpha in zip(axes, ALPHAS):
        for agg in AGGREGATES:
            ax.plot(*zip(*curves[alpha, agg]), marker="o", label=agg)
        ax.set(title=f"alpha = {alpha:g}", xlabel="round")
    axes[0].set_ylabel("FID (lower is better)")
    axes[0].legend(title="aggregate")
    return body, ctx.save_figure(fig, "non-iid")
