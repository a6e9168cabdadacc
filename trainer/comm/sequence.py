"""The message sequence of a run, declared once: on each link (sender, receiver), which
tags follow one another, in which round, step and micro-batch, with how many rows.

``planner.schedule`` draws one step and ``trainer.run.loop`` the messages around the steps;
this module writes both down as data, per link, so that a run's actual traffic
(``trainer.comm.msgtrace``) can be compared with it message by message
(``tests/test_sequence.py`` does, for every plan shape). On each link the order is fixed
(one thread sends on it); across links it is not (devices of a pipeline work as their
inputs arrive), so the declaration is per link::

    server -> d (every device)  start | per round: round [r], (d0: fake x S), (stop), (weights) | (bye)
    d -> server                 hello | per round: (d0: fake_grad, last: losses) x S, (weights),
                                        report, (last round: trace), (d0: saved) | (bye)
    d_i -> d_i+1 (forward)      per round, per step: act_d x M (2B/M rows), act_g x M (B/M rows)
    d_i+1 -> d_i (backward)     per round, per step: grad_d x M (2B/M rows), grad_g x M (B/M rows)
    d -> d0 (not d0)            per round, after the step messages: state
    d <-> any peer (dist)       bye, once, at the end

A client the server drops at step ``s`` (``--deadline-s``) sends the messages of ``s`` or
``s + 1`` steps (its step ``s`` may end after the server stopped waiting), and the
server sends each of its devices ``stop`` after the last ``fake`` it sent it.
Not declared here (a run with them fails the check): DP-SGD, secure aggregation, resume,
plan switches.

``fsl calibrate --no-links`` (``trainer.adapt.calibrate``; one host): every message is ``calib``:
``server -> d``: measure, pass x (warmup + repeats), finish, done; ``d -> server``: hello,
passed x (warmup + repeats), its calibration; then ``bye`` on every link, the devices of a
client among themselves too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.schedule import FAKE, FAKE_GRAD, LOSSES

SERVER = "server"


@dataclass(frozen=True)
class Message:
    """One message as declared or as recorded; ``step``/``micro`` None outside the steps,
    ``rows`` None where the first dimension is not declared."""

    tag: str
    round: int
    step: int | None = None
    micro: int | None = None
    rows: int | None = None
    optional: bool = False  # a dropped client's last step: the link may carry any prefix of these


@dataclass(frozen=True)
class RunShape:
    """What a run's sequence depends on."""

    chains: dict[str, tuple[str, ...]]  # client -> its devices, data device first
    micro_batches: dict[str, int]  # client -> M
    plain_cuts: dict[str, tuple[bool, ...]]  # client -> per cut: sent as float rows (codec "none")
    batch_size: int
    rounds: int
    steps: int
    aggregate: str  # "none", "fedavg" or "swap"
    closing: bool  # the dist backend: every peer says bye at the end
    dropped: dict[tuple[int, str], int] = field(default_factory=dict)  # (round, client) -> step it was dropped at

    @classmethod
    def of(cls, plan, cfg, history: list[dict], *, closing: bool) -> "RunShape":
        dropped = {(m["round"], c): row["dropped_at_step"] for m in history
                   for c, row in m["clients"].items() if row.get("dropped_at_step") is not None}
        return cls(chains={c.name: tuple(s.device for s in c.stages) for c in plan.planned},
                   micro_batches={c.name: c.micro_batches for c in plan.planned},
                   plain_cuts={c.name: tuple(s.codec == "none" for s in c.stages[:-1]) for c in plan.planned},
                   batch_size=plan.batch_size, rounds=cfg.rounds, steps=cfg.steps_per_round,
                   aggregate=cfg.aggregate, closing=closing, dropped=dropped)


Links = dict[tuple[str, str], list[Message]]


