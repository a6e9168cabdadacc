"""The arcs of the placement ILP: every segment and cut that may appear in an optimal plan.

A segment ``(d, i, j)`` runs layers ``i..j-1`` on device ``d``; it is an arc only if it
fits ``capacity_bytes[d]`` (plain or recomputing) and starts legally (layer 0 only on
the data device). A cut ``(d, e, j)`` moves the activation before layer ``j`` from ``d``
to ``e`` over a link that exists. Each arc carries its best recompute flag or codec
(:mod:`planner.options`: the choice does not depend on ``M``), so the catalogue is
built once per client, as ``[d, i, j]`` / ``[d, e, j]`` arrays (``inf``: no arc).

For one ``M`` an arc is a unit of ``u`` seconds per micro-batch (:func:`units`);
:func:`planner.paths.within` keeps those a search's limits allow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.problem import NO_CODEC, ClientProblem


@dataclass(frozen=True, eq=False)
class Arcs:
    """Every segment and cut that fits, with its best option; independent of ``M``."""

    seg_s: np.ndarray  # [d, i, j] C: compute per step of the best variant, inf: no arc
    seg_recompute: np.ndarray  # [d, i, j] whether that variant recomputes
    cut_s: np.ndarray  # [d, e, j] V: volume seconds per step of the best codec, inf: no arc
    cut_codec: np.ndarray  # [d, e, j] index into codec_names of that codec
    codec_names: tuple[str, ...]  # "none" first, then ``costs.codecs``

    def stage_options(self, d: int, i: int, j: int, nxt: int | None) -> tuple[bool, str]:
        """The recompute flag of segment ``(d, i, j)`` and the codec of its cut to ``nxt``."""
        codec = NO_CODEC if nxt is None else self.codec_names[self.cut_codec[d, nxt, j]]
        return bool(self.seg_recompute[d, i, j]), codec


def _prefix(rows, dtype) -> np.ndarray:
    a = np.asarray(rows, dtype=dtype)
    return np.concatenate([np.zeros((a.shape[0], 1), dtype=dtype), np.cumsum(a, axis=1)], axis=1)


def catalogue(p: ClientProblem) -> Arcs:
    n, L = p.n_devices, p.n_layers
    tables = [(p.compute_s, p.memory_bytes)]
    if p.recompute is not None:
        tables.append((p.recompute.compute_s, p.recompute.memory_bytes))
    legal = np.zeros((n, L + 1, L + 1), dtype=bool)  # [d, i, j]: i < j, start legal
    upper = np.triu(np.ones((L + 1, L + 1), dtype=bool), 1)
    legal[:, 1:L] = upper[1:L]
    legal[p.data_device] = False
    legal[p.data_device, 0] = upper[0]
    cap = np.asarray(p.capacity_bytes, dtype=np.int64)[:, None, None]
    seg_s = np.full((n, L + 1, L + 1), np.inf)
    rec = np.zeros((n, L + 1, L + 1), dtype=bool)
    for flag, (comp_rows, mem_rows) in enumerate(tables):
        comp, mem = _prefix(comp_rows, float), _prefix(mem_rows, np.int64)
        fits = legal & (mem[:, None, :] - mem[:, :, None] <= cap)
        c = np.where(fits, comp[:, None, :] - comp[:, :, None], np.inf)
        better = c < seg_s
        seg_s = np.where(better, c, seg_s)
        rec = np.where(better, bool(flag), rec)
    bw = np.asarray(p.link_bytes_per_s, dtype=float)
    link = (bw > 0) & ~np.eye(n, dtype=bool)
    link[:, p.data_device] = False
    cut_b = np.concatenate(([np.inf], np.asarray(p.cut_bytes, dtype=float), [np.inf]))  # before layer j
    with np.errstate(divide="ignore", invalid="ignore"):
        cut_s = np.where(link[:, :, None], cut_b[None, None, :] / bw[:, :, None], np.inf)
        codec = np.zeros(cut_s.shape, dtype=np.int64)
        for k, c in enumerate(p.codecs, 1):
            cs = np.full((n, L + 1), np.inf)
            cs[:, 1:L] = np.asarray(c.codec_s, dtype=float).reshape(n, L - 1)
            v = np.where(link[:, :, None], cut_b * c.bytes_ratio / bw[:, :, None], np.inf) + cs[:, None, :] + cs[None]
            codec = np.where(v < cut_s, k, codec)
            cut_s = np.minimum(cut_s, v)
    return Arcs(seg_s, rec, cut_s, codec, (NO_CODEC, *(c.name for c in p.codecs)))


def units(p: ClientProblem, arcs: Arcs, micro_batches: int) -> tuple[np.ndarray, np.ndarray]:
    """Per micro-batch seconds of every arc: ``C / M + overhead`` and ``V / M + latency``."""
    overhead = np.asarray(p.overhead_s if p.overhead_s is not None else np.zeros(p.n_devices), dtype=float)
    lat = np.asarray(p.link_latency_s, dtype=float)
    return arcs.seg_s / micro_batches + overhead[:, None, None], arcs.cut_s / micro_batches + lat[:, :, None]
