"""Plans cut by hand: a chain model cut after given layers, on fresh devices, with
literal cost tables (``tests`` train them; ``benchmarks.bad_input_corpus`` names them)."""

from __future__ import annotations

import torch

from planner import check
from planner.codecs import BYTES_RATIO
from planner.planfile import Plan, PlannedClient, PlannedStage, round_time_s
from planner.problem import ClientProblem, Codec, RecomputeTables, Stage
from planner.schedule import cut_bytes_per_step
from planner.usermodel import build_model

B = 8  # batch size of the hand-cut plans


def chain_plan(model_name: str, cuts: list[int] | list[list[int]], *, n_clients: int = 1,
               weights: list[float] | None = None, batch: int = B, micro_batches: int = 1,
               recompute: tuple[int, ...] = (), codecs: dict[int, str] | None = None) -> Plan:
    """A plan cutting a chain model (a built-in name or a factory reference) after the given layers, on fresh devices ``c<i>-d<j>``.

    ``cuts`` is one list for every client or a list per client; client ``i`` has
    ``data_weight`` ``weights[i]`` (default ``1 + i``). Every client runs ``micro_batches``
    micro-batches (a ``throughput`` plan when more than one); the stages numbered in
    ``recompute`` recompute their activations; ``codecs[k]`` encodes the cut after stage k."""
    codecs = codecs or {}
    objective = "throughput" if micro_batches > 1 else "latency"
    model = build_model(model_name)
    L = len(model)
    per_client = cuts if cuts and isinstance(cuts[0], list) else [cuts] * n_clients
    with torch.no_grad():
        x, out_bytes = torch.zeros(batch, *model.input_shape), []
        for i in range(L):
            x = model.run(x, i, i + 1)
            out_bytes.append(x.numel() * x.element_size())
    clients = []
    for ci, client_cuts in enumerate(per_client):
        bounds = [0] + [c + 1 for c in client_cuts] + [L]
        names = tuple(f"c{ci}-d{i}" for i in range(len(bounds) - 1))
        n = len(names)
        zeros = tuple((0.0,) * (L - 1) for _ in names)
        costs = ClientProblem(
            devices=names, data_device=0, compute_s=tuple((0.001,) * L for _ in names),
            memory_bytes=tuple((1,) * L for _ in names), capacity_bytes=(10**9,) * n,
            cut_bytes=tuple(cut_bytes_per_step(b) for b in out_bytes[:-1]),
            link_bytes_per_s=tuple(tuple(0.0 if a == b else 1e12 for b in range(n)) for a in range(n)),
            link_latency_s=tuple((0.0,) * n for _ in range(n)), micro_batch_choices=(micro_batches,),
            recompute=RecomputeTables(compute_s=tuple((0.002,) * L for _ in names),
                                      memory_bytes=tuple((1,) * L for _ in names)) if recompute else None,
            codecs=tuple(Codec(c, BYTES_RATIO[c], zeros) for c in sorted(set(codecs.values()) - {"none"})))
        stages = [Stage(i, bounds[i], bounds[i + 1], i in recompute, codecs.get(i, "none")) for i in range(n)]
        transfers = check.cut_transfer_s(costs, stages) + [0.0]
        planned = tuple(PlannedStage(names[i], s.start, s.end, check.stage_compute_s(costs, s), transfers[i],
                                     check.stage_memory_bytes(costs, s), recompute=s.recompute, codec=s.codec)
                        for i, s in enumerate(stages))
        clients.append(PlannedClient(
            name=f"client{ci}", status="planned", reason=None,
            step_time_s=check.step_time_s(costs, stages, micro_batches), stages=planned, costs=costs,
            data_weight=weights[ci] if weights else 1.0 + ci, processing_time_factor={d: 1.0 for d in names},
            micro_batches=micro_batches))
    layers = [{"name": nd.name, "flops": 0, "param_bytes": 0, "output_bytes": ob, "model_layers": [i, i + 1]}
              for i, (nd, ob) in enumerate(zip(model.nodes, out_bytes))]
    return Plan(model={"name": model_name, "fingerprint": model.fingerprint(), "input_shape": list(model.input_shape),
                       "layers": layers},
                batch_size=batch, objective=objective, solver={"name": "test", "status": "heuristic", "seconds": 0},
                devices_file=None, round_time_s=round_time_s(clients, None), clients=tuple(clients))
