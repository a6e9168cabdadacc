"""The round loop, written once: each role's whole run, whatever backend starts it.

The local backend runs every role as a thread of one process, the dist backend as a
process per role; both call :func:`run_role` with a transport and nothing else differs.
Around the steps (``trainer.roles.device``, ``trainer.roles.generator``; messages in ``planner.schedule``) the roles say::

    server                                      device d (of client c, data device d0)
      |<-- hello (pid, host, samples held) ------|   once: processes.json
      |--- start [R] --------------------------->|   once: R = last round done (resume)
      |<-- secagg: public keys, sealed shares -->|   with --secure-agg: the first round's keys
      |                                          |   resume: d0 reads c's checkpoint,
      |                                          |   sends each device of c its state
      |--- round [r] --------------------------->|   every round
      |    ServerRole.run <-- steps' messages --> |   DeviceRole.run
      |    (a late client's devices get stop)     |
      |    server_combine <-- weights ----------> |   device_exchange (if aggregating)
      |    (--secure-agg) <-- secagg: shares ---> |   d0: shares of self masks and missing keys;
      |                   <-- secagg: keys -----> |   all: the next round's keys (trainer.aggregate.secagg)
      |<-- report [compute, bytes, waits] -------|
      |                                          |   d -> d0: state; d0 writes c's file
      |<-- saved [r] ------------------------ d0 |
      | metrics.jsonl, evaluation, samples, checkpoint/server.pt (trainer.run.serve)
      |--- round [0], plan --------------------->|   --adapt switched plans: every role
      |                                          |   resumes on it (trainer.comm.switch)
"""

from __future__ import annotations

import math
import threading

import torch

from trainer import state
from trainer.roles import checkpoint
from trainer.privacy import dprun
from trainer.aggregate import secagg
from trainer.comm import switch
from trainer.aggregate.combine import device_exchange
from trainer.roles.build import RunSpec, build_device
from trainer.errors import RoleError
from trainer.roles.where import BETWEEN_ROUNDS_S, Report, Where, hello
from trainer.comm.transport import SERVER, Transport


def run_role(spec: RunSpec, me: str, t: Transport, *, lock: threading.Lock | None = None,
             report: Report | None = None) -> list[dict]:
    """Play role ``me`` for the whole run. Returns the run's metrics on the server; on a
    device ``[]``, or after a switch of plans the record to resume from
    (``trainer.comm.switch``); any failure is raised as :class:`RoleError` naming the role and round."""
    where = Where()
    try:
        if me == SERVER:
            # imported here, not above, so that device processes never load the server's
            # evaluation and plotting stack (scipy, torchmetrics, matplotlib)
            from trainer.run.serve import serve

            return serve(spec, t, lock=lock, report=report or (lambda kind, body: None), where=where)
        return _device(spec, me, t, lock=lock, where=where)
    except RoleError:
        raise
    except BaseException as e:
        raise RoleError(me, where.round, e) from e


def _device(spec: RunSpec, me: str, t: Transport, *, lock, where: Where) -> list[dict]:
    cfg, plan = spec.cfg, spec.plan
    long_s = cfg.timeout_s + BETWEEN_ROUNDS_S
    parts = build_device(spec, me, lock=lock)
    role, model, data, chain = parts.role, parts.model, parts.data, parts.chain
    t.attach(me, role.clock)
    _, c = spec.client_of(me)
    head = chain[0][0]
    files = state.ClientFiles(cfg.out_dir)
    ledger = dprun.open_ledger(spec, role, data, head=me == head) if cfg.dp else None
    said = hello(me, c.name, data) | ({"privacy": ledger.summary()} if ledger else {})
    t.send(me, SERVER, state.pack(said), tag="hello")
    start = int(t.recv(me, SERVER, tag="start", timeout_s=long_s).item())
    where.round = start
    if start:  # resume: the data device hands each device its part of the client's checkpoint
        if me == head:
            states = checkpoint.device_states(files.load(c.name, start, plan), chain, source=str(files.folder))
            for d, _, _ in chain[1:]:
                t.send(me, d, state.pack(states[d]), tag="state")
            mine = states[me]
        else:
            mine = state.unpack(t.recv(me, head, tag="state", timeout_s=long_s), source=f"state of {me}")
        checkpoint.load_device_state(role, model, mine, source=f"checkpoint of {c.name} for {me}")
    if cfg.dp:
        dprun.share_noise(spec, role, ledger, me, head, t, timeout_s=long_s)
    masker = secagg.join(spec, me, t, timeout_s=long_s) if cfg.secure_agg else None
    factor = role.clock.factor
    for r in range(start + 1, cfg.rounds + 1):
        where.round = r
        told = int(t.recv(me, SERVER, tag="round", timeout_s=long_s).item())
        if not told:  # the server switches plans
            return switch.follow(t, me, cfg.out_dir, r - 1, timeout_s=long_s)
        if told < 0:  # a client's privacy budget ends the run (trainer.privacy.dprun)
            return []
        t.begin_round(me, r)
        role.clock.factor = factor * math.prod(f for d, f, at in cfg.slowdown if d == me and r >= at)
        role.run(t, cfg.steps_per_round, trace_last=r == cfg.rounds)
        if cfg.aggregate != "none":
            device_exchange(me, role.stage, t, timeout_s=cfg.timeout_s, late_ok=t.stopped(me), masker=masker,
                            round_no=r)
        t.send(me, SERVER, role.report(t).to_tensor(), tag="report")
        if ledger is not None:
            dprun.report_round(me, role, ledger, t)
        if r == cfg.rounds:
            t.send(me, SERVER, state.pack({"events": role.trace or []}), tag="trace")
        mine = checkpoint.device_state(role, model)
        if me != head:
            t.send(me, head, state.pack(mine), tag="state")
            continue
        states = {me: mine} | {d: state.unpack(t.recv(me, d, tag="state", timeout_s=cfg.timeout_s,
                                                      late_ok=t.stopped(me)), source=f"state of {d}")
                               for d, _, _ in chain[1:]}
        files.save(c.name, r, checkpoint.client_checkpoint(c.name, round_done=r, plan=plan, states=states))
        t.send(me, SERVER, torch.tensor([r]), tag="saved")
    return []
