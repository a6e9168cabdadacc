"""From a model profile and a client's devices to the solver's cost tables.

Planning units: the solver cuts only where the layer graph allows (``graph.legal_cuts``),
so consecutive layers with no legal cut between them (a residual block) form one unit.
On a chain every layer is its own unit.

Per unit ``u`` and device ``d`` (SPEC §2), with ``f = processing_time_factor[d]``:

- ``compute_s[d][u]`` = ``f`` x the measured step time of the unit's layers on the
  profiling machine;
- ``memory_bytes[d][u]`` = the unit's training memory (``planner.profile``);
- ``cut_bytes[u]`` = 6 x the unit's output for one batch: in one step the activation
  goes forward and its gradient back in the discriminator phase (2 x batch each) and
  again in the generator phase (1 x batch each) (``planner.schedule``);
- a link between ``a`` and ``b`` has the smaller bandwidth and the larger latency of
  the two devices unless the client lists the pair in ``links``.

A device whose profile carries a calibration that matches the model, batch size and
torch version (``planner.calibration``) uses its own measured times instead of ``f`` x
the host's, in every time row below (compute, overhead, codecs, recompute).

SPEC §2.1, what :class:`Options` allows:

- ``overhead_s[d]`` = ``f`` x this host's per micro-batch stage overhead (always set);
- ``codecs``: per allowed codec, its ``bytes_ratio`` and ``codec_s[d][u]`` = ``f`` x the
  host's encode+decode seconds for the unit's output (``planner.profile_options``);
- ``recompute`` (unless off): ``compute_s`` = ``f`` x (step time + forward time): the
  forward passes run again in the backward pass. ``memory_bytes`` is the peak of a
  stage that checkpoints its input, valid for every ``M`` the plan allows:
  ``params x 16 + transfer buffers + input + saved / m``, ``m`` the smallest allowed
  ``M``. In a fill-drain without recomputation at most every micro-batch's saved tensors
  are alive when the backward starts (the trainer's data device runs all its forwards
  first), one whole batch (``saved``, as in
  ``memory_bytes``); with it, only the M stage inputs (one batch of ``input``) stay,
  and the backward of one micro-batch brings back its own saved tensors (``saved / M``)
  while it recomputes. With ``m = 1`` this is more than ``memory_bytes``: checkpointing
  one micro-batch does not lower the peak, so recomputation only pays when every
  allowed ``M`` is at least 2. ``input`` is charged to every unit because any unit may
  start a stage (an over-count for the units inside one). Peak within a stage's
  layers is not modelled apart: the tables are per unit and stage memory is their sum.
- ``server_transfer_s`` = one batch of fake images to the data device and its gradient
  back over the data device's link: ``2 x fake_bytes / bandwidth + latency``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from planner.calibration import DeviceTimes, device_times
from planner.codecs import BYTES_RATIO
from planner.devices import Client, Profile
from planner.graph import build_graph, legal_cuts
from planner.models import LayeredModel
from planner.problem import ClientProblem, Codec, MicroBatchTables, RecomputeTables
from planner.profile import ModelProfile
from planner.schedule import cut_bytes_per_step

SAMPLES_HELD_PER_STEP = 2  # x batch: a recomputing stage holds its input for real and fake


@dataclass(frozen=True)
class Options:
    """The execution options a plan may use (SPEC §2.1)."""

    micro_batch_choices: tuple[int, ...] = (1,)  # M the solver may pick
    codecs: tuple[str, ...] = ()  # codecs a cut may use besides "none"
    recompute: bool = True  # whether a stage may recompute its activations


@dataclass(frozen=True)
class Unit:
    """Layers ``first..last`` of the model, planned as one."""

    name: str
    first: int
    last: int  # inclusive
    flops: int
    params: int
    param_bytes: int
    output_bytes: int  # one batch, one way
    memory_bytes: int
    time_s: float
    forward_s: float = 0.0  # the part of time_s spent in forward passes
    input_bytes: int = 0  # the first layer's input, one batch
    saved_bytes: int = 0  # what autograd saves in the discriminator phase
    codec_s: tuple[tuple[str, float], ...] = ()  # (codec, seconds per step at a cut after the unit)


def planning_units(model: LayeredModel, profile: ModelProfile) -> list[Unit]:
    cuts = legal_cuts(build_graph(model, profile)) + [len(model) - 1]
    units, first = [], 0
    for last in cuts:
        lps = profile.layers[first : last + 1]
        name = lps[0].name if first == last else f"{lps[0].name}..{lps[-1].name}"
        units.append(Unit(
            name=name, first=first, last=last,
            flops=sum(x.flops for x in lps), params=sum(x.params for x in lps),
            param_bytes=sum(x.param_bytes for x in lps), output_bytes=lps[-1].output_bytes,
            memory_bytes=sum(x.memory_bytes for x in lps), time_s=sum(x.time_s for x in lps),
            forward_s=sum(x.forward_s for x in lps), input_bytes=lps[0].input_bytes,
            saved_bytes=sum(x.saved_bytes for x in lps), codec_s=tuple(sorted(lps[-1].codec_s.items())),
        ))
        first = last + 1
    return units


def recompute_memory_bytes(u: Unit, min_micro_batches: int) -> int:
    """A unit's memory in a recomputing stage, for every ``M >= min_micro_batches``."""
    held = SAMPLES_HELD_PER_STEP * u.input_bytes
    return u.memory_bytes - u.saved_bytes + held + math.ceil(u.saved_bytes / min_micro_batches)


