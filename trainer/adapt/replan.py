"""Re-planning when a device is lost: the plan without it, from the plan's own tables.

The plan carries every client's cost tables (SPEC §2), so the lost device's row and
column are dropped and the client is solved again with the exact ILP; no profiling, no
device file needed. A client whose data device is lost is excluded: its data cannot move.
Training then resumes from the last checkpoint (``trainer.state`` accepts a plan whose
``solver.lineage`` names the checkpoint's plan).
"""

from __future__ import annotations

from dataclasses import replace

from planner import client_result
from planner.errors import NoFeasiblePlan
from planner.ilp import solve_ilp
from planner.planfile import Plan, PlannedClient, round_time_s


def _replan_client(plan: Plan, c: PlannedClient, device: str, round_no: int) -> PlannedClient:
    idx = c.costs.devices.index(device)
    ptf = {k: v for k, v in c.processing_time_factor.items() if k != device}
    if idx == c.costs.data_device:
        return replace(c, status="excluded", stages=(), step_time_s=None, processing_time_factor=ptf,
                       reason=f"its data device {device} failed in round {round_no}; the data cannot move")
    p = c.costs.without_device(idx)
    sol = solve_ilp(p, objective=plan.objective)
    names = [layer["name"] for layer in plan.model["layers"]]
    out = client_result(c.name, p, sol, solver="ilp", objective=plan.objective, data_weight=c.data_weight,
                        processing_time_factor=ptf, layer_names=names,
                        time_source={k: v for k, v in c.time_source.items() if k != device})
    if out.status == "excluded":
        out = replace(out, reason=f"{device} failed in round {round_no}; without it: {out.reason}")
    return out


def without_device(plan: Plan, device: str, *, round_no: int, digest: str) -> Plan:
    """``plan`` with ``device`` gone; ``digest`` identifies ``plan`` for the checkpoint."""
    owners = [c for c in plan.planned if device in {s.device for s in c.stages}]
    if not owners:
        raise ValueError(f"{device} runs no stage of this plan")
    clients = tuple(_replan_client(plan, c, device, round_no) if c is owners[0] else c for c in plan.clients)
    planned = [c for c in clients if c.status == "planned"]
    if not planned:
        raise NoFeasiblePlan({c.name: c.reason or "" for c in clients})
    solver = {**plan.solver, "replanned_from": digest, "lineage": [*plan.solver.get("lineage", []), digest],
              "lost": [*plan.solver.get("lost", []), device]}
    return replace(plan, clients=clients, round_time_s=round_time_s(clients, plan.server), solver=solver)
