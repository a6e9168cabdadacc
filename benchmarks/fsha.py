"""Feature-space hijacking (FSHA) against a data device's first segment, with and without
``--cut-noise``; written into BENCHMARKS.md (section ``fsha``).

    python benchmarks/fsha.py [--quick] [--iters N] [--noises 0,0.1,0.5,1] [--seeds 0,1]

Pasquini, Ateniese, Bernaschi, "Unleashing the Tiger: Inference Attacks on Split
Learning", CCS 2021, Sec. 3 / Alg. 1. The next device (or the server) is malicious: instead
of the honest gradient of the discriminator's loss it sends back, for the activations the
data device sent, the gradient that makes them look, to the attacker's own critic ``D``,
like the features of the attacker's pilot encoder ``f~``. The attacker trains ``f~`` with a
decoder ``f~^-1`` as an autoencoder on auxiliary images (here the held-out digits, which no
client trains on: disjoint from the victim's shard), so once the victim's segment ``f``
maps into ``f~``'s feature space, ``f~^-1(what crosses the cut)`` reconstructs the
victim's private images. ``D`` is a WGAN-GP critic (gradient penalty 500, as the paper).

This is a **simulation in one process**, not an ``fsl train`` run: the victim is the
project's real first segment (``planner.models`` discriminator, cut where the plan of
``profiles/lab.json`` cuts client 0, DCGAN initialisation, the trainer's Adam with lr 2e-4
and betas (0.5, 0.999)) on client 0's shard, and the noise is the data device's own
``trainer.privacy.options.Privacy.activation`` (its backward is the identity: the malicious
gradient reaches the clean activation, as in ``trainer.roles.device``). The attacker knows the
noise level (it is a run option) and trains its autoencoder and critic through the same
noise: the strongest attacker of this kind. Reported: SSIM of the decoded private images
over the victim's iterations (``benchmarks.attacks.ssim``).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.attacks import decoder_for, reconstruction_scores  # noqa: E402
from benchmarks.common import commit, machine, md_table, write_section  # noqa: E402
from planner.models import build_discriminator, dcgan_init  # noqa: E402
from trainer.privacy.options import Privacy, SecureRandom  # noqa: E402

BATCH = 32
WARMUP = 200  # autoencoder steps on the auxiliary images before the victim's first step
VICTIM_LR, BETAS = 2e-4, (0.5, 0.999)  # trainer.config / trainer.roles.build
ATTACK_LR, CRITIC_LR, GP = 1e-3, 1e-4, 500.0


def critic(shape: tuple[int, ...]) -> nn.Module:
    """The attacker's critic on the cut's feature space."""
    if len(shape) == 1:
        return nn.Sequential(nn.Linear(shape[0], 256), nn.LeakyReLU(0.2), nn.Linear(256, 1))
    return nn.Sequential(nn.Conv2d(shape[0], 32, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(32, 64, 3, 2, 1),
                         nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(256, 1))


def gradient_penalty(d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): (||grad D(mix)|| - 1)^2 at random interpolates."""
    eps = torch.rand(len(real), *([1] * (real.dim() - 1)))
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(d(mix).sum(), mix, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def hijack(victim: nn.Module, private: torch.Tensor, aux: torch.Tensor, *, iters: int, cut_noise: float,
           seed: int, eval_every: int, probe: int = 256) -> list[tuple[int, float, float]]:
    """Run FSHA for ``iters`` victim steps; every ``eval_every`` steps (and at 0), the
    (iteration, SSIM, PSNR) of ``f~^-1(what f sends)`` on the first ``probe`` private images."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    # the trainer's noise stream is keyed by the OS; this simulation keys it by the seed to be repeatable
    privacy = Privacy(cut_noise=cut_noise, random=SecureRandom(key=(seed + 1).to_bytes(32, "little")))
    pilot = dcgan_init(copy.deepcopy(victim))  # same architecture as the victim's segment, its own weights
    with torch.no_grad():
        shape = tuple(victim(private[:1]).shape[1:])
    decoder = decoder_for(shape)
    d = critic(shape)
    opt_v = torch.optim.Adam(victim.parameters(), lr=VICTIM_LR, betas=BETAS)
    opt_ae = torch.optim.Adam([*pilot.parameters(), *decoder.parameters()], lr=ATTACK_LR)
    opt_d = torch.optim.Adam(d.parameters(), lr=CRITIC_LR, betas=(0.5, 0.9))
    targets = private[:probe]
    curve = []

    def measure(i: int) -> None:
        with torch.no_grad():
            recon = decoder(privacy.activation(victim(targets)))
        _, s, p = reconstruction_scores(targets, recon)
        curve.append((i, s, p))

    def autoencoder_step(x_aux: torch.Tensor) -> None:  # through the same noise, straight through it
        feats = pilot(x_aux)
        loss = (decoder(privacy.activation(feats) + (feats - feats.detach())) - x_aux).pow(2).mean()
        opt_ae.zero_grad()
        loss.backward()
        opt_ae.step()

    for _ in range(WARMUP):  # offline, on the attacker's own images
        autoencoder_step(aux[torch.randint(len(aux), (BATCH,), generator=g)])
    measure(0)
    for i in range(1, iters + 1):
        x_priv = private[torch.randint(len(private), (BATCH,), generator=g)]
        x_aux = aux[torch.randint(len(aux), (BATCH,), generator=g)]
        # the data device's forward: what crosses the cut
        act = victim(x_priv)
        sent = privacy.activation(act).detach().requires_grad_(True)
        autoencoder_step(x_aux)
        # the critic: pilot features are "real", the victim's are "fake"
        real = privacy.activation(pilot(x_aux)).detach()
        d_loss = d(sent.detach()).mean() - d(real).mean() + GP * gradient_penalty(d, real, sent.detach())
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        # the malicious gradient the data device receives in place of the honest one
        malicious, = torch.autograd.grad(-d(sent).mean(), sent)
        opt_v.zero_grad()
        act.backward(malicious)
        opt_v.step()
        if i % eval_every == 0 or i == iters:
            measure(i)
    return curve


def first_cut_victim(plan_path: Path | None, seed: int) -> tuple[nn.Module, str]:
    """Client 0's first segment as the plan cuts it (fresh DCGAN weights of ``seed``), in
    training mode as the trainer runs it; and a label naming its layers."""
    torch.manual_seed(seed)
    model = build_discriminator("dcgan")
    end = 1
    if plan_path is not None:
        from planner.planfile import load_plan
        p = load_plan(plan_path)
        last = p.planned[0].stages[0].end - 1
        end = p.model["layers"][last].get("model_layers", [last, last + 1])[1]
    names = model.layer_names[:end]
    return model.segment(0, end).train(), " -> ".join(names)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script end to end")
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--noises", default="0,0.1,0.5,1")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--plan", type=Path, default=None, help="a plan.json whose client 0 sets the cut")
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.iters, args.eval_every, args.noises, args.seeds = 4, 2, "0,0.5", "0"
    from trainer.data.datasets import DataSource
    src = DataSource("digits")
    import json
    weights = [c["data_weight"] for c in json.loads(args.plan.read_text())["clients"]] if args.plan else [1.0, 1.0]
    private = src.client_data(weights, 0, "victim").images
    aux = src.held_out().images
    noises = [float(x) for x in args.noises.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    t0 = time.perf_counter()
    curves: dict[float, list[list[tuple[int, float, float]]]] = {}
    label = ""
    for sc in noises:
        for seed in seeds:
            victim, label = first_cut_victim(args.plan, seed)
            curve = hijack(victim, private, aux, iters=args.iters, cut_noise=sc, seed=seed,
                           eval_every=args.eval_every)
            curves.setdefault(sc, []).append(curve)
            print(f"cut-noise {sc:g} seed {seed}: SSIM " + " ".join(f"{i}:{s:.3f}" for i, s, _ in curve),
                  flush=True)
    minutes = (time.perf_counter() - t0) / 60
    if args.write:
        write(args, curves, label, private, aux, minutes)


def write(args, curves, label: str, private: torch.Tensor, aux: torch.Tensor, minutes: float) -> None:
    marks = sorted({i for cs in curves.values() for i, _, _ in cs[0]})
    shown = sorted({min(marks, key=lambda m: abs(m - f * args.iters)) for f in (0, 0.2, 0.33, 0.67, 1)})
    rows = []
    for sc, cs in curves.items():
        at = {m: [dict((i, s) for i, s, _ in c)[m] for c in cs] for m in shown}
        psnr = [c[-1][2] for c in cs]
        rows.append([f"{sc:g}" if sc else "0 (none)"]
                    + [f"{statistics.mean(at[m]):.3f}" for m in shown]
                    + [" / ".join(f"{s:.3f}" for s in at[shown[-1]]), f"{statistics.mean(psnr):.1f}"])
    baseline = reconstruction_scores(private[:256], aux.mean(0, keepdim=True).expand_as(private[:256]))
    seeds = len(next(iter(curves.values())))
    cmd = "python benchmarks/fsha.py --write" + "".join(
        f" {k} {v}" for k, v in (("--iters", args.iters), ("--eval-every", args.eval_every),
                                 ("--noises", args.noises), ("--seeds", args.seeds),
                                 ("--plan", args.plan)) if v is not None)
    body = (f"Command: `{cmd}` ({minutes:.0f} min, {time.strftime('%Y-%m-%d', time.gmtime())}, commit {commit()}). "
            f"Machine: {machine()}.\n\n"
            "**Simulation in one process** (`benchmarks/fsha.py`), not an `fsl train` run: the victim is the "
            f"project's first segment as the plan cuts client 0 ({label}, fresh DCGAN weights, the trainer's Adam "
            f"lr {VICTIM_LR:g}) training on client 0's shard ({len(private)} digits); the cut noise is the data "
            "device's `Privacy.activation`. The attacker's autoencoder and critic train on the "
            f"{len(aux)} held-out digits (disjoint from the shard) through the same noise; critic WGAN-GP "
            f"(penalty {GP:g}), batch {BATCH}, the autoencoder first trained alone for {WARMUP} steps. SSIM of "
            "`f~^-1(what crosses the cut)` against the private images "
            f"(first 256 of the shard), mean over {seeds} seed(s), by victim iteration; guessing the mean "
            f"held-out image scores SSIM {baseline[1]:.3f}.\n\n"
            + md_table(["--cut-noise"] + [f"SSIM @ {m}" for m in shown] + ["SSIM @ end per seed", "PSNR dB @ end"],
                       rows))
    write_section("fsha", "## Feature-space hijacking (FSHA)\n\n" + body)


if __name__ == "__main__":
    main()
