"""Plans (``plan.json``, schema ``fsl-plan/1``): the frozen dataclasses, writing and reading.

A plan carries the cost tables its solver saw (SPEC §2), so ``planner.check`` can
re-check it without the model. Reading validates the shape strictly (extra fields are
allowed, as SPEC lets fields be added) and then every client's stages against its own
tables; a malformed plan raises :class:`~planner.errors.InputError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

from planner import check
from planner.devices import RESERVED, first_error
from planner.errors import InputError
from planner.jsonio import read_json, write_json
from planner.problem import ClientProblem, Stage

SCHEMA = "fsl-plan/1"
MAX_BATCH = 4096  # samples per batch per client; more is a typo (and would allocate until memory runs out)


@dataclass(frozen=True)
class PlannedStage:
    device: str
    start: int  # first planning unit (layer index in the plan)
    end: int  # one past the last
    compute_s: float  # this stage's compute per step on its device
    transfer_s: float  # the cut after this stage, 0 for the last
    memory_bytes: int
    recompute: bool = False  # SPEC §2.1: the stage recomputes its activations in the backward pass
    codec: str = "none"  # SPEC §2.1: the encoding of the cut leaving this stage


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
    micro_batches: int = 1  # SPEC §2.1: M, the step's micro-batches (pipelined)

    def solver_stages(self) -> list[Stage]:
        index = {d: i for i, d in enumerate(self.costs.devices)}
        return [Stage(index[s.device], s.start, s.end) for s in self.stages]


@dataclass(frozen=True)
class Plan:
    model: dict  # name, fingerprint, input_shape, layers (planning units)
    batch_size: int
    objective: str
    solver: dict  # name, status, seconds
    devices_file: str | None
    round_time_s: float | None
    clients: tuple[PlannedClient, ...]

    @property
    def planned(self) -> list[PlannedClient]:
        return [c for c in self.clients if c.status == "planned"]

    def to_json(self) -> dict:
        return {
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
                    "step_time_s": c.step_time_s, "solver_status": c.solver_status,
                    "data_weight": c.data_weight,
                    "processing_time_factor": c.processing_time_factor,
                    "baselines_step_time_s": c.baselines_step_time_s,
                    "micro_batches": c.micro_batches,
                    "stages": [vars(s) for s in c.stages],
                    "costs": c.costs.to_json(),
                }
                for c in self.clients
            ],
        }


def write_plan(plan: Plan, path: str | Path) -> None:
    write_json(path, plan.to_json())


# -- reading ---------------------------------------------------------------------------

NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Index = Annotated[StrictInt, Field(ge=0)]


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class _Layer(_Loose):
    name: StrictStr
    flops: Annotated[StrictInt, Field(ge=0)]
    param_bytes: Annotated[StrictInt, Field(ge=0)]
    output_bytes: Annotated[StrictInt, Field(ge=0)]


class _Model(_Loose):
    name: StrictStr
    fingerprint: StrictStr
    input_shape: list[Annotated[StrictInt, Field(gt=0)]]
    layers: list[_Layer] = Field(min_length=1)


class _Stage(_Loose):
    device: StrictStr
    start: Index
    end: Index
    compute_s: NonNeg
    transfer_s: NonNeg
    memory_bytes: Annotated[StrictInt, Field(ge=0)]
    recompute: bool = False
    codec: StrictStr = "none"


class _Costs(_Loose):
    devices: list[StrictStr] = Field(min_length=1)
    data_device: StrictStr
    compute_s: list[list[NonNeg]]
    memory_bytes: list[list[Annotated[StrictInt, Field(ge=0)]]]
    capacity_bytes: list[Annotated[StrictInt, Field(gt=0)]]
    cut_bytes: list[Annotated[StrictInt, Field(ge=0)]]
    link_bytes_per_s: list[list[NonNeg]]
    link_latency_s: list[list[NonNeg]]
    budget_s: Pos | None = None

    @model_validator(mode="after")
    def _shapes(self) -> "_Costs":
        n, L = len(self.devices), len(self.compute_s[0]) if self.compute_s else 0
        if len(set(self.devices)) != n:
            raise ValueError("devices has duplicate names")
        if RESERVED in self.devices:
            raise ValueError(f"{RESERVED!r} is reserved for the generator's role, not a device name")
        if self.data_device not in self.devices:
            raise ValueError(f"data_device {self.data_device!r} is not in devices")
        for name, table in (("compute_s", self.compute_s), ("memory_bytes", self.memory_bytes)):
            if len(table) != n or any(len(r) != L for r in table):
                raise ValueError(f"{name} must be {n} rows of {L} layers")
        if len(self.capacity_bytes) != n:
            raise ValueError(f"capacity_bytes must have {n} entries, found {len(self.capacity_bytes)}")
        if len(self.cut_bytes) != max(L - 1, 0):
            raise ValueError(f"cut_bytes must have {L - 1} entries, found {len(self.cut_bytes)}")
        for name, table in (("link_bytes_per_s", self.link_bytes_per_s), ("link_latency_s", self.link_latency_s)):
            if len(table) != n or any(len(r) != n for r in table):
                raise ValueError(f"{name} must be {n}x{n}")
        if any(self.link_bytes_per_s[a][b] <= 0 for a in range(n) for b in range(n) if a != b):
            raise ValueError("link_bytes_per_s must be > 0 between different devices")
        return self


class _Client(_Loose):
    name: StrictStr
    status: Literal["planned", "excluded"]
    reason: StrictStr | None = None
    step_time_s: NonNeg | None = None
    stages: list[_Stage]
    costs: _Costs
    data_weight: Pos = 1.0
    solver_status: StrictStr | None = None
    processing_time_factor: dict[StrictStr, Pos] = Field(default_factory=dict)
    baselines_step_time_s: dict[StrictStr, NonNeg | None] = Field(default_factory=dict)
    micro_batches: Annotated[StrictInt, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _status(self) -> "_Client":
        if self.status == "planned" and self.step_time_s is None:
            raise ValueError("a planned client needs step_time_s")
        if self.status == "excluded" and not self.reason:
            raise ValueError("an excluded client needs a reason")
        return self


class _Solver(_Loose):
    name: StrictStr
    status: StrictStr
    seconds: NonNeg


class _Plan(_Loose):
    schema_: Literal["fsl-plan/1"] = Field(alias="schema")
    model: _Model
    batch_size: Annotated[StrictInt, Field(gt=0, le=MAX_BATCH)]
    objective: Literal["latency", "throughput"]
    solver: _Solver
    devices_file: StrictStr | None = None
    round_time_s: NonNeg | None = None
    clients: list[_Client] = Field(min_length=1)

    @model_validator(mode="after")
    def _planned(self) -> "_Plan":
        if not any(c.status == "planned" for c in self.clients):
            raise ValueError("no client is planned")
        if self.round_time_s is None:
            raise ValueError("round_time_s is missing, expected the slowest planned client's step time")
        return self


def parse_plan(data: Any, *, source: str = "<plan>") -> Plan:
    if not isinstance(data, dict):
        raise InputError(source, None, f"expected a JSON object, found {type(data).__name__}")
    try:
        raw = _Plan.model_validate(data)
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
            baselines_step_time_s=dict(c.baselines_step_time_s), micro_batches=c.micro_batches,
        )
        if raw.batch_size % c.micro_batches:
            raise InputError(source, f"{where}.micro_batches",
                             f"{c.micro_batches} does not divide batch_size {raw.batch_size}")
        if c.status == "planned":
            problems = check.violations(costs, client.solver_stages(), raw.objective)
            if problems:
                raise InputError(source, f"{where}.stages", problems[0])
            recomputed = check.step_time_s(costs, client.solver_stages(), raw.objective)
            if c.step_time_s is not None and not math.isclose(c.step_time_s, recomputed, rel_tol=1e-6, abs_tol=1e-9):
                raise InputError(source, f"{where}.step_time_s",
                                 f"{c.step_time_s:g} s does not match its own tables ({recomputed:g} s)")
        elif c.stages:
            raise InputError(source, f"{where}.stages", "an excluded client has no stages")
        clients.append(client)
    return Plan(
        model=raw.model.model_dump(), batch_size=raw.batch_size, objective=raw.objective,
        solver=raw.solver.model_dump(), devices_file=raw.devices_file, round_time_s=raw.round_time_s,
        clients=tuple(clients),
    )


def load_plan(path: str | Path) -> Plan:
    return parse_plan(read_json(path, what="plan"), source=str(path))
