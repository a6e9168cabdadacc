"""Device calibrations (SPEC §1 ``calibration``): a device's own measured times, and their
use in the cost tables in place of ``processing_time_factor`` x the host's profile.

``fsl calibrate`` (``trainer.adapt.calibrate``) runs on each device and measures there what
:mod:`planner.profile` and :mod:`planner.profile_options` measure on the host. A device
of a profile may carry a list of calibrations, one per (model fingerprint, batch size,
torch version)::

    "calibration": [{
      "format": "fsl-calibration/1",
      "model": "dcgan", "fingerprint": "sha256:…", "batch_size": 64, "torch_version": "2.13.0+cpu",
      "host": "vm", "threads": 1, "emulate": "sleep", "emulated_factor": 4.0, "links": "declared",
      "measured_at": "2025-01-01T12:00:00Z", "seconds": 41.2, "overhead_s": 0.0021,
      "layers": [{"name": "a_conv", "time_s": 0.151, "forward_s": 0.048,
                  "codec_s": {"fp16": 0.004, "int8": 0.016}}, ...]
    }]

- ``layers``: every layer of the model in execution order (the model's layer names):
  ``time_s`` is one whole GAN training step through the layer on the device
  (:mod:`planner.profile`'s definition; median of repeats), ``forward_s`` the part of it
  in forward passes, ``codec_s[c]`` encoding plus decoding what one side of a cut after
  the layer handles per step with codec ``c`` (:mod:`planner.profile_options`).
- ``overhead_s``: the device's fixed seconds per micro-batch of holding a stage
  (SPEC §2.1; measured as :func:`planner.profile_options.measure_overhead_s` does).
- ``host``, ``threads``: where it ran and with how many torch threads (the dist
  backend's one); ``seconds``: how long measuring took (with the waits
  for its turns: the devices of one host measure in turn).
- ``emulate``: ``"none"``, measured flat out on the device, or ``"sleep"``, the device
  emulated on this host (``fsl train --emulate sleep``'s clock: its work stretched by
  ``emulated_factor``, the device's ``processing_time_factor`` at the time).
- ``links``: where the device's ``bandwidth_mbps``/``latency_ms`` and its client's
  ``links`` in the written profile come from: ``"measured"`` (probed between the real
  processes, ``--emulate none`` by default) or ``"declared"`` (the profile's own, kept:
  under ``--emulate sleep`` training emulates the declared links, so probing this
  host's loopback would only replace them with numbers no run will see). Absent in
  files written before it existed.

``fsl calibrate`` writes ``PROFILE.calibrated.json`` beside the profile it read
(:func:`calibrated_path`) and overwrites the profile only when ``--out`` names it.

A calibration **matches** a plan when its fingerprint, batch size and torch version are
the plan's and, if emulated, its ``emulated_factor`` is still the device's factor (an
edited factor makes an emulated calibration stale). A matched device's tables are its
calibration's (compute, recompute = step + forward, overhead, codecs; a codec it lacks
takes ``factor`` x the host's); every other device keeps ``factor`` x the host's profile.
The plan records which per device (a client's ``time_source``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from planner.errors import InputError
from planner.schedule import FAKE, FAKE_GRAD, MESSAGES_PER_CUT_PER_MICRO_BATCH

if TYPE_CHECKING:  # not at run time: parsing a device profile loads no torch
    from planner.profile import ModelProfile

FORMAT = "fsl-calibration/1"
SERVER_NAME = "server"  # the generator's role, the far end of a device's own link
CALIBRATED, FACTOR = "calibration", "factor"  # a device's time_source in a plan

Secs = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
Text = Annotated[StrictStr, Field(min_length=1, max_length=256)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class LayerTimes(_Frozen):
    name: Text  # the model's layer name
    time_s: Secs  # one whole GAN training step through the layer on the device
    forward_s: Secs = 0.0  # the part of time_s spent in forward passes
    codec_s: dict[Text, Secs] = Field(default_factory=dict)  # codec -> seconds per step at a cut after it

    @model_validator(mode="after")
    def _forward(self) -> "LayerTimes":
        if self.forward_s > self.time_s:
            raise ValueError(f"forward_s {self.forward_s:g} exceeds time_s {self.time_s:g}")
        return self


class Calibration(_Frozen):
    format: Literal["fsl-calibration/1"]
    model: Text  # the model's name, for people; the fingerprint is what matches
    fingerprint: Annotated[StrictStr, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
    batch_size: Annotated[StrictInt, Field(ge=1, le=4096)]
    torch_version: Text
    host: Text  # where it was measured
    threads: Annotated[StrictInt, Field(ge=1, le=4096)]  # torch intra-op threads while measuring
    emulate: Literal["sleep", "none"]
    emulated_factor: Annotated[float, Field(ge=1e-3, le=1e4, allow_inf_nan=False)] | None = None
    links: Literal["measured", "declared"] | None = None  # where the written profile's links come from
    measured_at: Text  # ISO 8601, UTC
    seconds: Secs = 0.0  # how long measuring took, turns waited included
    overhead_s: Secs  # fixed seconds per micro-batch of holding a stage
    layers: list[LayerTimes] = Field(min_length=1, max_length=100_000)

    @model_validator(mode="after")
    def _emulation(self) -> "Calibration":
        if (self.emulate == "sleep") != (self.emulated_factor is not None):
            raise ValueError("emulated_factor is given exactly when emulate is 'sleep'")
        return self

    @property
    def key(self) -> tuple[str, int, str]:
        return self.fingerprint, self.batch_size, self.torch_version


def unique_keys(entries: Sequence[Calibration]) -> Sequence[Calibration]:
    """``entries`` if no two share (fingerprint, batch size, torch version); ValueError else."""
    seen = set()
    for i, c in enumerate(entries):
        if c.key in seen:
            raise ValueError(f"calibration[{i}] repeats the fingerprint, batch_size and torch_version of an "
                             "earlier entry")
        seen.add(c.key)
    return entries


def matching(entries: Sequence[Calibration], host: ModelProfile, factor: float) -> Calibration | None:
    """The entry that matches ``host``'s model, batch size and torch version (module docstring)."""
    for c in entries:
        if c.key == (host.fingerprint, host.batch_size, host.torch_version):
            if c.emulated_factor is None or c.emulated_factor == factor:
                return c
    return None