def link_tables(client: Client) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """(bytes per second, latency seconds) between every pair of the client's devices."""
    devs = client.devices
    index = {d.name: i for i, d in enumerate(devs)}
    n = len(devs)
    bw = [[0.0 if a == b else min(devs[a].bandwidth_mbps, devs[b].bandwidth_mbps) * 1e6 / 8
           for b in range(n)] for a in range(n)]
    lat = [[0.0 if a == b else max(devs[a].latency_ms, devs[b].latency_ms) / 1e3
            for b in range(n)] for a in range(n)]
    for link in client.links:
        a, b = index[link.a], index[link.b]
        bw[a][b] = bw[b][a] = link.bandwidth_mbps * 1e6 / 8
        lat[a][b] = lat[b][a] = link.latency_ms / 1e3
    return tuple(map(tuple, bw)), tuple(map(tuple, lat))


def client_times(client: Client, units: list[Unit], profile: ModelProfile,
                 codecs: tuple[str, ...] = ()) -> list[DeviceTimes]:
    """Each device's time rows: its matching calibration, else its factor x ``profile``."""
    spans = [(u.first, u.last + 1) for u in units]
    return [device_times(d.calibration, d.processing_time_factor, spans, profile, codecs) for d in client.devices]


def client_problem(client: Client, units: list[Unit], profile: ModelProfile, *, budget_s: float | None,
                   options: Options = Options()) -> ClientProblem:
    bw, lat = link_tables(client)
    devs = client.devices
    times = client_times(client, units, profile, options.codecs)
    data = next(i for i, d in enumerate(devs) if d.holds_data)
    recompute = None
    if options.recompute:
        m = min(options.micro_batch_choices)
        recompute = RecomputeTables(
            compute_s=tuple(tuple(c + f for c, f in zip(t.compute_s, t.forward_s)) for t in times),
            memory_bytes=tuple(tuple(recompute_memory_bytes(u, m) for u in units) for _ in devs))
    codecs = tuple(Codec(c, BYTES_RATIO[c], tuple(t.codec_s[c][:-1] for t in times)) for c in options.codecs)
    return ClientProblem(
        devices=tuple(d.name for d in devs),
        data_device=data,
        compute_s=tuple(t.compute_s for t in times),
        memory_bytes=tuple(tuple(u.memory_bytes for u in units) for _ in devs),
        capacity_bytes=tuple(d.capacity_bytes for d in devs),
        cut_bytes=tuple(cut_bytes_per_step(u.output_bytes) for u in units[:-1]),
        link_bytes_per_s=bw,
        link_latency_s=lat,
        budget_s=budget_s,
        overhead_s=tuple(t.overhead_s for t in times),
        micro_batch_choices=tuple(sorted(set(options.micro_batch_choices))),
        recompute=recompute,
        codecs=codecs,
        server_transfer_s=2 * profile.fake_bytes / (devs[data].bandwidth_mbps * 1e6 / 8) + devs[data].latency_ms / 1e3,
    )


def profile_problems(profile: Profile, units: list[Unit], model_profile: ModelProfile,
                     options: Options = Options()) -> list[ClientProblem]:
    return [client_problem(c, units, model_profile, budget_s=profile.budget_s(c), options=options)
            for c in profile.clients]


def with_micro_batch_tables(base: ClientProblem, per_m: dict[int, ClientProblem]) -> ClientProblem:
    """``base`` (every allowed ``M``, the whole batch's tables) with each ``M``'s own time
    tables from ``per_m`` (that ``M``'s problem) in ``per_micro_batch`` (SPEC §2.1), where
    they differ from the base's; memory, bytes and links stay the base's."""
    entries = []
    for m, q in sorted(per_m.items()):
        t = MicroBatchTables(compute_s=q.compute_s, overhead_s=q.overhead_s,
                             recompute_s=None if q.recompute is None or base.recompute is None else q.recompute.compute_s,
                             codec_s=tuple((c.name, c.codec_s) for c in q.codecs))
        if replace(base, per_micro_batch=((m, t),)).at(m) != replace(base, per_micro_batch=()):
            entries.append((m, t))
    return replace(base, per_micro_batch=tuple(entries))
