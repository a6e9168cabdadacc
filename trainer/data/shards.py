"""Client shards of a data set, and per-shard batch samplers.

Non-IID shards follow Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical
Data Distribution for Federated Visual Classification", Sec. 3.1: client k's label mix
is q_k ~ Dir(alpha * p), p the dataset's class frequencies.

Everything here works on indices and labels, never on other clients' images: a data
device computes every client's shard boundaries from the labels alone and then loads
only its own shard's images (``trainer.data.datasets``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from planner.errors import InputError

MIN_SHARD_SIZE = 8  # default fewest samples per Dirichlet shard (one small batch)


# --- shards ---------------------------------------------------------------------------

def shard_sizes(n: int, weights: Sequence[float], *, min_size: int = 1) -> np.ndarray:
    """Split ``n`` samples in proportion to ``weights`` (largest remainder), every share
    at least ``min_size``; the shares sum to ``n``."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"weights must be a non-empty list of positive numbers, got "
                         f"{list(weights)}")
    if n < len(w) * min_size:
        raise InputError("dataset", None, f"{n} samples cannot give {len(w)} clients at "
                         f"least {min_size} each")
    exact = n * w / w.sum()
    sizes = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[: n - int(sizes.sum())]] += 1
    while np.any(sizes < min_size):  # lift the smallest, from the most over its share
        over = np.where(sizes > min_size, sizes - exact, -np.inf)
        sizes[np.argmax(over)] -= 1
        sizes[np.argmin(sizes)] += 1
    return sizes


def shard_iid(n: int, weights: Sequence[float], *, seed: int) -> list[np.ndarray]:
    """Disjoint sorted index arrays covering ``range(n)``, sizes proportional to weights
    (each at least one sample)."""
    sizes = shard_sizes(n, weights)
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.split(perm, np.cumsum(sizes)[:-1])]


