"""Typed failures of a training run, and the rule that picks the one that explains the rest.

A role (the server or a device) fails with an exception; both backends turn it into a
:class:`RankFailure` record (in the dist backend it travels to the supervisor as one), and
:func:`root_cause` turns the records of a failed round into the one error a person sees:
bad input first, then a run that diverged (:class:`Diverged`), then a process that died, then a role's own error, then a peer's
silence, lost connection or protocol violation (which names that peer). Roles that were only woken up
because another failed (:class:`RunAborted`) explain nothing.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from planner.errors import InputError


class StopRound(Exception):
    """The server dropped this role's client: the round's steps are over for it."""


class RunAborted(Exception):
    """Another role failed and the run is being torn down."""


class PeerFailure(Exception):
    """A peer did not answer: ``src`` is the peer, ``dst`` the role that waited."""

    def __init__(self, dst: str, src: str, message: str):
        self.src, self.dst = src, dst
        super().__init__(message)


class PeerTimeout(PeerFailure):
    """A ``recv`` waited longer than its timeout."""

    def __init__(self, dst: str, src: str, tag: str, timeout_s: float):
        self.tag = tag
        super().__init__(dst, src, f"{dst} waited {timeout_s:.0f} s for {tag!r} from {src}")


class PeerLost(PeerFailure):
    """The connection to a peer broke (its process died)."""

    def __init__(self, dst: str, src: str, cause: BaseException):
        super().__init__(dst, src, f"{dst} lost its connection to {src} ({type(cause).__name__}: {str(cause)[:160]})")


class ProtocolViolation(PeerFailure):
    """A peer sent what the protocol does not allow it (``trainer.comm.protocol``): a tag it may
    not send, or a header whose dtype or size is past the bound the plan sets."""

    def __init__(self, dst: str, src: str, problem: str):
        super().__init__(dst, src, f"{dst} refused a message from {src}: {problem}")


class ProtocolError(RuntimeError):
    """A message that the step's schedule does not allow at this point."""


class RoleError(Exception):
    """What a role raised, and in which round (1-based; 0 before the first)."""

    def __init__(self, role: str, round_no: int, cause: BaseException):
        self.role, self.round_no, self.cause = role, round_no, cause
        super().__init__(f"{role} failed in round {round_no}: {type(cause).__name__}: {cause}")


@dataclass(frozen=True)
class RankFailure:
    """One role's failure, as plain data (it crosses process boundaries)."""

    role: str
    round_no: int
    kind: str  # input | diverged | died | own | peer | aborted
    message: str
    peer: str | None = None  # the peer blamed (kind "peer")
    input: tuple[str, str | None, str] | None = None  # InputError's (source, field, problem)

    @classmethod
    def of(cls, role: str, round_no: int, exc: BaseException) -> "RankFailure":
        if isinstance(exc, RoleError):
            role, round_no, exc = exc.role, exc.round_no, exc.cause
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, InputError):
            return cls(role, round_no, "input", text, input=(exc.source, exc.field, exc.problem))
        if isinstance(exc, Diverged):
            return cls(role, round_no, "diverged", exc.detail)
        if isinstance(exc, RunAborted):
            return cls(role, round_no, "aborted", text)
        if isinstance(exc, PeerFailure):
            return cls(role, round_no, "peer", text, peer=exc.src)
        return cls(role, round_no, "own", text)

    @classmethod
    def died(cls, role: str, round_no: int, exitcode: int) -> "RankFailure":
        how = f"killed by {signal.Signals(-exitcode).name}" if exitcode < 0 else f"exit code {exitcode}"
        return cls(role, round_no, "died", f"its process died ({how})")


class DeviceFailure(RuntimeError):
    """A role of the run failed or went silent; ``device`` and ``round_no`` say where."""

    def __init__(self, device: str, round_no: int, detail: str):
        self.device, self.round_no = device, round_no
        super().__init__(f"{device} failed in round {round_no}: {detail}")


class Diverged(DeviceFailure):
    """Training produced a non-finite number (a loss, a gradient, the generator's output
    or weights): an outcome of the settings, not a fault. The round stops at the step
    that saw it; the last complete round's checkpoint stays for ``--resume`` with other
    settings (exit 1). ``detail`` says the step and where: which client, or the generator."""

    def __init__(self, detail: str, round_no: int = 0, role: str = "server"):
        self.detail = detail
        kept = (f"the checkpoint of round {round_no - 1} is kept: --resume it with a smaller --lr" if round_no > 1
                else "no round was complete: start again with a smaller --lr")
        RuntimeError.__init__(self, f"training diverged in round {round_no}, {detail}; {kept}")
        self.device, self.round_no = role, round_no


def root_cause(failures: list[RankFailure], round_no: int) -> Exception:
    """The failure that explains the others (see the module docstring)."""
    for f in failures:
        if f.kind == "input" and f.input is not None:
            return InputError(*f.input)
    for f in failures:
        if f.kind == "diverged":
            return Diverged(f.message, f.round_no or round_no, f.role)
    for kind in ("died", "own"):
        for f in failures:
            if f.kind == kind:
                return DeviceFailure(f.role, f.round_no or round_no, f.message)
    for f in failures:
        if f.kind == "peer":
            return DeviceFailure(f.peer or f.role, f.round_no or round_no, f.message)
    return DeviceFailure("?", round_no, "the run was aborted without a reported cause")
