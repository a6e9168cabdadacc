"""README's quick start, run as written after its install (smaller: options repeated at the
end override the README's, as click takes the last value). What the full command scores
(FID, confidence, time) is measured in BENCHMARKS.md's "Quick start", not here."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest

from tests.test_examples import FSL, ROOT

SMALLER = {"plan": [], "train": ["--rounds", "2", "--steps-per-round", "2"]}


def quickstart_commands() -> list[list[str]]:
    """The `fsl` commands of the first bash block after "## Quick start" (the install before
    them is the test's own environment)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index("## Quick start"):], re.S).group(1)
    return [shlex.split(part) for part in block.strip().split("&&") if part.split()[0] == "fsl"]


def test_the_quickstart_plans_lab_and_trains_what_it_planned():
    plan, train = quickstart_commands()
    assert plan[:2] == ["fsl", "plan"] and train[:2] == ["fsl", "train"]
    assert plan[plan.index("--devices") + 1] == "profiles/lab.json"
    assert train[train.index("--plan") + 1] == plan[plan.index("--out") + 1]


@pytest.mark.slow
def test_the_quickstart_runs(tmp_path):
    (tmp_path / "profiles").symlink_to(ROOT / "profiles")
    for cmd in quickstart_commands():
        done = subprocess.run(FSL + cmd[1:] + SMALLER[cmd[1]], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
    plan = json.loads((tmp_path / "runs" / "lab-plan.json").read_text())
    assert plan["batch_size"] == 16 and plan["solver"]["status"] == "optimal"
    rows = [json.loads(line) for line in (tmp_path / "runs" / "lab" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and all(r["fid"] > 0 for r in rows)
    assert (tmp_path / "runs" / "lab" / "samples" / "round_0002.png").exists()
