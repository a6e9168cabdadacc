"""``--adapt``: the plan's cost tables corrected by what each round measured, and a switch
of plans when re-solving on the corrected tables promises a round at least 10% shorter.

After each round, each planned device ``d`` has a measured compute time per step ``c_d``
and the plan's prediction ``p_d``. Its correction is a moving average of the ratio::

    ratio_d <- (1 - ALPHA) * ratio_d + ALPHA * c_d / p_d      (ratio_d = 1 at the start)

``ALPHA = 0.5``: a device that slowed down 4x shows 2.5x after one round and 3.25x after
two, so one noisy round cannot flip a plan alone, and a real change shows within two.
A device the plan does not use keeps ratio 1 (nothing was measured on it). The corrected
tables scale every time row of device ``d`` (compute, and with SPEC §2.1 its recompute,
overhead and codec rows) by ``ratio_d``. Each client is solved again with the exact ILP
on them; the current plan is costed on the same corrected tables, and the run switches
when the new round is at most ``1 - GAIN`` of the current one (``GAIN = 0.10``). The new
plan is written as ``DIR/plan-rNNNN.json`` and the run resumes from the round's
checkpoint on it, each layer's weights and Adam moments moved to their new device
(``trainer.comm.switch``). Under torchrun, whose processes are fixed at launch, only a plan on
the same devices is taken (``same_devices``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from planner import check, client_result, solve_client
from planner.planfile import Plan, PlannedClient, round_time_s
from planner.problem import ClientProblem
from trainer.state import plan_digest

ALPHA = 0.5
GAIN = 0.10


def scaled(p: ClientProblem, ratios: dict[str, float]) -> ClientProblem:
    """``p`` with each named device's time rows (compute, recompute, overhead, codec
    seconds, every ``M``'s) multiplied by its ratio."""
    return p.scaled(tuple(ratios.get(d, 1.0) for d in p.devices))


def client_step_s(c: PlannedClient, p: ClientProblem) -> float:
    """The client's current stages costed on the tables ``p``."""
    return check.step_time_s(p, c.solver_stages(), c.micro_batches)


def _devices(clients) -> set[str]:
    return {s.device for c in clients if c.status == "planned" for s in c.stages}


@dataclass
class Adapter:
    plan: Plan
    ratios: dict[str, float] = field(default_factory=dict)
    same_devices: bool = False  # under torchrun: only a plan on the devices that have a rank

    def observe(self, metrics: dict) -> None:
        for name, d in metrics["devices"].items():
            if d["predicted_compute_s"] > 0 and d["compute_s"] > 0:
                seen = d["compute_s"] / d["predicted_compute_s"]
                self.ratios[name] = (1 - ALPHA) * self.ratios.get(name, 1.0) + ALPHA * seen

    def proposal(self, round_no: int) -> tuple[Plan, dict] | None:
        """A plan to switch to and the record saying why, or None to stay."""
        plan, names = self.plan, [layer["name"] for layer in self.plan.model["layers"]]
        clients, now, new = [], [], []
        for c in plan.clients:
            if c.status != "planned":
                clients.append(c)
                continue
            p = scaled(c.costs, self.ratios)
            sol = solve_client(p, solver="ilp", objective=plan.objective)
            redone = client_result(c.name, p, sol, solver="ilp", objective=plan.objective, data_weight=c.data_weight,
                                   processing_time_factor=c.processing_time_factor, layer_names=names,
                                   time_source=c.time_source)
            if redone.status != "planned":  # the corrected tables exclude it: keep what runs
                redone = replace(c, costs=p, step_time_s=client_step_s(c, p))
            clients.append(redone)
            now.append(client_step_s(c, p) + (p.server_transfer_s or 0.0))
            new.append(redone.step_time_s + (p.server_transfer_s or 0.0))
        current, best = max(now), max(new)
        if best > (1 - GAIN) * current or self.same_devices and _devices(clients) != _devices(plan.clients):
            return None
        digest = plan_digest(plan)
        solver = {**plan.solver, "name": "ilp", "adapted_at_round": round_no, "replanned_from": digest,
                  "lineage": [*plan.solver.get("lineage", []), digest]}
        moved = replace(plan, clients=tuple(clients), round_time_s=round_time_s(clients, plan.server), solver=solver)
        why = {n: round(r, 3) for n, r in sorted(self.ratios.items()) if abs(r - 1) > 0.05}
        record = {"round": round_no, "old_round_s": current, "new_round_s": best,
                  "why": f"measured/predicted compute: {why}" if why else "measured compute as predicted"}
        return moved, record
