"""Link emulation: what a plan says a link between two devices costs, and a link that
takes that long to carry each message.

Under ``--emulate sleep`` a step message between two devices of a client takes
``bytes / link_bytes_per_s + latency / 4`` seconds (the plan's own tables; SPEC §2
charges a link's latency once per cut and micro-batch, and four messages cross it).
Control messages and the server's are not planned and not delayed. The link, not the
sender, takes that time: ``send`` returns at once and the message arrives when the link
has carried it, after what it carried before (:class:`EmulatedLink`), so a device
computes its next micro-batch while its last activation is on the wire, as SPEC §2.1's
cuts are units of their own. Every message between a pair goes through its link, in order.

Under ``--emulate virtual`` nothing sleeps: :class:`VirtualLinks` computes when each
message arrives in the emulated world, ``max(sent, link free) + delay``, with the same
delay and the same occupancy (a direction is busy until its message has arrived).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from planner.schedule import MESSAGES_PER_CUT_PER_MICRO_BATCH


@dataclass
class LinkTable:
    """Bandwidth (bytes/s) and latency (s) between named devices, from a plan."""

    bytes_per_s: dict[tuple[str, str], float] = field(default_factory=dict)
    latency_s: dict[tuple[str, str], float] = field(default_factory=dict)

    def delay_s(self, src: str, dst: str, nbytes: int) -> float:
        key = (src, dst)
        if key not in self.bytes_per_s:
            return 0.0
        return nbytes / self.bytes_per_s[key] + self.latency_s[key] / MESSAGES_PER_CUT_PER_MICRO_BATCH

    @classmethod
    def from_plan(cls, plan) -> "LinkTable":
        table = cls()
        for c in plan.planned:
            p = c.costs
            for a, da in enumerate(p.devices):
                for b, db in enumerate(p.devices):
                    if a != b:
                        table.bytes_per_s[(da, db)] = p.link_bytes_per_s[a][b]
                        table.latency_s[(da, db)] = p.link_latency_s[a][b]
        return table


class EmulatedLink:
    """One direction between two roles under emulation: messages leave in the order sent,
    each ``delay`` seconds after the link is free (its previous message arrived), and are
    handed on by this link's own thread at that moment. An error handing one on (a peer
    gone) is raised by the sender's next send over this link."""

    def __init__(self, hand_on, name: str):
        self._hand_on = hand_on
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._free_at = 0.0
        self._pending = 0
        self._idle = threading.Condition()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def carry(self, dst: str, envelope, delay_s: float) -> tuple[float, float]:
        """Queue ``envelope``; returns when its transfer starts and ends (perf_counter)."""
        if self.error is not None:
            raise self.error
        start = max(time.perf_counter(), self._free_at)
        self._free_at = end = start + delay_s
        with self._idle:
            self._pending += 1
        self._queue.put((end, dst, envelope))
        return start, end

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            end, dst, envelope = item
            wait = end - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            try:
                if self.error is None:
                    self._hand_on(dst, envelope)
            except BaseException as e:  # noqa: BLE001 - the sender sees it on its next send
                self.error = e
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait (bounded) until every queued message is handed on; True if it was."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def stop(self) -> None:
        self._queue.put(None)


class VirtualLinks:
    """``--emulate virtual``'s links: each direction's occupancy in virtual seconds. Only a
    direction's sender calls :meth:`carry` for it, so each process of the dist backend
    keeps its own directions and computes the stamps the local backend does."""

    def __init__(self, table: LinkTable):
        self.table = table
        self.free_s: dict[tuple[str, str], float] = defaultdict(float)  # (src, dst) -> free from

    def carry(self, src: str, dst: str, sent_s: float, nbytes: int, *, step: bool) -> tuple[float, float]:
        """When a message of ``nbytes`` sent at ``sent_s`` starts over the link and when it
        arrives. Only a step message between two devices of a plan takes time (as under
        ``sleep``); any other arrives as it is sent."""
        if not step or (src, dst) not in self.table.bytes_per_s:
            return sent_s, sent_s
        start = max(sent_s, self.free_s[(src, dst)])
        self.free_s[(src, dst)] = end = start + self.table.delay_s(src, dst, nbytes)
        return start, end
