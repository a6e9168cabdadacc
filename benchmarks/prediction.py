"""Predictions on profiles nobody tuned for (issue 22): plan, train, compare, per device
and per client, on every profile in ``profiles/`` and on seeded random profiles.

For each profile and each objective (``latency``, ``throughput``) the model is planned on
this machine's tables, then trained: under ``--emulate virtual`` (local backend, every
client of the profile at once; times are the devices' virtual clocks; ``--modes virtual``)
and under ``--emulate sleep --backend dist`` (``--modes sleep``: real processes sleeping to
their devices' speed; each client alone, since 2 cores cannot host several emulated clients at
once without their waiting for a core). The first round is a warm-up; the others' medians
are set against the plan:

- per device: measured compute per step / the plan's stage compute;
- per client: measured step (data device: fake received to fake gradient sent) / the
  plan's ``step_time_s``;
- per profile where the throughput plan picked M > 1: the measured ratio throughput /
  latency against the predicted one.

Random profiles are drawn by :func:`random_profile` from their seed (printed in the
table), so anyone can redraw them.

    python benchmarks/prediction.py [--rounds 3] [--steps 3] [--random 5] [--modes virtual,sleep]
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

import numpy as np  # noqa: E402

from benchmarks.common import ROOT, machine, md_table, median, write_section  # noqa: E402
from planner import plan  # noqa: E402
from planner.devices import parse_profile  # noqa: E402
from planner.host_speed import around  # noqa: E402
from planner.jsonio import read_json  # noqa: E402
from planner.models import build_discriminator  # noqa: E402
from planner.planfile import write_plan  # noqa: E402
from planner.profile_cache import profile_model  # noqa: E402
from trainer import TrainConfig, train  # noqa: E402

OBJECTIVES = ("latency", "throughput")
KINDS = ("phone", "watch", "tablet", "laptop", "tv", "nas", "console")


def random_profile(seed: int) -> dict:
    """A profile drawn from ``seed``: 1-2 clients of 2-5 devices each, speed factors 1-8,
    capacities 256 MB-4 GB, links 20-1000 Mbit/s with 1-20 ms latency."""
    rng = np.random.default_rng(seed)
    clients = []
    for c in range(int(rng.integers(1, 3))):
        n = int(rng.integers(2, 6))
        devices = []
        for i in range(n):
            kind = KINDS[int(rng.integers(len(KINDS)))]
            devices.append({"name": f"r{seed}c{c}-{kind}{i}",
                            "processing_time_factor": round(float(rng.uniform(1.0, 8.0)), 2),
                            "capacity": f"{int(rng.choice([256, 512, 1024, 2048, 4096]))}MB",
                            "bandwidth_mbps": int(rng.choice([20, 50, 100, 300, 1000])),
                            "latency_ms": int(rng.integers(1, 21))})
        devices[int(rng.integers(n))]["holds_data"] = True
        clients.append({"name": f"r{seed}-client{c}", "data_weight": 1.0, "devices": devices})
    return {"schema": "fsl-devices/1", "clients": clients}


def errors(history: list[dict]) -> dict:
    """Per client and per device, median measured / predicted over the timed rounds."""
    timed = history[1:] or history
    clients, devices = {}, {}
    for c in timed[0]["clients"]:
        rows = [h["clients"][c] for h in timed if c in h["clients"]]
        clients[c] = {"measured": median([r["step_time_s"] for r in rows]),
                      "predicted": rows[0]["predicted_step_time_s"]}
    for d, v in timed[0]["devices"].items():
        if v.get("predicted_compute_s", 0) > 0:
            devices[d] = median([h["devices"][d]["compute_s"] / h["devices"][d]["predicted_compute_s"] for h in timed])
    return {"clients": clients, "devices": devices}


def run(p, tmp: Path, tag: str, *, emulate: str, backend: str, rounds: int, steps: int, model, mp) -> dict:
    """The run's errors, and ``slowdown``: this host's speed against the tables', timed just
    before and just after the run (their geometric mean; :mod:`planner.host_speed`)."""
    path = tmp / f"{tag}.json"
    write_plan(p, path)
    cfg = TrainConfig(plan_path=path, out_dir=tmp / tag, rounds=rounds, steps_per_round=steps, emulate=emulate,
                      backend=backend, eval_every=0)
    t0 = time.perf_counter()
    history, host = around(model, mp, lambda: train(cfg))
    wall, out = time.perf_counter() - t0, errors(history)
    for c in out["clients"].values():
        c["slowdown"] = host
    out["devices"] = {d: (r, host) for d, r in out["devices"].items()}
    print(f"  {tag}: {wall:.0f} s wall, host {host:.2f}x the tables' time", flush=True)
    return out


def err(x: float) -> float:
    return abs(x - 1.0)


def pooled(runs: dict) -> tuple[list, list]:
    """Every device's and every client's ``(measured / predicted, host slowdown)``."""
    dev = [v for o in runs for v in runs[o]["devices"].values()]
    cli = [(v["measured"] / v["predicted"], v["slowdown"]) for o in runs for v in runs[o]["clients"].values()]
    return dev, cli


def row(name: str, seed, dev: list, cli: list, ratio: str) -> list:
    """A table row: per device and per client median and worst |error|, raw / host-scaled."""
    def both(values: list[tuple[float, float]], stat) -> str:
        return f"{stat([err(r) for r, _ in values]):.1%} / {stat([err(r / s) for r, s in values]):.1%}"

    slow = sorted(s for _, s in cli)
    return [name, seed if seed is not None else "", f"{slow[0]:.2f}-{slow[-1]:.2f}", len(dev), both(dev, median),
            both(dev, max), len(cli), both(cli, median), both(cli, max), ratio]


def summarise(name: str, seed, runs: dict, plans: dict) -> list:
    """One profile's row (:func:`row`), with its throughput / latency ratios where M > 1."""
    dev, cli = pooled(runs)
    ratio = []
    for c, lat in runs["latency"]["clients"].items():
        thr = runs["throughput"]["clients"][c]
        m = next(x.micro_batches for x in plans["throughput"].planned if x.name == c)
        if m > 1:
            want = thr["predicted"] / lat["predicted"]
            got = thr["measured"] / lat["measured"]
            scaled = got * lat["slowdown"] / thr["slowdown"]
            ratio.append(f"{c}: M={m} {want:.2f} / {got:.2f} / {scaled:.2f}")
    return row(name, seed, dev, cli, "; ".join(ratio) or "M = 1 chosen")


