"""The numbers a solver sees: one client's cost tables, and the stages it returns.

Nothing here imports torch. A :class:`ClientProblem` is exactly the ``costs`` block of a
client in ``plan.json`` (shared SPEC §2 and §2.1), so a solver can be tested with
literal lists::

    p = ClientProblem(devices=("phone", "laptop"), data_device=0,
                      compute_s=((1, 1, 1), (0.2, 0.2, 0.2)),
                      memory_bytes=((1, 1, 1), (1, 1, 1)), capacity_bytes=(10, 10),
                      cut_bytes=(100, 100), link_bytes_per_s=((0, 1e3), (1e3, 0)),
                      link_latency_s=((0, 0), (0, 0)))

The §2.1 fields (``overhead_s``, ``micro_batch_choices``, ``recompute``, ``codecs``,
``server_transfer_s``) default to their absent values, under which every formula is
§2's. Units: seconds per whole GAN training step, bytes, bytes per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

Objective = Literal["latency", "throughput"]
OBJECTIVES: tuple[str, ...] = ("latency", "throughput")
NO_CODEC = "none"

Table = tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class RecomputeTables:
    """The per-layer tables of a stage that recomputes its activations (SPEC §2.1)."""

    compute_s: Table  # [d][l] seconds of layer l on d per step, the recomputation included
    memory_bytes: tuple[tuple[int, ...], ...]  # [d][l] bytes layer l needs on d when recomputing


@dataclass(frozen=True)
class Codec:
    """A lossy encoding a cut may use (SPEC §2.1 ``costs.codecs``)."""

    name: str  # the key in ``costs.codecs``, e.g. "fp16"
    bytes_ratio: float  # encoded bytes / raw bytes
    codec_s: Table  # [d][l] seconds d spends per step encoding and decoding the cut after l (L-1)


@dataclass(frozen=True)
class MicroBatchTables:
    """One ``M``'s tables (SPEC §2.1 ``per_micro_batch``), measured at micro-batch size
    ``batch_size / M`` in seconds per whole step; each field present replaces the base
    table's for that ``M``, an absent one (None, or a codec not listed) keeps it."""

    compute_s: Table | None = None  # [d][l]
    overhead_s: tuple[float, ...] | None = None  # [d] seconds per micro-batch
    recompute_s: Table | None = None  # [d][l] ``recompute.compute_s``
    codec_s: tuple[tuple[str, Table], ...] = ()  # (codec, [d][l] codec_s)

    def to_json(self) -> dict:
        out: dict = {}
        if self.compute_s is not None:
            out["compute_s"] = [list(r) for r in self.compute_s]
        if self.overhead_s is not None:
            out["overhead_s"] = list(self.overhead_s)
        if self.recompute_s is not None:
            out["recompute"] = {"compute_s": [list(r) for r in self.recompute_s]}
        if self.codec_s:
            out["codecs"] = {name: {"codec_s": [list(r) for r in t]} for name, t in self.codec_s}
        return out

    @classmethod
    def from_json(cls, d: dict) -> "MicroBatchTables":
        rec = d.get("recompute") or {}
        return cls(
            compute_s=None if d.get("compute_s") is None else _floats(d["compute_s"]),
            overhead_s=None if d.get("overhead_s") is None else tuple(float(v) for v in d["overhead_s"]),
            recompute_s=None if rec.get("compute_s") is None else _floats(rec["compute_s"]),
            codec_s=tuple((name, _floats(c["codec_s"])) for name, c in (d.get("codecs") or {}).items()),
        )

    def pick(self, keep: list[int]) -> "MicroBatchTables":
        """These tables for the devices ``keep`` (indices), in that order."""
        def rows(t):
            return None if t is None else tuple(t[i] for i in keep)

        return MicroBatchTables(rows(self.compute_s), rows(self.overhead_s), rows(self.recompute_s),
                                tuple((name, rows(t)) for name, t in self.codec_s))


def _floats(rows) -> Table:
    return tuple(tuple(float(v) for v in r) for r in rows)


