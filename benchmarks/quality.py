"""Quality, federated against centralized (issue 15): is a GAN trained by K discriminators
on K shards as good as one trained by one discriminator on all the data, at equal
generator steps? And if not, what closes the gap?

Settings (``benchmarks.common.synthetic_profile(k)`` with one device per client, every
client ``data_weight`` 1; a split discriminator computes the same numbers as a whole one,
``tests/test_trainer.py::test_split_equals_unsplit``, and one device per client saves
this 2-core machine the threads and messages of the cuts):

- ``centralized``: one client holding the whole training pool;
- ``4 IID``, ``8 IID``: the pool split IID over 4 or 8 clients;
- ``4 Dir 0.1``, ``8 Dir 0.1``: split by a Dirichlet(0.1) over labels (``--alpha 0.1``);
- ``4 IID sum``: ``--feedback sum`` (the seed's summed generator loss) over the first 200
  steps, read against ``4 IID`` (``--feedback mean``) of the same seed, which shares its
  initialisation, shards and noise;
- closers: on every 4-client setting whose mean FID misses the target (more than 15 %
  above centralized at the last step), ``--aggregate fedavg`` and ``--aggregate swap``
  every ``period`` steps (a round is one aggregation period). ``--quick`` runs them on
  both 4-client settings, to check that path too.

Every setting trains the same generator for the same number of steps at the same batch
per client, ``--emulate none`` (quality does not depend on timing), with each seed in
0..2. The server scores FID, KID and the class score on 500 samples every 100 steps,
against the held-out split no client trains on (``trainer.quality.evaluation``). The settings
run seed by seed, so a partial study is balanced; each finished run is appended to
``--results`` (JSON lines) and skipped when the script is started again.

    python benchmarks/quality.py [--quick] [--results benchmarks/results/quality.jsonl]

Prints the table and writes it, with ``benchmarks/figures/quality.png``, into the section
``quality`` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

from benchmarks.common import ROOT, machine, md_table, synthetic_profile, write_section  # noqa: E402
from benchmarks.exp_context import save_figure  # noqa: E402  (selects matplotlib's Agg backend)
from planner import plan  # noqa: E402
from planner.devices import parse_profile  # noqa: E402
from planner.models import build_discriminator  # noqa: E402
from planner.planfile import write_plan  # noqa: E402
from planner.profile_cache import profile_model  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.run.train import train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "quality.jsonl"
TARGET = 1.15  # the target: 4 IID within 15% of centralized FID
DEVICE = [{"name": "box", "processing_time_factor": 1.0, "capacity": "2GB", "bandwidth_mbps": 400,
           "latency_ms": 2, "holds_data": True}]  # one device per client: the whole discriminator


@dataclass(frozen=True)
class Setting:
    key: str
    clients: int
    alpha: float | None = None  # Dirichlet alpha; None = IID
    aggregate: str = "none"
    feedback: str = "mean"
    steps: int | None = None  # None: the study's steps
    aggregated: bool = False  # rounds of ``period`` steps (aggregation after each)


BASE = [Setting("centralized", 1), Setting("4 IID", 4), Setting("4 Dir 0.1", 4, 0.1),
        Setting("8 IID", 8), Setting("8 Dir 0.1", 8, 0.1)]
SUM_CHECK = Setting("4 IID sum", 4, feedback="sum", steps=200)
AGGREGATES = ("fedavg", "swap")

FULL = dict(steps=600, eval_every_steps=100, period=20, seeds=(0, 1, 2), batch_size=16, sum_steps=200,
            closers_always=False)
QUICK = dict(steps=20, eval_every_steps=10, period=5, seeds=(0, 1), batch_size=16, sum_steps=10,
             closers_always=True)


def closers(base: Setting) -> list[Setting]:
    return [Setting(f"{base.key} {a}", base.clients, base.alpha, aggregate=a, aggregated=True) for a in AGGREGATES]


def missing_target(records: list[dict], size: dict) -> list[Setting]:
    """The 4-client settings whose mean FID at the last step is more than TARGET x centralized's."""
    def mean_fid(key: str) -> float | None:
        xs = [_at(r, "fid", size["steps"]) for r in records if r["setting"] == key]
        return statistics.mean(xs) if xs else None

    centr = mean_fid("centralized")
    four = [s for s in BASE if s.clients == 4]
    if size["closers_always"]:
        return four
    return [s for s in four if centr and mean_fid(s.key) is not None and mean_fid(s.key) > TARGET * centr]


