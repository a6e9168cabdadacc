"""One round's metrics (SPEC §4), from the server's own numbers and the devices' reports."""

from __future__ import annotations

from planner.planfile import Plan
from trainer.roles.report import DeviceReport
from trainer.roles.generator import ServerRole
from trainer.comm.transport import SERVER, TransferLog


def generator_loss(server: ServerRole) -> float | None:
    """The round's generator loss: per step, the ``data_weight``-weighted mean over the
    clients that answered; then the mean over steps."""
    reported = {c: v for c, v in server.losses.items() if v}
    weights = {c.name: c.weight for c in server.clients}
    n_steps = max((len(v) for v in reported.values()), default=0)
    if not n_steps:
        return None
    per_step = []
    for i in range(n_steps):
        have = {c: v[i][1] for c, v in reported.items() if i < len(v)}
        total = sum(weights[c] for c in have)
        per_step.append(sum(weights[c] * g for c, g in have.items()) / total)
    return sum(per_step) / len(per_step)


def round_metrics(plan: Plan, server: ServerRole, reports: dict[str, DeviceReport], log: TransferLog, *,
                  round_no: int, wall_s: float, steps: int, emulated: bool) -> dict:
    clients, devices = {}, {}
    for c in plan.planned:
        head = reports[c.stages[0].device]
        done = max(int(head.steps_done), 1)
        clients[c.name] = {
            "step_time_s": head.chain_s / done, "predicted_step_time_s": c.step_time_s,
            "host_wait_s": sum(reports[st.device].host_wait_s for st in c.stages) / done,
            "steps": int(head.steps_done), "dropped_at_step": server.dropped.get(c.name),
        }
        units = c.units_s()  # stage 0, cut 0, stage 1, ...: a stage's unit is C_k / M + overhead_s
        for k, st in enumerate(c.stages):
            r = reports[st.device]
            n = max(int(r.steps_done), 1)
            devices[st.device] = {  # predicted: the device's M units a step, its layers and its overhead
                "client": c.name, "compute_s": r.compute_s / n, "predicted_compute_s": c.micro_batches * units[2 * k],
                "codec_s": r.codec_s / n,
                "processing_time_factor": c.processing_time_factor.get(st.device, 1.0),
                "emulated": emulated, "work_s": r.work_s / n,
                "bytes_sent": int(r.bytes_sent), "bytes_received": int(r.bytes_received),
                "control_bytes_sent": int(r.control_bytes_sent),
                "control_bytes_received": int(r.control_bytes_received), "wait_s": r.wait_s / n,
            }
    return {
        "round": round_no, "g_loss": generator_loss(server),
        "d_loss": {c: sum(x[0] for x in v) / len(v) for c, v in server.losses.items() if v},
        "round_time_s": wall_s, "predicted_round_time_s": plan.round_time_s * steps,
        "clients": clients, "devices": devices,
        "server": {"compute_s": server.clock.compute_s, "bytes_sent": log.bytes_sent.get(SERVER, 0),
                   "bytes_received": log.bytes_received.get(SERVER, 0)},
    }
