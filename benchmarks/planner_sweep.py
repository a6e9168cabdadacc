"""Planner timing sweep: the exact ILP (and the bitmask DP where practical) on seeded
random clients, by layers x devices x clients.

Each cell draws ``clients`` random :class:`ClientProblem` tables (seeded by the cell and
the client index, so cells are comparable across runs), solves every client with
:func:`planner.ilp.solve_ilp` and :func:`planner.reference.solve_reference`, and reports
the median over ``repeats`` of the total wall time over the clients. The reference DP is
skipped above ``reference_limit_devices`` (its table has ``2^n * n * (L+1)`` entries), and
the row says so. Rows also carry how many clients were feasible and the largest relative
step-time difference between the two solvers (0 when they agree).

    python -m benchmarks.planner_sweep --layers 8 32 --devices 4 8 --clients 1 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np

from planner.ilp import solve_ilp
from planner.problem import ClientProblem, Objective, Solution
from planner.reference import solve_reference


def random_client(n_devices: int, n_layers: int, seed: int) -> ClientProblem:
    """Seeded tables in the shape of a real client: speed factors 0.5-8 (SPEC §1's
    ``processing_time_factor``), capacities that each hold 5-60 % of the model, links of
    1-100 MB/s and 1-20 ms (a pair uses the smaller bandwidth, the larger latency)."""
    rng = np.random.default_rng(seed)
    base_s = rng.uniform(0.01, 0.2, n_layers)
    speed = rng.uniform(0.5, 8.0, n_devices)
    compute = base_s[None, :] * speed[:, None] * rng.uniform(0.9, 1.1, (n_devices, n_layers))
    layer_bytes = rng.integers(1_000, 100_000, n_layers)
    capacity = (layer_bytes.sum() * rng.uniform(0.05, 0.6, n_devices)).astype(int)
    capacity[rng.integers(n_devices)] = layer_bytes.sum()  # some device could hold it all
    bw = rng.uniform(1e6, 1e8, n_devices)
    lat = rng.uniform(0.001, 0.02, n_devices)
    pair = range(n_devices)
    return ClientProblem(
        devices=tuple(f"dev{d}" for d in pair),
        data_device=int(rng.integers(n_devices)),
        compute_s=tuple(tuple(float(v) for v in row) for row in compute),
        memory_bytes=tuple(tuple(int(v) for v in layer_bytes) for _ in pair),
        capacity_bytes=tuple(int(c) for c in capacity),
        cut_bytes=tuple(int(v) for v in rng.integers(1_000, 2_000_000, n_layers - 1)),
        link_bytes_per_s=tuple(tuple(0.0 if a == b else float(min(bw[a], bw[b])) for b in pair) for a in pair),
        link_latency_s=tuple(tuple(0.0 if a == b else float(max(lat[a], lat[b])) for b in pair) for a in pair),
    )


def _time_all(solve, problems: Sequence[ClientProblem], repeats: int) -> tuple[float, list[Solution]]:
    """Median over ``repeats`` of the total seconds to solve every problem; last solutions."""
    totals, sols = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sols = [solve(p) for p in problems]
        totals.append(time.perf_counter() - t0)
    return statistics.median(totals), sols


def sweep(
    layers: Sequence[int] = (8, 16, 32, 64),
    devices: Sequence[int] = (2, 4, 8, 12),
    clients: Sequence[int] = (1, 20, 100),
    repeats: int = 3,
    reference_limit_devices: int = 8,
    *,
    objective: Objective = "latency",
) -> list[dict]:
    """One row per (layers, devices, clients) cell; times are medians over ``repeats``."""
    rows = []
    for n_layers in layers:
        for n_devices in devices:
            for n_clients in clients:
                problems = [
                    random_client(n_devices, n_layers, seed=n_layers * 10**6 + n_devices * 10**4 + i)
                    for i in range(n_clients)
                ]
                ilp_s, ilp = _time_all(lambda p: solve_ilp(p, objective=objective), problems, repeats)
                row = {
                    "layers": n_layers, "devices": n_devices, "clients": n_clients,
                    "objective": objective, "repeats": repeats,
                    "ilp_total_s": ilp_s, "ilp_per_client_s": ilp_s / n_clients,
                    "ilp_optimal": sum(s.status == "optimal" for s in ilp),
                    "feasible_clients": sum(s.status != "infeasible" for s in ilp),
                    "reference_total_s": None, "reference_skipped": None, "max_rel_diff": None,
                }
                if n_devices > reference_limit_devices:
                    row["reference_skipped"] = (
                        f"{n_devices} devices > reference_limit_devices={reference_limit_devices}: "
                        f"the DP visits 2^{n_devices} device sets"
                    )
                else:
                    ref_s, ref = _time_all(lambda p: solve_reference(p, objective=objective), problems, repeats)
                    row["reference_total_s"] = ref_s
                    row["max_rel_diff"] = max(
                        (abs(a.step_time_s - b.step_time_s) / b.step_time_s
                         for a, b in zip(ilp, ref) if b.status == "optimal"),
                        default=0.0,
                    )
                rows.append(row)
    return rows


def _format(rows: list[dict]) -> str:
    lines = [
        f"{'layers':>6} {'devices':>7} {'clients':>7} {'ilp total s':>11} {'ilp/client s':>12} "
        f"{'ref total s':>11} {'feasible':>8} {'max diff':>9}"
    ]
    for r in rows:
        ref = "skipped" if r["reference_total_s"] is None else f"{r['reference_total_s']:.3f}"
        diff = "-" if r["max_rel_diff"] is None else f"{r['max_rel_diff']:.1e}"
        lines.append(
            f"{r['layers']:>6} {r['devices']:>7} {r['clients']:>7} {r['ilp_total_s']:>11.3f} "
            f"{r['ilp_per_client_s']:>12.4f} {ref:>11} {r['feasible_clients']:>8} {diff:>9}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--devices", type=int, nargs="+", default=[2, 4, 8, 12])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 20, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-limit-devices", type=int, default=8)
    parser.add_argument("--objective", choices=("latency", "throughput"), default="latency")
    args = parser.parse_args()
    print(_format(sweep(args.layers, args.devices, args.clients, args.repeats,
                        args.reference_limit_devices, objective=args.objective)))
