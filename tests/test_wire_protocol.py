"""The wire does not trust its peers: who may send what, and how much (trainer.comm.protocol).

Fast unit tests: an in-process transport for the senders, and the dist transport's
receiving thread fed by a fake peer (a stand-in for ``torch.distributed``), which shows a
header refused before its payload is allocated or read. The bounds are compared with
the bytes a real training step sends (the transport's own log) and with shapes computed
here from the model."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from trainer.comm.tags import TAGS
from planner.usermodel import build_model
from tests.helpers import chain_plan, config
from trainer.comm import protocol
from trainer.comm import wire
from trainer.comm.codecs import INT8_SIDE_BYTES
from trainer.roles.device import DeviceReport
from trainer.errors import ProtocolViolation, RankFailure, StopRound, root_cause
from trainer.comm.linkprobe import MAX_BYTES
from trainer.comm.protocol import RULES, WireLimits
from trainer.aggregate.secagg import KEY_BYTES
from trainer.comm.transport import SERVER, InProcessTransport
from trainer.comm.wire import HEADER_LEN, DistTransport, encode_header

PLAN = chain_plan("dcgan", [2, 6])  # c0-d0 (data) -> c0-d1 -> c0-d2, batch 8


def test_every_tag_has_a_rule():
    """A tag added to planner.schedule without a bound fails here (and is refused on the wire)."""
    assert set(RULES) == set(TAGS)


def test_unknown_tag_is_refused():
    with pytest.raises(ProtocolViolation, match="no rule"):
        protocol.check(WireLimits(), "c0-d0", SERVER, "gossip", torch.float32, (1,))


def test_constants_cover_what_the_code_sends():
    report = DeviceReport(*[float(i) for i in range(len(DeviceReport.__dataclass_fields__))]).to_tensor()
    assert report.dtype == torch.uint8 and report.numel() <= protocol.SMALL_BLOB_BYTES
    assert KEY_BYTES == protocol.KEY_BYTES and MAX_BYTES <= protocol.PROBE_BYTES


def test_stop_from_a_device_is_refused():
    """c0-d2 is no server: its ``stop`` fails c0-d1 with a violation naming c0-d2, where
    the server's would end the round (StopRound)."""
    t = InProcessTransport()
    t.send("c0-d2", "c0-d1", torch.zeros(0), tag="stop")
    with pytest.raises(ProtocolViolation) as e:
        t.recv("c0-d1", "c0-d0", tag="act_d", timeout_s=2, stoppable=True)
    assert e.value.src == "c0-d2" and "stop" in str(e.value)
    t2 = InProcessTransport()
    t2.send(SERVER, "c0-d1", torch.zeros(0), tag="stop")
    with pytest.raises(StopRound):
        t2.recv("c0-d1", "c0-d0", tag="act_d", timeout_s=2, stoppable=True)


def test_a_plan_switch_from_a_device_is_refused():
    t = InProcessTransport()
    t.send("c0-d0", "c0-d1", torch.tensor([0]), tag="round")
    with pytest.raises(ProtocolViolation) as e:
        t.recv("c0-d1", SERVER, tag="round", timeout_s=2)
    assert e.value.src == "c0-d0"


def test_the_violation_blames_the_peer():
    """The failure a person sees names the peer that broke the protocol, not the role that caught it."""
    exc = ProtocolViolation("c0-d1", "c0-d2", "'stop' may come only from the server")
    err = root_cause([RankFailure.of("c0-d1", 3, exc)], 3)
    assert err.device == "c0-d2" and err.round_no == 3


class FakePeer:
    """Stands in for ``torch.distributed`` on the receiving side: each ``recv`` copies the
    next of ``frames`` into the tensor posted, then blocks forever."""

    def __init__(self, frames: list[torch.Tensor]):
        self.frames, self.posted = list(frames), []
        self.forever = threading.Event()

    def recv(self, tensor: torch.Tensor, src: int) -> None:
        self.posted.append((tuple(tensor.shape), tensor.dtype))
        if not self.frames:
            self.forever.wait(30)
            raise RuntimeError("closed")
        tensor.copy_(self.frames.pop(0))


def _receive(monkeypatch, frames, *, me="c0-d1", peer="c0-d2", limits=None):
    fake = FakePeer(frames)
    monkeypatch.setattr(wire, "dist", fake)
    t = DistTransport(me, {SERVER: 0, "c0-d0": 1, me: 2, peer: 3}, [peer],
                      limits=limits or WireLimits.from_plan(PLAN))
    return t, fake


def _header(tag: str, shape, dtype=torch.float32, epoch: int = 1) -> torch.Tensor:
    h = torch.zeros(HEADER_LEN, dtype=torch.int64)
    h[:4] = torch.tensor([TAGS.index(tag), epoch, wire.DTYPES.index(dtype), len(shape)])
    h[4:4 + len(shape)] = torch.tensor(shape)
    return h


def test_an_oversized_header_is_refused_before_allocation(monkeypatch):
    """A header announcing 2^40 floats (4 TiB) for ``act_d``: refused naming the peer, and
    the payload is never posted (allocating it would fail with another error)."""
    t, fake = _receive(monkeypatch, [_header("act_d", [2 ** 20, 2 ** 20])])
    try:
        with pytest.raises(ProtocolViolation) as e:
            t.recv("c0-d1", "c0-d0", tag="grad_d", timeout_s=5)
        assert e.value.src == "c0-d2" and "exceeds the plan's bound" in str(e.value)
        assert fake.posted == [((HEADER_LEN,), torch.int64)]  # the header only
    finally:
        fake.forever.set()


