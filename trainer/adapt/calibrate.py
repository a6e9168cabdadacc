"""``fsl calibrate``: every device measures the model on itself, and the links between them.

The processes start as ``--backend dist`` starts them (``trainer.backends.dist``): one per
device of the profile plus the server, spawned here and supervised, or one rank each
under ``torchrun`` (``RANK``/``WORLD_SIZE``/``FSL_RANKS``), so on real devices each
measures itself. Each process reads the profile and runs with one torch thread, as in
training. The server coordinates, one thing at a time::

    server                                      device d
      |<-- calib: hello (host) ---------------|
      |--- calib: pass ---------------------->|  warmup + repeats times: one pass over
      |<-- calib: passed ---------------------|  the layers, the devices of a host in turn
      |--- calib: finish -------------------->|  codecs and overhead, one device per host
      |<-- calib: its calibration ------------|  at a time (planner.calibration's format)
      |--- calib: echo a / probe b ---------->|  one link at a time (trainer.comm.linkprobe):
      |<-- calib: b's fit --------------------|  each pair of a client's devices,
      |--- calib: echo server --------------->|  then the server probes each device
      |--- calib: done ---------------------->|

A device measures what ``planner.profile`` measures on the host: every layer's step
(``time_layers``, round-robin, median of ``repeats``), its stage overhead and its codecs
(``planner.profile_options``). A layer's time is what ``fsl train``'s
:class:`~trainer.roles.clock.Clock` counts for a device's compute: its wall time, or under
``--emulate sleep`` ``factor`` x that (``forward_s`` is the forward's share of it). The
emulated device's extra time is slept once per pass over the layers (while the next
device works), not after every layer as the training clock does: a sleep leaves the next layer's work cold (caches,
clock frequency, the scheduler), and at batch 8 on the 2-core VM that made a factor-12
device's layers 1.5x slower than this host's, an artefact of emulation, not the device.
Devices on one host measure one at a time, otherwise they would time each other's
work, and take turns pass by pass, so a burst of other load on a shared host (the 2-core
VM's load average reaches 9) spreads over every device's passes instead of inflating one
device: the calibrated devices of one host are then in the ratio of their factors.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from functools import partial

import torch
import torch.distributed as dist

from planner.calibration import FORMAT
from planner.devices import Profile, load_profile
from planner.usermodel import build_model
from planner.profile import layer_args, layer_codecs, in_context, layer_outputs, step_s, time_layers
from planner.profile_options import measure_overhead_s
from trainer.comm import linkprobe
from trainer.backends.dist import in_torchrun, run_ranks, torchrun_role
from trainer.errors import RankFailure, root_cause
from trainer.state import pack, unpack
from trainer.roles.clock import DEVICE_THREADS, paced_sleep
from trainer.comm.transport import SERVER, Transport
from trainer.comm.wire import DistTransport

TAG = "calib"
OVERHEAD_REPEATS, OVERHEAD_WARMUP = 60, 6  # micro-batches timed for the stage overhead (the host times 200)


@dataclass(frozen=True)
class CalibrationJob:
    """What every process of a calibration needs; each reads the profile itself."""

    profile: str  # the device profile (fsl-devices/1)
    model: str = "dcgan"
    batch_size: int = 64
    emulate: str = "sleep"  # sleep: each device's work stretched by its factor; none: flat out
    repeats: int = 5  # timed passes over the layers, after warmup
    warmup: int = 1
    links: bool = True  # also probe the links between each client's devices and to the server
    timeout_s: float = 600.0  # a process silent this long is a failure


def roles(profile: Profile) -> list[str]:
    """The server, then every device of the profile in order (their default ranks)."""
    return [SERVER] + [d.name for c in profile.clients for d in c.devices]


def peers(profile: Profile, me: str) -> list[str]:
    if me == SERVER:
        return roles(profile)[1:]
    client = next(c for c in profile.clients if me in {d.name for d in c.devices})
    return [SERVER] + [d.name for d in client.devices if d.name != me]


class _EmulatedCount:
    """Counts work as the device's: ``factor`` x its wall time under emulation, else the
    wall time; under emulation the device's extra time is owed and slept by :meth:`pay`."""

    def __init__(self, factor: float, emulate: bool):
        self.factor = max(factor, 1.0) if emulate else 1.0  # a factor below 1 runs at this host's speed
        self.owed_s = self.debt_s = 0.0

    def __call__(self, work: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        work()
        raw = time.perf_counter() - t0
        self.owed_s += (self.factor - 1.0) * raw
        return self.factor * raw

    def layer(self, run: Callable[[], tuple[float, float, float]]) -> tuple[float, float, float]:
        """``run``'s (step, forward, update) seconds, all counted as the device's."""
        raw, forward, update = run()
        self.owed_s += (self.factor - 1.0) * raw
        return self.factor * raw, self.factor * forward, self.factor * update

    def pay(self, *_progress) -> None:
        self.debt_s = paced_sleep(self.owed_s, self.debt_s)
        self.owed_s = 0.0


def measure_here(job: CalibrationJob, factor: float, *, turn: Callable[[str], None] = lambda step: None) -> dict:
    """This device's calibration of ``job.model`` at ``job.batch_size`` (JSON-ready).
    ``turn(step)``, the server's turn-taking: ``"pass"`` before each pass over the layers,
    ``"passed"`` after it, ``"finish"`` before the codecs and the overhead."""
    t_start = time.perf_counter()
    model = build_model(job.model)
    count = _EmulatedCount(factor, job.emulate == "sleep")
    args = layer_args(model, job.batch_size)

    def passed(done: int, total: int) -> None:
        turn("passed")  # the next device works while this one sleeps its emulated extra time
        count.pay()
        if done < total:
            turn("pass")

    turn("pass")
    timings, _ = in_context(time_layers(model, args, repeats=job.repeats, warmup=job.warmup, timed=count.layer,
                                        progress=passed, whole=True))
    turn("finish")
    codecs = layer_codecs([tuple(o.shape[1:]) for o in layer_outputs(model, args)], job.batch_size, timed=count)
    count.pay()
    layers = [{"name": node.name, "time_s": step_s(step, update), "forward_s": min(forward, step), "codec_s": codec}
              for node, (step, forward, update), codec in zip(model.nodes, timings, codecs)]
    overhead = measure_overhead_s(timed=count, repeats=OVERHEAD_REPEATS, warmup=OVERHEAD_WARMUP)
    count.pay()
    return {
        "format": FORMAT, "model": job.model, "fingerprint": model.fingerprint(), "batch_size": job.batch_size,
        "torch_version": str(torch.__version__), "host": socket.gethostname(), "threads": torch.get_num_threads(),
        "emulate": job.emulate, "emulated_factor": factor if job.emulate == "sleep" else None,
        "links": "measured" if job.links else "declared",
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "seconds": time.perf_counter() - t_start, "overhead_s": overhead, "layers": layers,
    }


def _order(t: Transport, device: str, order: dict) -> None:
    t.send(SERVER, device, pack(order), tag=TAG)


def _answer(t: Transport, device: str, timeout_s: float) -> dict:
    return unpack(t.recv(SERVER, device, tag=TAG, timeout_s=timeout_s), source=f"calibration from {device}")


def coordinate(job: CalibrationJob, profile: Profile, t: Transport, report) -> dict:
    """The server's part: every device measured, then every link (module docstring)."""
    devices = roles(profile)[1:]
    hosts: dict[str, list[str]] = {}
    for d in devices:
        hosts.setdefault(_answer(t, d, job.timeout_s)["host"], []).append(d)
    out: dict = {"calibrations": {}, "links": {}, "server_links": {}}
    waves = [[group[w] for group in hosts.values() if w < len(group)] for w in range(max(map(len, hosts.values())))]
    for d in devices:
        _order(t, d, {"op": "measure"})
    for _ in range(job.warmup + job.repeats):
        for now in waves:  # a device of each host at once
            for d in now:
                _order(t, d, {"op": "pass"})
            for d in now:
                _answer(t, d, job.timeout_s)
    done = 0
    for now in waves:
        for d in now:
            _order(t, d, {"op": "finish"})
        for d in now:
            out["calibrations"][d] = _answer(t, d, job.timeout_s)
            done += 1
            report("round", {"round": done, "step": "measured", "device": d, "total": len(devices)})
    if job.links:
        for c in profile.clients:
            names = [d.name for d in c.devices]
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    _order(t, b, {"op": "echo", "peer": a})
                    _order(t, a, {"op": "probe", "peer": b})
                    out["links"].setdefault(c.name, []).append({"a": a, "b": b, **_answer(t, a, job.timeout_s)})
                    report("round", {"round": done, "step": "link", "device": f"{a}-{b}", "total": len(devices)})
        for d in devices:
            _order(t, d, {"op": "echo", "peer": SERVER})
            out["server_links"][d] = asdict(linkprobe.probe(t, SERVER, d, timeout_s=job.timeout_s))
            report("round", {"round": done, "step": "link", "device": f"server-{d}", "total": len(devices)})
    for d in devices:
        _order(t, d, {"op": "done"})
    return out


def follow(job: CalibrationJob, profile: Profile, me: str, t: Transport) -> None:
    """A device's part: say where it runs, then do what the server says until done."""
    factor = next(d.processing_time_factor for c in profile.clients for d in c.devices if d.name == me)
    t.send(me, SERVER, pack({"host": socket.gethostname()}), tag=TAG)
    while True:
        order = unpack(t.recv(me, SERVER, tag=TAG, timeout_s=job.timeout_s), source=f"order to {me}")
        if order["op"] == "done":
            return
        if order["op"] == "measure":
            def turn(step: str) -> None:
                if step == "passed":
                    t.send(me, SERVER, pack({"passed": True}), tag=TAG)
                    return
                got = unpack(t.recv(me, SERVER, tag=TAG, timeout_s=job.timeout_s), source=f"order to {me}")
                if got.get("op") != step:
                    raise ValueError(f"expected the order {step!r}, found {got!r}")

            t.send(me, SERVER, pack(measure_here(job, factor, turn=turn)), tag=TAG)
        elif order["op"] == "echo":
            linkprobe.echo(t, me, order["peer"], timeout_s=job.timeout_s)
        elif order["op"] == "probe":
            fit = linkprobe.probe(t, me, order["peer"], timeout_s=job.timeout_s)
            t.send(me, SERVER, pack(asdict(fit)), tag=TAG)
        else:
            raise ValueError(f"unknown order {order!r}")


def play(job: CalibrationJob, me: str, ranks: dict[str, int], *, init_method: str, report) -> dict | None:
    """One process of a calibration, from joining the group to leaving it; the server
    returns every measurement, a device None."""
    torch.set_num_threads(DEVICE_THREADS)  # a device is one core, as profiles and both backends have it
    profile = load_profile(job.profile)
    dist.init_process_group("gloo", init_method=init_method, rank=ranks[me], world_size=len(ranks),
                            timeout=timedelta(seconds=job.timeout_s))
    t = DistTransport(me, ranks, peers(profile, me))
    if me == SERVER:
        result = coordinate(job, profile, t, report)
    else:
        result = None
        follow(job, profile, me, t)
    t.close(timeout_s=job.timeout_s)
    dist.destroy_process_group()
    return result


def calibrate(job: CalibrationJob, *, on_progress: Callable[[dict], None] | None = None) -> dict | None:
    """Run the calibration: ``{"calibrations": {device: entry}, "links": {client: [fit
    with a, b]}, "server_links": {device: fit}}`` (fits as ``linkprobe.LinkFit`` dicts).
    Under torchrun, ranks other than the server's return None."""
    profile = load_profile(job.profile)
    names = roles(profile)
    if in_torchrun():
        me, ranks = torchrun_role(names)
        try:
            return play(job, me, ranks, init_method="env://",
                        report=lambda kind, body: on_progress(body) if on_progress else None)
        except Exception as e:
            raise root_cause([RankFailure.of(me, 0, e)], 0) from e
    return run_ranks({n: i for i, n in enumerate(names)}, partial(play, job), quiet_limit_s=job.timeout_s,
                     on_round=on_progress)
