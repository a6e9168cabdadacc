"""Cut codecs and recomputation (issue 12), printed and written into BENCHMARKS.md.

(a) Communication: ``profiles/edge.json`` planned with ``--codecs none`` and with
    ``--codecs none,fp16,int8``, and a two-device client over a bandwidth sweep (5 to
    500 Mbps), each plan trained under ``--emulate sleep``: predicted and measured step.
(b) What a codec costs in quality: the same three-stage placement with every cut in
    none / fp16 / int8, trained for ``--gan-steps`` generator steps, 3 seeds: FID.
(c) Memory against compute: one stage's discriminator phase (M micro-batches, forward
    all then backward all, as the trainer's data device runs it) with and without recomputation: what
    it holds between its forward and backward passes and its peak, from the profiler's
    memory events, and its time, against the planner's model.

    python benchmarks/options.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

from benchmarks.common import ROOT, machine, md_table, median, write_section  # noqa: E402
from planner import plan  # noqa: E402
from planner.devices import load_profile, parse_profile  # noqa: E402
from planner.models import build_discriminator  # noqa: E402
from planner.planfile import write_plan  # noqa: E402
from planner.profile_cache import profile_model  # noqa: E402
from trainer import TrainConfig, train  # noqa: E402

FIGURES = ROOT / "benchmarks" / "figures"
ALL = ("fp16", "int8")


def pair(bandwidth_mbps: float) -> dict:
    """A phone that holds the data and a laptop, one link of ``bandwidth_mbps``."""
    dev = {"capacity": "2GB", "bandwidth_mbps": bandwidth_mbps, "latency_ms": 2}
    return {"schema": "fsl-devices/1", "clients": [{"name": "pair", "devices": [
        {"name": "phone", "processing_time_factor": 6.0, "holds_data": True, **dev},
        {"name": "laptop", "processing_time_factor": 2.0, **dev}]}]}


def chain3() -> dict:
    """Three devices the model must span (capacities), on slow links: every cut is used."""
    dev = {"bandwidth_mbps": 20, "latency_ms": 2}
    return {"schema": "fsl-devices/1", "clients": [{"name": "chain", "devices": [
        {"name": "cam", "processing_time_factor": 2.0, "capacity": "50MB", "holds_data": True, **dev},
        {"name": "box", "processing_time_factor": 2.0, "capacity": "40MB", **dev},
        {"name": "vm", "processing_time_factor": 1.0, "capacity": "4GB", **dev}]}]}


def trained(p, tmp: Path, tag: str, **cfg) -> list[dict]:
    write_plan(p, tmp / f"{tag}.json")
    print(f"  {tag} ...", flush=True)
    return train(TrainConfig(plan_path=tmp / f"{tag}.json", out_dir=tmp / tag, **cfg))


def step_s(history: list[dict]) -> dict[str, tuple[float, float]]:
    """Per client (predicted, measured median over the timed rounds) step seconds."""
    timed = history[1:] or history
    return {c: (timed[0]["clients"][c]["predicted_step_time_s"],
                median([h["clients"][c]["step_time_s"] for h in timed])) for c in timed[0]["clients"]}


def communication(model, mp, tmp: Path, steps: int, points: int) -> str:
    rows = []
    edge = load_profile(ROOT / "profiles" / "edge.json")
    for label, codecs in (("none", ()), ("none,fp16,int8", ALL)):
        p = plan(model, edge, model_profile=mp, codecs=codecs, compare=False)
        for c, (pred, meas) in step_s(trained(p, tmp, f"edge-{len(codecs)}", rounds=2, steps_per_round=steps,
                                               emulate="sleep", eval_every=0)).items():
            used = sorted({s.codec for s in next(x for x in p.planned if x.name == c).stages} - {"none"})
            rows.append([c, label, ", ".join(used) or "none", pred, meas, f"{(meas - pred) / pred:+.0%}"])
    sweep = {}
    for i in range(points):
        bw = round(5 * 100 ** (i / (points - 1)), 1)  # 5 .. 500 Mbps, log-spaced
        for codecs in ((), ALL):
            p = plan(model, parse_profile(pair(bw)), model_profile=mp, codecs=codecs, compare=False)
            c = p.planned[0]
            (pred, meas), = step_s(trained(p, tmp, f"bw{i}-{len(codecs)}", rounds=2, steps_per_round=steps,
                                           emulate="sleep", eval_every=0)).values()
            sweep[bw, bool(codecs)] = (pred, meas, "/".join(s.codec for s in c.stages[:-1]) or "one stage")
    fig, ax = plt.subplots(figsize=(7, 4))
    bws = sorted({bw for bw, _ in sweep})
    for on, color in ((False, "tab:blue"), (True, "tab:red")):
        name = "codecs allowed" if on else "none"
        ax.plot(bws, [sweep[b, on][0] for b in bws], "--o", color=color, ms=4, label=f"{name}: predicted")
        ax.plot(bws, [sweep[b, on][1] for b in bws], "-s", color=color, ms=4, label=f"{name}: measured")
    ax.set(xscale="log", yscale="log", xlabel="link Mbps", ylabel="step s", title="phone (6x) + laptop (2x), one link")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "codecs-bandwidth.png", dpi=110)
    srows = [[b] + [f"{sweep[b, on][0]:.3f} / {sweep[b, on][1]:.3f} ({sweep[b, on][2]})" for on in (False, True)]
             for b in bws]
    return (md_table(["client", "--codecs", "codecs planned", "predicted step s", "measured", "error"], rows)
            + "\n\nBandwidth sweep (predicted / measured step s, and the cut's codec):\n\n"
            + md_table(["Mbps", "--codecs none", "--codecs none,fp16,int8"], srows)
            + "\n\n![codecs against bandwidth](benchmarks/figures/codecs-bandwidth.png)\n")


def quality(model, mp, tmp: Path, gan_steps: int, seeds: tuple[int, ...]) -> str:
    rows = []
    for codec in ("none", "fp16", "int8"):
        p = plan(model, parse_profile(chain3()), model_profile=mp, codecs=() if codec == "none" else (codec,),
                 compare=False)
        c = p.planned[0]
        cuts = [s.codec for s in c.stages[:-1]]
        assert len(c.stages) >= 2 and all(x == codec for x in cuts), f"{codec}: the plan encodes {cuts}"
        fids = []
        for seed in seeds:
            h = trained(p, tmp, f"q-{codec}-{seed}", rounds=gan_steps // 50, steps_per_round=50, emulate="none",
                        eval_every=gan_steps // 50, seed=seed)
            fids.append(h[-1]["fid"])
        mean = sum(fids) / len(fids)
        spread = (sum((f - mean) ** 2 for f in fids) / max(len(fids) - 1, 1)) ** 0.5
        rows.append([codec, len(cuts), " / ".join(f"{f:.1f}" for f in fids), f"{mean:.1f} ± {spread:.1f}"])
    return md_table(["codec at every cut", "cuts", "FID per seed", "mean ± sd"], rows)


def _allocations(run) -> tuple[int, int]:
    """(bytes allocated during ``run()`` and still alive when its backward passes start,
    the peak of bytes alive), from the profiler's memory events (allocations of each op,
    frees as ``[memory]`` events) in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    points, backward_at = [], None
    for e in prof.events():
        if e.name == "[memory]":
            points.append((e.time_range.start, e.cpu_memory_usage))
        elif e.name == "backward passes":
            backward_at = e.time_range.start
        elif e.self_cpu_memory_usage:
            points.append((e.time_range.start, e.self_cpu_memory_usage))
    live = peak = held = 0
    for t, v in sorted(points):
        if backward_at is not None and t >= backward_at and held == 0:
            held = live
        live += v
        peak = max(peak, live)
    return held, peak


