"""Planner against planner (issue 15): HuSCF-GAN's genetic algorithm against the ILP.

Instances: every client of every profile in ``profiles/`` on the measured dcgan profile,
and 20 seeded random fleets of one client each (2..8 devices, ``random_fleet``) on the
32-layer chain of ``benchmarks/planner.py``. Budgets are dropped so every solver gives a
number (as ``benchmarks/planner.py`` does for the baselines); clients that no plan fits
even then are left out.

1. A sweep of GA settings (population x generations), seed 0: median, 90th percentile and
   worst step time GA / ILP, share of instances where the GA matched the ILP, median solve
   seconds. It picks the default (``planner.ga.DEFAULT_*``).
2. The default and the published settings with seeds 1..4: worst ratio, matches, misses.
3. Per instance: ILP step time and solve time, GA / ILP at the default and at the
   published 1000 x 1000, with their solve times.

    python benchmarks/ga.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

import torch  # noqa: E402

from benchmarks.common import ROOT, machine, md_table, median, write_section  # noqa: E402
from benchmarks.planner import deep_chain, random_fleet  # noqa: E402
from planner.costs import planning_units, profile_problems  # noqa: E402
from planner.devices import load_profile, parse_profile  # noqa: E402
from planner.ga import DEFAULT_GENERATIONS, DEFAULT_POPULATION, PUBLISHED, GASettings, solve_ga  # noqa: E402
from planner.ilp import solve_ilp  # noqa: E402
from planner.models import LayeredModel, build_discriminator  # noqa: E402
from planner.problem import ClientProblem  # noqa: E402
from planner.profile_cache import profile_model  # noqa: E402

SWEEP = ((20, 20), (50, 50), (100, 100), (200, 100), (200, 200), (300, 300), (500, 500), (1000, 1000))
RTOL = 1e-6


def instances(n_fleets: int) -> list[tuple[str, ClientProblem]]:
    """(label, budget-free tables) of every profile's clients and the random fleets."""
    out = []
    dcgan = build_discriminator("dcgan")
    units = planning_units(dcgan, profile_model(dcgan, batch_size=64))
    for path in sorted((ROOT / "profiles").glob("*.json")):
        prof = load_profile(path)
        for client, p in zip(prof.clients, profile_problems(prof, units)):
            out.append((f"{path.stem}/{client.name}", replace(p, budget_s=None)))
    chain = LayeredModel.from_module("chain32", deep_chain(), torch.zeros(1, 1, 28, 28))
    units = planning_units(chain, profile_model(chain, batch_size=64))
    for seed in range(n_fleets):
        prof = parse_profile(random_fleet(1, 2 + seed % 7, seed=seed))
        out.append((f"fleet-{seed} ({2 + seed % 7} devices)", replace(profile_problems(prof, units)[0], budget_s=None)))
    return out


def timed_ga(p: ClientProblem, settings: GASettings) -> tuple[float, float]:
    sol = solve_ga(p, settings=settings)
    return sol.step_time_s, sol.seconds


