"""Privacy as measured numbers: DP against no DP on ``profiles/lab.json``, and the attacks on
those very runs; written into BENCHMARKS.md (section ``privacy``).

    python benchmarks/privacy.py train  [--runs DIR] [--settings nodp,eps10] [--seeds 0,1,2] [--steps 600]
    python benchmarks/privacy.py report [--runs DIR] [--settings ...] [--seeds ...] [--write]

``train`` runs ``fsl train`` (a subprocess per run, ``--emulate none``) on the plan of
``profiles/lab.json`` for each setting and seed whose folder is not complete; ``report``
scores every complete run and caches its scores in ``RUN/attacks.json``:

1. **Quality**: FID, KID and classifier confidence of the last round (``metrics.jsonl``),
   against the held-out split; epsilon, delta and the DP parameters per client from the
   same rows.
2. **Membership inference** on the generator the server holds (``checkpoint/server.pt``):
   GAN-Leaks white-box reconstruction distance and full black-box nearest sample
   (``benchmarks.attacks``); members: client 0's training records, non-members: the
   held-out digits, which no client trains on.
3. **Inversion from the first cut**: a decoder trained on the held-out digits through
   client 0's first segment (its final weights) reconstructs client 0's training images
   from what its data device sends; SSIM and PSNR. For runs without DP also through the
   data device's ``--cut-noise`` at attack time (seed 0; the segment trained without it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.attacks import (frozen_for_queries, gan_leaks_auc, invert, membership_auc,  # noqa: E402
                                reconstruction_distance, reconstruction_scores)
from benchmarks.common import ROOT, commit, machine, md_table, write_section  # noqa: E402
from planner.models import Generator, build_discriminator  # noqa: E402
from planner.planfile import load_plan  # noqa: E402
from trainer.data.datasets import DataSource  # noqa: E402
from trainer.quality.evaluation import sample_images  # noqa: E402
from trainer.privacy.options import Privacy  # noqa: E402

PROFILE = "profiles/lab.json"
ROUND_STEPS = 100
# name -> the fsl train options of that setting (besides --seed, --rounds, ...)
SETTINGS = {"nodp": "", "eps10": "--dp-epsilon 10", "eps3": "--dp-epsilon 3", "eps1": "--dp-epsilon 1",
            "cut0.5": "--cut-noise 0.5"}
CUT_NOISES = (0.1, 0.5)
ATTACK = dict(queries=100, candidates=1000, restarts=2, steps=30, black_box_samples=2000, decoder_iters=300)
QUICK_ATTACK = dict(queries=8, candidates=16, restarts=1, steps=1, black_box_samples=16, decoder_iters=2)
FIGURES = ROOT / "benchmarks" / "figures"


def train_command(runs: Path, setting: str, seed: int, steps: int) -> list[str]:
    rounds = max(1, steps // ROUND_STEPS)
    return (["fsl", "train", "--plan", str(runs / "plan.json"), "--emulate", "none", "--rounds", str(rounds),
             "--steps-per-round", str(min(steps, ROUND_STEPS)), "--eval-every", str(rounds), "--seed", str(seed),
             "--timeout-s", "900", "--out", str(runs / f"{setting}-seed{seed}")] + shlex.split(SETTINGS[setting]))


def train(runs: Path, settings: list[str], seeds: list[int], steps: int) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    if not (runs / "plan.json").exists():
        subprocess.run(["fsl", "plan", "--devices", PROFILE, "--out", str(runs / "plan.json")], check=True,
                       stdout=subprocess.DEVNULL)
    for seed in seeds:  # seed-major: every setting gets its first seed before any gets a third
        for setting in settings:
            out = runs / f"{setting}-seed{seed}"
            if (out / "done").exists():
                continue
            cmd = train_command(runs, setting, seed, steps)
            t0 = time.perf_counter()
            with open(runs / f"{setting}-seed{seed}.log", "w") as log:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=3 * 3600).returncode
            print(f"{setting} seed {seed}: exit {rc} ({time.perf_counter() - t0:.0f} s)", flush=True)
            if rc == 0:
                (out / "done").write_text(" ".join(cmd) + "\n")


def last_row(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def generator_of(run: Path) -> Generator:
    g = Generator()
    g.load_state_dict(torch.load(run / "checkpoint" / "server.pt", weights_only=True)["generator"])
    return g


def first_segment(run: Path) -> torch.nn.Module:
    """Client 0's first segment with the weights its run ended with (training mode: the
    data device sends activations with dropout on, if its segment has any)."""
    p = load_plan(run / "plan.json")
    c = p.planned[0]
    d = build_discriminator("dcgan")
    latest = sorted((run / "checkpoint").glob(f"client-{c.name}-r*.pt"))[-1]
    d.load_state_dict(torch.load(latest, weights_only=True)["weights"])
    last = c.stages[0].end - 1  # the planning unit the first stage ends with
    return d.segment(0, p.model["layers"][last].get("model_layers", [last, last + 1])[1]).train()


def client_zero(run: Path, seed: int) -> torch.Tensor:
    p = load_plan(run / "plan.json")
    return DataSource("digits", seed=seed).client_data([c.data_weight for c in p.planned], 0,
                                                       p.planned[0].name).images


def attack(run: Path, seed: int, size: dict, *, cut_noises: tuple[float, ...]) -> dict:
    """Every score of one run (see the module docstring), as a JSON-able dict."""
    members, held_out = client_zero(run, seed), DataSource("digits", seed=seed).held_out().images
    pick = torch.Generator().manual_seed(seed)
    q_in = members[torch.randperm(len(members), generator=pick)[:size["queries"]]]
    q_out = held_out[torch.randperm(len(held_out), generator=pick)[:size["queries"]]]
    g = generator_of(run)
    t0 = time.perf_counter()
    frozen = frozen_for_queries(g, seed=seed)
    kw = {k: size[k] for k in ("candidates", "restarts", "steps")}
    white = membership_auc(reconstruction_distance(frozen, q_in, seed=seed, **kw),
                           reconstruction_distance(frozen, q_out, seed=seed, **kw))
    black = gan_leaks_auc(members, held_out, sample_images(g, size["black_box_samples"], seed=1000 + seed))
    out = {"white_box_auc": white, "black_box_auc": black, "mia_s": time.perf_counter() - t0, "inversion": {}}
    seg = first_segment(run)
    for sc in (0.0, *cut_noises):
        noise = Privacy(cut_noise=sc)

        def send(x, seg=seg, noise=noise):
            return noise.activation(seg(x))

        recon = invert(send, held_out, members, iters=size["decoder_iters"], seed=seed, batch=64)
        mse, s, psnr = reconstruction_scores(members, recon)
        out["inversion"][f"{sc:g}"] = {"mse": mse, "ssim": s, "psnr": psnr}
        if seed == 0 and sc == 0:
            torch.save({"original": members[:8], "recon": recon[:8]}, run / "inversion-examples.pt")
    row = last_row(run)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    out["generator_steps"] = sum(max(c.get("steps", 0) for c in r["clients"].values()) for r in rows)
    out |= {k: row.get(k) for k in ("round", "fid", "kid", "confidence", "class_score")}
    out["clients"] = {c: {k: v for k, v in r.items() if k.startswith("dp_") or k in ("epsilon", "delta", "steps")}
                      for c, r in row["clients"].items()}
    return out


def scores(runs: Path, setting: str, seed: int, size: dict, quick: bool) -> dict | None:
    run = runs / f"{setting}-seed{seed}"
    if not (run / "done").exists():
        return None
    cache = run / ("attacks-quick.json" if quick else "attacks.json")
    if not cache.exists():
        t0 = time.perf_counter()
        res = attack(run, seed, size, cut_noises=CUT_NOISES if setting == "nodp" and seed == 0 else ())
        cache.write_text(json.dumps(res, indent=1))
        print(f"{setting} seed {seed}: scored in {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads(cache.read_text())


def mean_sd(xs: list[float], fmt: str = ".3g") -> str:
    if len(xs) > 1:
        return f"{statistics.mean(xs):{fmt}} ± {statistics.stdev(xs):.2g}"
    return f"{xs[0]:{fmt}}" if xs else "—"


def eps_text(res: list[dict]) -> str:
    eps = [c.get("epsilon") for r in res for c in r["clients"].values()]
    if not eps or any(e is None for e in eps):
        return "∞ (no DP)"
    return f"{min(eps):.3g}–{max(eps):.3g}" if max(eps) - min(eps) > 5e-3 else f"{eps[0]:.3g}"


def opacus_epsilon(res: list[dict]) -> str:
    """Epsilon recomputed from each client's (q, SIGMA, steps, delta) in ``metrics.jsonl``
    by Opacus's RDP analysis of the Poisson-subsampled Gaussian mechanism, independently
    of the trainer's accountant: the largest over clients and seeds."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    eps = []
    for r in res:
        for c in r["clients"].values():
            if c.get("dp_q") is None or not c.get("dp_noise"):
                return "—"
            orders = RDPAccountant.DEFAULT_ALPHAS
            # a resumed run may have changed SIGMA: each (q, SIGMA, steps) segment composes
            segments = c.get("dp_segments") or [(c["dp_q"], c["dp_noise"], c["dp_steps"])]
            rdp = sum(np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=int(n), orders=orders))
                      for q, sigma, n in segments)
            eps.append(get_privacy_spent(orders=orders, rdp=rdp, delta=c["delta"])[0])
    return f"{max(eps):.3g}"


