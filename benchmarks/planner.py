"""Planner benchmarks (issue 2), printed and written into BENCHMARKS.md.

1. ILP and reference-solver time over layers x devices per client x clients (medians),
   on seeded random cost tables (``benchmarks/planner_sweep.py``).
2. The whole ``fsl plan`` for 20 clients of 8 devices on a 32-layer discriminator
   (cold: profiling included; warm: profile cached), every plan checked optimal, under
   ``latency``, ``throughput`` (M from the batch's divisors up to 16: issue 11) and
   ``throughput`` with every option on (codecs fp16 and int8, recomputation; issue 12),
   the last also with M >= 2, where recomputation can lower a stage's peak memory.
3. Each baseline's predicted step time divided by the ILP's, on every profile in
   ``profiles/`` (same cost tables; budget ignored so every solver gives a number).

    python benchmarks/planner.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

from torch import nn  # noqa: E402

from benchmarks.common import ROOT, machine, md_table, median, write_section  # noqa: E402
from planner import plan, solve_client  # noqa: E402
from planner.devices import load_profile  # noqa: E402
from planner.models import LayeredModel, build_discriminator  # noqa: E402

BASELINES = ("fsl-gan", "uniform", "params")


def deep_chain(n_layers: int = 32) -> nn.Sequential:
    """A 32-layer chain: ten conv blocks (conv, LeakyReLU, dropout) + flatten + dense."""
    layers: list[nn.Module] = []
    ch = 1
    for i in range(10):
        out = min(16 * 2 ** (i // 3), 64)
        layers += [nn.Conv2d(ch, out, 3, 2 if i in (2, 5) else 1, 1), nn.LeakyReLU(0.2), nn.Dropout(0.1)]
        ch = out
    layers += [nn.Flatten(), nn.Linear(ch * 7 * 7, 1)]
    assert len(layers) == n_layers
    return nn.Sequential(*layers)


def random_fleet(n_clients: int, n_devices: int, *, seed: int = 0) -> dict:
    rng = random.Random(seed)
    clients = []
    for c in range(n_clients):
        devs = []
        for d in range(n_devices):
            devs.append({"name": f"c{c}-d{d}", "processing_time_factor": round(rng.uniform(1, 12), 2),
                         "capacity": f"{rng.choice([16, 32, 64, 128, 512, 2048])}MB",
                         "bandwidth_mbps": rng.choice([20, 50, 100, 300, 1000]), "latency_ms": rng.choice([1, 5, 20]),
                         "holds_data": d == 0})
        clients.append({"name": f"client-{c}", "devices": devs})
    return {"schema": "fsl-devices/1", "clients": clients}


def bench_sweep(quick: bool) -> str:
    from benchmarks.planner_sweep import sweep

    kw = dict(layers=(8, 16), devices=(2, 4), clients=(1, 20), repeats=1) if quick else dict(repeats=1)
    rows = sweep(**kw)
    header = list(rows[0].keys())
    return md_table(header, [[r[k] for k in header] for r in rows])


FLEET_SETTINGS = (  # (what the row says, plan() keywords, the fsl plan options)
    ("latency", {}, ""),
    ("throughput", {"objective": "throughput"}, "--objective throughput"),
    ("throughput, all options", {"objective": "throughput", "codecs": ("fp16", "int8")},
     "--objective throughput --codecs none,fp16,int8 --recompute auto"),
    ("throughput, all options, M >= 2", {"objective": "throughput", "codecs": ("fp16", "int8"),
                                         "micro_batches": (2, 4, 8, 16)},
     "--objective throughput --codecs none,fp16,int8 --recompute auto --micro-batches 2,4,8,16"),
)


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the CBC runs)."""
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def bench_fleet(tmp: Path) -> str:
    from collections import Counter

    import torch

    from planner.devices import parse_profile
    from planner.planfile import write_plan
    from planner.profile_cache import micro_batch_profile, profile_model

    model = LayeredModel.from_module("chain32", deep_chain(), torch.zeros(1, 1, 28, 28))
    profile = parse_profile(random_fleet(20, 8))
    t0 = time.perf_counter()
    mp = profile_model(model, batch_size=64, use_cache=False)
    prof_s = time.perf_counter() - t0
    # `fsl plan --objective throughput` also measures the model at each M's micro-batch size
    # (planner.profile_cache.micro_batch_profile); timed here, cold, and cached for the plans below
    t0 = time.perf_counter()
    for m in (2, 4, 8, 16):
        micro_batch_profile(model, mp, m, use_cache=True)
    per_m_s = time.perf_counter() - t0
    rows = []
    for label, kw, flags in FLEET_SETTINGS:
        times, cpu = [], []
        for _ in range(3):
            c0, t0 = _cpu_s(), time.perf_counter()
            p = plan(model, profile, model_profile=mp, compare=False, measure_micro_batches=True, **kw)
            write_plan(p, tmp / "plan.json")
            times.append(time.perf_counter() - t0)
            cpu.append(_cpu_s() - c0)
        planned = p.planned
        ms = Counter(c.micro_batches for c in planned)
        rows.append([f"{label} `{flags}`" if flags else label, median(times), median(cpu), prof_s + (per_m_s if kw.get("objective") == "throughput" else 0.0) + median(times),
                     f"{len(planned)}/{len(p.clients)}", ", ".join(sorted({c.solver_status for c in planned})),
                     ", ".join(f"{m}: {k}" for m, k in sorted(ms.items())),
                     sum(any(s.codec != "none" for s in c.stages) for c in planned),
                     sum(any(s.recompute for s in c.stages) for c in planned)])
    header = ["20 clients x 8 devices x 32 layers", "plan + write, s (median of 3)", "its CPU s (with CBC's)",
              "with profiling (cold), s",
              "planned", "statuses", "M chosen (M: clients)", "clients using a codec", "clients recomputing"]
    return (md_table(header, rows)
            + "\n\nCPU seconds are less sensitive to other sessions' load than wall seconds. Clients are solved on "
              "2 threads; CBC runs in child processes, the rest shares one interpreter, so on an idle machine the "
              "wall time lies between half the CPU time and all of it.\n\n"
            + f"Profiling the 32-layer chain once (cold cache, every §2.1 measurement included): {prof_s:.2f} s, "
              f"and at the micro-batch sizes of M = 2, 4, 8, 16 (throughput plans solve each M on its own tables): "
              f"{per_m_s:.2f} s more; "
              f"it is cached per model, batch size, host, torch and threads, so a second `fsl plan` pays only the "
              f"plan column. Measured per micro-batch stage overhead on this host: {mp.overhead_s * 1e3:.3f} ms; "
              f"generator step at batch 64: {mp.generator_step_s * 1e3:.1f} ms. Targets (issues 11, 12): all "
              "optimal, whole `fsl plan` within 10 s.\n")


