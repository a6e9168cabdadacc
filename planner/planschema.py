"""The strict shape of ``plan.json`` (schema ``fsl-plan/1``, SPEC §2 and §2.1), as pydantic models.

Fields SPEC does not name are allowed (SPEC lets fields be added); the ones it names
are checked for type, range and shape. :mod:`planner.planfile` turns a validated plan
into its dataclasses and re-checks every client against its own tables.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from planner.devices import RESERVED

MAX_BATCH = 4096  # samples per batch per client; more is a typo (and would allocate until memory runs out)

NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Index = Annotated[StrictInt, Field(ge=0)]
Bytes = Annotated[StrictInt, Field(ge=0)]


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class _Layer(_Loose):
    name: StrictStr
    flops: Bytes
    param_bytes: Bytes
    output_bytes: Bytes


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
    memory_bytes: Bytes
    recompute: StrictBool = False
    codec: StrictStr = "none"


class _Recompute(_Loose):
    compute_s: list[list[NonNeg]]
    memory_bytes: list[list[Bytes]]


class _Codec(_Loose):
    bytes_ratio: Pos
    codec_s: list[list[NonNeg]]


def _check_table(name: str, table: list, rows: int, cols: int) -> None:
    if len(table) != rows or any(len(r) != cols for r in table):
        raise ValueError(f"{name} must be {rows} rows of {cols}")


class _Times(_Loose):
    compute_s: list[list[NonNeg]]


class _CodecTimes(_Loose):
    codec_s: list[list[NonNeg]]


class _MicroBatch(_Loose):
    """One ``M``'s tables in ``per_micro_batch``; each field present replaces the base one."""

    compute_s: list[list[NonNeg]] | None = None
    overhead_s: list[NonNeg] | None = None
    recompute: _Times | None = None
    codecs: dict[StrictStr, _CodecTimes] = Field(default_factory=dict)


def _check_micro_batches(costs: "Costs", n: int, L: int) -> None:
    """``per_micro_batch``: keys among ``micro_batch_choices``, tables of the base's shapes."""
    for key, t in costs.per_micro_batch.items():
        where = f"per_micro_batch.{key}"
        if not key.isdigit() or int(key) not in costs.micro_batch_choices:
            raise ValueError(f"{where}: {key!r} is not one of micro_batch_choices {costs.micro_batch_choices}")
        if t.compute_s is not None:
            _check_table(f"{where}.compute_s", t.compute_s, n, L)
        if t.overhead_s is not None and len(t.overhead_s) != n:
            raise ValueError(f"{where}.overhead_s must have {n} entries, found {len(t.overhead_s)}")
        if t.recompute is not None:
            if costs.recompute is None:
                raise ValueError(f"{where}.recompute: the costs have no recompute tables to replace")
            _check_table(f"{where}.recompute.compute_s", t.recompute.compute_s, n, L)
        for name, codec in t.codecs.items():
            if name not in costs.codecs:
                raise ValueError(f"{where}.codecs: {name!r} is not one of costs.codecs {sorted(costs.codecs)}")
            _check_table(f"{where}.codecs.{name}.codec_s", codec.codec_s, n, max(L - 1, 0))


