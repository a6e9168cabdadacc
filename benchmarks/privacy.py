"""Privacy as numbers, written into BENCHMARKS.md (section ``privacy``) and two figures.

    python benchmarks/privacy.py [--quick]

1. **FID against epsilon**: 2 clients (``synthetic_profile(2)``, ILP plan, the digits split
   IID), every run the same number of generator steps, ``--dp-noise SIGMA`` for SIGMA in
   {0 (no DP), 0.5, 1, 2} at ``--dp-clip C``, 3 seeds; epsilon at delta = 1 / shard.
2. **Membership inference** on the generator (GAN-Leaks full black-box,
   ``benchmarks.attacks``): centralized training (one client holding the whole pool on one
   device), FSL-GAN without DP and with SIGMA = 1; members are the training pool, non-members
   the held-out split.
3. **Inversion from the first cut**: a decoder trained on the held-out split through client
   0's first segment (its trained weights) reconstructs client 0's training images from
   what the data device sends, without and with ``--cut-noise``; MSE and SSIM.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

import matplotlib  # noqa: E402
import matplotlib.ticker  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from benchmarks.attacks import gan_leaks_auc, invert, reconstruction_scores  # noqa: E402
from benchmarks.common import machine, md_table, synthetic_profile, write_section  # noqa: E402
from benchmarks.exp_context import save_figure  # noqa: E402
from planner import plan  # noqa: E402
from planner.devices import parse_profile  # noqa: E402
from planner.models import Generator, build_discriminator  # noqa: E402
from planner.planfile import Plan, write_plan  # noqa: E402
from planner.profile import profile_model  # noqa: E402
from trainer.backends.local import run_local  # noqa: E402
from trainer.build import RunSpec  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.data import DataSource  # noqa: E402
from trainer.evaluation import sample_images  # noqa: E402
from trainer.privacy import Privacy  # noqa: E402
from trainer.transport import InProcessTransport, LinkTable  # noqa: E402

BATCH = 32
CLIP = 0.05  # C, fixed before the runs; the section reports where the norms of a run without DP lie
FULL = dict(rounds=3, steps=100, seeds=(0, 1, 2), sigmas=(0.0, 0.5, 1.0, 2.0), cut_noises=(0.1, 0.5),
            mia_samples=2000, decoder_iters=400)
QUICK = dict(rounds=1, steps=3, seeds=(0,), sigmas=(0.0, 1.0), cut_noises=(0.5,), mia_samples=100, decoder_iters=5)
CENTRAL = {"schema": "fsl-devices/1", "clients": [{"name": "central", "devices": [
    {"name": "server-gpu", "processing_time_factor": 1.0, "capacity": "8GB", "bandwidth_mbps": 1000,
     "holds_data": True}]}]}


def make_plans() -> dict[str, Plan]:
    model = build_discriminator("dcgan")
    mp = profile_model(model, batch_size=BATCH, use_cache=True)
    return {name: plan(model, parse_profile(prof), batch_size=BATCH, model_profile=mp, compare=False)
            for name, prof in (("fsl", synthetic_profile(2)), ("central", CENTRAL))}


def train_run(tmp: Path, p: Plan, tag: str, size: dict, *, norms: list | None = None, **kw) -> tuple[Path, list]:
    """One run; ``norms`` collects the per-sample feedback norms the server receives."""
    out = tmp / tag
    out.mkdir(parents=True, exist_ok=True)
    write_plan(p, out / "plan.json")
    cfg = TrainConfig.from_cli(plan_path=out / "plan.json", out_dir=out / "run", rounds=size["rounds"],
                               steps_per_round=size["steps"], emulate="none", eval_every=size["rounds"], **kw)
    t = InProcessTransport(LinkTable.from_plan(p))
    if norms is not None:
        send = t.send

        def spy(src, dst, tensor, *, tag):
            if tag == "fake_grad":
                norms.append(tensor.flatten(1).norm(dim=1) * tensor.shape[0])
            send(src, dst, tensor, tag=tag)

        t.send = spy
    t0 = time.perf_counter()
    history = run_local(RunSpec(cfg, p), transport=t)
    print(f"   {tag}: FID {history[-1]['fid']:.1f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out / "run", history


def generator_of(run: Path) -> Generator:
    g = Generator()
    g.load_state_dict(torch.load(run / "checkpoint" / "server.pt", weights_only=True)["generator"])
    return g


def first_segment(run: Path, p: Plan) -> torch.nn.Module:
    """Client 0's first segment with the weights its run ended with (training mode: the
    data device sends activations with dropout on)."""
    c = p.planned[0]
    d = build_discriminator("dcgan")
    latest = sorted((run / "checkpoint").glob(f"client-{c.name}-r*.pt"))[-1]
    d.load_state_dict(torch.load(latest, weights_only=True)["weights"])
    last = c.stages[0].end - 1  # the planning unit the first stage ends with
    return d.segment(0, p.model["layers"][last].get("model_layers", [last, last + 1])[1]).train()


def mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3g} ± {statistics.stdev(xs):.2g}" if len(xs) > 1 else f"{xs[0]:.3g}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script end to end")
    args = ap.parse_args(argv)
    size = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="fsl-privacy-"))
    plans = make_plans()
    fsl, central = plans["fsl"], plans["central"]
    steps = size["rounds"] * size["steps"]
    src = DataSource("digits")
    pool = src.client_data([1.0], 0, "all").images  # one client's shard of one: every client's together
    held_out = src.held_out().images

    print("1. FID against epsilon", flush=True)
    runs, norms = {}, []
    for sigma in size["sigmas"]:
        for seed in size["seeds"]:
            dp = dict(dp_clip=CLIP, dp_noise=sigma) if sigma else {}
            runs["fsl", sigma, seed] = train_run(tmp, fsl, f"fsl-s{sigma}-seed{seed}", size, seed=seed,
                                                 norms=norms if not sigma and seed == 0 else None, **dp)
    norm_q = torch.quantile(torch.cat(norms), torch.tensor([0.1, 0.5, 0.9])).tolist()
    rows, curve = [], []
    for sigma in size["sigmas"]:
        hs = [runs["fsl", sigma, s][1][-1] for s in size["seeds"]]
        eps = [h["clients"][c]["epsilon"] for h in hs[:1] for c in sorted(h["clients"])] if sigma else []
        fids = [h["fid"] for h in hs]
        curve.append((sigma, eps[0] if eps else float("inf"), fids))
        rows.append([f"{sigma:g}" + ("" if sigma else " (no DP)"), " / ".join(f"{e:.3g}" for e in eps) or "∞",
                     mean_sd(fids), " / ".join(f"{f:.1f}" for f in fids), mean_sd([h["kid"] for h in hs])])

    print("2. membership inference", flush=True)
    for seed in size["seeds"]:
        runs["central", 0.0, seed] = train_run(tmp, central, f"central-seed{seed}", size, seed=seed)
    mia = []
    for label, key, sigma in (("centralized (1 client, 1 device)", "central", 0.0), ("FSL-GAN, no DP", "fsl", 0.0),
                              ("FSL-GAN, SIGMA = 1", "fsl", 1.0)):
        if (key, sigma, size["seeds"][0]) not in runs:
            continue
        aucs = [gan_leaks_auc(pool, held_out, sample_images(generator_of(runs[key, sigma, s][0]),
                                                            size["mia_samples"], seed=1000 + s))
                for s in size["seeds"]]
        fids = [runs[key, sigma, s][1][-1]["fid"] for s in size["seeds"]]
        eps = runs[key, sigma, size["seeds"][0]][1][-1]["clients"]
        eps_txt = " / ".join(f"{v['epsilon']:.3g}" for v in eps.values()) if sigma else "∞"
        mia.append([label, eps_txt, " / ".join(f"{a:.3f}" for a in aucs), mean_sd(aucs), mean_sd(fids)])

    print("3. inversion from the first cut", flush=True)
    target = src.client_data([c.data_weight for c in fsl.planned], 0, fsl.planned[0].name).images
    inv, examples = [], {"original": target[:8]}
    for sc in (0.0, *size["cut_noises"]):
        run, hist = runs["fsl", 0.0, 0] if sc == 0 else train_run(tmp, fsl, f"fsl-cut{sc}", size, seed=0, cut_noise=sc)
        seg, noise = first_segment(run, fsl), Privacy(cut_noise=sc)

        def send(x, seg=seg, noise=noise):
            return noise.activation(seg(x))

        with torch.no_grad():
            scale = seg(target).std().item()
        recon = invert(send, held_out, target, iters=size["decoder_iters"])
        mse, ss = reconstruction_scores(target, recon)
        name = f"--cut-noise {sc:g}" if sc else "no noise"
        examples[name] = recon[:8]
        inv.append([name, f"{scale:.3g}", f"{mse:.4f}", f"{ss:.3f}", f"{hist[-1]['fid']:.1f}"])
        print(f"   {name}: MSE {mse:.4f}, SSIM {ss:.3f}", flush=True)
    baseline = reconstruction_scores(target, held_out.mean(0, keepdim=True).expand_as(target))

    fig_fid = fid_figure(curve)
    fig_inv = inversion_figure(examples)
    cut = fsl.planned[0].stages[0]
    minutes = (time.perf_counter() - t_start) / 60
    body = (f"Command: `python benchmarks/privacy.py{' --quick' if args.quick else ''}` ({minutes:.0f} min). "
            f"Machine: {machine()}.\n\n"
            f"Every run: batch {BATCH} per client, {size['rounds']} rounds x {size['steps']} steps = {steps} "
            f"generator steps, `--emulate none`, FID and KID at the end on 500 samples against the held-out split. "
            f"FSL-GAN: `synthetic_profile(2)` planned by the ILP (2 clients, the digits pool split IID, "
            f"{len(target)} records each; client 0's first segment ends after layer {cut.end - 1} "
            f"({fsl.model['layers'][cut.end - 1]['name']})). "
            f"`--dp-clip {CLIP}`: in the seed-0 run without DP the per-sample feedback norms had 10th / 50th / 90th "
            f"percentiles {norm_q[0]:.3f} / {norm_q[1]:.3f} / {norm_q[2]:.3f}"
            + (", so the DP runs clip nearly every sample's feedback: they also normalise it.\n\n"
               if norm_q[0] > CLIP else ".\n\n")
            + "### FID against epsilon\n\nEpsilon per client (delta = 1 / its records) after the run, from "
            "`metrics.jsonl`.\n\n"
            + md_table(["SIGMA", "epsilon (client 0 / 1)", "FID (mean ± sd)", "FID per seed", "KID (mean ± sd)"], rows)
            + f"\n\n{fig_fid}\n\n### Membership inference (GAN-Leaks, full black-box)\n\n"
            f"{size['mia_samples']} generated samples per run; members: the whole training pool ({len(pool)} "
            f"records), non-members: the held-out split ({len(held_out)}). AUC 0.5 is chance.\n\n"
            + md_table(["training", "epsilon", "AUC per seed", "AUC (mean ± sd)", "FID (mean ± sd)"], mia)
            + "\n\n### Inversion from the first cut\n\n"
            f"Decoder (`benchmarks.attacks.Decoder`) trained for {size['decoder_iters']} Adam steps on the "
            f"{len(held_out)} held-out images passed through client 0's trained first segment (and the same "
            f"noise), then applied to what the segment sends for client 0's {len(target)} training images. "
            "With noise the segment is the one of a run trained with that `--cut-noise` (seed 0). MSE and SSIM on "
            f"images in [0, 1]; guessing the mean held-out image scores MSE {baseline[0]:.4f}, SSIM "
            f"{baseline[1]:.3f}.\n\n"
            + md_table(["what crosses the cut", "activation std (clean)", "MSE", "SSIM", "FID of that run"], inv)
            + f"\n\n{fig_inv}")
    write_section("privacy", "## Privacy\n\n" + body)
    print(f"wrote the privacy section of BENCHMARKS.md ({minutes:.1f} min)")


def fid_figure(curve: list[tuple[float, float, list[float]]]) -> str:
    """FID (mean and sd over the seeds) against epsilon; no DP at the right edge."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    finite = [e for _, e, _ in curve if e != float("inf")]
    right = max(finite) * 2 if finite else 10.0
    for sigma, eps, fids in curve:
        x = eps if eps != float("inf") else right
        ax.errorbar([x], [statistics.mean(fids)], yerr=[statistics.pstdev(fids)], marker="o", capsize=3,
                    label=f"SIGMA {sigma:g}" + (" (no DP, plotted at the right)" if not sigma else ""))
    ax.set(xscale="log", xlabel="epsilon per client (delta = 1 / records)", ylabel="FID (lower is better)",
           title=f"FID against epsilon ({len(curve[0][2])} seed(s))")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([t for t in (0.5, 1, 2, 5, 10, 20, 50, 100) if t <= right * 1.5])
    ax.legend(fontsize=8)
    return save_figure(fig, "privacy-fid")


def inversion_figure(examples: dict[str, torch.Tensor]) -> str:
    """One row of 8 images per entry: the originals, then each attack's reconstructions."""
    rows = list(examples)
    fig, axes = plt.subplots(len(rows), 8, figsize=(8, 1.1 * len(rows)))
    for r, name in enumerate(rows):
        for i in range(8):
            ax = axes[r][i]
            ax.imshow(examples[name][i, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("Client 0's training images, and what a decoder recovers from its first cut", fontsize=9)
    return save_figure(fig, "privacy-inversion")


if __name__ == "__main__":
    main()