def test_a_stop_header_from_a_device_is_refused_on_the_wire(monkeypatch):
    t, fake = _receive(monkeypatch, [_header("stop", [0])])
    try:
        with pytest.raises(ProtocolViolation, match="only from the server"):
            t.recv("c0-d1", "c0-d0", tag="act_d", timeout_s=5, stoppable=True)
    finally:
        fake.forever.set()


@pytest.mark.parametrize("header", [
    torch.tensor([len(TAGS), 1, 0, 1, 4] + [0] * 8),  # no such tag
    torch.tensor([TAGS.index("act_d"), 1, 99, 1, 4] + [0] * 8),  # no such dtype
    torch.tensor([TAGS.index("act_d"), 1, 0, 9] + [1] * 8 + [0]),  # too many dims
    torch.tensor([TAGS.index("act_d"), 1, 0, 2, -4, -4] + [0] * 7),  # negative sizes
    _header("state", [16], torch.float32),  # a torch.save payload must be bytes
])
def test_malformed_headers_are_refused(monkeypatch, header):
    t, fake = _receive(monkeypatch, [header])
    try:
        with pytest.raises(ProtocolViolation) as e:
            t.recv("c0-d1", "c0-d2", tag="grad_d", timeout_s=5)
        assert e.value.src == "c0-d2" and len(fake.posted) == 1
    finally:
        fake.forever.set()


def test_a_message_within_its_bound_arrives(monkeypatch):
    x = torch.randn(3, 4)
    t, fake = _receive(monkeypatch, [encode_header(x, "grad_d", 0), x])
    try:
        torch.testing.assert_close(t.recv("c0-d1", "c0-d2", tag="grad_d", timeout_s=5), x)
    finally:
        fake.forever.set()


def test_cut_bounds_are_the_units_activation():
    """The bound for ``act_d`` between two neighbours is 2 x batch x the output per sample
    of the unit before their cut, computed here by running the model; one more value is
    refused, and so is any activation between devices that share no cut."""
    model = build_model("dcgan")
    x, per_sample = torch.zeros(1, *model.input_shape), []
    with torch.no_grad():
        for i in range(len(model)):
            x = model.run(x, i, i + 1)
            per_sample.append(x[0].numel())
    limits = WireLimits.from_plan(PLAN)
    assert limits.param_bytes == 4 * sum(p.numel() for p in model.parameters())
    for (a, b), unit in ((("c0-d0", "c0-d1"), 2), (("c0-d1", "c0-d2"), 6)):  # PLAN cuts after units 2 and 6
        n = 2 * PLAN.batch_size * per_sample[unit]
        for src, dst in ((a, b), (b, a)):
            protocol.check(limits, dst, src, "act_d", torch.float32, (n,))
            protocol.check(limits, dst, src, "grad_d", torch.uint8, (n + INT8_SIDE_BYTES,))  # int8 codec
            with pytest.raises(ProtocolViolation):
                protocol.check(limits, dst, src, "act_d", torch.float32, (n + INT8_SIDE_BYTES // 4 + 1,))
    with pytest.raises(ProtocolViolation) as e:
        protocol.check(limits, "c0-d2", "c0-d0", "act_g", torch.float32, (1,))
    assert e.value.src == "c0-d0"


@pytest.mark.slow
def test_real_traffic_stays_within_the_bounds(tmp_path):
    """Every message of a real round (aggregation and checkpoint state included), as the
    transport logged it, is within its tag's bound; each cut's messages reach it exactly."""
    from trainer.backends.local import run_local
    from trainer.run.loop import run_role
    from trainer.roles.build import RunSpec

    plan = chain_plan("dcgan", [[2, 6], [4]], n_clients=2)
    t = InProcessTransport(keep_messages=True, limits=WireLimits.from_plan(plan))
    spec = RunSpec(config(tmp_path, plan, aggregate="fedavg", rounds=1, steps_per_round=1), plan)
    run_local(spec, run_role, transport=t)
    t.close(5)
    limits = WireLimits.from_plan(plan)
    sizes: dict[str, int] = {}
    for src, dst, tag, n in t.log.messages:
        bound = RULES[tag].max_bytes(limits, src, dst)
        assert n <= bound, (src, dst, tag, n)
        if tag in ("act_d", "grad_d", "act_g", "grad_g"):  # no codec: the bound less int8's side bytes, exactly
            assert n == bound - INT8_SIDE_BYTES, (src, dst, tag, n)
        sizes[tag] = max(sizes.get(tag, 0), n)
    assert {"fake", "act_d", "grad_d", "act_g", "grad_g", "weights", "state", "hello", "report"} <= set(sizes)
    model = build_model("dcgan")
    assert sizes["fake"] == plan.batch_size * 4 * math.prod(model.input_shape) == RULES["fake"].max_bytes(
        limits, SERVER, "c0-d0")
    assert sizes["weights"] <= limits.param_bytes
