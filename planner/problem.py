"""The numbers a solver sees: one client's cost tables, and the stages it returns.

Nothing here imports torch. A :class:`ClientProblem` is exactly the ``costs`` block of a
client in ``plan.json`` (shared SPEC §2), so a solver can be tested with literal lists::

    p = ClientProblem(devices=("phone", "laptop"), data_device=0,
                      compute_s=((1, 1, 1), (0.2, 0.2, 0.2)),
                      memory_bytes=((1, 1, 1), (1, 1, 1)), capacity_bytes=(10, 10),
                      cut_bytes=(100, 100), link_bytes_per_s=((0, 1e3), (1e3, 0)),
                      link_latency_s=((0, 0), (0, 0)))

Units: seconds per whole GAN training step, bytes, bytes per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Objective = Literal["latency", "throughput"]
OBJECTIVES: tuple[str, ...] = ("latency", "throughput")


@dataclass(frozen=True)
class ClientProblem:
    """One client's cost tables, indexed ``[device][layer]`` (SPEC §2 ``costs``)."""

    devices: tuple[str, ...]  # device names, the order of every table's first index
    data_device: int  # index into devices of the device that holds the raw data
    compute_s: tuple[tuple[float, ...], ...]  # [d][l] seconds of layer l on d per step
    memory_bytes: tuple[tuple[int, ...], ...]  # [d][l] bytes layer l needs on d
    capacity_bytes: tuple[int, ...]  # [d] bytes device d may give to its segment
    cut_bytes: tuple[int, ...]  # [l] bytes crossing the cut after layer l per step (L-1)
    link_bytes_per_s: tuple[tuple[float, ...], ...]  # [a][b] link bandwidth, 0 on diagonal
    link_latency_s: tuple[tuple[float, ...], ...]  # [a][b] latency per cut per step
    budget_s: float | None = None  # longest allowed step time, None for no limit

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    @property
    def n_layers(self) -> int:
        return len(self.compute_s[0])

    def transfer_s(self, a: int, b: int, layer: int) -> float:
        """Seconds to move the cut after ``layer`` from device ``a`` to device ``b``."""
        return self.cut_bytes[layer] / self.link_bytes_per_s[a][b] + self.link_latency_s[a][b]

    def to_json(self) -> dict:
        return {
            "devices": list(self.devices),
            "data_device": self.devices[self.data_device],
            "compute_s": [list(r) for r in self.compute_s],
            "memory_bytes": [list(r) for r in self.memory_bytes],
            "capacity_bytes": list(self.capacity_bytes),
            "cut_bytes": list(self.cut_bytes),
            "link_bytes_per_s": [list(r) for r in self.link_bytes_per_s],
            "link_latency_s": [list(r) for r in self.link_latency_s],
            "budget_s": self.budget_s,
        }

    @classmethod
    def from_json(cls, d: dict) -> "ClientProblem":
        """Inverse of :meth:`to_json`. Expects already validated input."""
        devices = tuple(d["devices"])
        return cls(
            devices=devices,
            data_device=devices.index(d["data_device"]),
            compute_s=tuple(tuple(float(v) for v in r) for r in d["compute_s"]),
            memory_bytes=tuple(tuple(int(v) for v in r) for r in d["memory_bytes"]),
            capacity_bytes=tuple(int(v) for v in d["capacity_bytes"]),
            cut_bytes=tuple(int(v) for v in d["cut_bytes"]),
            link_bytes_per_s=tuple(tuple(float(v) for v in r) for r in d["link_bytes_per_s"]),
            link_latency_s=tuple(tuple(float(v) for v in r) for r in d["link_latency_s"]),
            budget_s=None if d.get("budget_s") is None else float(d["budget_s"]),
        )


@dataclass(frozen=True)
class Stage:
    """Layers ``start..end-1`` run on device index ``device``."""

    device: int
    start: int
    end: int


@dataclass(frozen=True)
class Solution:
    """What a solver returns for one client.

    ``status`` is ``optimal`` (proven), ``feasible`` (best found, not proven, e.g. a time
    limit was hit), ``heuristic`` (a baseline), ``infeasible`` (proven, or a heuristic
    found nothing) or ``time_limit`` (stopped before finding a plan or ruling one out);
    the last two have empty ``stages`` and ``step_time_s`` ``math.inf``.
    """

    stages: tuple[Stage, ...]
    status: str
    step_time_s: float
    seconds: float = 0.0  # solver wall time

    @classmethod
    def infeasible(cls, seconds: float = 0.0) -> "Solution":
        return cls(stages=(), status="infeasible", step_time_s=math.inf, seconds=seconds)
