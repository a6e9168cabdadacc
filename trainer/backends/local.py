"""The local backend: every role a thread of this process, over an in-process transport.

Roles share this machine's cores. Under ``--emulate virtual`` (``trainer.roles.clock``) each
role's thread counts its own CPU time, so they compute side by side, each on one torch
thread. Otherwise a lock lets one compute at a time, under ``--emulate
sleep`` on one core as the profile measured (``trainer.roles.clock.DEVICE_THREADS``; with
``--emulate none`` on torch's threads, flat out), so the work each measures is what the
profile measured (``trainer.roles.clock``). The first role to fail aborts
the others (their ``recv`` raises at once) and its error, classified like the dist
backend's (``trainer.errors.root_cause``), is raised here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import nullcontext

from trainer.privacy import opened
from trainer.roles.build import RunSpec
from trainer.roles.clock import device_threads
from trainer.errors import RankFailure, RoleError, root_cause
from trainer.comm.protocol import WireLimits
from trainer.comm.transport import SERVER, InProcessTransport, LinkTable, Transport


def run_local(spec: RunSpec, run_role: Callable, *, on_start=None, on_round=None, on_step=None,
              transport: Transport | None = None) -> list[dict]:
    """Train as ``spec`` says with a thread per role, each running ``run_role`` (``trainer.run.loop``);
    returns every round's metrics."""
    emulate = spec.cfg.emulate
    t = transport or InProcessTransport(LinkTable.from_plan(spec.plan), emulate=emulate == "sleep",
                                        limits=WireLimits.from_plan(spec.plan, dp=spec.cfg.dp),
                                        virtual=emulate == "virtual")
    roles = spec.roles()
    # one device computes at a time: its block's time is then its own work, not stretched by a
    # thread sharing its core (sleep: wall time; virtual: CPU time, through the caches they share)
    lock = threading.Lock()
    result: dict[str, list[dict]] = {}
    failures: list[RankFailure] = []
    errors: dict[str, BaseException] = {}

    def report(kind: str, body: dict) -> None:
        hook = {"start": on_start, "round": on_round, "step": on_step}[kind]
        if hook:
            hook(body)

    def play(name: str) -> None:
        opened.record_thread(spec.data)  # every file this role's thread opens (trainer.privacy.opened)
        try:
            result[name] = run_role(spec, name, t, lock=lock, report=report if name == SERVER else None)
            opened.save(spec.cfg.out_dir, name)
        except BaseException as e:  # noqa: BLE001 - whatever a role raises ends the run
            errors[name] = e.cause if isinstance(e, RoleError) else e
            failures.append(RankFailure.of(name, 0, e))
            t.abort(roles, f"{name} failed")
        finally:
            opened.stop_thread()

    threads = [threading.Thread(target=play, args=(n,), name=f"fsl-{n}", daemon=True) for n in roles]
    # emulated devices compute on one core each, as profiled; --emulate none runs flat out
    with device_threads() if emulate != "none" else nullcontext():
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    if transport is None:
        t.close(timeout_s=spec.cfg.timeout_s)  # the emulated links' threads
    if failures:
        own = next((errors[f.role] for f in failures if f.kind == "own"), None)
        raise root_cause(failures, max(f.round_no for f in failures)) from own  # keeps a bug's traceback
    return result[SERVER]
