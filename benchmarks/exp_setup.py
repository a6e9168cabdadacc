"""What every experiment of ``benchmarks/experiments.py`` needs: the model and its fresh
profile, plans for each solver (with what had to give), a seeded random fleet, and one
training run of a plan.
"""

from __future__ import annotations

import random
from dataclasses import replace

from benchmarks.exp_context import Context
from planner import client_result, plan, solve_client
from planner.devices import parse_profile
from planner.models import SEED_PARTS, build_discriminator
from planner.planfile import Plan, write_plan
from planner.profile_cache import profile_model
from trainer.config import TrainConfig
from trainer.run.train import train

SOLVERS = ("ilp", "fsl-gan", "uniform", "params")
BASELINES = SOLVERS[1:]


def model_and_profile(ctx: Context):
    if "model" not in ctx.cache:
        model = build_discriminator("dcgan")
        ctx.cache["model"] = (model, profile_model(model, batch_size=64, use_cache=False))  # this machine, now
    return ctx.cache["model"]


def make_plan(ctx: Context, prof: dict, solver: str = "ilp") -> Plan:
    model, mp = model_and_profile(ctx)
    return plan(model, parse_profile(prof), solver=solver, model_profile=mp, compare=False)


def without_budget(prof: dict) -> dict:
    return {**{k: v for k, v in prof.items() if k != "budget"},
            "clients": [{k: v for k, v in c.items() if k != "budget"} for c in prof["clients"]]}


def _seed_parts(p: Plan) -> tuple[int, ...]:
    starts = {layer["model_layers"][0]: i for i, layer in enumerate(p.model["layers"])}
    return tuple(starts[x] for x in SEED_PARTS[p.model["name"]] if x in starts)


def solve_by_hand(ilp: Plan, solver: str) -> Plan:
    """``solver`` on each client's tables of ``ilp`` (budget ignored), recorded as ``plan()``
    records a client: its stages, or its exclusion and why."""
    names = [layer["name"] for layer in ilp.model["layers"]]
    clients = []
    for c in ilp.clients:
        p = replace(c.costs, budget_s=None)
        sol = solve_client(p, solver=solver, parts=_seed_parts(ilp))
        clients.append(client_result(c.name, p, sol, solver=solver, objective=ilp.objective,
                                     data_weight=c.data_weight, processing_time_factor=c.processing_time_factor,
                                     layer_names=names))
    planned = [c.step_time_s for c in clients if c.status == "planned"]
    return replace(ilp, solver={**ilp.solver, "name": solver, "status": "heuristic"},
                   round_time_s=max(planned) if planned else None, clients=tuple(clients))


def plans_for(ctx: Context, prof: dict) -> tuple[dict[str, Plan], list[str]]:
    """One plan per solver on the clients the ILP plans within budget, and notes on what
    had to give: clients the ILP excludes, budgets removed, clients a baseline cannot place."""
    notes = []
    ilp = make_plan(ctx, prof)
    out = [c for c in ilp.clients if c.status != "planned"]
    if out:
        notes += [f"{c.name} left out for every solver: the ILP excludes it ({c.reason})" for c in out]
        keep = {c.name for c in ilp.planned}
        prof = {**prof, "clients": [c for c in prof["clients"] if c["name"] in keep]}
        ilp = make_plan(ctx, prof)
    plans = {"ilp": ilp}
    for s in BASELINES:
        try:
            p = make_plan(ctx, prof, s)
            if len(p.planned) == len(ilp.planned):
                plans[s] = p
                continue
        except Exception:  # noqa: BLE001 - a solver that cannot plan within budget or capacity
            pass
        notes.append(f"{s}: budget removed (it cannot plan every client within it)")
        try:
            p = make_plan(ctx, without_budget(prof), s)
            if len(p.planned) < len(ilp.planned):
                raise ValueError("still excludes a client")
        except Exception:  # noqa: BLE001 - capacity: solve the ILP's tables by hand, marking misses
            p = solve_by_hand(make_plan(ctx, without_budget(prof)), s)
            notes += [f"{s}: no plan for {c.name} ({c.reason})" for c in p.clients if c.status != "planned"]
        plans[s] = p
    return plans, notes


def random_fleet(n_clients: int, *, seed: int = 0) -> dict:
    """Seeded heterogeneous clients of 3 devices, kept small enough to run."""
    rng = random.Random(seed)
    clients = []
    for c in range(n_clients):
        devs = [{"name": f"r{c}-d{d}", "processing_time_factor": round(rng.uniform(1, 6), 2),
                 "capacity": rng.choice(["64MB", "128MB", "512MB", "2GB"] if d == 0 else ["32MB", "128MB", "2GB"]),
                 "bandwidth_mbps": rng.choice([50, 100, 300, 1000]), "latency_ms": rng.choice([1, 5, 10]),
                 "holds_data": d == 0} for d in range(3)]
        clients.append({"name": f"rand-{c}", "devices": devs})
    return {"schema": "fsl-devices/1", "clients": clients}


def run_plan(ctx: Context, p: Plan, tag: str, **cfg) -> list[dict]:
    out = ctx.out(tag)
    write_plan(p, out / "plan.json")
    return train(TrainConfig(plan_path=out / "plan.json", out_dir=out / "run", **{"seed": 0, **cfg}))
