"""Bad inputs of a torchrun launch: each is exit 2 with one line naming the variable or
flag, no traceback, no run folder, in bounded time, before any process group starts.

A torchrun rank is a process with ``RANK`` and ``WORLD_SIZE`` set; the cases set them as
torchrun would (``fsl train`` in-process, fast), and two run the real command line in a
process of its own, as torchrun starts it. The server-reports rule is checked on ranks
files that put the server anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from planner.planfile import write_plan
from tests.helpers import chain_plan
from trainer.backends.dist import reports_here

ROOT = Path(__file__).resolve().parent.parent
PLAN = chain_plan("dcgan", [2])  # server, c0-d0 (data), c0-d1: three ranks
GOOD = {"server": 0, "c0-d0": 1, "c0-d1": 2}
TORCHRUN = {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"}
LIMIT_S = 60.0  # in-process: nothing starts, so this is loading the plan and failing (a loaded machine)


def _ranks(tmp_path: Path, content) -> str:
    path = tmp_path / "ranks.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


# (case id, env beyond TORCHRUN (None: unset it) as a function of tmp_path, extra flags, what the line names)
CASES = [
    ("ranks_file_missing", lambda p: {"FSL_RANKS": str(p / "nope.json")}, [], "FSL_RANKS"),
    ("ranks_file_is_a_folder", lambda p: {"FSL_RANKS": str(p)}, [], "FSL_RANKS"),
    ("ranks_path_empty", lambda p: {"FSL_RANKS": ""}, [], "FSL_RANKS"),
    ("ranks_not_json", lambda p: {"FSL_RANKS": _ranks(p, "{server: 0")}, [], "FSL_RANKS"),
    ("ranks_a_list", lambda p: {"FSL_RANKS": _ranks(p, [0, 1, 2])}, [], "FSL_RANKS"),
    ("rank_a_string", lambda p: {"FSL_RANKS": _ranks(p, GOOD | {"c0-d0": "1"})}, [], "FSL_RANKS"),
    ("rank_a_float", lambda p: {"FSL_RANKS": _ranks(p, GOOD | {"c0-d0": 1.5})}, [], "FSL_RANKS"),
    ("rank_a_bool", lambda p: {"FSL_RANKS": _ranks(p, GOOD | {"server": False})}, [], "FSL_RANKS"),
    ("rank_null", lambda p: {"FSL_RANKS": _ranks(p, GOOD | {"c0-d1": None})}, [], "FSL_RANKS"),
    ("role_missing", lambda p: {"FSL_RANKS": _ranks(p, {"server": 0, "c0-d0": 1})}, [], "FSL_RANKS"),
    ("role_unknown", lambda p: {"FSL_RANKS": _ranks(p, {"server": 0, "c0-d0": 1, "phone": 2})}, [], "FSL_RANKS"),
    ("ranks_duplicated", lambda p: {"FSL_RANKS": _ranks(p, {"server": 0, "c0-d0": 1, "c0-d1": 1})}, [], "FSL_RANKS"),
    ("rank_beyond_world", lambda p: {"FSL_RANKS": _ranks(p, GOOD | {"c0-d1": 3})}, [], "FSL_RANKS"),
    ("world_size_not_the_plan", lambda p: {"WORLD_SIZE": "4", "RANK": "1"}, [], "WORLD_SIZE"),
    ("rank_not_an_integer", lambda p: {"RANK": "one"}, [], "RANK"),
    ("world_size_not_an_integer", lambda p: {"WORLD_SIZE": "3.0"}, [], "WORLD_SIZE"),
    ("rank_outside_world", lambda p: {"RANK": "5"}, [], "RANK"),
    ("ranks_without_torchrun", lambda p: {"FSL_RANKS": _ranks(p, GOOD), "RANK": None, "WORLD_SIZE": None}, [],
     "FSL_RANKS"),
    ("local_backend_under_torchrun", lambda p: {}, ["--backend", "local"], "--backend"),
    ("replan_under_torchrun", lambda p: {}, ["--replan-on-failure"], "--replan-on-failure"),
]


def _env(tmp_path: Path, extra) -> dict[str, str | None]:
    env = {"FSL_RANKS": None} | TORCHRUN | extra(tmp_path)
    if env.get("RANK") is None and env.get("WORLD_SIZE") is None:
        env["LOCAL_RANK"] = None
    return env


def _assert_refused(code: int, stderr: str, names: str, elapsed_s: float, out: Path, limit_s: float = LIMIT_S) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and names in lines[0], stderr
    assert "Traceback" not in stderr and elapsed_s < limit_s
    assert not out.exists()  # refused before any role made its run folder


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_torchrun_input_is_one_line(tmp_path, case, monkeypatch):
    _, extra, flags, names = case
    write_plan(PLAN, tmp_path / "plan.json")
    out = tmp_path / "run"
    backend = [] if "--backend" in flags else ["--backend", "dist"]
    t0 = time.monotonic()
    result = CliRunner().invoke(app, ["train", "--plan", str(tmp_path / "plan.json"), *backend, "--out", str(out),
                                      "--emulate", "none", *flags], env=_env(tmp_path, extra))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    _assert_refused(result.exit_code, result.stderr, names, time.monotonic() - t0, out)


@pytest.mark.slow
@pytest.mark.parametrize("ranks", ['{"server": 0, "c0-d0": "x", "c0-d1": 2}', "not json"])
def test_a_torchrun_rank_process_refuses_bad_ranks(tmp_path, ranks):
    """The real command line, in a process of its own as torchrun starts it."""
    write_plan(PLAN, tmp_path / "plan.json")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env |= TORCHRUN | {"FSL_RANKS": _ranks(tmp_path, ranks), "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "cli", "train", "--plan", "plan.json", "--backend", "dist", "--out", "run"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    _assert_refused(p.returncode, p.stderr, "FSL_RANKS", time.monotonic() - t0, tmp_path / "run", limit_s=150)


@pytest.mark.parametrize("server_rank", [0, 1, 2])
def test_only_the_servers_rank_reports(tmp_path, monkeypatch, server_rank):
    """Whatever rank FSL_RANKS gives the server, that process and no other reports."""
    others = iter(r for r in range(3) if r != server_rank)
    path = _ranks(tmp_path, {"server": server_rank, "c0-d0": next(others), "c0-d1": next(others)})
    monkeypatch.setenv("FSL_RANKS", path)
    monkeypatch.setenv("WORLD_SIZE", "3")
    said = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        said.append(reports_here())
    assert said == [rank == server_rank for rank in range(3)]
    monkeypatch.delenv("FSL_RANKS")
    assert not reports_here()  # RANK 2 without a ranks file: a device (the server is rank 0 by default)
    monkeypatch.delenv("RANK")
    assert reports_here()  # no torchrun: this process is the whole run