def run_setting(s: Setting, seed: int, size: dict, tmp: Path, model, model_profile) -> dict:
    """Train ``s`` with ``seed``; the run's record: FID, KID, class score per evaluation."""
    p = plan(model, parse_profile(synthetic_profile(s.clients, devices=DEVICE)), batch_size=size["batch_size"],
             model_profile=model_profile, compare=False)
    out = tmp / f"{s.key.replace(' ', '-')}-s{seed}"
    out.mkdir(parents=True)
    write_plan(p, out / "plan.json")
    steps = size["sum_steps"] if s.steps else size["steps"]
    every = size["eval_every_steps"]
    per_round = size["period"] if s.aggregated else every
    t0 = time.perf_counter()
    hist = train(TrainConfig(plan_path=out / "plan.json", out_dir=out / "run", rounds=steps // per_round,
                             steps_per_round=per_round, emulate="none", aggregate=s.aggregate,
                             feedback=s.feedback, alpha=s.alpha, eval_every=every // per_round, seed=seed))
    evals = [h for h in hist if h.get("fid") is not None]
    return {"setting": s.key, "seed": seed, "batch_size": size["batch_size"], "wall_s": time.perf_counter() - t0,
            "steps": [h["round"] * per_round for h in evals], "fid": [h["fid"] for h in evals],
            "kid": [h["kid"] for h in evals], "class_score": [h["class_score"] for h in evals],
            "g_loss": [h["g_loss"] for h in hist], "config": asdict(s)}


def _load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _spread(xs: list[float], digits: int = 2) -> str:
    """mean ± sample standard deviation [min-max] over seeds."""
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.{digits}f} ± {sd:.{digits}f} [{min(xs):.{digits}f}-{max(xs):.{digits}f}]"


def _at(rec: dict, key: str, step: int) -> float | None:
    return dict(zip(rec["steps"], rec[key])).get(step)


def summarize(records: list[dict], size: dict) -> tuple[str, list[str]]:
    """(the markdown table, lines that answer the issue's target and the sum check)."""
    steps, late = size["steps"], [size["steps"] - 2 * size["eval_every_steps"], size["steps"]]
    by = {}
    for r in records:
        by.setdefault(r["setting"], []).append(r)
    centr = [_at(r, "fid", steps) for r in by.get("centralized", [])]
    rows = []
    for s in BASE + [c for b in BASE for c in closers(b)]:
        rs = by.get(s.key, [])
        if not rs:
            continue
        fid = [_at(r, "fid", steps) for r in rs]
        late_fid = [statistics.mean(f for st, f in zip(r["steps"], r["fid"]) if late[0] <= st <= late[1]) for r in rs]
        ratio = statistics.mean(fid) / statistics.mean(centr) if centr else float("nan")
        rows.append([s.key, s.clients, "IID" if s.alpha is None else f"Dirichlet {s.alpha:g}",
                     s.aggregate if s.aggregate == "none" else f"{s.aggregate} every {size['period']} steps",
                     len(rs), _spread(fid), f"{ratio:.2f}", _spread(late_fid),
                     _spread([_at(r, "class_score", steps) for r in rs]), _spread([_at(r, "kid", steps) for r in rs], 4),
                     f"{statistics.median(r['wall_s'] for r in rs):.0f}"])
    table = md_table(["setting", "clients", "shards", "aggregate", "seeds", f"FID at step {steps}", "FID / centralized",
                      f"FID, mean of steps {late[0]}-{late[1]}", f"class score at step {steps}",
                      f"KID at step {steps}", "s per run (median)"], rows)
    lines = []
    iid = [_at(r, "fid", steps) for r in by.get("4 IID", [])]
    if centr and iid:
        per_seed = {r["seed"]: _at(r, "fid", steps) for r in by["4 IID"]}
        paired = [per_seed[r["seed"]] / _at(r, "fid", steps) for r in by["centralized"] if r["seed"] in per_seed]
        ratio = statistics.mean(iid) / statistics.mean(centr)
        lines.append(f"4 IID against centralized at step {steps}: mean FID {statistics.mean(iid):.2f} against "
                     f"{statistics.mean(centr):.2f}, ratio {ratio:.2f} (target <= {TARGET}: "
                     f"{'met' if ratio <= TARGET else 'missed'}); per seed "
                     + ", ".join(f"{x:.2f}" for x in paired) + ".")
    pairs = {(r["seed"]): r for r in by.get("4 IID", [])}
    for r in by.get(SUM_CHECK.key, []):
        m = pairs.get(r["seed"])
        if m is None:
            continue
        cells = [f"step {st}: FID {f:.2f} (sum) / {_at(m, 'fid', st):.2f} (mean)" for st, f in zip(r["steps"], r["fid"])
                 if _at(m, "fid", st) is not None]
        lines.append(f"--feedback sum against mean, 4 IID, seed {r['seed']}: " + "; ".join(cells) + ".")
    return table, lines


def figure(records: list[dict], size: dict) -> str:
    import matplotlib.pyplot as plt

    keys = {r["setting"] for r in records}
    panels = [(BASE, "centralized against federated")]
    panels += [([BASE[0], b, *closers(b)], f"aggregating {b.key}") for b in BASE if closers(b)[0].key in keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True, squeeze=False)
    axes = axes[0]
    order = BASE + [c for b in BASE for c in closers(b)]
    color = {s.key: f"C{i % 10}" for i, s in enumerate(s for s in order if s.key in keys)}
    for ax, (settings, title) in zip(axes, panels):
        for s in settings:
            rs = [r for r in records if r["setting"] == s.key]
            if not rs:
                continue
            steps = sorted(set.intersection(*(set(r["steps"]) for r in rs)))
            vals = [[_at(r, "fid", st) for r in rs] for st in steps]
            mean = [statistics.mean(v) for v in vals]
            ax.plot(steps, mean, marker="o", color=color[s.key], label=f"{s.key} ({len(rs)} seeds)")
            ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], color=color[s.key], alpha=0.15)
        ax.set(title=title, xlabel="generator steps")
        ax.legend()
    axes[0].set_ylabel("FID, held-out split (lower is better)")
    fig.suptitle(f"mean over seeds, shaded: min-max; batch {size['batch_size']} per client per step", fontsize=9)
    return save_figure(fig, "quality")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script end to end")
    ap.add_argument("--results", type=Path, default=None,
                    help="JSON lines of finished runs, appended to and skipped on a restart "
                         "(default benchmarks/results/quality.jsonl; --quick: runs/quality-quick.jsonl)")
    args = ap.parse_args(argv)
    size = QUICK if args.quick else FULL
    results = args.results or (ROOT / "runs" / "quality-quick.jsonl" if args.quick else RESULTS)
    results.parent.mkdir(parents=True, exist_ok=True)
    records = _load(results)
    done = {(r["setting"], r["seed"]) for r in records}
    load_before, t_all = os.getloadavg(), time.perf_counter()
    model = build_discriminator("dcgan")
    mp = profile_model(model, batch_size=size["batch_size"])
    with tempfile.TemporaryDirectory() as d:
        def study(settings: list[Setting]) -> None:
            for seed in size["seeds"]:
                for s in settings:
                    if (s.key, seed) in done:
                        continue
                    print(f"== {s.key}, seed {seed} ...", flush=True)
                    rec = run_setting(s, seed, size, Path(d), model, mp)
                    print(f"   FID {' / '.join(f'{f:.1f}' for f in rec['fid'])} at steps "
                          f"{' / '.join(map(str, rec['steps']))}; {rec['wall_s']:.0f} s", flush=True)
                    records.append(rec)
                    with results.open("a") as f:
                        f.write(json.dumps(rec) + "\n")

        study(BASE + [SUM_CHECK])
        gaps = missing_target(records, size)
        print(f"== closers on: {', '.join(s.key for s in gaps) or 'none (every 4-client setting meets the target)'}",
              flush=True)
        study([c for b in gaps for c in closers(b)])
    took = time.perf_counter() - t_all
    table, lines = summarize(records, size)
    image = figure(records, size)
    cmd = f"python benchmarks/quality.py{' --quick' if args.quick else ''}"
    body = (f"## Quality: federated against centralized\n\nCommand: `{cmd}` ({took / 60:.0f} min this invocation; "
            f"{sum(r['wall_s'] for r in records) / 60:.0f} min of training in all). Machine: {machine()}; "
            f"shared with other work while it ran (load average {load_before[1]:.1f} when it started, "
            f"{os.getloadavg()[1]:.1f} when it ended).\n\n"
            f"`synthetic_profile(k)` clients, one device each, the digits' training pool (80 %, 1,438 images) "
            f"split over them, batch {size['batch_size']} per client per step, {size['steps']} generator steps, "
            f"`--emulate none`, seeds {', '.join(map(str, size['seeds']))}. FID, KID and class score from 500 "
            f"samples against the held-out 20 % every {size['eval_every_steps']} steps. Cells: mean ± standard "
            "deviation [min-max] over seeds; 'FID / centralized' is the ratio of the means. Aggregation "
            f"(`fedavg`, `swap` every {size['period']} steps) runs on each 4-client setting whose mean FID is more "
            f"than {TARGET - 1:.0%} above centralized"
            f"{' (--quick: on both, to check that path)' if size['closers_always'] else ''}.\n\n"
            + table + "\n\n" + "\n".join(f"- {x}" for x in lines) + f"\n\n{image}\n")
    write_section("quality", body)
    print(body, flush=True)


if __name__ == "__main__":
    main()
