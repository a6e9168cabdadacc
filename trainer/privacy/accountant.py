"""Epsilon of DP-SGD (``trainer.privacy.dpsgd``): what a client's discriminator has cost its records.

Each step, a client's data device draws a Poisson batch (each of its ``N`` records
independently with probability ``q = B / N``), and every device of the client adds
Gaussian noise of standard deviation ``SIGMA x C`` to the sum of the per-sample gradients
clipped to ``C`` over the whole discriminator. A step is therefore the Poisson-subsampled
Gaussian mechanism with rate ``q`` and noise multiplier ``SIGMA`` (Abadi et al., CCS
2016), and ``T`` steps compose. Its privacy loss is accounted with Renyi DP (Mironov,
Talwar, Zhang, "Renyi Differential Privacy of the Sampled Gaussian Mechanism", 2019) and
converted to ``(epsilon, delta)`` (Balle et al. 2020, Thm. 21): Opacus's own
``compute_rdp`` / ``get_privacy_spent`` over the orders of its ``RDPAccountant``.

``T`` counts every step that touched the data: the data device charges its client's
:class:`Ledger` (a file in the run folder, written atomically) before it draws the
step's batch, so a round that fails, is re-run or resumed is charged for each step it
began. Everything that leaves a client under DP (the generator feedback, the
discriminator's weights, the fake half of its loss) is computed from the noised updates
and from no record directly: post-processing, covered by this epsilon.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from planner.errors import InputError
from planner.jsonio import write_atomic

# Opacus's RDPAccountant.DEFAULT_ALPHAS
ORDERS = tuple(1 + x / 10.0 for x in range(1, 100)) + tuple(float(a) for a in range(12, 64))
# Below this noise multiplier SIGMA^2 underflows and Opacus's series divide by zero or
# never converge (measured: 1e-160 raises, 1e-200 hangs); epsilon there is at least ~1e200.
MIN_NOISE = 1e-100
DEFAULT_DELTA = 1e-5


def epsilon(segments: list[tuple[float, float, int]], *, delta: float) -> float:
    """Epsilon after ``segments`` of ``(q, SIGMA, steps)`` (RDP composes by addition);
    ``inf`` for a noise multiplier too small to account; no steps cost nothing."""
    segments = [(q, s, n) for q, s, n in segments if n > 0]
    if not segments:
        return 0.0
    if any(not s >= MIN_NOISE for _, s, _ in segments):
        return math.inf
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    rdp = sum(np.asarray(compute_rdp(q=q, noise_multiplier=s, steps=n, orders=list(ORDERS))) for q, s, n in segments)
    with warnings.catch_warnings():  # "optimal order is the smallest/largest alpha": still a valid bound
        warnings.simplefilter("ignore")
        eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def noise_for(target_epsilon: float, *, delta: float, q: float, steps: int) -> float:
    """The smallest noise multiplier (to Opacus's tolerance 0.01 in epsilon) whose ``steps``
    steps at rate ``q`` stay within ``target_epsilon``: Opacus's ``get_noise_multiplier``,
    checked once more with :func:`epsilon` so the promise is ours to keep."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # "optimal order is the largest alpha": still a valid bound
        warnings.simplefilter("ignore")
        sigma = float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=q,
                                           steps=steps, accountant="rdp"))
    while epsilon([(q, sigma, steps)], delta=delta) > target_epsilon:
        sigma *= 1.001
    return sigma


def check_delta(delta: float, records: dict[str, int], batch_size: int) -> None:
    """InputError naming ``--dp-delta`` (``delta >= 1/N`` protects no record) or
    ``--dp-noise`` (a shard smaller than a batch: the sampling rate would exceed 1)."""
    for client, n in records.items():
        if n < batch_size:
            raise InputError("--dp-noise", None, f"client {client} holds {n} records, fewer than a batch of "
                             f"{batch_size}: the sampling rate B / N would exceed 1")
        if delta >= 1.0 / n:
            raise InputError("--dp-delta", None, f"{delta:g} is not below 1 / N = {1 / n:.3g} for client {client} "
                             f"({n} records): such a delta allows leaking a whole record")


@dataclass
class Ledger:
    """One client's privacy spending, kept by its data device in ``DIR/privacy/<client>.json``."""

    client: str
    records: int  # N
    batch_size: int  # B: the expected Poisson batch
    delta: float
    clip: float  # C
    target_epsilon: float | None  # --dp-epsilon; None: SIGMA was given
    segments: list[list] = field(default_factory=list)  # [q, SIGMA, steps] of each stretch of the run

    @property
    def q(self) -> float:
        return self.batch_size / self.records

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.segments)

    def epsilon(self, extra_steps: int = 0) -> float:
        """Epsilon of the steps charged, and of ``extra_steps`` more like the last ones."""
        more = [(*self.segments[-1][:2], extra_steps)] if extra_steps and self.segments else []
        return epsilon([tuple(s) for s in self.segments] + more, delta=self.delta)

    def charge(self, sigma: float, path: Path) -> None:
        """One more step at ``sigma``, on disk before the step draws its batch."""
        if self.segments and self.segments[-1][:2] == [self.q, sigma]:
            self.segments[-1][2] += 1
        else:
            self.segments.append([self.q, sigma, 1])
        write_atomic(path, json.dumps(asdict(self)))

    def summary(self) -> dict:
        """What metrics.jsonl shows of this client's privacy (SPEC §4 plus these fields)."""
        q, sigma, _ = self.segments[-1] if self.segments else (self.q, None, 0)
        return {"epsilon": self.epsilon(), "delta": self.delta, "dp_q": q, "dp_noise": sigma, "dp_clip": self.clip,
                "dp_steps": self.steps, "dp_target_epsilon": self.target_epsilon, "dp_segments": self.segments}

    @classmethod
    def of_summary(cls, client: str, summary: dict) -> "Ledger":
        """The ledger a summary describes (enough to account it; records and batch left 1)."""
        return cls(client, 1, 1, summary["delta"], summary["dp_clip"], summary["dp_target_epsilon"],
                   [list(x) for x in summary["dp_segments"]])

    @classmethod
    def open(cls, path: Path, *, client: str, records: int, batch_size: int, delta: float, clip: float,
             target_epsilon: float | None) -> "Ledger":
        """The ledger at ``path`` (a resumed run goes on charging it), or a new one; a
        ledger of other records or another batch size is an InputError."""
        fresh = cls(client, records, batch_size, delta, clip, target_epsilon)
        if not path.exists():
            return fresh
        try:
            old = cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            raise InputError(str(path), None, f"is no privacy ledger ({e})") from None
        if (old.client, old.records, old.batch_size) != (client, records, batch_size):
            raise InputError(str(path), None, f"charges {old.records} records in batches of {old.batch_size}; "
                             f"this run has {records} in batches of {batch_size}")
        old.delta, old.clip, old.target_epsilon = delta, clip, target_epsilon
        return old


def planned_noise(ledger: Ledger, *, sigma: float | None, planned_steps: int) -> float:
    """SIGMA for this run: ``--dp-noise`` as given, or the smallest whose ``planned_steps``
    (the run's rounds x steps per round) keep the whole ledger within ``--dp-epsilon``."""
    if sigma is not None:
        return sigma
    if ledger.segments:  # resumed: keep the noise the budget was planned with
        return ledger.segments[-1][1]
    return noise_for(ledger.target_epsilon, delta=ledger.delta, q=ledger.q, steps=planned_steps)
