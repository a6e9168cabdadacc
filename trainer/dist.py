"""The ``dist`` backend: one process per planned device plus the server, over gloo.

``train_dist`` starts the processes itself (``spawn``; rank 0 is the server, then the
devices in plan order), each bound to 127.0.0.1 and a free port, each with one torch
thread, and supervises them: the first process to fail or go silent ends the run, every
process is killed, and :class:`DeviceFailure` names the device and the round. The
server writes metrics, samples and checkpoints exactly as the local backend does
(``trainer.dist_worker`` has the rank loop and the message schedule around the roles').

Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) this process is one rank; a JSON
file named by ``FSL_RANKS`` maps role names to ranks (default: server 0, then the
plan's devices in order). Two machines, a server plus devices on one and the rest on
the other, with the same plan, data and code on both::

    # ranks.json: {"server": 0, "a-phone": 1, "a-laptop": 2, "b-phone": 3}
    # machine A (10.0.0.1): ranks 0-1
    FSL_RANKS=ranks.json torchrun --nnodes 2 --node-rank 0 --nproc-per-node 2 \
        --master-addr 10.0.0.1 --master-port 29500 -m cli train --plan plan.json --backend dist --out run
    # machine B: ranks 2-3
    FSL_RANKS=ranks.json torchrun --nnodes 2 --node-rank 1 --nproc-per-node 2 \
        --master-addr 10.0.0.1 --master-port 29500 -m cli train --plan plan.json --backend dist --out run

(Checked on one machine: ``torchrun --nnodes 1 --nproc-per-node 3 --master-addr
127.0.0.1 ... -m cli train --backend dist`` for a plan of one client on two devices.)

Only rank 0 (the server) writes ``--out``. ``--resume`` reads the checkpoint there and
sends every device its state, so devices need no shared disk.

Wire format (:class:`DistTransport`): a message is a fixed header then the payload, both plain tensors; nothing is pickled::

    header (int64, HEADER_LEN): [tag id, dtype code, ndim, dim0, ..., dim7]
    payload: the tensor itself, contiguous (skipped when it has no elements)

The receiver learns the payload's shape and dtype from the header. One receiving thread
per peer posts ``dist.recv`` for the header, then for the payload, and puts the result
on that peer's FIFO queue; ``recv(timeout_s=...)`` waits on the queue. So a ``recv``
that timed out leaves the message to the next ``recv`` (the server's deadline path
relies on this), ``stop`` raises :class:`StopRound` and silence raises
:class:`PeerTimeout`, as :class:`~trainer.transport.InProcessTransport` does. A peer
whose connection breaks surfaces as :class:`PeerLost` on the next ``recv`` from it.

``close()`` sends ``bye`` to every peer and waits for theirs, so every receiving thread
ends before the process group is destroyed.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import threading
import time
from datetime import timedelta
from multiprocessing.connection import wait as wait_any
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from planner.errors import InputError
from trainer.federation import check_plan_model
from trainer.transport import LOST, SERVER, LinkTable, PeerLost, Transport  # noqa: F401 - PeerLost: API

MAX_DIMS = 8
HEADER_LEN = 3 + MAX_DIMS
TAGS = ("stop", "bye", "fake", "act_d", "grad_d", "act_g", "grad_g", "fake_grad", "losses", "weights",
        "metrics", "state", "start", "round")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.uint8, torch.bool)


def encode_header(tensor: torch.Tensor, tag: str) -> torch.Tensor:
    if tag not in TAGS:
        raise ValueError(f"unknown tag {tag!r}; known: {', '.join(TAGS)}")
    if tensor.dtype not in DTYPES or tensor.dim() > MAX_DIMS:
        raise ValueError(f"cannot send a {tensor.dtype} tensor of {tensor.dim()} dims")
    dims = list(tensor.shape) + [0] * (MAX_DIMS - tensor.dim())
    return torch.tensor([TAGS.index(tag), DTYPES.index(tensor.dtype), tensor.dim(), *dims], dtype=torch.int64)


def decode_header(header: torch.Tensor) -> tuple[str, torch.dtype, tuple[int, ...]]:
    tag_id, dtype_id, ndim, *dims = header.tolist()
    return TAGS[tag_id], DTYPES[dtype_id], tuple(dims[:ndim])


class DistTransport(Transport):
    """Point-to-point tensors between roles that live in different ranks."""

    def __init__(self, me: str, ranks: dict[str, int], peers: list[str], *, links: LinkTable | None = None,
                 emulate: bool = False):
        super().__init__(links, emulate=emulate)
        self.me, self.ranks, self.peers = me, ranks, list(peers)
        self._queues = {p: queue.Queue() for p in self.peers}
        self._threads = [threading.Thread(target=self._receive, args=(p,), name=f"recv-{p}", daemon=True)
                         for p in self.peers]
        for th in self._threads:
            th.start()

    def _receive(self, src: str) -> None:
        q, rank = self._queues[src], self.ranks[src]
        while True:
            try:
                header = torch.empty(HEADER_LEN, dtype=torch.int64)
                dist.recv(header, src=rank)
                tag, dtype, shape = decode_header(header)
                payload = torch.empty(shape, dtype=dtype)
                if payload.numel():
                    dist.recv(payload, src=rank)
            except Exception as e:  # noqa: BLE001 - handed to the role's next recv
                q.put((LOST, e))
                return
            q.put((tag, payload))
            if tag == "bye":
                return

    def _put(self, src: str, dst: str, tag: str, payload: torch.Tensor) -> None:
        rank = self.ranks[dst]
        dist.send(encode_header(payload, tag), dst=rank)
        if payload.numel():
            dist.send(payload, dst=rank)

    def _inbox(self, dst: str, src: str) -> queue.Queue:
        return self._queues[src]

    def close(self, timeout_s: float) -> None:
        """Say ``bye`` to every peer, then wait (bounded) until each peer has said it."""
        for p in self.peers:
            self.send(self.me, p, torch.zeros(0), tag="bye")
        deadline = time.monotonic() + timeout_s
        for th in self._threads:
            th.join(max(0.0, deadline - time.monotonic()))


# ----------------------------------------------------------------------------- launcher

PEER_ERRORS = ("PeerTimeout", "PeerLost")  # errors that blame the peer they name
GRACE_S = 1.0  # after a first failure, how long to collect the other ranks' reports


class DeviceFailure(RuntimeError):
    """A rank of a ``dist`` run failed or went silent; ``device`` and ``round_no`` say where."""

    def __init__(self, device: str, round_no: int, detail: str):
        self.device, self.round_no = device, round_no
        super().__init__(f"{device} failed in round {round_no}: {detail}")


def default_ranks(plan) -> dict[str, int]:
    names = [SERVER] + [s.device for c in plan.planned for s in c.stages]
    return {n: i for i, n in enumerate(names)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_group(cfg, *, rank: int, world: int, init_method: str) -> None:
    from trainer.dist_worker import BETWEEN_ROUNDS_S

    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world,
                            timeout=timedelta(seconds=cfg.timeout_s + BETWEEN_ROUNDS_S))


def _spawned(cfg, plan, dataset, me: str, ranks: dict[str, int], port: int, conn) -> None:
    """Entry of a spawned rank: report to the parent through ``conn``, exit 1 on failure."""
    from trainer.dist_worker import RankFailure, run_rank

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    try:
        _init_group(cfg, rank=ranks[me], world=len(ranks), init_method=f"tcp://127.0.0.1:{port}")
        history = run_rank(cfg, plan, dataset, me=me, ranks=ranks, report=lambda k, b: conn.send((k, b)))
        dist.destroy_process_group()
        conn.send(("done", history))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        cause = e.cause if isinstance(e, RankFailure) else e
        body = {"round": getattr(e, "round_no", 0), "peer": getattr(e, "peer", None),
                "type": type(cause).__name__, "message": str(cause)}
        if isinstance(cause, InputError):
            body["input"] = (cause.source, cause.field, cause.problem)
        conn.send(("error", body))
        conn.close()
        os._exit(1)


def _root_cause(failures: list[tuple[str, dict | int]], round_no: int) -> Exception:
    """The failure that explains the others: bad input, then a dead process, then an
    error of its own, then a peer's silence (which names the silent peer)."""
    for name, f in failures:
        if isinstance(f, dict) and "input" in f:
            return InputError(*f["input"])
    reported = {n for n, f in failures if isinstance(f, dict)}
    for name, f in failures:
        if isinstance(f, int) and name not in reported:
            how = f"killed by {signal.Signals(-f).name}" if f < 0 else f"exit code {f}"
            return DeviceFailure(name, round_no, f"its process died ({how})")
    errors = [(n, f) for n, f in failures if isinstance(f, dict)]
    own = [(n, f) for n, f in errors if f["type"] not in PEER_ERRORS]
    for name, f in own:
        return DeviceFailure(name, f["round"] or round_no, f"{f['type']}: {f['message']}")
    for name, f in errors:
        return DeviceFailure(f["peer"] or name, f["round"] or round_no, f"{f['type']}: {f['message']}")
    return DeviceFailure("?", round_no, "unknown failure")