def _step(links: Links, shape: RunShape, client: str, r: int, s: int, *, cut_short: bool = False) -> None:
    """One step's messages of ``client`` (planner.schedule's diagram, M micro-batches);
    ``cut_short``: the server stopped waiting for it, so each link carries a prefix."""
    chain, B, M = shape.chains[client], shape.batch_size, shape.micro_batches[client]
    links[(SERVER, chain[0])].append(Message(FAKE.tag, r, s, None, B))
    o = cut_short
    for i, (a, b) in enumerate(zip(chain, chain[1:])):
        plain = shape.plain_cuts[client][i]
        for tags, rows in ((("act_d", "grad_d"), 2 * B // M), (("act_g", "grad_g"), B // M)):
            for m in range(M):
                links[(a, b)].append(Message(tags[0], r, s, m, rows if plain else None, o))
                links[(b, a)].append(Message(tags[1], r, s, m, rows if plain else None, o))
    links[(chain[0], SERVER)].append(Message(FAKE_GRAD.tag, r, s, None, B, o))
    links[(chain[-1], SERVER)].append(Message(LOSSES, r, s, None, None, o))


def declare(shape: RunShape) -> Links:
    """Every link's messages, in order (see the module docstring)."""
    links: Links = {}
    devices = [d for chain in shape.chains.values() for d in chain]
    for chain in shape.chains.values():
        for a in (SERVER, *chain):
            for b in (SERVER, *chain):
                if a != b:
                    links[(a, b)] = []
    for d in devices:
        links[(d, SERVER)].append(Message("hello", 0))
        links[(SERVER, d)].append(Message("start", 0))
    for r in range(1, shape.rounds + 1):
        for d in devices:
            links[(SERVER, d)].append(Message("round", r))
        for c, chain in shape.chains.items():
            dropped = shape.dropped.get((r, c))
            for s in range(shape.steps if dropped is None else dropped + 1):
                _step(links, shape, c, r, s, cut_short=s == dropped)
            if dropped is not None:
                for d in chain:
                    links[(SERVER, d)].append(Message("stop", r))
        for c, chain in shape.chains.items():
            for d in chain:
                if shape.aggregate != "none":
                    links[(d, SERVER)].append(Message("weights", r))
                    links[(SERVER, d)].append(Message("weights", r))
                links[(d, SERVER)].append(Message("report", r))
                if r == shape.rounds:
                    links[(d, SERVER)].append(Message("trace", r))
                if d != chain[0]:
                    links[(d, chain[0])].append(Message("state", r))
            links[(chain[0], SERVER)].append(Message("saved", r))
    if shape.closing:
        for msgs in links.values():
            msgs.append(Message("bye", shape.rounds))
    return links


def declare_calibration(clients: dict[str, list[str]], *, passes: int) -> Links:
    """``fsl calibrate --no-links``'s messages on one host (module docstring); ``clients``:
    each client's devices, ``passes``: warmup + repeats."""
    links: Links = {}
    for devices in clients.values():
        for d in devices:
            links[(SERVER, d)] = [Message("calib", 0) for _ in range(passes + 3)] + [Message("bye", 0)]
            links[(d, SERVER)] = [Message("calib", 0) for _ in range(passes + 2)] + [Message("bye", 0)]
            links.update({(d, e): [Message("bye", 0)] for e in devices if e != d})
    return links


def observed(rows: list[dict]) -> Links:
    """The recorded trace (``trainer.comm.msgtrace.read``) per link, in send order. The
    transport does not know a message's step and micro-batch: its place on the link
    does, and its rows are checked against the declared message's."""
    links: Links = {}
    for row in sorted(rows, key=lambda x: (x["pid"], x["seq"])):
        links.setdefault((row["src"], row["dst"]), []).append(
            Message(row["tag"], row["round"], rows=row["shape"][0] if row["shape"] else None))
    return links


def _matches(w: Message, g: Message) -> bool:
    return (w.tag, w.round) == (g.tag, g.round) and (w.rows is None or w.rows == g.rows)


def _describe(m: Message) -> str:
    where = f"step {m.step}, micro-batch {m.micro}" if m.step is not None else "outside the steps"
    return f"{m.tag!r} of round {m.round} ({where}{f', {m.rows} rows' if m.rows is not None else ''})"


def _link(want: list[Message], got: list[Message]) -> str | None:
    """Where ``got`` departs from ``want`` on one link, or None; of a run of optional
    messages ``got`` may hold any prefix."""
    i = j = 0
    while i < len(want):
        w = want[i]
        if j < len(got) and _matches(w, got[j]):
            i, j = i + 1, j + 1
        elif w.optional:  # the prefix ended: skip the rest of the run
            while i < len(want) and want[i].optional:
                i += 1
        else:
            sent = f"sent {got[j].tag!r} of round {got[j].round} with {got[j].rows} rows" if j < len(got) \
                else "nothing more was sent"
            return f"message {j}: expected {_describe(w)}, {sent}"
    if j < len(got):
        return f"message {j}: {_describe(got[j])} sent after the last declared message"
    return None


def deviations(declared: Links, seen: Links) -> list[str]:
    """Each link where ``seen`` departs from ``declared``: a link used that is not
    declared, a message out of order, of another round, tag or row count, one missing
    or one too many (the first such place per link)."""
    out = [f"{a} -> {b}: {len(seen[(a, b)])} messages on a link the sequence does not have"
           for a, b in sorted(set(seen) - set(declared))]
    for (a, b), want in sorted(declared.items()):
        why = _link(want, seen.get((a, b), []))
        if why:
            out.append(f"{a} -> {b} {why}")
    return out