def dp_params(res: list[dict]) -> str:
    c = next(iter(res[0]["clients"].values()))
    keys = [("dp_noise", "SIGMA"), ("dp_clip", "C"), ("dp_q", "q"), ("delta", "delta")]
    return ", ".join(f"{name} {c[k]:.3g}" for k, name in keys if c.get(k) is not None) or "—"


def generator_steps(r: dict) -> int:
    return r.get("generator_steps") or r["round"] * ROUND_STEPS


def report(runs: list[Path], settings: list[str], seeds: list[int], size: dict, *, quick: bool,
           write: bool) -> None:
    done = {}
    for d in runs:
        for s in settings:
            if rs := [r for seed in seeds if (r := scores(d, s, seed, size, quick)) is not None]:
                done[d, s] = rs
    quality, mia, inv = [], [], []
    for (d, s), rs in done.items():
        steps = generator_steps(rs[0])
        flags = SETTINGS[s] or "(no DP)"
        quality.append([f"`{flags}`", steps, len(rs), eps_text(rs), opacus_epsilon(rs), dp_params(rs),
                        mean_sd([r["fid"] for r in rs], ".1f"), " / ".join(f"{r['fid']:.1f}" for r in rs),
                        mean_sd([r["kid"] for r in rs]), mean_sd([r["confidence"] for r in rs])])
        mia.append([f"`{flags}`", steps, eps_text(rs), " / ".join(f"{r['white_box_auc']:.3f}" for r in rs),
                    mean_sd([r["white_box_auc"] for r in rs]), mean_sd([r["black_box_auc"] for r in rs])])
        for sc in sorted({k for r in rs for k in r["inversion"]}, key=float):
            v = [r["inversion"][sc] for r in rs if sc in r["inversion"]]
            cut = "none" if sc == "0" else f"`--cut-noise {sc}` (at attack time)"
            inv.append([f"`{flags}`", steps, cut, len(v), mean_sd([x["ssim"] for x in v]),
                        mean_sd([x["psnr"] for x in v], ".1f"), mean_sd([x["mse"] for x in v])])
            print(f"{d.name} {s} cut {sc}: SSIM {inv[-1][4]}", flush=True)
        print(f"{d.name} {s}: FID {quality[-1][6]}, white-box AUC {mia[-1][4]}, black-box AUC {mia[-1][5]}",
              flush=True)
    if not write:
        return
    (FIGURES / "privacy-fid.png").unlink(missing_ok=True)  # the former section's figure
    grids = []
    for d in runs:
        for s in ("nodp", "eps10"):
            src = d / f"{s}-seed0" / "samples"
            if (d, s) in done and (pngs := sorted(src.glob("round_*.png"))):
                name = f"privacy-samples-{s}-{generator_steps(done[d, s][0])}"
                shutil.copyfile(pngs[-1], FIGURES / f"{name}.png")
                grids.append(f"![{SETTINGS[s] or 'no DP'}, seed 0, {name.split('-')[-1]} steps]"
                             f"(benchmarks/figures/{name}.png)")
    first = {d: rs[0] for (d, _), rs in reversed(done.items())}  # each folder's first scored run
    train_cmds = "; ".join(
        "`" + " ".join(train_command(Path("runs") / d.name, "nodp", 0, generator_steps(r))).replace(
            "--seed 0 ", "").replace("nodp-seed0", "SETTING-seedSEED") + " --seed SEED`" for d, r in first.items())
    held = len(DataSource("digits").held_out())
    body = (f"Commands: `python benchmarks/privacy.py train --settings {','.join(settings)} --seeds "
            f"{','.join(map(str, seeds))}` then `python benchmarks/privacy.py report --write` "
            f"({time.strftime('%Y-%m-%d', time.gmtime())}, commit {commit()}); each run is {train_cmds} "
            "plus the setting's options (shown in each table). "
            f"Machine: {machine()}. Plan: `fsl plan --devices {PROFILE}` (3 clients; each data device holds "
            "only `a_conv`, so what crosses its cut is a 64x14x14 convolution of the image).\n\n"
            "### Quality with and without DP\n\nFID and KID on the digits classifier's features (500 samples "
            f"against the {held} held-out digits), classifier confidence (mean top softmax), at the end of the "
            "run. Epsilon: the range over clients and seeds of the last row of `metrics.jsonl`, and the largest "
            "recomputed from that row's q, SIGMA, steps and delta by Opacus's `compute_rdp` / `get_privacy_spent` "
            "(the Poisson-subsampled Gaussian mechanism), independently of the trainer's accountant.\n\n"
            + md_table(["options", "generator steps", "seeds", "epsilon (metrics.jsonl)",
                        "epsilon (Opacus RDP from q, SIGMA, steps, delta)", "DP parameters", "FID (mean ± sd)",
                        "FID per seed", "KID (mean ± sd)", "confidence (mean ± sd)"], quality)
            + "\n\n" + " ".join(grids)
            + "\n\n### Membership inference on the server's generator (GAN-Leaks)\n\n"
            f"White-box (Chen et al. 2020, Sec. 5.3): reconstruction distance min_z ||G(z) - x|| from "
            f"`checkpoint/server.pt`, {size['restarts']} Adam restarts of {size['steps']} steps from the nearest "
            f"of {size['candidates']} samples, batch norm frozen at the statistics of 1,000 samples; "
            f"{size['queries']} members (client 0's training records) against {size['queries']} held-out digits "
            f"per seed. Full black-box: nearest of {size['black_box_samples']} samples, all of client 0's records "
            f"against all {held} held-out digits. AUC 0.5 is chance.\n\n"
            + md_table(["options", "generator steps", "epsilon", "white-box AUC per seed", "white-box AUC (mean ± sd)",
                        "black-box AUC (mean ± sd)"], mia)
            + "\n\n### Inversion from the first cut\n\n"
            "Decoder (`benchmarks.attacks.decoder_for`: a transposed convolution and a convolution) trained for "
            f"{size['decoder_iters']} Adam steps (batch 64) on "
            f"the {held} held-out digits passed through client 0's final first segment (and the same noise), "
            "then applied to what the segment sends for all of client 0's training images: what the next device "
            "could do if it also knew the segment's weights. SSIM and PSNR on images in [0, 1]. DP-SGD trains "
            "the weights privately but sends each activation as it is, so it is not meant to protect this channel; "
            "the `--cut-noise` rows show what noise at the cut does against this passive attacker, the fsha "
            "section against one who steers the segment.\n\n"
            + md_table(["options", "generator steps", "what crosses the cut", "seeds", "SSIM (mean ± sd)",
                        "PSNR dB (mean ± sd)", "MSE (mean ± sd)"], inv) + "\n\n" + inversion_figure(runs, settings))
    write_section("privacy", "## Privacy: DP against no DP, and the attacks\n\n" + body)


