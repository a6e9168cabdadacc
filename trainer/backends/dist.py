"""The dist backend: one process per planned device plus the server, over gloo.

:func:`run_dist` starts the processes itself (``spawn``; rank 0 is the server, then the
devices in plan order), each bound to 127.0.0.1 and a free port with one torch thread,
and supervises them: the first process to fail or go silent ends the run, every process
is killed, and the error names the device and the round. Each process builds only its
own role and loads only its own data: nothing but the plan and the options is handed to
it.

Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) this process is one rank; a JSON
file named by ``FSL_RANKS`` maps role names to ranks (default: server 0, then the plan's
devices in order), and the server's rank, whatever its number, reports the run.
:func:`check_launch` checks all of it before any process group forms (exit 2, one line).
A switch of plans (``--adapt``) re-forms the group under a fresh prefix of torchrun's
store, every rank on the new plan (``trainer.comm.switch``). docs/machines.md's block
is what ``tests/test_multinode.py`` runs, on one machine with two torchrun agents.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from multiprocessing.connection import wait as wait_any
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from planner.errors import InputError
from trainer.privacy import opened
from trainer.roles.build import RunSpec
from trainer.roles.clock import DEVICE_THREADS
from trainer.errors import DeviceFailure, RankFailure, RoleError, root_cause
from trainer.comm.protocol import WireLimits
from trainer.roles.where import BETWEEN_ROUNDS_S
from trainer.comm.switch import in_torchrun
from trainer.comm.transport import SERVER, LinkTable
from trainer.comm.wire import DistTransport

GRACE_S = 1.0  # after a first failure, how long to collect the other ranks' reports
_GROUPS = itertools.count()  # process groups this torchrun rank has formed (one per plan it followed)


def default_ranks(spec: RunSpec) -> dict[str, int]:
    return {n: i for i, n in enumerate(spec.roles())}


def peers_of(spec: RunSpec, me: str) -> list[str]:
    """Whom ``me`` exchanges messages with: the server talks to every device; a device to
    the server and the other devices of its client."""
    if me == SERVER:
        return spec.roles()[1:]
    _, c = spec.client_of(me)
    return [SERVER] + [s.device for s in c.stages if s.device != me]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _play(spec: RunSpec, run_role: Callable, me: str, ranks: dict[str, int], *, init_method: str, report,
          lock=None) -> list[dict]:
    """This process's role, from joining the group to leaving it (``lock``: the one its
    host's emulated roles compute under, one at a time; :func:`run_dist`)."""
    opened.record_process(spec.data)  # first: every file this role's process opens from here on
    torch.set_num_threads(DEVICE_THREADS)  # a device is one core (trainer.roles.clock)
    timeout = timedelta(seconds=spec.cfg.timeout_s + BETWEEN_ROUNDS_S)
    if init_method == "env://":  # torchrun: each plan this process follows meets under a fresh key prefix
        store, _, _ = next(dist.rendezvous(init_method, timeout=timeout))
        dist.init_process_group("gloo", store=dist.PrefixStore(f"fsl-plan-{next(_GROUPS)}", store), rank=ranks[me],
                                world_size=len(ranks), timeout=timeout)
    else:
        dist.init_process_group("gloo", init_method=init_method, rank=ranks[me], world_size=len(ranks),
                                timeout=timeout)
    t = DistTransport(me, ranks, peers_of(spec, me), links=LinkTable.from_plan(spec.plan),
                      emulate=spec.cfg.emulate == "sleep", limits=WireLimits.from_plan(spec.plan, dp=spec.cfg.dp),
                      virtual=spec.cfg.emulate == "virtual")
    history = run_role(spec, me, t, report=report, lock=lock)  # on failure the process exits without a goodbye
    opened.save(spec.cfg.out_dir, me)
    t.close(timeout_s=spec.cfg.timeout_s + BETWEEN_ROUNDS_S)  # the server says bye after its round's tail
    dist.destroy_process_group()
    return history


