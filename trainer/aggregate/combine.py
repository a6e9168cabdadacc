"""Combining discriminators between rounds, through the transport like everything else.

Each device sends its segment's parameters (one flat tensor) to the server; the server
puts each client's discriminator together (its stages in chain order cover the model
in order), combines, and sends each device its part back. The server sees every
client's weights (SECURITY.md says what that means), unless ``--secure-agg`` masks them
(``trainer.aggregate.secagg``): then it sees masked vectors and their average only. A client
dropped by ``--deadline-s`` still sends its weights after its steps, and is averaged in,
masked or not; under ``--secure-agg`` a device whose weights do not arrive has its masks
removed with its key rebuilt from the other clients' shares (``trainer.aggregate.secagg_round``).

- ``fedavg``: every client gets the average of all, weighted by the number of training
  samples its data device reported, layer by layer (FedAvg, McMahan et al. 2017).
- ``swap``: client ``i`` gets client ``i-1``'s discriminator (MD-GAN's swapping,
  Hardy et al. 2019), so each generator critic sees other data over time.
"""

from __future__ import annotations

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from trainer.aggregate.secagg import ANSWER_TIMEOUTS, KeyRing
from trainer.aggregate.secagg_round import ServerRing, secure_combine
from trainer.comm.transport import SERVER, Transport


def combine(mode: str, whole: dict[str, torch.Tensor], weights: dict[str, float]) -> dict[str, torch.Tensor]:
    """Each client's new flat discriminator from every client's (same layout)."""
    names = list(whole)
    if mode == "fedavg":
        total = sum(weights[c] for c in names)
        avg = sum(whole[c] * (weights[c] / total) for c in names)
        return {c: avg for c in names}
    if mode == "swap":
        return {c: whole[names[i - 1]] for i, c in enumerate(names)}
    raise ValueError(f"unknown aggregation {mode!r}")


def device_exchange(name: str, stage: torch.nn.Module, t: Transport, *, timeout_s: float | None,
                    late_ok: bool = False, masker: KeyRing | None = None, round_no: int = 0) -> None:
    params = list(stage.parameters())
    flat = parameters_to_vector(params).detach() if params else torch.zeros(0)
    if masker is None:
        t.send(name, SERVER, flat, tag="weights")
    else:
        masker.masker.send(name, t, flat, round_no=round_no, timeout_s=timeout_s, late_ok=late_ok)
    wait_s = timeout_s if masker is None or timeout_s is None else ANSWER_TIMEOUTS * timeout_s
    new = t.recv(name, SERVER, tag="weights", timeout_s=wait_s, late_ok=late_ok)
    if masker is not None:
        masker.setup(t, late_ok=late_ok)  # the next round's keys
    if params and new.numel():  # an empty answer: the server skipped this round's secure aggregation
        with torch.no_grad():
            vector_to_parameters(new, params)


def server_combine(mode: str, chains: dict[str, list[str]], weights: dict[str, float], t: Transport,
                   *, timeout_s: float | None, late: set[str] = frozenset(),
                   secure: ServerRing | None = None) -> str | None:
    """Combine and answer every device; returns why the round's aggregation was skipped
    (only under secure aggregation, ``trainer.aggregate.secagg_round``), else None."""
    if secure is not None:
        return secure_combine(secure, t, late=late, timeout_s=timeout_s)
    parts = {c: [t.recv(SERVER, d, tag="weights", timeout_s=timeout_s, late_ok=d in late) for d in chain]
             for c, chain in chains.items()}
    whole = {c: torch.cat(p) for c, p in parts.items()}
    new = combine(mode, whole, weights)
    for c, chain in chains.items():
        sizes = [p.numel() for p in parts[c]]
        for d, piece in zip(chain, torch.split(new[c], sizes)):
            t.send(SERVER, d, piece, tag="weights")
    return None