def check_calibrations(devices: Iterable[tuple[str, Sequence[Calibration]]], host: ModelProfile, *,
                       codecs: Sequence[str], source: str) -> None:
    """InputError where a calibration of the planned model, batch size and torch version
    disagrees with the model's layers or names an unknown codec. ``devices``: (field path
    of the device's ``calibration``, its entries)."""
    names = [layer.name for layer in host.layers]
    for where, entries in devices:
        for k, c in enumerate(entries):
            if c.key != (host.fingerprint, host.batch_size, host.torch_version):
                continue
            mine = [layer.name for layer in c.layers]
            if mine != names:
                raise InputError(source, f"{where}[{k}].layers", f"{len(mine)} layers ({', '.join(mine[:3])}, …) "
                                 f"do not match model {host.model}'s {len(names)} ({', '.join(names[:3])}, …)")
            for li, layer in enumerate(c.layers):
                bad = sorted(set(layer.codec_s) - set(codecs))
                if bad:
                    raise InputError(source, f"{where}[{k}].layers[{li}].codec_s",
                                     f"unknown codec {bad[0]!r}, expected {', '.join(codecs)}")


@dataclass(frozen=True)
class DeviceTimes:
    """One device's time rows over planning units (``spans``: model layers ``[a, b)``)."""

    source: str  # CALIBRATED or FACTOR
    compute_s: tuple[float, ...]  # per unit: one whole GAN step
    forward_s: tuple[float, ...]  # per unit: the forward passes within it
    codec_s: dict[str, tuple[float, ...]]  # codec -> per unit: at a cut after the unit
    overhead_s: float  # per micro-batch of holding a stage


_HOST_SPANS: dict = {}  # (id(host), spans) -> (host, step sums, forward sums): see _host_span_sums
_HOST_SPANS_KEPT = 64


