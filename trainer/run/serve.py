"""The server's program: rounds of the generator's steps, then what the round leaves
behind (metrics, evaluation, samples, checkpoint, a plan switch under ``--adapt``).
The message schedule around it is drawn in ``trainer.run.loop``."""

from __future__ import annotations

import torch

from trainer import state
from trainer.privacy import dprun
from trainer.adapt.drift import Adapter
from trainer.aggregate.combine import server_combine
from trainer.roles.build import RunSpec, build_server, emulation_warnings
from trainer.config import privacy_warnings
from trainer.roles.report import DeviceReport
from trainer.quality.evaluation import Evaluation
from trainer.run.metrics import round_metrics
from trainer.roles.where import BETWEEN_ROUNDS_S, Report, Where, hello
from trainer.aggregate.secagg_round import serve_keys
from trainer.run.rundir import RunDir
from trainer.comm.switch import announce, in_torchrun
from trainer.comm.transport import SERVER, Transport


def serve(spec: RunSpec, t: Transport, *, lock, report: Report, where: Where) -> list[dict]:
    run = RunDir(spec.cfg.out_dir)
    try:
        return _serve(spec, t, run, lock=lock, report=report, where=where)
    finally:
        run.close()  # --tensorboard's writer, however the run ends


def _serve(spec: RunSpec, t: Transport, run: RunDir, *, lock, report: Report, where: Where) -> list[dict]:
    cfg, plan = spec.cfg, spec.plan
    long_s = cfg.timeout_s + BETWEEN_ROUNDS_S
    server = build_server(spec, lock=lock)
    t.attach(SERVER, server.clock)
    start, history = run.start(spec, server)
    evaluation = Evaluation(spec.data, seed=cfg.seed, samples=cfg.eval_samples,
                            fid_inception=cfg.fid_inception) if cfg.eval_every else None
    devices = spec.roles()[1:]
    processes = [hello(SERVER, None, None) | {"eval_samples": len(evaluation.held_out) if evaluation else 0}]
    processes += [state.unpack(t.recv(SERVER, d, tag="hello", timeout_s=long_s), source=f"hello of {d}")
                  for d in devices]
    run.write_processes(processes)
    samples = {row["client"]: row["training_samples"] for row in processes if row["training_samples"]}
    records = {c.name: samples[c.name] for c in plan.planned}
    if cfg.dp:
        dprun.check_start(cfg, records, plan.batch_size)
    for d in devices:
        t.send(SERVER, d, torch.tensor([start]), tag="start")
    keys = serve_keys(spec, t, samples, timeout_s=long_s) if cfg.secure_agg else None
    spent = dprun.exhausted(cfg, processes) if cfg.dp and start < cfg.rounds else None
    report("start", {"start_round": start, "rounds": cfg.rounds, "clients": [c.name for c in plan.planned],
                     "warnings": emulation_warnings(plan, cfg) + privacy_warnings(cfg), "processes": processes,
                     "dp": cfg.dp, "privacy_stop": spent})
    if spent:  # resumed with no budget left for a round: every device stops before it starts
        for d in devices:
            t.send(SERVER, d, torch.tensor([-1]), tag="round")
        return history
    chains = {c.name: [s.device for s in c.stages] for c in plan.planned}
    adapter = Adapter(plan, same_devices=in_torchrun()) if cfg.adapt else None
    for r in range(start + 1, cfg.rounds + 1):
        where.round = r
        t.begin_round(SERVER, r)
        for d in devices:
            t.send(SERVER, d, torch.tensor([r]), tag="round")
        t0 = server.clock.time_s()  # virtual under --emulate virtual
        traced = r == cfg.rounds
        trace = server.run(t, cfg.steps_per_round, trace_last=traced,
                           on_step=lambda i, r=r: report("step", {"round": r, "step": i + 1}))
        late = server.late_devices()
        skipped = None
        if cfg.aggregate != "none":
            skipped = server_combine(cfg.aggregate, chains, samples, t, timeout_s=cfg.timeout_s, late=late,
                                     secure=keys)
        wall_s = server.clock.time_s() - t0
        reports = {d: DeviceReport.from_tensor(t.recv(SERVER, d, tag="report", timeout_s=cfg.timeout_s,
                                                      late_ok=d in late), source=f"report of {d}") for d in devices}
        ledgers = dprun.receive(cfg, t, {c: ch[0] for c, ch in chains.items()}, late) if cfg.dp else {}
        if traced:
            for d in devices:
                trace += state.unpack(t.recv(SERVER, d, tag="trace", timeout_s=cfg.timeout_s, late_ok=d in late),
                                      source=f"trace of {d}")["events"]
            run.write_timeline(spec.plan, trace, hosts={row["host"] for row in processes})
        for chain in chains.values():
            t.recv(SERVER, chain[0], tag="saved", timeout_s=cfg.timeout_s, late_ok=chain[0] in late)
        m = round_metrics(plan, server, reports, t.log, round_no=r, wall_s=wall_s, steps=cfg.steps_per_round,
                          emulated=cfg.emulate != "none")
        if skipped:
            m["aggregation_skipped"] = skipped
        stop = None
        if cfg.dp:
            m["d_loss_fake"] = m.pop("d_loss")  # the real half never leaves a client under DP
            m["d_loss"] = {c: None for c in m["d_loss_fake"]}
            stop = dprun.round_privacy(cfg, ledgers, m)
            if stop:
                m["privacy_stop"] = stop
        if evaluation and (r % cfg.eval_every == 0 or r == cfg.rounds or stop):
            m.update(evaluation(server.sampler, r))
        switch = None
        if adapter is not None and r < cfg.rounds and not stop:
            adapter.observe(m)
            switch = adapter.proposal(r)
        if switch is not None:
            new_plan, m["plan_switch"] = switch
            m["plan_switch"]["plan"] = run.write_next_plan(new_plan, r)
        history.append(m)
        run.finish_round(spec, server, history, r)
        report("round", m)
        if switch is not None:  # this run ends; every rank resumes from this round's checkpoint on the new plan
            announce(t, devices, run.out / m["plan_switch"]["plan"])
        if stop:  # the privacy budget ends the run here: every device stops
            for d in devices:
                t.send(SERVER, d, torch.tensor([-1]), tag="round")
        if switch is not None or stop:
            break
    return history
