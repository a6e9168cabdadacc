"""Plans (``plan.json``, schema ``fsl-plan/1``): the frozen dataclasses, writing and reading.

A plan carries the cost tables its solver saw (SPEC §2, §2.1), so ``planner.check`` can
re-check it without the model. Reading validates the shape strictly
(:mod:`planner.planschema`: extra fields are allowed, as SPEC lets fields be added) and
then every client's stages, ``M`` and step time against its own tables; a malformed plan
raises :class:`~planner.errors.InputError`. A plan without §2.1's fields reads as §2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from planner import check
from planner.devices import first_error
from planner.errors import InputError
from planner.jsonio import read_json, write_json
from planner.planschema import PlanSchema
from planner.problem import NO_CODEC, ClientProblem, Stage

SCHEMA = "fsl-plan/1"
MAX_PLAN_BYTES = 2**30  # a plan carries ~10 kB of tables per client: 1 GiB holds the most a profile may list (planner.devices.MAX_CLIENTS)
INDENT_UP_TO_CLIENTS = 50  # a plan of more clients is written compact (planner.jsonio.write_json)


@dataclass(frozen=True)
class PlannedStage:
    device: str
    start: int  # first planning unit (layer index in the plan)
    end: int  # one past the last
    compute_s: float  # C_k: this stage's compute per step on its device, from the table its flag selects
    transfer_s: float  # V_k + lat_k: the cut after this stage, 0 for the last
    memory_bytes: int
    recompute: bool = False  # the stage recomputes its activations (costs.recompute's tables)
    codec: str = NO_CODEC  # the encoding of the cut that leaves this stage


@dataclass(frozen=True)
class PlannedClient:
    name: str
    status: str  # planned | excluded
    reason: str | None
    step_time_s: float | None
    stages: tuple[PlannedStage, ...]
    costs: ClientProblem
    data_weight: float = 1.0
    solver_status: str = "optimal"  # optimal | feasible | heuristic | infeasible
    processing_time_factor: dict[str, float] = field(default_factory=dict)
    baselines_step_time_s: dict[str, float | None] = field(default_factory=dict)  # same tables
    micro_batches: int = 1  # M: the step runs as M pipelined micro-batches
    time_source: dict[str, str] = field(default_factory=dict)  # device -> "calibration" | "factor"

    def solver_stages(self) -> list[Stage]:
        index = {d: i for i, d in enumerate(self.costs.devices)}
        return [Stage(index[s.device], s.start, s.end, s.recompute, s.codec) for s in self.stages]

    def steps_by_micro_batches_s(self) -> dict[int, float]:
        """This client's stages' step at each allowed ``M``, each on its own tables."""
        return {m: check.step_time_s(self.costs, self.solver_stages(), m) for m in self.costs.micro_batch_choices}

    def units_s(self) -> list[float]:
        """Per micro-batch seconds of each stage and cut in line order (SPEC §2.1)."""
        return check.units_s(self.costs, self.solver_stages(), self.micro_batches)


def round_time_s(clients: Sequence[PlannedClient], server: dict | None) -> float:
    """SPEC §2.1: the server's step plus the slowest planned client's step and transfer."""
    planned = [c for c in clients if c.status == "planned"]
    g = 0.0 if server is None else server["step_s"]
    return g + max(c.step_time_s + (c.costs.server_transfer_s or 0.0) for c in planned)


@dataclass(frozen=True)
class Plan:
    model: dict  # name, fingerprint, input_shape, layers (planning units)
    batch_size: int
    objective: str
    solver: dict  # name, status, seconds
    devices_file: str | None
    round_time_s: float | None
    clients: tuple[PlannedClient, ...]
    server: dict | None = None  # {"step_s": the generator's own step}, SPEC §2.1

    @property
    def planned(self) -> list[PlannedClient]:
        return [c for c in self.clients if c.status == "planned"]

    def to_json(self) -> dict:
        out = {
            "schema": SCHEMA,
            "model": self.model,
            "batch_size": self.batch_size,
            "objective": self.objective,
            "solver": self.solver,
            "devices_file": self.devices_file,
            "round_time_s": self.round_time_s,
            "clients": [
                {
                    "name": c.name, "status": c.status, "reason": c.reason,
                    "step_time_s": c.step_time_s, "micro_batches": c.micro_batches,
                    "solver_status": c.solver_status, "data_weight": c.data_weight,
                    "processing_time_factor": c.processing_time_factor,
                    "baselines_step_time_s": c.baselines_step_time_s,
                    "stages": [vars(s) for s in c.stages],
                    "costs": c.costs.to_json(),
                    **({"time_source": c.time_source} if c.time_source else {}),
                }
                for c in self.clients
            ],
        }
        if self.server is not None:
            out["server"] = self.server
        return out


def write_plan(plan: Plan, path: str | Path) -> None:
    write_json(path, plan.to_json(), indent=2 if len(plan.clients) <= INDENT_UP_TO_CLIENTS else None)


def _check_client(raw: PlanSchema, c, client: PlannedClient, source: str, where: str) -> None:
    """Every rule SPEC §2.1 sets on a planned client, against its own tables."""
    costs, m = client.costs, client.micro_batches
    if raw.batch_size % m:
        raise InputError(source, f"{where}.micro_batches", f"{m} does not divide batch_size {raw.batch_size}")
    if raw.objective == "latency" and costs.micro_batch_choices != (1,):
        raise InputError(source, f"{where}.costs.micro_batch_choices",
                         f"latency allows only [1], found {list(costs.micro_batch_choices)}")
    problems = check.violations(costs, client.solver_stages(), m)
    if problems:
        raise InputError(source, f"{where}.stages", problems[0])
    recomputed = check.step_time_s(costs, client.solver_stages(), m)
    if c.step_time_s is not None and not math.isclose(c.step_time_s, recomputed, rel_tol=1e-6, abs_tol=1e-9):
        raise InputError(source, f"{where}.step_time_s",
                         f"{c.step_time_s:g} s does not match its own tables ({recomputed:g} s)")
    worse = check.micro_batch_violation(costs, client.solver_stages(), m, costs.choices(raw.objective))
    if worse:  # the re-solve over M, each on its own tables (SPEC §2.1 per_micro_batch)
        raise InputError(source, f"{where}.micro_batches", worse)


def parse_plan(data: Any, *, source: str = "<plan>") -> Plan:
    if not isinstance(data, dict):
        raise InputError(source, None, f"expected a JSON object, found {type(data).__name__}")
    try:
        raw = PlanSchema.model_validate(data)
    except ValidationError as err:
        fld, msg = first_error(err)
        raise InputError(source, fld, msg) from None
    n_layers = len(raw.model.layers)
    clients = []
    for ci, c in enumerate(raw.clients):
        where = f"clients[{ci}]"
        costs = ClientProblem.from_json(c.costs.model_dump())
        if costs.n_layers != n_layers:
            raise InputError(source, f"{where}.costs.compute_s",
                             f"tables have {costs.n_layers} layers, the model has {n_layers}")
        for si, s in enumerate(c.stages):
            if s.device not in costs.devices:
                raise InputError(source, f"{where}.stages[{si}].device", f"unknown device {s.device!r}")
        client = PlannedClient(
            name=c.name, status=c.status, reason=c.reason, step_time_s=c.step_time_s,
            stages=tuple(PlannedStage(**{k: getattr(s, k) for k in PlannedStage.__dataclass_fields__})
                         for s in c.stages),
            costs=costs, data_weight=c.data_weight,
            solver_status=c.solver_status or raw.solver.status,
            processing_time_factor=dict(c.processing_time_factor),
            baselines_step_time_s=dict(c.baselines_step_time_s),
            micro_batches=c.micro_batches,
            time_source=dict(c.time_source),
        )
        if c.status == "planned":
            _check_client(raw, c, client, source, where)
        elif c.stages:
            raise InputError(source, f"{where}.stages", "an excluded client has no stages")
        clients.append(client)
    return Plan(
        model=raw.model.model_dump(), batch_size=raw.batch_size, objective=raw.objective,
        solver=raw.solver.model_dump(), devices_file=raw.devices_file, round_time_s=raw.round_time_s,
        clients=tuple(clients), server=None if raw.server is None else raw.server.model_dump(),
    )


def load_plan(path: str | Path) -> Plan:
    return parse_plan(read_json(path, what="plan", max_bytes=MAX_PLAN_BYTES), source=str(path))
