"""Epsilon of ``--dp-noise``: what the generator feedback of a client has cost in privacy.

Each step, a client's data device samples a batch of ``B`` of its ``N`` records and the
server receives per-sample clipped, Gaussian-noised feedback (``trainer.privacy``), so a
step is the subsampled Gaussian mechanism with sampling rate ``q = B / N`` and noise
multiplier ``SIGMA``, and ``T`` steps compose. As GS-WGAN (Chen et al., NeurIPS 2020,
Sec. 3.3 and Thm. 1) does, the privacy loss is accounted with Renyi DP (Mironov,
"Renyi Differential Privacy", CSF 2017) of the sampled Gaussian mechanism (Mironov,
Talwar, Zhang, "Renyi Differential Privacy of the Sampled Gaussian Mechanism", 2019)
and converted to ``(epsilon, delta)`` (Balle et al. 2020, Thm. 21) at ``delta = 1 / N``.
Both computations are Opacus's (``opacus.accountants.analysis.rdp``, pinned in
pyproject.toml), over the orders of Opacus's ``RDPAccountant``.

What epsilon covers: the records of a client through the feedback the server receives.
It does not cover discriminator weights that leave a client (``--aggregate``), nor the
activations across a client's cuts; SECURITY.md says who sees those.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from planner.errors import InputError

# Opacus's RDPAccountant.DEFAULT_ALPHAS
ORDERS = tuple(1 + x / 10.0 for x in range(1, 100)) + tuple(float(a) for a in range(12, 64))
# Below this noise multiplier SIGMA^2 underflows and Opacus's series divide by zero or
# never converge (measured: 1e-160 raises, 1e-200 hangs); epsilon there is at least ~1e200.
MIN_NOISE = 1e-100


Segment = tuple[float | None, int]  # (noise multiplier, steps); None: steps without DP


def epsilon(*, sample_rate: float, noise_multiplier: float | None = None, steps: int = 0, delta: float,
            segments: list[Segment] | None = None) -> float:
    """Epsilon after ``steps`` steps of the sampled Gaussian mechanism, or after
    ``segments`` of them with different noise (RDP composes by addition); ``inf`` when
    there is no privacy (steps without noise). No steps cost nothing."""
    segments = [(noise_multiplier, steps)] if segments is None else segments
    segments = [(sigma, n) for sigma, n in segments if n > 0]
    if not segments:
        return 0.0
    if any(sigma is None or not sigma >= MIN_NOISE for sigma, _ in segments):
        return math.inf
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    rdp = sum(np.asarray(compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=n, orders=list(ORDERS)))
              for sigma, n in segments)
    with warnings.catch_warnings():  # "optimal order is the smallest/largest alpha": still a valid bound
        warnings.simplefilter("ignore")
        eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def client_epsilon(*, records: int, batch_size: int, segments: list[Segment]) -> dict:
    """A client's privacy after ``segments``: ``epsilon`` at ``delta = 1 / records``."""
    delta = 1.0 / records
    eps = epsilon(sample_rate=batch_size / records, delta=delta, segments=segments)
    return {"epsilon": eps, "delta": delta, "dp_steps": sum(n for _, n in segments)}


def past_segments(history: list[dict], client: str) -> list[Segment]:
    """The (noise, steps) of every round ``client`` trained in ``history`` (a resumed
    run's rounds may have had another noise, or none)."""
    out = []
    for h in history:
        row = h["clients"].get(client, {})
        out.append((row.get("dp_noise"), row.get("steps", 0)))
    return out


def check_budget(records: dict[str, int], *, batch_size: int, noise_multiplier: float, steps: int,
                 history: list[dict] = ()) -> dict[str, float]:
    """Each client's epsilon if the run does all its ``steps`` (those of ``history``
    included); InputError naming ``--dp-noise`` unless every one is finite (and every
    shard holds a whole batch)."""
    out = {}
    for client, n in records.items():
        if n < batch_size:
            raise InputError("--dp-noise", None, f"client {client} holds {n} records, fewer than a batch of "
                             f"{batch_size}: the sampling rate would exceed 1 and no epsilon holds")
        past = past_segments(list(history), client)
        if any(sigma is None and k for sigma, k in past):
            raise InputError("--dp-noise", None, f"client {client} trained without --dp-noise earlier in this run: "
                             "its feedback was sent as is, so no finite epsilon holds")
        segments = past + [(noise_multiplier, steps - sum(k for _, k in past))]
        eps = client_epsilon(records=n, batch_size=batch_size, segments=segments)["epsilon"]
        if not math.isfinite(eps):
            raise InputError("--dp-noise", None, f"{noise_multiplier:g} gives client {client} no finite epsilon "
                             f"after {steps} steps (sampling rate {batch_size}/{n}); raise the noise")
        out[client] = eps
    return out


def round_privacy(history: list[dict], m: dict, *, records: dict[str, int], batch_size: int,
                  noise_multiplier: float, clip: float) -> dict[str, dict]:
    """Per client, its privacy after this round (``m``): epsilon over the steps it did in
    every round of ``history`` and in this one, with this round's noise and clip."""
    out = {}
    for client, n in records.items():
        steps = m["clients"].get(client, {}).get("steps", 0)
        segments = past_segments(history, client) + [(noise_multiplier, steps)]
        out[client] = client_epsilon(records=n, batch_size=batch_size, segments=segments) | {
            "dp_noise": noise_multiplier, "dp_clip": clip}
    return out