def profiles(n_random: int, first_seed: int) -> list[tuple[str, int | None, dict]]:
    out = [(f"profiles/{p.name}", None, read_json(p, what="device profile"))
           for p in sorted((ROOT / "profiles").glob("*.json"))]
    out += [(f"random #{s}", s, random_profile(s)) for s in range(first_seed, first_seed + n_random)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3, help="per run; the first is a warm-up")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--random", type=int, default=5, help="how many random profiles")
    ap.add_argument("--seed", type=int, default=1000, help="the first random profile's seed")
    ap.add_argument("--modes", default="virtual,sleep",
                    help="virtual (--backend local), sleep (--backend dist), or both; each its own section")
    ap.add_argument("--only", default=None, help="run only profiles whose name contains this")
    ap.add_argument("--section", default="prediction", help="BENCHMARKS.md section to write")
    args = ap.parse_args()
    model = build_discriminator("dcgan")
    mp = profile_model(model)  # this machine's tables (the cache when present, as `fsl plan`)
    modes = [(m, {"virtual": "local", "sleep": "dist"}[m]) for m in args.modes.split(",")]
    rows: dict[str, list] = {m: [] for m, _ in modes}
    every: dict[str, tuple[list, list]] = {m: ([], []) for m, _ in modes}  # all profiles' devices, clients
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, seed, raw in profiles(args.random, args.seed):
            if args.only and args.only not in name:
                continue
            print(name, flush=True)
            devices = parse_profile(raw, source=name)
            plans = {o: plan(model, devices, objective=o, model_profile=mp, devices_file=name, compare=False,
                             measure_micro_batches=True) for o in OBJECTIVES}
            for emulate, backend in modes:
                runs = {o: {"clients": {}, "devices": {}} for o in OBJECTIVES}
                for o in OBJECTIVES:
                    # virtual: the whole profile at once; sleep: each client alone (2 cores)
                    groups = [plans[o]] if emulate == "virtual" else [
                        plan(model, parse_profile({**raw, "clients": [c]}, source=name), objective=o,
                             model_profile=mp, devices_file=name, compare=False, measure_micro_batches=True)
                        for c in raw["clients"] if c["name"] in {x.name for x in plans[o].planned}]
                    for i, p in enumerate(groups):
                        got = run(p, tmp, f"{name.replace('/', '_').replace(' ', '')}-{emulate}-{o}-{i}",
                                  emulate=emulate, backend=backend, rounds=args.rounds, steps=args.steps,
                                  model=model, mp=mp)
                        runs[o]["clients"].update(got["clients"])
                        runs[o]["devices"].update(got["devices"])
                rows[emulate].append(summarise(name, seed, runs, plans))
                for acc, got in zip(every[emulate], pooled(runs)):
                    acc.extend(got)
    header = ["profile", "seed", "host slowdown", "devices", "device median", "device worst", "clients",
              "client median", "client worst", "throughput / latency: predicted / measured / host-scaled (M > 1)"]
    for emulate, backend in modes:
        body = (f"## Predicted against measured: `--emulate {emulate}`\n\nMachine: {machine()}. Command: `python "
                f"benchmarks/prediction.py --rounds {args.rounds} --steps {args.steps} --random {args.random} "
                f"--seed {args.seed} --modes {args.modes}` ({time.perf_counter() - t_all:.0f} s in all). "
                "|measured / predicted - 1| over both objectives; the model (dcgan) planned on this machine's "
                "tables; medians of the rounds after a warm-up round. Each cell: raw / with the prediction "
                "scaled by the host's slowdown (this host's time for the whole discriminator's step, timed "
                "before and after each run, over the tables'; `planner/host_speed.py`).\n"
                f"\n`--emulate {emulate} --backend {backend}`:\n\n"
                + md_table(header, rows[emulate] + [row("**all profiles**", None, *every[emulate], "")]) + "\n")
        print(body)
        write_section(f"{args.section}-{emulate}", body)


if __name__ == "__main__":
    main()