def _spawned(play: Callable, me: str, ranks: dict[str, int], port: int, conn) -> None:
    """Entry of a spawned rank: report to the parent through ``conn``, exit 1 on failure."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        history = play(me, ranks, init_method=f"tcp://127.0.0.1:{port}",
                       report=lambda kind, body: conn.send((kind, body)))
        conn.send(("done", history))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", RankFailure.of(me, 0, e)))
        conn.close()
        os._exit(1)


def _supervise(procs: dict, conns: dict, on_round, on_start, quiet_limit: float, on_step=None):
    names = {c: n for n, c in conns.items()}
    live, done, reported, failures, history = set(conns.values()), set(), set(), [], []
    round_no, first_failure = 0, None
    last_news = time.monotonic()
    while len(done) < len(procs):
        for c in wait_any(list(live), timeout=0.2):
            try:
                kind, body = c.recv()
            except (EOFError, OSError):
                live.discard(c)
                continue
            name, last_news = names[c], time.monotonic()
            if kind == "start":
                round_no = body["start_round"]
                if on_start:
                    on_start(body | {"pids": {n: p.pid for n, p in procs.items()}})
            elif kind == "step":
                if on_step:
                    on_step(body)
            elif kind == "round":
                round_no = body["round"]
                if on_round:
                    on_round(body)
            elif kind == "done":
                done.add(name)
                history = body if name == SERVER else history
            elif kind == "error":
                reported.add(name)
                failures.append(body)
        for name, p in procs.items():
            if name not in done and name not in reported and p.exitcode not in (None, 0):
                reported.add(name)
                failures.append(RankFailure.died(name, round_no + 1, p.exitcode))
        if failures and first_failure is None:
            first_failure = time.monotonic()
        if first_failure is not None and (time.monotonic() - first_failure > GRACE_S or not live):
            raise root_cause(failures, round_no + 1)
        if time.monotonic() - last_news > quiet_limit:
            raise DeviceFailure(SERVER, round_no + 1, f"no progress for {quiet_limit:.0f} s")
    return history


def _kill_all(procs: dict) -> None:
    for p in procs.values():
        if p.is_alive():
            p.kill()
    for p in procs.values():
        p.join(10)


def run_ranks(ranks: dict[str, int], play: Callable, *, quiet_limit_s: float, on_start=None, on_round=None,
              on_step=None):
    """Start a process per role of ``ranks`` (``spawn``), each running ``play(me, ranks, *,
    init_method, report)``, and supervise them (module docstring); returns what the
    server's ``play`` returned. ``play`` must pickle (a module-level function or a
    ``partial`` of one)."""
    port = free_port()
    ctx = mp.get_context("spawn")
    procs, conns = {}, {}
    try:
        for name in ranks:
            recv_end, send_end = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_spawned, args=(play, name, ranks, port, send_end), name=f"fsl-{name}",
                            daemon=True)
            p.start()
            send_end.close()
            procs[name], conns[name] = p, recv_end
        return _supervise(procs, conns, on_round, on_start, quiet_limit_s, on_step)
    finally:
        _kill_all(procs)


def run_dist(spec: RunSpec, run_role: Callable, *, on_start=None, on_round=None, on_step=None) -> list[dict]:
    """Train as ``spec`` says with a process per role, each running ``run_role`` (``trainer.run.loop``); returns every round's metrics (on a
    torchrun rank other than the server's: ``[]``, or after a switch of plans the record
    to resume from, ``trainer.comm.switch``)."""
    if in_torchrun():
        return _torchrun(spec, run_role, on_start=on_start, on_round=on_round, on_step=on_step)
    quiet = spec.cfg.timeout_s * (spec.cfg.steps_per_round + 3) + BETWEEN_ROUNDS_S
    # emulated devices on this one host compute one at a time, as the local backend's threads
    # do: two processes sharing a core stretch each other's time (sleep: wall; virtual: CPU,
    # through the caches)
    lock = mp.get_context("spawn").Lock() if spec.cfg.emulate != "none" else None
    return run_ranks(default_ranks(spec), partial(_play, spec, run_role, lock=lock), quiet_limit_s=quiet, on_start=on_start,
                     on_round=on_round, on_step=on_step)


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise InputError(name, None, f"expected an integer (torchrun sets it), found {value!r}") from None


def read_ranks() -> dict[str, int] | None:
    """``FSL_RANKS``'s role -> rank map (None when unset); InputError naming the variable
    and its file if that is missing, unreadable, not JSON or not role -> integer."""
    source = os.environ.get("FSL_RANKS")
    if source is None:
        return None
    where = f"FSL_RANKS={source}"
    try:
        text = Path(source).read_text()
    except OSError as e:
        raise InputError(where, None, f"cannot read the ranks file ({e.strerror or type(e).__name__})") from None
    except ValueError as e:  # an empty or NUL-containing path
        raise InputError(where, None, f"not a file name ({e})") from None
    try:
        ranks = json.loads(text)
    except ValueError as e:
        raise InputError(where, None, f"not JSON ({e})") from None
    if not isinstance(ranks, dict):
        raise InputError(where, None, f"expected an object of role -> rank, found a {type(ranks).__name__}")
    for role, rank in ranks.items():
        if type(rank) is not int:
            raise InputError(where, role, f"expected an integer rank, found {rank!r}")
    return ranks


def torchrun_role(roles: list[str]) -> tuple[str, dict[str, int]]:
    """Under torchrun: this process's role and every role's rank, from ``FSL_RANKS`` (a
    JSON file of role -> rank) or ``roles`` in order; InputError if they disagree."""
    world, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    given = read_ranks()
    ranks = given if given is not None else {n: i for i, n in enumerate(roles)}
    source = f"FSL_RANKS={os.environ['FSL_RANKS']}" if given is not None else "WORLD_SIZE"
    if set(ranks) != set(roles) or sorted(ranks.values()) != list(range(world)):
        raise InputError(source, None, f"expected ranks 0..{world - 1} for {sorted(roles)}, found {ranks}")
    if not 0 <= rank < world:
        raise InputError("RANK", None, f"{rank} is outside 0..{world - 1}")
    return next(n for n, k in ranks.items() if k == rank), ranks


def reports_here() -> bool:
    """Whether this process reports the run (progress, summary): outside torchrun always;
    under it, only the server's rank, whatever its number in ``FSL_RANKS``."""
    if not in_torchrun():
        return True
    ranks = read_ranks()
    return _env_int("RANK") == (0 if ranks is None else ranks.get(SERVER, 0))


