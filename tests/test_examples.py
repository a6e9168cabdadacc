"""The shapes example of docs/own-data.md (README's "Your own model and images" repeats it
while README has that section), run as written (smaller: options repeated at the end
override the page's, as argparse and click take the last value)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).parent.parent
_SCRIPT = Path(sys.executable).parent / "fsl"  # the console script, else the same entry point
FSL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from cli import main; main()"]
SMALLER = {"python": ["--per-class", "30"], "plan": ["--batch-size", "8"],
           "train": ["--rounds", "2", "--steps-per-round", "2", "--emulate", "none", "--eval-every", "1"]}


def _first_block(text: str, heading: str) -> list[list[str]]:
    section = text[text.index(heading):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]


def readme_commands() -> list[list[str]]:
    """The shell lines of the first block of docs/own-data.md's "The shapes example"."""
    return _first_block((ROOT / "docs" / "own-data.md").read_text(), "## The shapes example")


def test_the_readme_block_names_the_example_files():
    commands = readme_commands()
    readme = (ROOT / "README.md").read_text()
    if "## Your own model and images" in readme:  # README's copy, while it has one, is the page's
        assert _first_block(readme, "## Your own model and images") == commands
    assert [c[0] if c[0] == "python" else c[1] for c in commands] == ["python", "plan", "train"]
    assert commands[0][1] == "examples/make_shapes.py" and "examples/dcgan_rgb.py:build" in commands[1]
    assert "profiles/lab.json" in commands[1] and any(a.startswith("images:") for a in commands[2])


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path):
    for name in ("examples", "profiles"):
        (tmp_path / name).symlink_to(ROOT / name)
    for cmd in readme_commands():
        key = "python" if cmd[0] == "python" else cmd[1]
        argv = ([sys.executable] + cmd[1:] if cmd[0] == "python" else FSL + cmd[1:]) + SMALLER[key]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
    plan = json.loads((tmp_path / "runs" / "shapes-plan.json").read_text())
    assert plan["model"]["name"] == "examples/dcgan_rgb.py:build" and plan["solver"]["status"] == "optimal"
    assert plan["model"]["input_shape"] == [3, 64, 64]
    rows = [json.loads(line) for line in (tmp_path / "runs" / "shapes" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and all(r["kid"] > 0 and r["fid"] > 0 for r in rows)
    assert rows[-1]["quality_features"].startswith("fid, kid on the features of a classifier of the folder's 3 class")
    grid = Image.open(tmp_path / "runs" / "shapes" / "samples" / "round_0002.png")
    assert grid.mode == "RGB" and grid.width > 8 * 64