def inversion_figure(runs: list[Path], settings: list[str]) -> str:
    """Client 0's first 8 training images (seed 0) and each setting's reconstructions."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = {}
    for d in runs:
        for s in settings:
            f = d / f"{s}-seed0" / "inversion-examples.pt"
            if f.exists():
                ex = torch.load(f, weights_only=True)
                rows.setdefault("original", ex["original"])
                rows[f"{SETTINGS[s] or 'no DP'} ({d.name})"] = ex["recon"]
    if not rows:
        return ""
    fig, axes = plt.subplots(len(rows), 8, figsize=(8, 1.1 * len(rows)), squeeze=False)
    for r, (name, imgs) in enumerate(rows.items()):
        for i in range(8):
            axes[r][i].imshow(imgs[i, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
            axes[r][i].set_xticks([])
            axes[r][i].set_yticks([])
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("Client 0's training images (seed 0), and what a decoder recovers from its first cut", fontsize=9)
    fig.tight_layout()
    fig.savefig(FIGURES / "privacy-inversion.png", dpi=110)
    plt.close(fig)
    return "![privacy-inversion](benchmarks/figures/privacy-inversion.png)"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["train", "report"])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "dp-sweep"), help="run folder(s), comma-separated")
    ap.add_argument("--settings", default="nodp,eps10,eps3,eps1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=600, help="generator steps per run (train)")
    ap.add_argument("--quick", action="store_true", help="report: tiny attack sizes, to check the script")
    ap.add_argument("--write", action="store_true", help="report: write the section into BENCHMARKS.md")
    args = ap.parse_args(argv)
    settings, seeds = args.settings.split(","), [int(s) for s in args.seeds.split(",")]
    if args.what == "train":
        train(Path(args.runs), settings, seeds, args.steps)
    else:
        report([Path(d) for d in args.runs.split(",")], settings, seeds, QUICK_ATTACK if args.quick else ATTACK,
               quick=args.quick, write=args.write)


if __name__ == "__main__":
    main()