def _supervise(cfg, procs: dict, conns: dict, on_round, on_start) -> list[dict]:
    names = {c: n for n, c in conns.items()}
    live, done, exited, failures, history = set(conns.values()), set(), set(), [], []
    round_no, first_failure = 0, None
    quiet_limit = cfg.timeout_s * (cfg.steps_per_round + 3) + 600.0
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
            elif kind == "round":
                round_no = body["round"]
                if on_round:
                    on_round(body)
            elif kind == "done":
                done.add(name)
                history = body if name == SERVER else history
            elif kind == "error":
                failures.append((name, body))
        for name, p in procs.items():
            if name not in done and name not in exited and p.exitcode not in (None, 0):
                exited.add(name)
                failures.append((name, p.exitcode))
        if failures and first_failure is None:
            first_failure = time.monotonic()
        if first_failure is not None and (time.monotonic() - first_failure > GRACE_S or not live):
            raise _root_cause(failures, round_no + 1)
        if time.monotonic() - last_news > quiet_limit:
            raise DeviceFailure(SERVER, round_no + 1, f"no progress for {quiet_limit:.0f} s")
    return history


def _kill_all(procs: dict) -> None:
    for p in procs.values():
        if p.is_alive():
            p.kill()
    for p in procs.values():
        p.join(10)


