"""The bad-input corpus (``benchmarks/bad_input_corpus.py``), each row in-process
(typer's CliRunner): its exit code, one line naming the flag or file, no traceback, a
bounded time, nothing left behind. The table takes ~30 s; the rows that start training
roles (a truncated image, a missing client folder, a tiny --dp-noise, divergence) under
a second each, the one that sets up evaluation ~40 s (slow)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks.bad_input_corpus import CASES, SLOW, make_plans, prepare, problems, row
from cli import app


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, Path]:
    return make_plans(tmp_path_factory.mktemp("plans"))


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0], marks=[pytest.mark.slow] * (c[0] in SLOW)) for c in CASES])
def test_a_bad_input_ends_in_one_line_and_leaves_nothing(case, plans, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, before = prepare(case, plans, tmp_path)
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, args)
    found = problems(case, args, tmp_path, before, exit_code=r.exit_code, stderr=r.stderr, stdout=r.stdout,
                     took_s=time.perf_counter() - t0)
    assert not found, (found, r.exception)


def test_the_corpus_covers_every_surface():
    """At least 60 rows, and rows for each surface the issue names."""
    ids = [row(c)[0] for c in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)
    for prefix in ("plan-", "factory-", "calibrate-", "train-", "images-", "resume-", "diverge-"):
        assert any(i.startswith(prefix) for i in ids), prefix
