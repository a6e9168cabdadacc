"""The profiles this machine measured before: ``planner.profile``'s measurements cached on
disk (``FSL_CACHE_DIR``, default ``~/.cache/fsl-gan``), keyed by what changes them, and
each micro-batch size's tables (SPEC §2.1 ``per_micro_batch``) measured once."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from planner.host_speed import around
from planner.jsonio import write_json
from planner.models import LayeredModel
from planner.profile_options import measure_loss_s
from planner.layer_context import in_context, step_s
from planner.profile import (PROFILE_THREADS, PROFILE_VERSION, ModelProfile, profile_threads, layer_args, layer_codecs,
                             layer_outputs, measure, time_layers)


def cache_dir() -> Path:
    return Path(os.environ.get("FSL_CACHE_DIR", Path.home() / ".cache" / "fsl-gan"))


def cache_path(model: LayeredModel, batch_size: int) -> Path:
    key = json.dumps([PROFILE_VERSION, model.fingerprint(), batch_size, torch.__version__,
                      platform.node(), PROFILE_THREADS])
    return cache_dir() / "profiles" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def profile_model(model: LayeredModel, *, batch_size: int = 64, use_cache: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> ModelProfile:
    """The model's profile, from the cache when this machine measured it before.

    The cache is keyed by model fingerprint, batch size, torch version, host and thread
    count; a corrupt cache entry is measured again.
    """
    path = cache_path(model, batch_size)
    if use_cache and path.is_file():
        try:
            cached = ModelProfile.from_json(json.loads(path.read_text()))
            return ModelProfile(**{**asdict(cached), "layers": cached.layers, "seconds": 0.0})
        except (ValueError, TypeError, KeyError):
            pass
    prof = measure(model, batch_size=batch_size, progress=progress)
    if use_cache:
        write_json(path, prof.to_json())
    return prof


def micro_batch_profile(model: LayeredModel, profile: ModelProfile, micro_batches: int, *, use_cache: bool = True,
                        progress: Callable[[int, int], None] | None = None) -> ModelProfile:
    """``profile`` with each layer's times as the step takes them in ``micro_batches``
    pieces: measured at batch ``batch_size / micro_batches`` and multiplied back, with the
    loss per micro-batch on the last layer, the Adam update once and ``M - 1`` gradient
    accumulations (:func:`planner.layer_context.step_s`).

    SPEC §2.1 runs a stage's compute as ``M`` units of ``C / M``; on a CPU a small batch
    costs more than its share (a 2-core VM, one thread: 16 micro-batches of 4 samples took
    2.0x one batch of 64, ``benchmarks/pipeline.py``), so tables for ``M`` are
    measured at ``B / M``: the layers' step times and the codecs, nothing else (FLOPs,
    memory and bytes stay the whole batch's, since a fill-drain holds every micro-batch,
    as do ``overhead_s``, the generator and the batch size the tables are for). Cached
    beside the profiles."""
    if micro_batches == 1:
        return profile
    small = profile.batch_size // micro_batches
    path = cache_path(model, small).with_suffix(".times.json")
    times, ratio, loss = None, 1.0, 0.0
    if use_cache and path.is_file():
        try:
            cached = json.loads(path.read_text())
            times = [(float(t), float(f), {k: float(v) for k, v in c.items()}, float(u)) for t, f, c, u in cached["layers"]]
            ratio, loss = float(cached["context_ratio"]), float(cached["loss_s"])
        except (ValueError, TypeError, KeyError, AttributeError):
            times = None
    if times is None or len(times) != len(profile.layers):
        times, ratio, loss = _measure_times(model, small, progress=progress, profile=profile)
        if use_cache:
            write_json(path, {"batch_size": small, "context_ratio": ratio, "loss_s": loss,
                              "layers": [list(x) for x in times]})
    m, last = micro_batches, len(profile.layers) - 1
    layers = tuple(replace(big, time_s=step_s(t, u, m, big.accumulate_s, loss if i == last else 0.0),
                           forward_s=min(m * f, step_s(t, u, m)), update_s=min(u, t), codec_s={k: m * v for k, v in c.items()})
                   for i, (big, (t, f, c, u)) in enumerate(zip(profile.layers, times)))
    return replace(profile, layers=layers, context_ratio=ratio, loss_s=loss)


def _measure_times(model: LayeredModel, batch_size: int, *, progress: Callable[[int, int], None] | None,
                   profile: ModelProfile) -> tuple[list[tuple], float, float]:
    """Per layer, ``(step, forward, codec_s, update)`` seconds at ``batch_size`` on one
    core in the context of the whole model's step, the ratio (:func:`planner.layer_context.in_context`,
    with fewer repeats to keep ``fsl plan`` quick: the medians of 7) and the loss's seconds.

    Each ``M``'s tables are timed at another moment than ``profile``'s, and this host's
    speed drifts (``benchmarks/host_drift.py``), so one ``M``'s table could come out cheaper
    than a smaller ``M``'s only because the host was faster then. So the whole model's step at
    ``profile``'s batch is timed before and after (:func:`planner.host_speed.around`),
    and every time is divided by that slowdown: each ``M`` on ``profile``'s clock."""
    def session() -> tuple:
        args = layer_args(model, batch_size)
        timings, ratio = in_context(time_layers(model, args, repeats=7, warmup=1, progress=progress, whole=True))
        codecs = layer_codecs([tuple(o.shape[1:]) for o in layer_outputs(model, args)], batch_size)
        return timings, ratio, codecs, measure_loss_s(batch_size)

    with profile_threads():
        (timings, ratio, codecs, loss), slow = around(model, profile, session, repeats=5, warmup=1)
    k = 1.0 / slow
    return ([(k * t, k * f, {n: k * v for n, v in c.items()}, k * u) for (t, f, u), c in zip(timings, codecs)],
            ratio, k * loss)