def run(quick: bool) -> str:
    cases = []
    for label, p in instances(5 if quick else 20):
        t0 = time.perf_counter()
        best = solve_ilp(p)
        ilp_s = time.perf_counter() - t0
        if best.status != "optimal":
            print(f"skip {label}: no plan fits even without a budget", flush=True)
            continue
        cases.append((label, p, best.step_time_s, ilp_s))
    sweep = SWEEP[:4] if quick else SWEEP
    results: dict[tuple[int, int], list[tuple[float, float]]] = {}
    rows = []
    for pop, gens in sweep:
        res = results[(pop, gens)] = [timed_ga(p, GASettings(population=pop, generations=gens)) for _, p, _, _ in cases]
        ratios = sorted(step / ilp for (step, _), (_, _, ilp, _) in zip(res, cases) if step < math.inf)
        name = f"{pop} x {gens}" + (" (published)" if (pop, gens) == (PUBLISHED.population, PUBLISHED.generations)
                                    else " (default)" if (pop, gens) == (DEFAULT_POPULATION, DEFAULT_GENERATIONS) else "")
        rows.append([name, f"{median(ratios):.4f}", f"{ratios[int(0.9 * (len(ratios) - 1))]:.4f}", f"{ratios[-1]:.4f}",
                     f"{sum(r <= 1 + RTOL for r in ratios)}/{len(cases)}", len(cases) - len(ratios),
                     f"{median([s for _, s in res]):.3f}", f"{sum(s for _, s in res):.1f}"])
        print(" | ".join(map(str, rows[-1])), flush=True)
    published = results.get((PUBLISHED.population, PUBLISHED.generations))
    for row, res in zip(rows, results.values()):
        row.append(f"{sum(a[0] == b[0] for a, b in zip(res, published))}/{len(cases)}" if published else "not run")
    sweep_table = md_table(["GA population x generations", "median GA / ILP", "90th pct", "worst",
                            "matched the ILP", "GA found no plan", "median solve s", "total solve s",
                            "same step time as 1000 x 1000"], rows)
    seeds = []
    for seed in range(1, 3 if quick else 5):
        row: list = [seed]
        for settings in (GASettings(seed=seed), replace(PUBLISHED, seed=seed)):
            res = [timed_ga(p, settings) for _, p, _, _ in cases]
            ratios = [step / ilp for (step, _), (_, _, ilp, _) in zip(res, cases)]
            row += [f"{max(ratios):.4f}", f"{sum(r <= 1 + RTOL for r in ratios)}/{len(cases)}",
                    sum(r == math.inf for r in ratios), f"{median([s for _, s in res]):.3f}"]
        seeds.append(row)
        print(" | ".join(map(str, seeds[-1])), flush=True)
    seed_table = md_table(["seed", "default: worst GA / ILP", "matched the ILP", "found no plan", "median solve s",
                           "1000 x 1000: worst GA / ILP", "matched the ILP", "found no plan", "median solve s"], seeds)
    ilp_times = [c[3] for c in cases]
    default = results.get((DEFAULT_POPULATION, DEFAULT_GENERATIONS))
    per_instance = []
    for i, (label, _, ilp, ilp_s) in enumerate(cases):
        row = [label, f"{ilp:.4g}", f"{ilp_s:.3f}"]
        for res in (default, published):
            if res is None:
                row += ["not run", ""]
            else:
                row += [f"{res[i][0] / ilp:.4f}" if res[i][0] < math.inf else "no plan", f"{res[i][1]:.3f}"]
        per_instance.append(row)
    instance_table = md_table(["instance", "ILP step s", "ILP solve s",
                               f"GA {DEFAULT_POPULATION}x{DEFAULT_GENERATIONS} / ILP", "solve s",
                               "GA 1000x1000 / ILP", "solve s"], per_instance)
    return (f"Machine: {machine()}. Command: `python benchmarks/ga.py{' --quick' if quick else ''}`. "
            f"{len(cases)} instances (budgets dropped), GA seed 0; the ILP is proven optimal, so GA / ILP >= 1 "
            f"and 1 means the GA matched it. ILP solve time: median {median(ilp_times):.3f} s, "
            f"total {sum(ilp_times):.1f} s.\n\n### GA settings against the ILP\n\n{sweep_table}\n\n"
            f"### Other seeds: the default ({DEFAULT_POPULATION} x {DEFAULT_GENERATIONS}) and the published "
            f"1000 x 1000\n\n{seed_table}\n\n"
            f"### Per instance\n\n{instance_table}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="5 fleets and the 4 smallest settings")
    args = ap.parse_args()
    body = "## Planner against planner: HuSCF-GAN's GA against the ILP\n\n" + run(args.quick)
    print(body)
    write_section("ga", body)


if __name__ == "__main__":
    main()
