"""The round loop, written once: each role's whole run, whatever backend starts it.

The local backend runs every role as a thread of one process, the dist backend as a
process per role; both call :func:`run_role` with a transport and nothing else differs.
Around the steps (``trainer.device``, ``trainer.server``; messages in ``planner.schedule``) the roles say::

    server                                      device d (of client c, data device d0)
      |<-- hello (pid, host, samples held) ------|   once: processes.json
      |--- start [R] --------------------------->|   once: R = last round done (resume)
      |                                          |   resume: d0 reads c's checkpoint,
      |                                          |   sends each device of c its state
      |--- round [r] --------------------------->|   every round
      |    ServerRole.run <-- steps' messages --> |   DeviceRole.run
      |    (a late client's devices get stop)     |
      |    server_combine <-- weights ----------> |   device_exchange (if aggregating)
      |<-- report [compute, bytes, waits] -------|
      |                                          |   d -> d0: state; d0 writes c's file
      |<-- saved [r] ------------------------ d0 |
      | metrics.jsonl, evaluation, samples, checkpoint/server.pt (trainer.rundir)
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer import state
from trainer.adapt import Adapter
from trainer.aggregate import device_exchange, server_combine
from trainer.build import RunSpec, build_device, build_server, emulation_warnings
from trainer.errors import RoleError
from trainer.metrics import round_metrics
from trainer.device import DeviceReport
from trainer.rundir import Evaluation, RunDir
from trainer.transport import SERVER, Transport

BETWEEN_ROUNDS_S = 600.0  # extra wait for the server's work between rounds (evaluation, samples, checkpoint)
Report = Callable[[str, dict], None]


@dataclass
class Where:
    """The round a role is in, for the error it may raise."""

    round: int = 0


def run_role(spec: RunSpec, me: str, t: Transport, *, lock: threading.Lock | None = None,
             report: Report | None = None) -> list[dict]:
    """Play role ``me`` for the whole run. Returns the run's metrics on the server, ``[]``
    on a device; any failure is raised as :class:`RoleError` naming the role and round."""
    where = Where()
    try:
        if me == SERVER:
            return _serve(spec, t, lock=lock, report=report or (lambda kind, body: None), where=where)
        _device(spec, me, t, lock=lock, where=where)
        return []
    except RoleError:
        raise
    except BaseException as e:
        raise RoleError(me, where.round, e) from e


def _hello(me: str, client: str | None, data) -> dict:
    return {"role": me, "client": client, "host": socket.gethostname(), "pid": os.getpid(),
            "training_samples": 0 if data is None else len(data),
            "indices_sha256": None if data is None else data.digest(),
            "data": None if data is None else data.name}


def _serve(spec: RunSpec, t: Transport, *, lock, report: Report, where: Where) -> list[dict]:
    cfg, plan = spec.cfg, spec.plan
    long_s = cfg.timeout_s + BETWEEN_ROUNDS_S
    server = build_server(spec, lock=lock)
    run = RunDir(cfg.out_dir)
    start, history = run.start(spec, server)
    evaluation = Evaluation(spec.data, seed=cfg.seed, samples=cfg.eval_samples) if cfg.eval_every else None
    devices = spec.roles()[1:]
    hello = [_hello(SERVER, None, None) | {"eval_samples": len(evaluation.held_out) if evaluation else 0}]
    hello += [state.unpack(t.recv(SERVER, d, tag="hello", timeout_s=long_s), source=f"hello of {d}") for d in devices]
    run.write_processes(hello)
    samples = {row["client"]: row["training_samples"] for row in hello if row["training_samples"]}
    for d in devices:
        t.send(SERVER, d, torch.tensor([start]), tag="start")
    report("start", {"start_round": start, "rounds": cfg.rounds, "clients": [c.name for c in plan.planned],
                     "warnings": emulation_warnings(plan, cfg), "processes": hello})
    chains = {c.name: [s.device for s in c.stages] for c in plan.planned}
    adapter = Adapter(plan) if cfg.adapt else None
    for r in range(start + 1, cfg.rounds + 1):
        where.round = r
        t.begin_round(SERVER, r)
        for d in devices:
            t.send(SERVER, d, torch.tensor([r]), tag="round")
        t0 = time.perf_counter()
        traced = r == cfg.rounds
        trace = server.run(t, cfg.steps_per_round, trace_last=traced)
        late = server.late_devices()
        if cfg.aggregate != "none":
            server_combine(cfg.aggregate, chains, samples, t, timeout_s=cfg.timeout_s, late=late)
        wall_s = time.perf_counter() - t0
        reports = {d: DeviceReport.from_tensor(t.recv(SERVER, d, tag="report", timeout_s=cfg.timeout_s,
                                                      late_ok=d in late)) for d in devices}
        if traced:
            for d in devices:
                trace += state.unpack(t.recv(SERVER, d, tag="trace", timeout_s=cfg.timeout_s, late_ok=d in late),
                                      source=f"trace of {d}")["events"]
            run.write_timeline(spec.plan, trace, hosts={row["host"] for row in hello})
        for chain in chains.values():
            t.recv(SERVER, chain[0], tag="saved", timeout_s=cfg.timeout_s, late_ok=chain[0] in late)
        m = round_metrics(plan, server, reports, t.log, round_no=r, wall_s=wall_s, steps=cfg.steps_per_round,
                          emulated=cfg.emulate == "sleep")
        if evaluation and (r % cfg.eval_every == 0 or r == cfg.rounds):
            m.update(evaluation(server.generator, r))
        switch = None
        if adapter is not None and r < cfg.rounds:
            adapter.observe(m)
            switch = adapter.proposal(r)
        if switch is not None:
            new_plan, m["plan_switch"] = switch
            m["plan_switch"]["plan"] = run.write_next_plan(new_plan, r)
        history.append(m)
        run.finish_round(spec, server, history, r)
        report("round", m)
        if switch is not None:  # this run ends; train() resumes from this round's checkpoint on the new plan
            for d in devices:
                t.send(SERVER, d, torch.tensor([0]), tag="round")
            break
    return history


def _device(spec: RunSpec, me: str, t: Transport, *, lock, where: Where) -> None:
    cfg, plan = spec.cfg, spec.plan
    long_s = cfg.timeout_s + BETWEEN_ROUNDS_S
    parts = build_device(spec, me, lock=lock)
    role, model, data, chain = parts.role, parts.model, parts.data, parts.chain
    _, c = spec.client_of(me)
    head = chain[0][0]
    run = RunDir(cfg.out_dir)
    t.send(me, SERVER, state.pack(_hello(me, c.name, data)), tag="hello")
    start = int(t.recv(me, SERVER, tag="start", timeout_s=long_s).item())
    where.round = start
    if start:  # resume: the data device hands each device its part of the client's checkpoint
        if me == head:
            states = state.device_states(run.load_client(c.name, start, plan), chain, source=str(run.checkpoints))
            for d, _, _ in chain[1:]:
                t.send(me, d, state.pack(states[d]), tag="state")
            mine = states[me]
        else:
            mine = state.unpack(t.recv(me, head, tag="state", timeout_s=long_s), source=f"state of {me}")
        state.load_device_state(role, model, mine, source=f"checkpoint of {c.name} for {me}")
    factor = role.clock.factor
    for r in range(start + 1, cfg.rounds + 1):
        where.round = r
        if not int(t.recv(me, SERVER, tag="round", timeout_s=long_s).item()):
            break  # the server switches plans: this run ends here, the next resumes from the checkpoint
        t.begin_round(me, r)
        role.clock.factor = factor * math.prod(f for d, f, at in cfg.slowdown if d == me and r >= at)
        role.run(t, cfg.steps_per_round, trace_last=r == cfg.rounds)
        if cfg.aggregate != "none":
            device_exchange(me, role.stage, t, timeout_s=cfg.timeout_s, late_ok=t.stopped(me))
        t.send(me, SERVER, role.report(t).to_tensor(), tag="report")
        if r == cfg.rounds:
            t.send(me, SERVER, state.pack({"events": role.trace or []}), tag="trace")
        mine = state.device_state(role, model)
        if me != head:
            t.send(me, head, state.pack(mine), tag="state")
            continue
        states = {me: mine} | {d: state.unpack(t.recv(me, d, tag="state", timeout_s=cfg.timeout_s,
                                                      late_ok=t.stopped(me)), source=f"state of {d}")
                               for d, _, _ in chain[1:]}
        run.save_client(c.name, r, state.client_checkpoint(c.name, round_done=r, plan=plan, states=states))
        t.send(me, SERVER, torch.tensor([r]), tag="saved")