def _host_span_sums(host: ModelProfile, spans: Sequence[tuple[int, int]]
                    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per span, the host's step and forward seconds, memoised: every device of every client
    of a plan asks for the same sums (10,000 clients: 80,000 devices). The entry keeps
    ``host`` alive and is checked by identity, so a reused id never hits."""
    key = (id(host), tuple(spans))
    hit = _HOST_SPANS.get(key)
    if hit is None or hit[0] is not host:
        if len(_HOST_SPANS) >= _HOST_SPANS_KEPT:
            _HOST_SPANS.clear()
        hit = (host, tuple(sum(x.time_s for x in host.layers[a:b]) for a, b in spans),
               tuple(sum(x.forward_s for x in host.layers[a:b]) for a, b in spans))
        _HOST_SPANS[key] = hit
    return hit[1], hit[2]


def device_times(entries: Sequence[Calibration], factor: float, spans: Sequence[tuple[int, int]],
                 host: ModelProfile, codecs: Sequence[str]) -> DeviceTimes:
    """The device's calibration where one matches, else ``factor`` x the host's profile."""
    cal = matching(entries, host, factor)

    def host_codec(c: str, b: int) -> float:
        return factor * host.layers[b - 1].codec_s[c]

    if cal is None:
        steps, forwards = _host_span_sums(host, spans)
        return DeviceTimes(
            source=FACTOR,
            compute_s=tuple(factor * s for s in steps),
            forward_s=tuple(factor * s for s in forwards),
            codec_s={c: tuple(host_codec(c, b) for _, b in spans) for c in codecs},
            overhead_s=factor * host.overhead_s)
    layers = cal.layers
    return DeviceTimes(
        source=CALIBRATED,
        compute_s=tuple(sum(x.time_s for x in layers[a:b]) for a, b in spans),
        forward_s=tuple(sum(x.forward_s for x in layers[a:b]) for a, b in spans),
        codec_s={c: tuple(layers[b - 1].codec_s[c] if c in layers[b - 1].codec_s else host_codec(c, b)
                          for _, b in spans) for c in codecs},
        overhead_s=cal.overhead_s)


def calibrated_path(profile: str | Path) -> Path:
    """Where ``fsl calibrate`` writes by default: ``lab.json`` -> ``lab.calibrated.json``."""
    p = Path(profile)
    return p.with_name(f"{p.stem if p.suffix == '.json' else p.name}.calibrated.json")


def _link_entry(a: str, b: str, fit: dict, messages: int) -> dict:
    """A measured link as the profile writes it: Mbps, and the fixed cost of ``messages``
    messages (``trainer.comm.linkprobe``: the intercept is two)."""
    return {"a": a, "b": b, "bandwidth_mbps": round(fit["bytes_per_s"] * 8 / 1e6, 3),
            "latency_ms": round(fit["intercept_s"] * 1e3 * messages / 2, 4)}


SERVER_MESSAGES = len((FAKE, FAKE_GRAD))  # the server exchange of a step: fake images out, their gradient back


def calibrated_profile(raw: dict, result: dict, *, cut_messages: int = MESSAGES_PER_CUT_PER_MICRO_BATCH,
                       server_messages: int = SERVER_MESSAGES) -> dict:
    """The device profile ``raw`` (as JSON) with what ``fsl calibrate`` measured
    (``trainer.adapt.calibrate.calibrate``'s result): each device's calibration (replacing an
    entry of the same fingerprint, batch size and torch version), each client's links
    (replacing the listed ones between the same two devices; latency for a cut crossing
    of ``cut_messages`` messages) and each device's own ``bandwidth_mbps``/``latency_ms``
    from its link to the server (``server_messages`` messages: fake images out, their
    gradient back). Entries are validated here; the caller parses the whole result."""
    out = {**raw, "clients": []}
    for client in raw["clients"]:
        devices = []
        for device in client["devices"]:
            device = dict(device)
            name = device["name"]
            if name in result["calibrations"]:
                new = Calibration.model_validate(result["calibrations"][name])
                kept = [e for e in device.get("calibration", [])
                        if (e.get("fingerprint"), e.get("batch_size"), e.get("torch_version")) != new.key]
                device["calibration"] = kept + [new.model_dump()]
            if name in result["server_links"]:
                own = _link_entry(SERVER_NAME, name, result["server_links"][name], server_messages)
                device["bandwidth_mbps"], device["latency_ms"] = own["bandwidth_mbps"], own["latency_ms"]
            devices.append(device)
        client = {**client, "devices": devices}
        measured = [_link_entry(x["a"], x["b"], x, cut_messages) for x in result["links"].get(client["name"], [])]
        if measured:
            pairs = {frozenset((x["a"], x["b"])) for x in measured}
            client["links"] = [x for x in client.get("links", []) if frozenset((x["a"], x["b"])) not in pairs] + measured
        out["clients"].append(client)
    return out
