"""From a model profile and a client's devices to the solver's cost tables.

Planning units: the solver cuts only where the layer graph allows (``graph.legal_cuts``),
so consecutive layers with no legal cut between them (a residual block) form one unit.
On a chain every layer is its own unit.

Per unit ``u`` and device ``d`` (SPEC §2):

- ``compute_s[d][u]`` = ``processing_time_factor[d]`` x the measured step time of the
  unit's layers on the profiling machine;
- ``memory_bytes[d][u]`` = the unit's training memory (``planner.profile``);
- ``cut_bytes[u]`` = 6 x the unit's output for one batch: in one step the activation
  goes forward and its gradient back in the discriminator phase (2 x batch each) and
  again in the generator phase (1 x batch each) (``planner.schedule``);
- a link between ``a`` and ``b`` has the smaller bandwidth and the larger latency of
  the two devices unless the client lists the pair in ``links``.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.devices import Client, Profile
from planner.graph import build_graph, legal_cuts
from planner.models import LayeredModel
from planner.problem import ClientProblem
from planner.profile import ModelProfile
from planner.schedule import cut_bytes_per_step


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
        ))
        first = last + 1
    return units


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


def client_problem(client: Client, units: list[Unit], *, budget_s: float | None) -> ClientProblem:
    bw, lat = link_tables(client)
    devs = client.devices
    return ClientProblem(
        devices=tuple(d.name for d in devs),
        data_device=next(i for i, d in enumerate(devs) if d.holds_data),
        compute_s=tuple(tuple(d.processing_time_factor * u.time_s for u in units) for d in devs),
        memory_bytes=tuple(tuple(u.memory_bytes for u in units) for _ in devs),
        capacity_bytes=tuple(d.capacity_bytes for d in devs),
        cut_bytes=tuple(cut_bytes_per_step(u.output_bytes) for u in units[:-1]),
        link_bytes_per_s=bw,
        link_latency_s=lat,
        budget_s=budget_s,
    )


def profile_problems(profile: Profile, units: list[Unit]) -> list[ClientProblem]:
    return [client_problem(c, units, budget_s=profile.budget_s(c)) for c in profile.clients]