@dataclass(frozen=True)
class ClientProblem:
    """One client's cost tables, indexed ``[device][layer]`` (SPEC §2 ``costs``)."""

    devices: tuple[str, ...]  # device names, the order of every table's first index
    data_device: int  # index into devices of the device that holds the raw data
    compute_s: Table  # [d][l] seconds of layer l on d per step
    memory_bytes: tuple[tuple[int, ...], ...]  # [d][l] bytes layer l needs on d
    capacity_bytes: tuple[int, ...]  # [d] bytes device d may give to its segment
    cut_bytes: tuple[int, ...]  # [l] bytes crossing the cut after layer l per step (L-1)
    link_bytes_per_s: Table  # [a][b] link bandwidth, 0 on diagonal
    link_latency_s: Table  # [a][b] latency per cut per step
    budget_s: float | None = None  # longest allowed step time, None for no limit
    overhead_s: tuple[float, ...] | None = None  # [d] seconds per micro-batch for holding a stage
    micro_batch_choices: tuple[int, ...] = (1,)  # every M the solver may pick
    recompute: RecomputeTables | None = None  # tables of a recomputing stage; None: not allowed
    codecs: tuple[Codec, ...] = ()  # encodings a cut may use besides "none"
    server_transfer_s: float | None = None  # fake images and their gradients, server <-> data device
    per_micro_batch: tuple[tuple[int, MicroBatchTables], ...] = ()  # (M, its tables), sorted by M

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    @property
    def n_layers(self) -> int:
        return len(self.compute_s[0])

    def choices(self, objective: Objective) -> tuple[int, ...]:
        """The ``M`` a solver may pick: ``latency`` allows only 1 (none if the tables
        leave 1 out), ``throughput`` every ``micro_batch_choices``."""
        allowed = tuple(sorted(set(self.micro_batch_choices)))
        return tuple(m for m in allowed if m == 1) if objective == "latency" else allowed

    def at(self, micro_batches: int) -> "ClientProblem":
        """The tables a plan with ``micro_batches`` uses: ``per_micro_batch[M]``'s over the
        base ones (SPEC §2.1), without ``per_micro_batch``; ``self`` where none is given."""
        mine = dict(self.per_micro_batch).get(micro_batches)
        if mine is None:
            return self
        codec_s = dict(mine.codec_s)
        rec = self.recompute
        return replace(
            self, per_micro_batch=(),
            compute_s=self.compute_s if mine.compute_s is None else mine.compute_s,
            overhead_s=self.overhead_s if mine.overhead_s is None else mine.overhead_s,
            recompute=rec if rec is None or mine.recompute_s is None else replace(rec, compute_s=mine.recompute_s),
            codecs=tuple(replace(c, codec_s=codec_s.get(c.name, c.codec_s)) for c in self.codecs))

    def overhead(self, d: int) -> float:
        return 0.0 if self.overhead_s is None else self.overhead_s[d]

    def codec(self, name: str) -> Codec | None:
        """The codec called ``name``; None for "none" (and for unknown names)."""
        return next((c for c in self.codecs if c.name == name), None)

    def cut_volume_s(self, a: int, b: int, layer: int, codec: str = NO_CODEC) -> float:
        """``V``: the cut after ``layer`` from ``a`` to ``b`` in ``codec``, without latency."""
        c = self.codec(codec)
        if c is None:
            return self.cut_bytes[layer] / self.link_bytes_per_s[a][b]
        return self.cut_bytes[layer] * c.bytes_ratio / self.link_bytes_per_s[a][b] + c.codec_s[a][layer] + c.codec_s[b][layer]

    def transfer_s(self, a: int, b: int, layer: int, codec: str = NO_CODEC) -> float:
        """Seconds to move the cut after ``layer`` from device ``a`` to ``b`` (``V + lat``)."""
        return self.cut_volume_s(a, b, layer, codec) + self.link_latency_s[a][b]

    def without_device(self, index: int) -> "ClientProblem":
        """These tables with device ``index`` gone (its rows and columns dropped)."""
        keep = [i for i in range(self.n_devices) if i != index]

        def pick(rows):
            return tuple(rows[i] for i in keep)

        return replace(
            self, devices=pick(self.devices), data_device=keep.index(self.data_device),
            compute_s=pick(self.compute_s), memory_bytes=pick(self.memory_bytes),
            capacity_bytes=pick(self.capacity_bytes),
            link_bytes_per_s=tuple(pick(r) for r in pick(self.link_bytes_per_s)),
            link_latency_s=tuple(pick(r) for r in pick(self.link_latency_s)),
            overhead_s=None if self.overhead_s is None else pick(self.overhead_s),
            recompute=None if self.recompute is None else RecomputeTables(
                compute_s=pick(self.recompute.compute_s), memory_bytes=pick(self.recompute.memory_bytes)),
            codecs=tuple(replace(c, codec_s=pick(c.codec_s)) for c in self.codecs),
            per_micro_batch=tuple((m, t.pick(keep)) for m, t in self.per_micro_batch),
        )

    def scaled(self, ratios: tuple[float, ...]) -> "ClientProblem":
        """These tables with device ``d``'s time rows (compute, recompute, overhead, codec
        seconds, every ``M``'s) multiplied by ``ratios[d]``."""
        def rows(table):
            return None if table is None else tuple(tuple(v * ratios[d] for v in row) for d, row in enumerate(table))

        def per_device(values):
            return None if values is None else tuple(v * ratios[d] for d, v in enumerate(values))

        return replace(
            self, compute_s=rows(self.compute_s), overhead_s=per_device(self.overhead_s),
            recompute=None if self.recompute is None else replace(self.recompute, compute_s=rows(self.recompute.compute_s)),
            codecs=tuple(replace(c, codec_s=rows(c.codec_s)) for c in self.codecs),
            per_micro_batch=tuple((m, MicroBatchTables(rows(t.compute_s), per_device(t.overhead_s), rows(t.recompute_s),
                                                       tuple((n, rows(c)) for n, c in t.codec_s)))
                                  for m, t in self.per_micro_batch))

    def to_json(self) -> dict:
        out = {
            "devices": list(self.devices),
            "data_device": self.devices[self.data_device],
            "compute_s": [list(r) for r in self.compute_s],
            "memory_bytes": [list(r) for r in self.memory_bytes],
            "capacity_bytes": list(self.capacity_bytes),
            "cut_bytes": list(self.cut_bytes),
            "link_bytes_per_s": [list(r) for r in self.link_bytes_per_s],
            "link_latency_s": [list(r) for r in self.link_latency_s],
            "budget_s": self.budget_s,
            "micro_batch_choices": list(self.micro_batch_choices),
        }
        if self.overhead_s is not None:
            out["overhead_s"] = list(self.overhead_s)
        if self.recompute is not None:
            out["recompute"] = {"compute_s": [list(r) for r in self.recompute.compute_s],
                                "memory_bytes": [list(r) for r in self.recompute.memory_bytes]}
        if self.codecs:
            out["codecs"] = {c.name: {"bytes_ratio": c.bytes_ratio, "codec_s": [list(r) for r in c.codec_s]}
                             for c in self.codecs}
        if self.server_transfer_s is not None:
            out["server_transfer_s"] = self.server_transfer_s
        if self.per_micro_batch:
            out["per_micro_batch"] = {str(m): t.to_json() for m, t in self.per_micro_batch}
        return out

    @classmethod
    def from_json(cls, d: dict) -> "ClientProblem":
        """Inverse of :meth:`to_json`. Expects already validated input."""
        devices = tuple(d["devices"])
        floats = _floats

        def ints(rows):
            return tuple(tuple(int(v) for v in r) for r in rows)

        rec = d.get("recompute")
        return cls(
            devices=devices,
            data_device=devices.index(d["data_device"]),
            compute_s=floats(d["compute_s"]),
            memory_bytes=ints(d["memory_bytes"]),
            capacity_bytes=tuple(int(v) for v in d["capacity_bytes"]),
            cut_bytes=tuple(int(v) for v in d["cut_bytes"]),
            link_bytes_per_s=floats(d["link_bytes_per_s"]),
            link_latency_s=floats(d["link_latency_s"]),
            budget_s=None if d.get("budget_s") is None else float(d["budget_s"]),
            overhead_s=None if d.get("overhead_s") is None else tuple(float(v) for v in d["overhead_s"]),
            micro_batch_choices=tuple(int(m) for m in d.get("micro_batch_choices") or (1,)),
            recompute=None if rec is None else RecomputeTables(floats(rec["compute_s"]), ints(rec["memory_bytes"])),
            codecs=tuple(Codec(name, float(c["bytes_ratio"]), floats(c["codec_s"]))
                         for name, c in (d.get("codecs") or {}).items()),
            server_transfer_s=None if d.get("server_transfer_s") is None else float(d["server_transfer_s"]),
            per_micro_batch=tuple(sorted(((int(m), MicroBatchTables.from_json(t))
                                          for m, t in (d.get("per_micro_batch") or {}).items()), key=lambda x: x[0])),
        )


@dataclass(frozen=True)
class Stage:
    """Layers ``start..end-1`` run on device index ``device``.

    ``recompute``: the stage uses ``ClientProblem.recompute``'s tables; ``codec``: the
    encoding of the cut that leaves it ("none" for the last stage).
    """

    device: int
    start: int
    end: int
    recompute: bool = False
    codec: str = NO_CODEC


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
    micro_batches: int = 1  # M, the step's micro-batches (SPEC §2.1)

    @classmethod
    def infeasible(cls, seconds: float = 0.0) -> "Solution":
        return cls(stages=(), status="infeasible", step_time_s=math.inf, seconds=seconds)