def _phase(seg, x: torch.Tensor, m: int, recompute: bool) -> None:
    """The discriminator phase of one stage as the trainer runs it: M forwards, each
    output kept for its gradient, then M backwards."""
    outs = []
    for part in x.chunk(m):
        part = part.detach().requires_grad_(True)
        outs.append(checkpoint(seg, part, use_reentrant=False) if recompute else seg(part))
    with record_function("backward passes"):
        for out in outs:
            out.backward(torch.ones_like(out))


def memory(model, mp, batch: int, m: int, repeats: int) -> str:
    rows = []
    for a, b in ((0, 3), (3, 6), (6, 9)):  # the conv blocks (conv, LeakyReLU, dropout)
        seg = model.segment(a, b)
        x = torch.randn(2 * batch, *(model.input_shape if a == 0 else mp.layers[a - 1].output_shape))
        _phase(seg, x, m, False)  # warm-up
        measured = {r: _allocations(lambda r=r: _phase(seg, x, m, r)) for r in (False, True)}
        times = {False: [], True: []}
        for _ in range(repeats):  # alternating, so drift hits both alike
            for r in (False, True):
                t0 = time.perf_counter()
                _phase(seg, x, m, r)
                times[r].append(time.perf_counter() - t0)
        saved = sum(mp.layers[i].saved_bytes for i in range(a, b))
        inp = x.numel() * x.element_size()
        out = 2 * mp.layers[b - 1].output_bytes
        (h0, p0), (h1, p1) = measured[False], measured[True]
        rows.append([f"{mp.layers[a].name} → {mp.layers[b - 1].name}", (saved + out) / 1e6, h0 / 1e6,
                     (inp + out) / 1e6, h1 / 1e6, p0 / 1e6, p1 / 1e6, (inp + out + saved / m) / 1e6,
                     f"**{h0 / max(h1, 1):.2f}x / {p0 / max(p1, 1):.2f}x**",
                     f"**{median(times[True]) / median(times[False]):.2f}x**"])
    return (md_table(["stage", "held plain: predicted MB (saved + outputs)", "measured", "held recompute: "
                      "predicted (inputs + outputs)", "measured", "peak plain, measured", "peak recompute, measured",
                      "peak recompute, predicted (+ saved / M)", "less memory: held / peak",
                      "time recompute / plain"], rows)
            + "\n\nHeld: what the stage keeps between its forward passes and its backward passes (the "
              "planner's model counts these); peak: the most alive at any moment, which for recomputation is "
              "reached in a backward pass, when one micro-batch's activations are computed again.\n")