class Costs(_Loose):
    devices: list[StrictStr] = Field(min_length=1)
    data_device: StrictStr
    compute_s: list[list[NonNeg]]
    memory_bytes: list[list[Bytes]]
    capacity_bytes: list[Annotated[StrictInt, Field(gt=0)]]
    cut_bytes: list[Bytes]
    link_bytes_per_s: list[list[NonNeg]]
    link_latency_s: list[list[NonNeg]]
    budget_s: Pos | None = None
    micro_batch_choices: list[Annotated[StrictInt, Field(ge=1)]] = Field(default=[1], min_length=1)
    overhead_s: list[NonNeg] | None = None
    recompute: _Recompute | None = None
    codecs: dict[StrictStr, _Codec] = Field(default_factory=dict)
    server_transfer_s: NonNeg | None = None
    per_micro_batch: dict[StrictStr, _MicroBatch] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shapes(self) -> "Costs":
        n, L = len(self.devices), len(self.compute_s[0]) if self.compute_s else 0
        if len(set(self.devices)) != n:
            raise ValueError("devices has duplicate names")
        if RESERVED in self.devices:
            raise ValueError(f"{RESERVED!r} is reserved for the generator's role, not a device name")
        if self.data_device not in self.devices:
            raise ValueError(f"data_device {self.data_device!r} is not in devices")
        _check_table("compute_s", self.compute_s, n, L)
        _check_table("memory_bytes", self.memory_bytes, n, L)
        if len(self.capacity_bytes) != n:
            raise ValueError(f"capacity_bytes must have {n} entries, found {len(self.capacity_bytes)}")
        if len(self.cut_bytes) != max(L - 1, 0):
            raise ValueError(f"cut_bytes must have {L - 1} entries, found {len(self.cut_bytes)}")
        _check_table("link_bytes_per_s", self.link_bytes_per_s, n, n)
        _check_table("link_latency_s", self.link_latency_s, n, n)
        if any(self.link_bytes_per_s[a][b] <= 0 for a in range(n) for b in range(n) if a != b):
            raise ValueError("link_bytes_per_s must be > 0 between different devices")
        if len(set(self.micro_batch_choices)) != len(self.micro_batch_choices):
            raise ValueError("micro_batch_choices has duplicates")
        if self.overhead_s is not None and len(self.overhead_s) != n:
            raise ValueError(f"overhead_s must have {n} entries, found {len(self.overhead_s)}")
        if self.recompute is not None:
            _check_table("recompute.compute_s", self.recompute.compute_s, n, L)
            _check_table("recompute.memory_bytes", self.recompute.memory_bytes, n, L)
        for name, codec in self.codecs.items():
            if name == "none":
                raise ValueError("codecs may not define 'none' (it is the raw encoding)")
            _check_table(f"codecs.{name}.codec_s", codec.codec_s, n, max(L - 1, 0))
        _check_micro_batches(self, n, L)
        return self


class Client(_Loose):
    name: StrictStr
    status: Literal["planned", "excluded"]
    reason: StrictStr | None = None
    step_time_s: NonNeg | None = None
    stages: list[_Stage]
    costs: Costs
    micro_batches: Annotated[StrictInt, Field(ge=1)] = 1
    data_weight: Pos = 1.0
    solver_status: StrictStr | None = None
    processing_time_factor: dict[StrictStr, Pos] = Field(default_factory=dict)
    baselines_step_time_s: dict[StrictStr, NonNeg | None] = Field(default_factory=dict)
    time_source: dict[StrictStr, Literal["calibration", "factor"]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _status(self) -> "Client":
        if self.status == "planned" and self.step_time_s is None:
            raise ValueError("a planned client needs step_time_s")
        if self.status == "excluded" and not self.reason:
            raise ValueError("an excluded client needs a reason")
        return self


class _Solver(_Loose):
    name: StrictStr
    status: StrictStr
    seconds: NonNeg


class _Server(_Loose):
    step_s: NonNeg


class PlanSchema(_Loose):
    schema_: Literal["fsl-plan/1"] = Field(alias="schema")
    model: _Model
    batch_size: Annotated[StrictInt, Field(gt=0, le=MAX_BATCH)]
    objective: Literal["latency", "throughput"]
    solver: _Solver
    devices_file: StrictStr | None = None
    round_time_s: NonNeg | None = None
    server: _Server | None = None
    clients: list[Client] = Field(min_length=1)

    @model_validator(mode="after")
    def _planned(self) -> "PlanSchema":
        if not any(c.status == "planned" for c in self.clients):
            raise ValueError("no client is planned")
        if self.round_time_s is None:
            raise ValueError("round_time_s is missing, expected the slowest planned client's step time")
        return self