def train_dist(cfg, plan, *, on_round=None, on_start=None, dataset=None) -> list[dict]:
    """Train as ``plan`` says with a process per role; returns every round's metrics
    (on a torchrun rank other than 0: ``[]``)."""
    from trainer.data import load_dataset

    check_plan_model(plan, str(cfg.plan_path))
    state = Path(cfg.out_dir) / "checkpoint" / "state.pt"
    if not cfg.resume and state.exists():
        raise InputError(str(cfg.out_dir), None, "holds a run already; pass --resume to continue it or choose another --out")
    if dataset is None:
        dataset = load_dataset(cfg.data, root=cfg.data_root)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _train_torchrun(cfg, plan, dataset, on_round=on_round, on_start=on_start)
    ranks, port = default_ranks(plan), free_port()
    ctx = mp.get_context("spawn")
    procs, conns = {}, {}
    try:
        for name in ranks:
            recv_end, send_end = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_spawned, args=(cfg, plan, dataset, name, ranks, port, send_end),
                            name=f"fsl-{name}", daemon=True)
            p.start()
            send_end.close()
            procs[name], conns[name] = p, recv_end
        return _supervise(cfg, procs, conns, on_round, on_start)
    finally:
        _kill_all(procs)


def _train_torchrun(cfg, plan, dataset, *, on_round, on_start) -> list[dict]:
    from trainer.dist_worker import RankFailure, run_rank

    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    source = os.environ.get("FSL_RANKS")
    ranks = {str(k): int(v) for k, v in json.loads(Path(source).read_text()).items()} if source else default_ranks(plan)
    want = set(default_ranks(plan))
    if set(ranks) != want or sorted(ranks.values()) != list(range(world)):
        raise InputError(source or "WORLD_SIZE", None, f"expected ranks 0..{world - 1} for {sorted(want)}, "
                         f"found {ranks}")
    me = next(n for n, k in ranks.items() if k == rank)

    def report(kind, body):
        hook = on_start if kind == "start" else on_round
        if hook:
            hook(body)

    _init_group(cfg, rank=rank, world=world, init_method="env://")
    try:
        return run_rank(cfg, plan, dataset, me=me, ranks=ranks, report=report)
    except RankFailure as e:
        who = e.peer if type(e.cause).__name__ in PEER_ERRORS and e.peer else e.role
        raise DeviceFailure(who, e.round_no, f"{type(e.cause).__name__}: {e.cause}") from e
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
