"""DP-SGD's part of a run, around the steps (``trainer.privacy.dpsgd``): the ledger, SIGMA, the budget.

- The data device opens its client's ledger (``DIR/privacy/<client>.json``,
  ``trainer.privacy.accountant.Ledger``; a resumed run goes on charging it), decides SIGMA (given,
  or chosen so the planned steps stay within ``--dp-epsilon``), tells its client's other
  devices (``dp_sigma``), and charges the ledger before each step's batch is drawn.
- After each round it sends the server the ledger's summary and the round's Poisson batch
  sizes (``ledger``): metrics.jsonl's privacy fields, recomputable by anyone from
  ``dp_q``, ``dp_noise``, ``dp_steps`` and ``delta``.
- The server refuses a delta of ``1 / N`` or more, and ends the run (exit 0, said in the
  round's metrics) when another round would take a client past ``--dp-epsilon``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer import state
from trainer.privacy.accountant import Ledger, check_delta, planned_noise
from trainer.privacy.dpsgd import SIGMA
from trainer.comm.transport import SERVER, Transport

LEDGER = "ledger"  # data device -> server, each round: the ledger's summary and the round's batch sizes


def ledger_path(out_dir: Path, client: str) -> Path:
    return Path(out_dir) / "privacy" / f"{client}.json"


def open_ledger(spec, role, data, *, head: bool) -> Ledger | None:
    """The data device's ledger, before it says hello (a resumed run goes on charging it)."""
    cfg = spec.cfg
    if not head:
        return None
    path = ledger_path(cfg.out_dir, role.client)
    path.parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(path, client=role.client, records=len(data), batch_size=spec.plan.batch_size,
                         delta=cfg.dp_delta, clip=cfg.clip, target_epsilon=cfg.dp_epsilon)
    role.charge = lambda: ledger.charge(role.dp.sigma, path)
    # SIGMA now, not once the rounds start: the search takes seconds, which the first round's deadline would pay
    role.dp.sigma = planned_noise(ledger, sigma=cfg.dp_noise, planned_steps=cfg.rounds * cfg.steps_per_round)
    return ledger


def share_noise(spec, role, ledger: Ledger | None, me: str, head: str, t: Transport, *, timeout_s: float) -> None:
    """Once the run starts: the data device tells the client's other devices its SIGMA."""
    if ledger is None:
        role.dp.sigma = float(t.recv(me, head, tag=SIGMA, timeout_s=timeout_s).item())
        return
    for d in role.dp.peers:
        t.send(me, d, torch.tensor([role.dp.sigma], dtype=torch.float64), tag=SIGMA)


def report_round(me: str, role, ledger: Ledger, t: Transport) -> None:
    t.send(me, SERVER, state.pack(ledger.summary() | {"dp_batch_sizes": list(role.batch_sizes)}), tag=LEDGER)


def check_start(cfg, records: dict[str, int], batch_size: int) -> None:
    """The server, once it knows every client's records: delta below 1 / N, a batch within N."""
    check_delta(cfg.dp_delta, records, batch_size)


def receive(cfg, t: Transport, heads: dict[str, str], late: set[str]) -> dict[str, dict]:
    """The server, right after the round's reports: each DP client's ledger summary."""
    return {client: state.unpack(t.recv(SERVER, head, tag=LEDGER, timeout_s=cfg.timeout_s, late_ok=head in late),
                                 source=f"privacy ledger of {client}") for client, head in heads.items()}


def _over(client: str, summary: dict, steps: int) -> str | None:
    """Why ``steps`` more steps would take ``client`` past its ``--dp-epsilon``, or None."""
    target = summary["dp_target_epsilon"]
    if target is None or not summary["dp_steps"]:
        return None
    nxt = Ledger.of_summary(client, summary).epsilon(steps)
    if nxt <= target * (1 + 1e-9):
        return None
    return (f"{client} has spent epsilon {summary['epsilon']:.3g} in {summary['dp_steps']} steps; another round "
            f"would reach {nxt:.3g} > --dp-epsilon {target:g}")


def round_privacy(cfg, ledgers: dict[str, dict], m: dict) -> str | None:
    """The server, after a round: each DP client's privacy into ``m``; returns why the run
    must stop (another round would exceed ``--dp-epsilon``), or None."""
    for client, summary in ledgers.items():
        m["clients"][client].update(summary)
    if m["round"] >= cfg.rounds:
        return None
    return "; ".join(filter(None, (_over(c, s, cfg.steps_per_round) for c, s in ledgers.items()))) or None


def exhausted(cfg, processes: list[dict]) -> str | None:
    """On resume: why no round can start (a client's ledger leaves no room for one more
    round within ``--dp-epsilon``), or None."""
    rows = [r for r in processes if r.get("privacy")]
    return "; ".join(filter(None, (_over(r["client"], r["privacy"], cfg.steps_per_round) for r in rows))) or None
