"""Raw images never leave the data device: every message of a run (every role, every tag,
every step, both backends), recorded by the transport as it was sent
(``trainer.comm.msgtrace``), against every real image of every client's shard, by exact match
and by correlation.

A message's float tensor is read as rows of 784 values (28 x 28), from its start and
from the start of each sample; a ``torch.save`` payload (hello, report, state, trace) is
opened and each tensor in it read the same way. No row may equal a real image, and none
may correlate with one beyond |r| = 0.9 (a real image with noise of a fifth of its spread
still reaches 0.98; in a run the largest |r| of any message was 0.45, a first-cut
activation: 57,320 rows per backend checked against 1,438 images).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from tests.helpers import chain_plan, config
from trainer import train
from trainer.comm import msgtrace
from trainer.data.datasets import DataSource, load_digits_28

PIXELS = 28 * 28
MAX_R = 0.9


def _shards(plan, seed: int = 0) -> torch.Tensor:
    """Every real image of every client's shard, as rows of 784 (independent of the run:
    the shard rules replayed from the source)."""
    weights = [c.data_weight for c in plan.planned]
    rows = np.concatenate([DataSource("digits", seed=seed).shard_rows(weights, k) for k in range(len(weights))])
    return load_digits_28(rows).images.reshape(-1, PIXELS)


def _tensors(obj):
    """Every tensor inside a payload: itself, or what a torch.save blob holds."""
    if isinstance(obj, torch.Tensor):
        if obj.dtype == torch.uint8 and obj.dim() == 1:
            try:
                yield from _tensors(torch.load(io.BytesIO(obj.numpy().tobytes()), weights_only=True))
                return
            except Exception:  # noqa: BLE001 - not a torch.save payload: bytes of a codec
                pass
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        if obj and all(isinstance(v, float) for v in obj):
            yield torch.tensor(obj)
        for v in obj:
            yield from _tensors(v)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """784-value windows of ``t``: from its start, and from each sample's start."""
    flat = t.detach().reshape(-1).to(torch.float32)
    parts = [flat[:flat.numel() // PIXELS * PIXELS].reshape(-1, PIXELS)]
    if t.dim() >= 2 and t[0].numel() >= PIXELS and t[0].numel() % PIXELS:
        per = t.reshape(t.shape[0], -1).to(torch.float32)
        parts.append(per[:, :per.shape[1] // PIXELS * PIXELS].reshape(-1, PIXELS))
    return torch.cat(parts)


def _standard(x: torch.Tensor) -> torch.Tensor:
    x = x.float() - x.float().mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def leaks(t: torch.Tensor, real: torch.Tensor, real_std: torch.Tensor, exact: set[bytes]) -> tuple[int, float]:
    """(rows of ``t`` equal to a real image, the largest |r| of a row with a real image)."""
    rows = _rows(t)
    if not len(rows):
        return 0, 0.0
    same = sum(r.numpy().tobytes() in exact for r in rows)
    varied = rows[rows.std(1) > 1e-6]  # a constant row has no correlation (and no real image is constant)
    r = max((float((_standard(chunk) @ real_std.T).abs().max()) for chunk in varied.split(4096) if len(chunk)),
            default=0.0)
    return same, r


def _run(tmp_path, monkeypatch, backend: str):
    plan = chain_plan("dcgan", [[2, 5], [0]], batch=16)
    folder = tmp_path / "trace"
    folder.mkdir()
    monkeypatch.setenv(msgtrace.ENV, str(folder))
    monkeypatch.setenv(msgtrace.PAYLOADS_ENV, "1")
    train(config(tmp_path, plan, rounds=2, steps_per_round=2, aggregate="fedavg", backend=backend))
    return plan, folder


@pytest.mark.slow  # two rounds with every payload written to disk, then ~57,000 rows against 1,438 images
@pytest.mark.parametrize("backend", ["local", "dist"])
def test_no_message_holds_or_resembles_a_real_image(tmp_path, monkeypatch, backend):
    plan, folder = _run(tmp_path, monkeypatch, backend)
    real = _shards(plan)
    real_std, exact = _standard(real), {r.numpy().tobytes() for r in real}
    # the check can fail: a real image, as sent or as a noisy copy, is found
    sample = real[:3].reshape(3, 1, 28, 28)
    assert leaks(sample, real, real_std, exact)[0] == 3
    noisy = sample + 0.2 * sample.std() * torch.randn_like(sample)
    same, r = leaks(noisy, real, real_std, exact)
    assert same == 0 and r > 0.95
    rows = msgtrace.read(folder)
    tags = {r["tag"] for r in rows}
    assert {"hello", "start", "round", "fake", "act_d", "grad_d", "act_g", "grad_g", "fake_grad", "losses",
            "weights", "report", "trace", "state", "saved"} <= tags
    assert {r["src"] for r in rows} == {"server", "c0-d0", "c0-d1", "c0-d2", "c1-d0", "c1-d1"}
    worst, checked = {}, 0
    for row in rows:
        for t in _tensors(msgtrace.payload(folder, row)):
            same, r = leaks(t, real, real_std, exact)
            where = f"{row['src']} -> {row['dst']} {row['tag']} (round {row['round']})"
            assert same == 0, f"{where}: {same} rows are real images"
            assert r <= MAX_R, f"{where}: a row correlates with a real image at |r| = {r:.3f}"
            worst[row["tag"]] = max(worst.get(row["tag"], 0.0), r)
            checked += len(_rows(t))
    assert checked > 10_000, checked
    print(f"{backend}: {checked} rows; the largest |r| per tag: " +
          ", ".join(f"{k} {v:.2f}" for k, v in sorted(worst.items())))