def shard_dirichlet(labels: torch.Tensor | np.ndarray, weights: Sequence[float], *,
                    alpha: float, seed: int,
                    min_size: int = MIN_SHARD_SIZE) -> list[np.ndarray]:
    """Non-IID shards after Hsu et al. 2019: client k wants labels q_k ~ Dir(alpha * p).

    Shard sizes are exactly ``shard_sizes(len(labels), weights, min_size=min_size)``.
    Samples are dealt in rounds: every client asks for its missing count from q_k
    (restricted to classes not yet used up); where a class is asked for more than it has,
    it is shared out by a multivariate hypergeometric draw. At most one round per class.
    Small alpha (0.1) gives clients one or two dominant labels; alpha = 100 is near IID.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    if not alpha > 0 or not np.isfinite(alpha):
        raise ValueError(f"alpha must be a positive number, got {alpha}")
    rng = np.random.default_rng(seed)
    sizes = shard_sizes(len(y), weights, min_size=min_size)
    classes, y_idx = np.unique(y, return_inverse=True)
    avail = np.bincount(y_idx, minlength=len(classes)).astype(np.int64)
    q = np.nan_to_num(rng.dirichlet(alpha * avail / avail.sum(), size=len(sizes)))
    take = np.zeros((len(sizes), len(classes)), dtype=np.int64)
    need = sizes.copy()
    while need.sum() > 0:
        p = q * (avail > 0)
        lost = p.sum(axis=1) == 0  # q_k fell entirely on used-up classes
        p[lost] = avail / avail.sum()
        p /= p.sum(axis=1, keepdims=True)
        ask = np.stack([rng.multinomial(need[k], p[k]) for k in range(len(sizes))])
        for j in np.flatnonzero(ask.sum(axis=0) > avail):
            ask[:, j] = rng.multivariate_hypergeometric(ask[:, j], int(avail[j]))
        take += ask
        need -= ask.sum(axis=1)
        avail -= ask.sum(axis=0)
    shards: list[list[np.ndarray]] = [[] for _ in sizes]
    for j in range(len(classes)):
        members = rng.permutation(np.flatnonzero(y_idx == j))
        for k, part in enumerate(np.split(members, np.cumsum(take[:, j])[:-1])):
            shards[k].append(part)
    return [np.sort(np.concatenate(parts)) for parts in shards]


# --- sampling -------------------------------------------------------------------------

class ShardSampler:
    """Endless batches from one shard: a fresh permutation each epoch (without
    replacement), a batch that crosses an epoch end is completed from the next one.

    Owns its ``torch.Generator``; ``state_dict()`` holds only tensors and ints, so it
    survives ``torch.save`` / ``torch.load(weights_only=True)``, and a sampler restored
    from it continues with exactly the batches the original would have drawn.
    """

    def __init__(self, images: torch.Tensor, *, batch_size: int, seed: int):
        if batch_size < 1 or len(images) < 1:
            raise ValueError(f"need batch_size >= 1 and a non-empty shard, got "
                             f"batch_size={batch_size}, {len(images)} images")
        self.images, self.batch_size = images, int(batch_size)
        self._gen = torch.Generator().manual_seed(int(seed))
        self._perm = torch.randperm(len(images), generator=self._gen)
        self._pos, self.epoch = 0, 0

    def next_indices(self) -> torch.Tensor:
        """Indices into ``images`` of the next batch (int64, ``batch_size`` long)."""
        parts, missing = [], self.batch_size
        while missing:
            if self._pos == len(self._perm):
                self._perm = torch.randperm(len(self.images), generator=self._gen)
                self._pos, self.epoch = 0, self.epoch + 1
            part = self._perm[self._pos : self._pos + missing]
            parts.append(part)
            self._pos += len(part)
            missing -= len(part)
        return torch.cat(parts)

    def next_batch(self) -> torch.Tensor:
        return self.images[self.next_indices()]

    def __iter__(self) -> ShardSampler:
        return self

    def __next__(self) -> torch.Tensor:
        return self.next_batch()

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        return {"generator": self._gen.get_state(), "perm": self._perm.clone(),
                "pos": self._pos, "epoch": self.epoch, "n": len(self.images),
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict, *, source: str = "checkpoint") -> None:
        """Continue from ``state``; a state from another shard or batch size is an
        ``InputError`` naming ``source``."""
        want = {"generator", "perm", "pos", "epoch", "n", "batch_size"}
        if not isinstance(state, dict) or set(state) != want:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise InputError(source, "sampler", f"expected keys {sorted(want)}, "
                             f"found {found}")
        if state["n"] != len(self.images) or state["batch_size"] != self.batch_size:
            raise InputError(source, "sampler", f"saved for {state['n']} images in "
                             f"batches of {state['batch_size']}, this run has "
                             f"{len(self.images)} in batches of {self.batch_size}")
        perm = state["perm"]
        if perm.shape != (len(self.images),) or not 0 <= state["pos"] <= len(perm):
            raise InputError(source, "sampler.perm", f"permutation of shape "
                             f"{tuple(perm.shape)} at {state['pos']} does not fit "
                             f"{len(self.images)} images")
        self._gen.set_state(state["generator"])
        self._perm, self._pos = perm.clone().long(), int(state["pos"])
        self.epoch = int(state["epoch"])


class PoissonSampler:
    """DP-SGD's batches from one shard: each record independently with probability
    ``q = batch_size / N`` every step (Poisson sampling, as the accountant assumes), drawn
    from ``random`` (a :class:`trainer.privacy.options.SecureRandom`), never from ``--seed``:
    which records a batch holds is known to the data device alone. Batches vary in size
    and may be empty; there is nothing to resume (each step's draw is fresh)."""

    def __init__(self, images: torch.Tensor, *, batch_size: int, random):
        if not 1 <= batch_size <= len(images):
            raise ValueError(f"need 1 <= batch_size <= {len(images)} records, got {batch_size}")
        self.images, self.batch_size, self.random = images, int(batch_size), random
        self.rate = batch_size / len(images)

    def next_indices(self) -> torch.Tensor:
        return torch.from_numpy(np.flatnonzero(self.random.uniform(len(self.images)) < self.rate))

    def next_batch(self) -> torch.Tensor:
        return self.images[self.next_indices()]

    def state_dict(self) -> dict[str, float | int]:
        return {"poisson_rate": self.rate, "n": len(self.images), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict, *, source: str = "checkpoint") -> None:
        if state != self.state_dict():
            raise InputError(source, "sampler", f"saved {state}, this run samples {self.state_dict()}: the run's "
                             "data or its DP options changed")
