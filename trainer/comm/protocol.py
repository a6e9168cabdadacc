"""What a peer may send: for every tag of ``trainer.comm.tags.TAGS``, who may send it, in
which dtypes, and the largest payload the protocol allows, derived from the plan.

A peer is not trusted to be well-behaved: a ``stop`` or a plan switch (``round [0]``)
from anyone but the server, or a header announcing more bytes than the plan's shapes
allow, is refused before anything is allocated (``trainer.comm.wire`` checks the header,
``trainer.comm.transport`` every message that arrives), and the receiving role fails with a
:class:`~trainer.errors.ProtocolViolation` naming the peer.

The bounds (bytes; :class:`WireLimits` holds the plan's numbers, all float32 as SPEC §2
counts them)::

    fake, fake_grad         batch_size x one input sample
    act_d, grad_d           2 x batch_size x the output per sample of the unit before their cut
                            (+ int8's side bytes); nothing between devices that share no cut
                            (under DP-SGD the real half is a Poisson batch: up to POISSON_ROWS of it)
    act_g, grad_g           batch_size x the same
    dp_sigma                one float64;  dp_norms, dp_scale: a float64 per real row (POISSON_ROWS)
    ledger                  a torch.save payload: BOOKKEEPING_BYTES
    losses                  two values
    start, round, saved     one int64;  stop, bye: empty
    plan                    a plan's JSON file: BOOKKEEPING_BYTES
    weights                 every discriminator parameter, as int64 (secure aggregation's encoding)
    state                   the model's parameters x 3 (weights and Adam's two moments) + BOOKKEEPING_BYTES
    hello, report           torch.save payloads of a few names and numbers: SMALL_BLOB_BYTES
    trace, calib            torch.save payloads of bookkeeping: BOOKKEEPING_BYTES
    secagg                  a key per role, a weight per client
    probe, probe_ack        the link probe's largest payload; one float32

A tag without a rule is refused (and ``tests/test_wire_protocol.py`` fails until a new
tag gets one): add a line to :data:`RULES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from planner.schedule import LOSS_VALUES
from trainer.comm.tags import TAGS
from planner.usermodel import build_model
from trainer.comm.codecs import INT8_SIDE_BYTES
from trainer.errors import ProtocolViolation

SERVER = "server"

KEY_BYTES = 32  # an X25519 public key (trainer.aggregate.secagg)
PROBE_BYTES = 64 * 1024 * 1024  # the link probe's largest payload (trainer.comm.linkprobe.MAX_BYTES)
SMALL_BLOB_BYTES = 1024 * 1024  # hello, report: a few names and numbers in a torch.save payload
BOOKKEEPING_BYTES = 64 * 1024 * 1024  # a data sampler's permutation (8 M samples), traces, measurements

FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})
CUT_DTYPES = FLOATS | {torch.uint8}  # fp16 and int8 codecs (int8 travels as bytes)
BLOB = frozenset({torch.uint8})  # torch.save payloads (trainer.state.pack)
INTS = frozenset({torch.int64, torch.int32})
ANY_DTYPE = FLOATS | INTS | BLOB


def poisson_rows(batch_size: int) -> int:
    """A hard bound on a DP-SGD Poisson batch of mean ``batch_size``: Binomial(N, B/N)
    exceeds 4B + 64 with probability below 1e-30 for every B >= 1 (Chernoff), so a run
    never meets it, while a peer cannot make a process allocate more."""
    return 4 * batch_size + 64


@dataclass(frozen=True)
class WireLimits:
    """The plan's numbers the bounds derive from (bytes, float32); zeros: no plan (fsl
    calibrate), so no step message is allowed at all."""

    batch_size: int = 0
    sample_bytes: int = 0  # one input sample (an image)
    cuts: dict[tuple[str, str], int] = field(default_factory=dict)  # (a, b) neighbours: their cut's bytes per sample
    param_bytes: int = 0  # every parameter of the discriminator (float32)
    roles: int = 1  # the server and every planned device
    clients: int = 0
    real_rows: int = 0  # the most real rows of a phase d message: batch_size, or a DP-SGD Poisson batch's bound

    def cut_bytes(self, src: str, dst: str) -> int:
        """Per sample, what crosses the cut between ``src`` and ``dst`` (0: no cut of theirs)."""
        return self.cuts.get((src, dst), 0)

    @classmethod
    def from_plan(cls, plan, *, param_bytes: int | None = None, dp: bool = False) -> "WireLimits":
        """The bounds of a run of ``plan``. Its ``output_bytes`` are checked against the
        model before a run starts (``trainer.roles.build``); its ``param_bytes`` are not, so
        unless given they are counted on the model itself."""
        if param_bytes is None:
            model = build_model(plan.model["name"], source="plan", field="model.name")
            param_bytes = 4 * sum(p.numel() for p in model.parameters())
        cuts = {}
        for c in plan.planned:
            for s, nxt in zip(c.stages, c.stages[1:]):
                per_sample = -(-int(plan.model["layers"][s.end - 1]["output_bytes"]) // plan.batch_size)
                cuts[(s.device, nxt.device)] = cuts[(nxt.device, s.device)] = per_sample
        return cls(batch_size=plan.batch_size, sample_bytes=4 * math.prod(plan.model["input_shape"]), cuts=cuts,
                   param_bytes=param_bytes, roles=1 + sum(len(c.stages) for c in plan.planned),
                   clients=len(plan.planned), real_rows=poisson_rows(plan.batch_size) if dp else plan.batch_size)


@dataclass(frozen=True)
class Rule:
    sender: str  # "server": only the server may send it; "device": only a device; "any"
    dtypes: frozenset
    max_bytes: Callable[[WireLimits, str, str], int]  # (limits, src, dst) -> bytes


def _cut(samples: int) -> Rule:
    def bound(w: WireLimits, src: str, dst: str) -> int:
        per_sample = w.cut_bytes(src, dst)
        rows = w.batch_size + (w.real_rows or w.batch_size) if samples == 2 else w.batch_size
        return rows * per_sample + INT8_SIDE_BYTES if per_sample else 0

    return Rule("device", CUT_DTYPES, bound)


def _fixed(sender: str, dtypes: frozenset, n: int) -> Rule:
    return Rule(sender, dtypes, lambda w, src, dst: n)


RULES: dict[str, Rule] = {
    # a step (planner.schedule's diagram)
    "fake": Rule("server", FLOATS, lambda w, src, dst: w.batch_size * w.sample_bytes),
    "fake_grad": Rule("device", FLOATS, lambda w, src, dst: w.batch_size * w.sample_bytes),
    "act_d": _cut(2), "grad_d": _cut(2), "act_g": _cut(1), "grad_g": _cut(1),
    "losses": _fixed("device", FLOATS, LOSS_VALUES * 8),
    # control
    "stop": _fixed("server", ANY_DTYPE, 0),
    "start": _fixed("server", INTS, 8),
    "round": _fixed("server", INTS, 8),  # round [0]: the server switches plans
    "plan": _fixed("server", BLOB, BOOKKEEPING_BYTES),  # the new plan's JSON (trainer.comm.switch)
    "hello": _fixed("device", BLOB, SMALL_BLOB_BYTES),
    "report": _fixed("device", BLOB, SMALL_BLOB_BYTES),
    "trace": _fixed("device", BLOB, BOOKKEEPING_BYTES),
    "state": Rule("device", BLOB, lambda w, src, dst: 3 * w.param_bytes + BOOKKEEPING_BYTES),
    "saved": _fixed("device", INTS, 8),
    "weights": Rule("any", FLOATS | INTS, lambda w, src, dst: 2 * w.param_bytes),
    "secagg": Rule("any", BLOB | FLOATS, lambda w, src, dst: max(w.roles * KEY_BYTES, w.clients * 8)),
    "bye": _fixed("any", ANY_DTYPE, 0),
    "calib": _fixed("any", BLOB, BOOKKEEPING_BYTES),
    "probe": _fixed("any", BLOB, PROBE_BYTES),
    "probe_ack": _fixed("any", FLOATS, 4),
    # DP-SGD within a client, and its ledger (trainer.privacy.dpsgd, trainer.privacy.dprun)
    "dp_sigma": _fixed("device", FLOATS, 8),
    "dp_norms": Rule("device", FLOATS, lambda w, src, dst: 8 * (w.real_rows or w.batch_size)),
    "dp_scale": Rule("device", FLOATS, lambda w, src, dst: 8 * (w.real_rows or w.batch_size)),
    "ledger": _fixed("device", BLOB, BOOKKEEPING_BYTES),
}


def check(limits: WireLimits | None, dst: str, src: str, tag: str, dtype: torch.dtype,
          shape: tuple[int, ...]) -> None:
    """Raise :class:`ProtocolViolation` (naming ``src``) unless ``src`` may send ``dst``
    a ``tag`` message of this dtype and shape. Without ``limits`` only the sender is
    checked (in-process tests with hand-made plans)."""
    rule = RULES.get(tag)
    if rule is None:
        raise ProtocolViolation(dst, src, f"tag {tag!r} has no rule in trainer.comm.protocol (known: {', '.join(TAGS)})")
    if rule.sender == "server" and src != SERVER or rule.sender == "device" and src == SERVER:
        raise ProtocolViolation(dst, src, f"{tag!r} may come only from {'the server' if src != SERVER else 'a device'}")
    if limits is None:
        return
    if dtype not in rule.dtypes:
        raise ProtocolViolation(dst, src, f"{tag!r} as {dtype}, allowed: {sorted(map(str, rule.dtypes))}")
    if any(n < 0 for n in shape):
        raise ProtocolViolation(dst, src, f"{tag!r} of shape {list(shape)}")
    size = math.prod(shape) * dtype.itemsize
    bound = rule.max_bytes(limits, src, dst)
    if size > bound:
        raise ProtocolViolation(dst, src, f"{tag!r} of shape {list(shape)} ({size} bytes) exceeds the plan's bound "
                                f"of {bound} bytes")