PARTS = {"c": "memory", "a": "communication", "b": "quality"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer points, steps and seeds")
    ap.add_argument("--only", default="c,a,b", help="which parts, comma-separated: c (memory), a (communication), "
                    "b (quality); each writes its own section of BENCHMARKS.md, so a part can be rerun alone")
    args = ap.parse_args()
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if not only or set(only) - set(PARTS):
        ap.error(f"--only: expected some of {','.join(PARTS)}, found {args.only!r}")
    steps, points, gan_steps, seeds, repeats = (1, 3, 100, (0,), 3) if args.quick else (2, 6, 300, (0, 1, 2), 7)
    FIGURES.mkdir(parents=True, exist_ok=True)
    model = build_discriminator("dcgan")
    mp = profile_model(model, use_cache=False)  # this machine, now
    command = f"python benchmarks/options.py{' --quick' if args.quick else ''} --only {{part}}"
    write_section("options", "## Codecs and recomputation (issue 12)\n\nThree parts, each written by its own "
                  "command below (`python benchmarks/options.py` runs all three).")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for part in only:
            t0, load = time.perf_counter(), os.getloadavg()[1]
            print(f"({part}) {PARTS[part]} ...", flush=True)
            if part == "c":
                title = "### (c) Memory against compute (M = 4, batch 64, the discriminator phase of one stage)"
                body = memory(model, mp, 64, 4, repeats)
            elif part == "a":
                title = f"### (a) Communication (`--emulate sleep`, a warm-up round then a round of {steps} steps)"
                body = communication(model, mp, tmp, steps, points)
            else:
                title = (f"### (b) Quality of codecs ({gan_steps} generator steps, seeds {list(seeds)}, FID on the "
                         "held-out split)")
                body = quality(model, mp, tmp, gan_steps, seeds)
            text = (f"{title}\n\nMachine: {machine()}; load average {load:.1f} at the start, "
                    f"{os.getloadavg()[1]:.1f} at the end. Command: `{command.format(part=part)}` "
                    f"({time.perf_counter() - t0:.0f} s).\n\n{body}")
            print(text, flush=True)
            write_section(f"options-{PARTS[part]}", text)


if __name__ == "__main__":
    main()