def bench_baselines() -> str:
    model = build_discriminator("dcgan")
    rows = []
    for path in sorted((ROOT / "profiles").glob("*.json")):
        profile = load_profile(path)
        try:
            p = plan(model, profile, compare=False)
        except Exception:  # noqa: BLE001 - a profile nobody can plan: compare on the budget-free tables
            p = None
        clients = p.clients if p else []
        for c in clients:
            tables = replace(c.costs, budget_s=None)
            best = solve_client(tables, solver="ilp")
            if not best.stages:
                rows.append([path.name, c.name, "no plan (capacity)", *["no plan"] * len(BASELINES)])
                continue
            ratios = []
            for b in BASELINES:
                sol = solve_client(tables, solver=b, parts=(0, 3, 6))
                ratios.append(f"{sol.step_time_s / best.step_time_s:.3f}" if sol.stages else "no plan")
            rows.append([path.name, c.name, best.step_time_s, *ratios])
    return (md_table(["profile", "client", "ILP step s", *[f"{b} / ILP" for b in BASELINES]], rows)
            + "\n\nPredicted step times on the same cost tables, budgets ignored; 'no plan': the baseline finds no "
              "placement within the capacities.\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    parts = [f"Machine: {machine()}. Command: `python benchmarks/planner.py{' --quick' if args.quick else ''}`."]
    with tempfile.TemporaryDirectory() as d:
        print("baselines / ILP on profiles/ ...", flush=True)
        parts.append("### Baselines against the ILP\n\n" + bench_baselines())
        print(parts[-1], flush=True)
        print("20 clients x 8 devices x 32 layers ...", flush=True)
        parts.append("### The whole plan at scale\n\n" + bench_fleet(Path(d)))
        print(parts[-1], flush=True)
        print("solver sweep ...", flush=True)
        parts.append("### Solver time sweep (medians)\n\n" + bench_sweep(args.quick))
        print(parts[-1], flush=True)
    parts[0] += (f" Load average (1 min) {load:.1f} at the start and {os.getloadavg()[0]:.1f} at the end: other "
                 "sessions share this VM's 2 cores, and every time here (profiling included) grows with that load.\n")
    write_section("planner", "## Planner\n\n" + "\n".join(parts))


if __name__ == "__main__":
    main()
