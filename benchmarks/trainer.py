"""Trainer benchmarks (issue 3), printed and written into BENCHMARKS.md.

(a) one split training step (emulate none) against the same unsplit model trained in one
    piece with plain PyTorch, medians of alternating repeats, as a ratio;
(b) predicted against measured compute per device and step time per client under
    ``--emulate sleep`` on ``profiles/lab.json``;
(c) FID after N rounds for 1, 2, 4 and 8 clients sharing the same total data, with the
    round time.

    python benchmarks/trainer.py [--quick] [--only a,b,c]

The section written holds only the parts run (``--only a`` rewrites it with (a) alone).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import machine, md_table, median, synthetic_profile, write_section  # noqa: E402
from planner import plan  # noqa: E402
from planner.devices import load_profile, parse_profile  # noqa: E402
from planner.models import Generator, build_discriminator  # noqa: E402
from planner.planfile import write_plan  # noqa: E402
from planner.profile_cache import profile_model  # noqa: E402
from trainer import TrainConfig, train  # noqa: E402
from trainer.data.datasets import load_digits_28  # noqa: E402


def unsplit_step(d, g, opt_d, opt_g, real, z):
    B = real.shape[0]
    fake = g(z)
    out = d(torch.cat([real, fake.detach()])).squeeze(1)
    loss = F.binary_cross_entropy_with_logits(out[:B], torch.ones(B)) + \
        F.binary_cross_entropy_with_logits(out[B:], torch.zeros(B))
    opt_d.zero_grad()
    loss.backward()
    opt_d.step()
    loss_g = F.binary_cross_entropy_with_logits(d(fake).squeeze(1), torch.ones(B))
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()


def bench_overhead(lab_plan, tmp: Path, repeats: int) -> str:
    """(a): the lab plan's first client, split as planned, against one piece. The unsplit
    steps run between the split rounds (from the round hook), so both see the same load."""
    one = replace(lab_plan, clients=tuple(lab_plan.planned[:1]))
    write_plan(one, tmp / "one.json")
    steps = 5
    d, g = build_discriminator("dcgan"), Generator()
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    B = one.batch_size
    real = load_digits_28(np.arange(B)).images
    whole_s = []

    def unsplit_round(_m: dict) -> None:
        t0 = time.perf_counter()
        for _ in range(steps):
            unsplit_step(d, g, opt_d, opt_g, real, torch.randn(B, 100))
        whole_s.append((time.perf_counter() - t0) / steps)

    cfg = TrainConfig(plan_path=tmp / "one.json", out_dir=tmp / "overhead", rounds=repeats + 2, steps_per_round=steps,
                      emulate="none", eval_every=0)
    history = train(cfg, on_round=unsplit_round)
    split_s = [m["round_time_s"] / steps for m in history[2:]]  # the first two are warm-up
    whole_s = whole_s[2:]
    c = one.planned[0]
    stages = " | ".join(f"{s.device} [{s.start}:{s.end})" for s in c.stages)
    rows = [[f"split as planned ({stages})", median(split_s)], ["unsplit, plain PyTorch", median(whole_s)]]
    ratio = median(split_s) / median(whole_s)
    return (md_table(["one training step, batch 64, --emulate none", "median s"], rows)
            + f"\n\nratio split / unsplit: **{ratio:.3f}** (target <= 1.05); medians of {repeats} alternating rounds "
              f"of {steps} steps each, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}.\n")


def bench_prediction(lab_path: Path, tmp: Path, steps: int) -> str:
    """(b): per device predicted vs measured under --emulate sleep on lab.json."""
    cfg = TrainConfig(plan_path=lab_path, out_dir=tmp / "lab-run", rounds=2, steps_per_round=steps,
                      emulate="sleep", eval_every=0)
    m = train(cfg)[-1]  # round 1 is a warm-up: first steps pay one-off costs (allocations, Adam state)
    rows, errs = [], []
    for name, d in m["devices"].items():
        e = (d["compute_s"] - d["predicted_compute_s"]) / d["predicted_compute_s"]
        errs.append(abs(e))
        rows.append([d["client"], name, d["predicted_compute_s"], d["compute_s"], f"{e:+.1%}"])
    crow, cerr = [], []
    for name, c in m["clients"].items():
        own = c["step_time_s"] - c["host_wait_s"]
        e = (own - c["predicted_step_time_s"]) / c["predicted_step_time_s"]
        cerr.append(abs(e))
        crow.append([name, c["predicted_step_time_s"], c["step_time_s"], c["host_wait_s"], own, f"{e:+.1%}"])
    return (md_table(["client", "device", "predicted compute s/step", "measured", "error"], rows)
            + f"\n\nmedian |error| {median(errs):.1%}, worst {max(errs):.1%} (target within 15%).\n\n"
            + md_table(["client", "predicted step s", "measured step s (wall)", "of which waiting for this host's cores",
                        "measured minus that", "error"], crow)
            + f"\n\nstep time (minus host waits): median |error| {median(cerr):.1%}, worst {max(cerr):.1%}; "
              f"round 2 took {m['round_time_s']:.1f} s for {steps} steps, predicted {m['predicted_round_time_s']:.1f} s "
              "(the plan's round leaves out the server's generator step). Nine emulated devices share 2 cores: a "
              "device that must compute while another does waits, which real devices would not; the emulation "
              "takes that wait out of the device's slowdown sleep, and shows here only what it could not hide.\n")


def bench_clients(tmp: Path, rounds: int, steps: int, counts=(1, 2, 4, 8)) -> str:
    """(c): more discriminators on the same total data."""
    model = build_discriminator("dcgan")
    rows = []
    for k in counts:
        p = plan(model, parse_profile(synthetic_profile(k)), compare=False)
        write_plan(p, tmp / f"k{k}.json")
        cfg = TrainConfig(plan_path=tmp / f"k{k}.json", out_dir=tmp / f"k{k}", rounds=rounds, steps_per_round=steps,
                          emulate="none", eval_every=rounds)
        hist = train(cfg)
        last = hist[-1]
        rows.append([k, last["fid"], last["kid"], last["g_loss"], median([h["round_time_s"] for h in hist])])
    return (md_table(["clients", f"FID after {rounds} rounds", "KID", "G loss (last round)", "round s (median, emulate none)"], rows)
            + f"\n\n{rounds} rounds x {steps} steps, batch 64 per client, the digits split IID over the clients, "
              "no aggregation, seed 0.\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats and rounds")
    ap.add_argument("--only", default="a,b,c", help="which parts, comma-separated: a (split against unsplit), "
                                                    "b (predicted against measured), c (number of discriminators)")
    args = ap.parse_args()
    only = {p.strip() for p in args.only.split(",")}
    if not only <= {"a", "b", "c"}:
        ap.error(f"--only {args.only}: expected parts among a, b, c")
    repeats, steps_b, rounds_c, steps_c = (5, 5, 2, 5) if args.quick else (15, 10, 10, 10)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # Profile afresh, twice: the plan's predictions then come from the machine as it is
        # now, and the two profiles show how much this machine's timings drift by themselves.
        model = build_discriminator("dcgan")
        first = profile_model(model, use_cache=False).step_time_s
        prof = profile_model(model, use_cache=False)
        drift = abs(prof.step_time_s - first) / first
        lab = plan(model, load_profile("profiles/lab.json"), devices_file="profiles/lab.json", model_profile=prof)
        write_plan(lab, tmp / "lab.json")
        flags = (" --quick" if args.quick else "") + ("" if only == {"a", "b", "c"} else f" --only {args.only}")
        parts = [f"Machine: {machine()}. Command: `python benchmarks/trainer.py{flags}`. "
                 f"Two fresh profiles of dcgan just before the runs: {first * 1e3:.0f} and {prof.step_time_s * 1e3:.0f} "
                 f"ms per step ({drift:.1%} apart): this machine's own drift.\n"]
        if "a" in only:
            print("(a) split overhead ...", flush=True)
            parts.append("### (a) Split against unsplit\n\n" + bench_overhead(lab, tmp, repeats))
            print(parts[-1], flush=True)
        if "b" in only:
            print("(b) predicted vs measured under --emulate sleep ...", flush=True)
            parts.append("### (b) Predicted against measured, `--emulate sleep`, profiles/lab.json\n\n"
                         + bench_prediction(tmp / "lab.json", tmp, steps_b))
            print(parts[-1], flush=True)
        if "c" in only:
            print("(c) number of clients ...", flush=True)
            parts.append("### (c) Number of discriminators\n\n" + bench_clients(tmp, rounds_c, steps_c))
            print(parts[-1], flush=True)
    write_section("trainer", "## Trainer\n\n" + "\n".join(parts))


if __name__ == "__main__":
    main()