def check_launch(spec: RunSpec) -> None:
    """How this process was started agrees with the options, before anything starts:
    under torchrun the ranks (``torchrun_role``) and the backend; ``FSL_RANKS`` only there."""
    cfg = spec.cfg
    if not in_torchrun():
        if "FSL_RANKS" in os.environ:
            raise InputError("FSL_RANKS", None, "is set, but this process is no torchrun rank (RANK and WORLD_SIZE "
                             "unset): run under torchrun, or unset it")
        return
    if cfg.backend != "dist":
        raise InputError("--backend", None, f"{cfg.backend} under torchrun would train the whole run once per rank; "
                         "use --backend dist")
    if cfg.replan_on_failure:
        raise InputError("--replan-on-failure", None, "not under torchrun: its agent stops every process of a "
                         "machine when one fails, so none is left to follow the new plan; rerun with --resume")
    torchrun_role(spec.roles())


def _torchrun(spec: RunSpec, run_role: Callable, *, on_start, on_round, on_step=None) -> list[dict]:
    me, ranks = torchrun_role(spec.roles())

    def report(kind: str, body: dict) -> None:
        hook = {"start": on_start, "round": on_round, "step": on_step}[kind]
        if hook:
            hook(body)

    try:
        return _play(spec, run_role, me, ranks, init_method="env://", report=report)
    except RoleError as e:
        raise root_cause([RankFailure.of(me, e.round_no, e)], e.round_no) from e.cause
