"""Device profiles (``profiles/*.json``, schema ``fsl-devices/1``): parsed and checked once.

Every malformed profile raises :class:`~planner.errors.InputError` naming the file and
the field (``clients[0].devices[1].capacity``), what was found and what was expected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, field_validator, model_validator

from planner.calibration import Calibration, unique_keys
from planner.errors import InputError
from planner.jsonio import read_json

SCHEMA = "fsl-devices/1"
MAX_CLIENTS = 50_000  # issue 22 plans 10,000; 50,000 clients of 8 devices fill a 64 MiB profile
MAX_DEVICES_PER_CLIENT = 64
MAX_BYTES = 2**60  # 1 EiB: more is a typo, and would overflow int64 cost tables
RESERVED = "server"  # the generator's role (SPEC §1): not a device name

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")

# Ranges that keep the solver's numbers sane; beyond them a value is a typo, not a device.
Factor = Annotated[float, Field(ge=1e-3, le=1e4, allow_inf_nan=False)]  # 1000x faster .. 10000x slower
Mbps = Annotated[float, Field(ge=1e-3, le=1e7, allow_inf_nan=False)]  # 1 kbit/s .. 10 Tbit/s
LatencyMs = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]  # up to 1000 s
Seconds = Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]
Weight = Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+-]+$")]


def parse_bytes(value: Any) -> int:
    """``2GB`` -> 2_000_000_000, ``96MiB`` -> 100_663_296, ``1024`` -> 1024 (bytes)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected bytes as an integer or a string like '96MB', found {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"expected a size like '96MB' (units kB MB GB KiB MiB GiB), found {value!r}")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
        n = int(n) if n <= MAX_BYTES else MAX_BYTES + 1  # a float may be inf
    if n <= 0:
        raise ValueError(f"must be more than 0 bytes, found {value!r}")
    if n > MAX_BYTES:
        raise ValueError(f"must be at most 1 EiB ({MAX_BYTES} bytes), found {value!r}")
    return n


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Budget(_Strict):
    step_time_s: Seconds | None = None  # longest allowed training step, seconds


class Device(_Strict):
    name: Name
    processing_time_factor: Factor  # times slower than the profiling machine
    capacity: int | StrictStr  # bytes, or a string with a unit
    bandwidth_mbps: Mbps = 1000.0  # the device's link, megabits per second
    latency_ms: LatencyMs = 0.0  # the device's link latency, milliseconds
    holds_data: StrictBool = False
    calibration: list[Calibration] = Field(default_factory=list)  # fsl calibrate's (planner.calibration)

    @field_validator("capacity")
    @classmethod
    def _capacity(cls, v: Any) -> int:
        return parse_bytes(v)

    @field_validator("calibration")
    @classmethod
    def _calibration(cls, v: list[Calibration]) -> list[Calibration]:
        return list(unique_keys(v))

    @property
    def capacity_bytes(self) -> int:
        return int(self.capacity)


class Link(_Strict):
    a: Name
    b: Name
    bandwidth_mbps: Mbps
    latency_ms: LatencyMs = 0.0


class Client(_Strict):
    name: Name
    data_weight: Weight = 1.0  # share of the data and weight in the generator's update
    devices: list[Device] = Field(min_length=1, max_length=MAX_DEVICES_PER_CLIENT)
    links: list[Link] = Field(default_factory=list)
    budget: Budget | None = None

    @model_validator(mode="after")
    def _check(self) -> "Client":
        holders = [d.name for d in self.devices if d.holds_data]
        if len(holders) != 1:
            found = ", ".join(holders) if holders else "none"
            raise ValueError(f"exactly one device must have holds_data: true, found {len(holders)} ({found})")
        names = {d.name for d in self.devices}
        for i, link in enumerate(self.links):
            for end in (link.a, link.b):
                if end not in names:
                    raise ValueError(f"links[{i}] names device {end!r}, not a device of this client")
            if link.a == link.b:
                raise ValueError(f"links[{i}] joins {link.a!r} to itself")
        return self

    @property
    def data_device(self) -> Device:
        return next(d for d in self.devices if d.holds_data)


class Profile(_Strict):
    schema_: StrictStr = Field(alias="schema")
    budget: Budget | None = None
    clients: list[Client] = Field(min_length=1, max_length=MAX_CLIENTS)

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v: str) -> str:
        if v != SCHEMA:
            raise ValueError(f"expected {SCHEMA!r}, found {v!r}")
        return v

    def budget_s(self, client: Client) -> float | None:
        """The client's own step-time budget, else the file's, else None."""
        for b in (client.budget, self.budget):
            if b is not None and b.step_time_s is not None:
                return b.step_time_s
        return None


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[_check(), Client]",) or str(part).startswith(("function-", "union[", "int", "str")):
            continue
        else:
            out += ("." if out else "") + ("schema" if part == "schema_" else str(part))
    return out or "(top level)"


def first_error(err: ValidationError) -> tuple[str, str]:
    """The first pydantic error as (field path, message)."""
    e = err.errors(include_url=False)[0]
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown field (not in the schema)"
    elif e["type"] == "missing":
        msg = "required field is missing"
    if "input" in e and e["type"] not in ("missing", "value_error") and not isinstance(e["input"], (dict, list)):
        msg += f" (found {e['input']!r})"
    return _field_path(e["loc"]), msg


def parse_profile(data: Any, *, source: str = "<profile>") -> Profile:
    if not isinstance(data, dict):
        raise InputError(source, None, f"expected a JSON object, found {type(data).__name__}")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as err:
        field, msg = first_error(err)
        raise InputError(source, field, msg) from None
    seen: set[str] = set()
    for ci, c in enumerate(profile.clients):
        named = [(f"clients[{ci}].name", c.name)]
        named += [(f"clients[{ci}].devices[{di}].name", d.name) for di, d in enumerate(c.devices)]
        for where, name in named:
            if name == RESERVED and ".devices[" in where:
                raise InputError(source, where, f"{RESERVED!r} is reserved for the generator's role; "
                                 "rename the device")
            if name in seen:
                raise InputError(source, where, f"name {name!r} is used twice; names must be unique in the file")
            seen.add(name)
    return profile


def load_profile(path: str | Path) -> Profile:
    return parse_profile(read_json(path, what="device profile"), source=str(path))
