"""The protocol once: every message a run sends (recorded by the transport,
``trainer.comm.msgtrace``) against ``trainer.comm.sequence``'s declaration, link by link, for every
plan shape: 1 to 4 stages, M = 1 and 4, no aggregation, fedavg and swap, a client
dropped by the deadline, both backends. Injected deviations, in a real run and in a
recorded trace, are caught."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.helpers import chain_plan, config, write_factory
from trainer import train
from trainer.comm import msgtrace
from trainer.backends.local import run_local
from trainer.run.loop import run_role
from trainer.roles.build import RunSpec
from trainer.comm.sequence import Message, RunShape, declare, deviations, observed
from trainer.comm.transport import InProcessTransport

# (cuts per client, M, aggregation): every stage count 1-4 with M = 1 and with M = 4,
# every aggregation; the factory model's 6 layers cut after layers 0, 1 and 3
SLOW = pytest.mark.slow  # 5-13 s each on the loaded 2-core machine; the fast tier checks a 2-stage run below
SHAPES = [
    pytest.param([[1], [0, 1, 3]], 4, "swap", id="2+4 stages M4 swap", marks=SLOW),
    pytest.param([[], [0, 2]], 1, "fedavg", id="1+3 stages M1 fedavg", marks=SLOW),
    pytest.param([[], [0, 2]], 4, "none", id="1+3 stages M4 none", marks=SLOW),
    pytest.param([[1], [0, 1, 3]], 1, "fedavg", id="2+4 stages M1 fedavg", marks=SLOW),
]


def _traced(tmp_path, monkeypatch, plan, *, transport=None, **kw) -> tuple[list[dict], list[dict], object]:
    """Train ``plan`` with the message trace on: (metrics, trace rows, config)."""
    folder = tmp_path / "trace"
    folder.mkdir()
    monkeypatch.setenv(msgtrace.ENV, str(folder))
    cfg = config(tmp_path, plan, **({"rounds": 2, "steps_per_round": 2} | kw))
    history = run_local(RunSpec(cfg, plan), run_role, transport=transport) if transport else train(cfg)
    monkeypatch.delenv(msgtrace.ENV)
    return history, msgtrace.read(folder), cfg


def _check(plan, cfg, history, rows) -> list[str]:
    shape = RunShape.of(plan, cfg, history, closing=cfg.backend == "dist")
    return deviations(declare(shape), observed(rows))


@pytest.mark.parametrize("cuts, M, aggregate", SHAPES)
def test_every_message_of_a_run_is_the_declared_one(tmp_path, monkeypatch, cuts, M, aggregate):
    plan = chain_plan(write_factory(tmp_path), cuts, batch=8, micro_batches=M)
    history, rows, cfg = _traced(tmp_path, monkeypatch, plan, aggregate=aggregate, steps_per_round=1)
    assert _check(plan, cfg, history, rows) == []
    tags = {r["tag"] for r in rows}
    assert {"act_d", "grad_d", "act_g", "grad_g", "fake", "fake_grad", "losses", "state", "saved"} <= tags
    assert ("weights" in tags) == (aggregate != "none")


@pytest.mark.slow  # a training run of several seconds
def test_a_deviation_in_a_real_run_is_caught(tmp_path, monkeypatch):
    """The data device sends ``saved`` twice in the last round: nobody reads the second,
    the run ends well, and the trace check names the link and the message."""
    plan = chain_plan(write_factory(tmp_path), [[1]], batch=8)
    t = InProcessTransport()
    send = t.send

    def twice(src, dst, tensor, *, tag):
        span = send(src, dst, tensor, tag=tag)
        if tag == "saved" and t.epoch(src) == 2:
            send(src, dst, tensor, tag=tag)
        return span

    t.send = twice
    history, rows, cfg = _traced(tmp_path, monkeypatch, plan, transport=t, steps_per_round=1)
    assert [m["round"] for m in history] == [1, 2]
    assert _check(plan, cfg, history, rows) == [
        "c0-d0 -> server message 8: 'saved' of round 2 (outside the steps, 1 rows) sent after the last declared "
        "message"]


def test_deviations_in_a_recorded_trace_are_caught(tmp_path, monkeypatch):
    """A missing micro-batch, two messages swapped, a wrong row count, a wrong round and
    an undeclared link are each reported, once, on their link."""
    plan = chain_plan(write_factory(tmp_path), [[0, 2]], batch=8, micro_batches=4)
    history, rows, cfg = _traced(tmp_path, monkeypatch, plan, rounds=1)
    shape = RunShape.of(plan, cfg, history, closing=False)
    want, seen = declare(shape), observed(rows)
    assert deviations(want, seen) == []
    link = ("c0-d1", "c0-d2")
    first = seen[link][:4]
    assert [m.tag for m in first] == ["act_d"] * 4 and [m.rows for m in first] == [4] * 4  # 2B/M rows each
    mutations = {
        "missing": seen[link][:2] + seen[link][3:],
        "swapped": [seen[link][4], *seen[link][:4], *seen[link][5:]],
        "rows": [replace(seen[link][0], rows=8), *seen[link][1:]],
        "round": [replace(seen[link][0], round=2), *seen[link][1:]],
    }
    for what, msgs in mutations.items():
        found = deviations(want, seen | {link: msgs})
        assert len(found) == 1 and found[0].startswith("c0-d1 -> c0-d2 message "), (what, found)
    assert "c0-d0 -> c0-d2" in deviations(want, seen | {("c0-d0", "c0-d2"): [Message("act_d", 1)]})[0]
    assert deviations(want, seen | {link: seen[link][:-1]}) == [
        "c0-d1 -> c0-d2 message 15: expected 'act_g' of round 1 (step 1, micro-batch 3, 2 rows), nothing more was sent"]


@pytest.mark.slow  # a 2 s deadline and a slowed client
def test_a_client_dropped_by_the_deadline_follows_the_declared_sequence(tmp_path, monkeypatch):
    """A client 200x slower than its plan is dropped in its first step: its links carry a
    prefix of that step, the server sends each of its devices ``stop`` after the last
    ``fake``, and the round still ends with weights, reports, state and saved."""
    plan = chain_plan(write_factory(tmp_path), [[1], [0, 2]], batch=8)
    fast, slow = plan.clients
    plan = replace(plan, clients=(fast, replace(slow, processing_time_factor={d: 200.0 for d in
                                                                              slow.processing_time_factor})))
    history, rows, cfg = _traced(tmp_path, monkeypatch, plan, rounds=1, steps_per_round=3, emulate="sleep",
                                 deadline_s=0.5, timeout_s=20.0, aggregate="fedavg")
    assert history[0]["clients"]["client1"]["dropped_at_step"] == 0
    assert _check(plan, cfg, history, rows) == []
    assert [r["tag"] for r in rows if r["src"] == "server" and r["dst"] == "c1-d1"] == ["start", "round", "stop",
                                                                                      "weights"]


@pytest.mark.slow  # a process per device
def test_the_dist_backend_sends_the_declared_sequence(tmp_path, monkeypatch):
    """Every process records its own sends; together they are the declaration, with a
    ``bye`` closing every link."""
    plan = chain_plan(write_factory(tmp_path), [[1], [0, 1, 3]], batch=8, micro_batches=4)
    history, rows, cfg = _traced(tmp_path, monkeypatch, plan, backend="dist", aggregate="swap")
    assert len({r["pid"] for r in rows}) == 1 + 2 + 4
    assert _check(plan, cfg, history, rows) == []
    assert [m["round"] for m in history] == [1, 2]
