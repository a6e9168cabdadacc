"""Errors raised at the edges, carrying what a person needs to fix the input."""

from __future__ import annotations


class InputError(Exception):
    """A wrong input: the CLI prints ``str(err)`` on one line and exits 2.

    ``source`` names the file (or option), ``field`` the place inside it (``clients[0].
    devices[1].capacity``), ``problem`` what was found and what was expected.
    """

    def __init__(self, source: str, field: str | None, problem: str):
        self.source, self.field, self.problem = str(source), field, problem
        where = f"{self.source}: {field}" if field else self.source
        super().__init__(f"{where}: {problem}")


class NoFeasiblePlan(Exception):
    """No client can be planned within its budgets (exit 3); ``reasons`` per client."""

    def __init__(self, reasons: dict[str, str]):
        self.reasons = reasons
        super().__init__("; ".join(f"{k}: {v}" for k, v in reasons.items()))
