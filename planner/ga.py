"""A genetic algorithm over device order and cut positions, in the manner of HuSCF-GAN.

Source: HuSCF-GAN (Heterogeneous U-shape Split Clustered Federated GAN, TMLR 2026),
public code ``youssefga28/HuSCF-GAN``, ``Cut_Selection/CutLayerSelection.py``
(``get_best_cuts``). What we follow from it:

- a random initial population, then generational replacement: every generation is
  bred whole from the one before;
- tournament selection: each parent is the fittest of ``k = 5`` random individuals;
- crossover with probability 0.7 on the flattened gene string, half the time uniform
  (each child takes each gene from either parent with probability 1/2, independently
  for the two children) and half the time two-point (the genes between two random
  points are swapped); otherwise the children are copies of the parents;
- mutation gene by gene with probability 0.01 (their genes are bits, which flip);
- its published settings: population 1000, 1000 generations (:data:`PUBLISHED`).

What differs, because the problem differs (SPEC §2 instead of one cut point per client
between a device and a server, and memory limits, which HuSCF-GAN does not have):

- **Chromosome.** One gene pair per helper device (every device but the data device,
  in index order): ``used`` (a bit) and ``start`` (the first layer of its segment,
  ``1..L-1``). Decoding: the data device runs from layer 0; the used helpers follow in
  the order of their starts (ties by device index); each runs from its start to the
  next one's; a helper left with no layers is unused. So the starts hold the device
  order and the cut positions at once, and every chromosome decodes to stages that
  cover the layers in order with the data device first. A ``start`` gene mutates by
  being drawn afresh (uniform ``1..L-1``), a ``used`` gene flips.
- **Fitness.** The SPEC step time, :func:`planner.check.step_time_s`. Capacity and
  budget are handled by Deb's feasibility rules (K. Deb, "An efficient constraint
  handling method for genetic algorithms", CMAME 186, 2000, Sec. 3): a feasible plan
  (:func:`planner.check.violations` empty) beats every infeasible one, and of two
  infeasible ones the smaller normalised constraint violation wins (memory over
  capacity, time over budget: :func:`score`). This is a penalty that never lets an
  infeasible plan outrank a feasible one. (Counting broken rules instead, a first
  version, found no plan at 1000 x 200 for a 6-device fleet of ``benchmarks/ga.py``
  whose capacities barely hold the model, where the ILP found one.)
- **The answer** is the best feasible plan seen in any generation (HuSCF-GAN reports the
  best of the last one); a tournament samples with replacement; a plan's fitness is
  computed once and cached, since the population converges onto few distinct plans.

Seeded: the same tables, settings and seed give the same plan. ``status`` is
``heuristic``: nothing here proves optimality.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from planner import check
from planner.options import dress
from planner.problem import ClientProblem, Objective, Solution, Stage

# The cheapest setting of the sweep in BENCHMARKS.md ("Planner against planner") that lost
# nothing against the published 1000 x 1000 on its 31 instances with seed 0 (same summary,
# same step time on 30 of 31), at about 4x less time; docs/planning.md says how other seeds fare.
DEFAULT_POPULATION = 500
DEFAULT_GENERATIONS = 500
MAX_INDIVIDUALS = 10**6  # population and generations are each at most this


@dataclass(frozen=True)
class GASettings:
    population: int = DEFAULT_POPULATION  # individuals per generation, >= 2
    generations: int = DEFAULT_GENERATIONS  # generations bred after the initial one, >= 0
    seed: int = 0  # numpy Generator seed; same seed, same plan
    tournament: int = 5  # individuals per tournament (HuSCF-GAN: 5)
    crossover_rate: float = 0.7  # probability a pair of parents is crossed (HuSCF-GAN: 0.7)
    mutation_rate: float = 0.01  # per gene (HuSCF-GAN: 0.01)

    def __post_init__(self) -> None:
        if not 2 <= self.population <= MAX_INDIVIDUALS:
            raise ValueError(f"population must be within 2..{MAX_INDIVIDUALS}, found {self.population}")
        if not 0 <= self.generations <= MAX_INDIVIDUALS:
            raise ValueError(f"generations must be within 0..{MAX_INDIVIDUALS}, found {self.generations}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, found {self.seed}")
        if self.tournament < 1:
            raise ValueError(f"tournament must be >= 1, found {self.tournament}")
        for name in ("crossover_rate", "mutation_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0..1, found {getattr(self, name)}")


PUBLISHED = GASettings(population=1000, generations=1000)  # HuSCF-GAN's code


def decode(p: ClientProblem, genes: np.ndarray) -> tuple[Stage, ...]:
    """Stages of one chromosome: ``genes[2h]`` used bit, ``genes[2h + 1]`` start layer of
    helper ``h`` (helpers are the devices other than the data device, in index order)."""
    helpers = [d for d in range(p.n_devices) if d != p.data_device]
    chosen = sorted((int(genes[2 * h + 1]), d) for h, d in enumerate(helpers) if genes[2 * h])
    starts = [(0, p.data_device), *chosen, (p.n_layers, -1)]
    return tuple(Stage(d, s, e) for (s, d), (e, _) in zip(starts, starts[1:]) if e > s)


def score(p: ClientProblem, stages: tuple[Stage, ...], objective: Objective) -> tuple[float, float, int]:
    """(constraint violation, step time s, micro-batches), smaller is fitter in that order
    (Deb 2000). The GA places; each stage's recompute flag and each cut's codec are then
    chosen as every solver here chooses them (:func:`planner.options.dress`: per arc,
    exactly), and the stages are costed at each ``M`` the objective allows, the best kept.

    Feasibility is :func:`planner.check.violations` (and a link between consecutive
    devices); a feasible plan has violation 0. An infeasible one's violation is Deb's
    normalised sum: each stage's memory beyond its device's capacity over that capacity,
    the step time beyond the budget over the budget, one per missing link, and the
    number of broken rules when none of these measures them.
    """
    over = sum(max(0, sum(p.memory_bytes[s.device][s.start:s.end]) - p.capacity_bytes[s.device])
               / max(p.capacity_bytes[s.device], 1) for s in stages)
    missing = sum(p.link_bytes_per_s[a.device][b.device] <= 0 for a, b in zip(stages, stages[1:]))
    if missing:  # no link, so no step time
        return missing + over, math.inf, 1
    stages = dress(p, stages) or stages
    scored = []
    for m in p.choices(objective) or (1,):
        broken = check.violations(p, stages, m)
        step = check.step_time_s(p, stages, m)
        late = max(0.0, step - p.budget_s) / p.budget_s if p.budget_s else 0.0
        scored.append((0.0 if not broken else (over + late) or float(len(broken)), step, m))
    return min(scored)


def _random_genes(rng: np.random.Generator, n: int, helpers: int, layers: int) -> np.ndarray:
    genes = np.empty((n, 2 * helpers), dtype=np.int64)
    genes[:, 0::2] = rng.integers(0, 2, size=(n, helpers))
    genes[:, 1::2] = rng.integers(1, layers, size=(n, helpers))
    return genes


def _crossover(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """HuSCF-GAN's crossover on pairs of rows: with probability ``rate``, uniform or
    two-point (even odds; uniform only where fewer than 3 genes leave no two points)."""
    pairs, width = a.shape
    cross = rng.random(pairs) < rate
    uniform = (rng.random(pairs) < 0.5) | (width < 3)
    u1 = np.where(rng.random((pairs, width)) < 0.5, a, b)
    u2 = np.where(rng.random((pairs, width)) < 0.5, b, a)
    if width >= 3:
        first = rng.integers(1, width - 1, size=pairs)  # 1..width-2
        second = rng.integers(first + 1, width)  # first+1..width-1
        idx = np.arange(width)
        swap = (idx >= first[:, None]) & (idx < second[:, None])
        t1, t2 = np.where(swap, b, a), np.where(swap, a, b)
    else:
        t1, t2 = a, b
    pick = uniform[:, None]
    c1 = np.where(cross[:, None], np.where(pick, u1, t1), a)
    c2 = np.where(cross[:, None], np.where(pick, u2, t2), b)
    return c1, c2


def _mutate(rng: np.random.Generator, genes: np.ndarray, rate: float, layers: int) -> np.ndarray:
    hit = rng.random(genes.shape) < rate
    fresh = rng.integers(1, layers, size=genes.shape)
    out = genes.copy()
    out[:, 0::2] = np.where(hit[:, 0::2], 1 - genes[:, 0::2], genes[:, 0::2])
    out[:, 1::2] = np.where(hit[:, 1::2], fresh[:, 1::2], genes[:, 1::2])
    return out


def solve_ga(p: ClientProblem, *, objective: Objective = "latency", settings: GASettings | None = None,
             time_limit_s: float | None = None) -> Solution:
    """The best feasible plan the GA finds, status ``heuristic``, or ``infeasible``.

    ``time_limit_s`` stops breeding after the generation that passes it (the plan then
    depends on the machine's speed, not only on the seed).
    """
    t0 = time.perf_counter()
    s = settings or GASettings()
    helpers, layers = p.n_devices - 1, p.n_layers
    cache: dict[tuple[Stage, ...], tuple[float, float, int]] = {}
    best: tuple[tuple[float, float, int], tuple[Stage, ...]] | None = None

    def evaluate(stages: tuple[Stage, ...]) -> tuple[float, float, int]:
        nonlocal best
        if stages not in cache:
            cache[stages] = score(p, stages, objective)
            if cache[stages][0] == 0 and (best is None or cache[stages] < best[0]):
                best = (cache[stages], stages)
        return cache[stages]

    if helpers == 0 or layers == 1:  # one plan only: everything on the data device
        evaluate((Stage(p.data_device, 0, layers),))
    else:
        rng = np.random.default_rng(s.seed)
        genes = _random_genes(rng, s.population, helpers, layers)
        for generation in range(s.generations + 1):
            unique, inverse = np.unique(genes, axis=0, return_inverse=True)
            fit = [evaluate(decode(p, row)) for row in unique]
            violation = np.array([f[0] for f in fit])[inverse.reshape(-1)]
            step = np.array([f[1] for f in fit])[inverse.reshape(-1)]
            if generation == s.generations or (time_limit_s is not None and time.perf_counter() - t0 > time_limit_s):
                break
            rank = np.empty(len(genes), dtype=np.int64)
            rank[np.lexsort((step, violation))] = np.arange(len(genes))
            pairs = (s.population + 1) // 2
            entrants = rng.integers(0, s.population, size=(2 * pairs, s.tournament))
            parents = entrants[np.arange(2 * pairs), np.argmin(rank[entrants], axis=1)]
            c1, c2 = _crossover(rng, genes[parents[0::2]], genes[parents[1::2]], s.crossover_rate)
            children = np.empty((2 * pairs, genes.shape[1]), dtype=genes.dtype)
            children[0::2], children[1::2] = c1, c2
            genes = _mutate(rng, children[: s.population], s.mutation_rate, layers)
    seconds = time.perf_counter() - t0
    if best is None:
        return Solution.infeasible(seconds=seconds)
    (_, step_s, m), stages = best
    return Solution(stages=dress(p, stages), status="heuristic", step_time_s=step_s, seconds=seconds, micro_batches=m)
