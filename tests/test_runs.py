"""Runs as people keep them: ``fsl train --config run.toml`` (every flag a key, flags over
the file, the resolved options in DIR/config.toml, resumable from it), TensorBoard event
files read back with tensorboard's own reader against metrics.jsonl, and ``fsl report``'s
self-contained HTML against the run's files on disk."""

from __future__ import annotations

import base64
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from cli import app
from planner.planfile import write_plan
from tests.helpers import chain_plan
from trainer import TrainConfig
from trainer.run.runfile import keys, read_run_file, to_toml

ROOT = Path(__file__).parent.parent
META_FLAGS = {"config", "print-config"}  # flags about the file itself, not options of the run


def _fsl(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _train_flags() -> set[str]:
    train = typer.main.get_command(app).commands["train"]
    return {o.removeprefix("--") for p in train.params for o in p.opts if o.startswith("--")}


def test_every_train_flag_is_a_key():
    assert set(keys()) == _train_flags() - META_FLAGS


def _readme_quick_start() -> list[str]:
    """The flags of the README quick start's ``fsl train``."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index("## Quick start"):], re.S).group(1)
    train = next(part for part in block.split("&&") if part.strip().startswith("fsl train"))
    return shlex.split(train)[2:]


def test_lab_toml_is_the_readme_quick_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the paths are relative to where fsl runs, as on the command line
    flags = _fsl("train", *_readme_quick_start(), "--print-config")
    from_file = _fsl("train", "--config", str(ROOT / "examples" / "lab.toml"), "--print-config")
    assert flags.exit_code == 0 and from_file.exit_code == 0, (flags.stderr, from_file.stderr)
    assert from_file.stdout == flags.stdout
    assert 'plan = "runs/lab-plan.json"' in flags.stdout  # the flags were read, not only defaults


def test_flags_given_override_the_file_and_both_spellings_are_keys(tmp_path):
    run_file = tmp_path / "run.toml"
    run_file.write_text('plan = "p.json"\nrounds = 7\nsteps_per_round = 4\neval-every = 0\nlr = 1\n'
                        'slowdown = ["a=2@3"]\n')
    r = _fsl("train", "--config", str(run_file), "--rounds", "2", "--out", str(tmp_path / "o"), "--print-config")
    assert r.exit_code == 0, r.stderr
    printed = read_run_file(_write(tmp_path / "printed.toml", r.stdout))
    assert printed["rounds"] == 2 and printed["steps_per_round"] == 4 and printed["eval_every"] == 0
    assert printed["lr"] == 1.0 and isinstance(printed["lr"], float)  # an integer where a float goes
    assert printed["slowdown"] == (("a", 2.0, 3),) and printed["plan_path"] == Path("p.json")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("body, key, says", [
    ('rounds = 2\nbogus = 1\n', "bogus", "unknown key"),
    ('config = "other.toml"\n', "config", "unknown key"),
    ('rounds = "3"\n', "rounds", "expected an integer"),
    ('rounds = 2.5\n', "rounds", "expected an integer"),
    ('resume = 1\n', "resume", "expected true or false"),
    ('rounds = 0\n', "rounds", "must be within 1..100000"),  # TrainConfig's check, named by the file
    ('steps-per-round = 2\nsteps_per_round = 3\n', "steps_per_round", "given twice"),
    ('slowdown = ["a-phone"]\n', "slowdown", "DEVICE=FACTOR@ROUND"),
])
def test_a_wrong_run_file_is_exit_2_naming_the_file_and_key(tmp_path, body, key, says):
    path = _write(tmp_path / "run.toml", 'plan = "p.json"\n' + body)
    r = _fsl("train", "--config", str(path), "--print-config")
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"error: {path}: {key}: ") and says in line, line


def test_a_run_file_that_is_no_toml_or_absent_is_exit_2(tmp_path):
    for path, says in ((_write(tmp_path / "bad.toml", "rounds = = 2\n"), "not valid TOML"),
                       (tmp_path / "none.toml", "no such file")):
        r = _fsl("train", "--config", str(path))
        assert r.exit_code == 2 and r.stderr.startswith(f"error: {path}: {says}"), r.stderr


def test_no_plan_anywhere_is_exit_2():
    r = _fsl("train", "--print-config")
    assert r.exit_code == 2 and r.stderr.startswith("error: --plan: missing"), r.stderr


def test_every_option_survives_the_file(tmp_path):
    """Each field set away from its default, written and read back."""
    cfg = TrainConfig(plan_path=Path("a/p.json"), out_dir=Path("o"), backend="dist", rounds=9, resume=True,
                      steps_per_round=3, emulate="none", aggregate="fedavg", feedback="sum", deadline_s=2.5,
                      data="mnist", data_root=Path("m/{client}"), alpha=0.3, eval_every=2, seed=5, lr=1e-3,
                      timeout_s=9.0, replan_on_failure=True, adapt=True, slowdown=(("d", 4.0, 2), ("e", 0.5, 1)),
                      dp_clip=0.7, dp_noise=1.1, dp_delta=1e-6, secure_agg=True, cut_noise=0.2, tensorboard=True)
    back = read_run_file(_write(tmp_path / "c.toml", to_toml(cfg)))
    assert TrainConfig(**back) == cfg
    assert "eval_samples" not in back  # no flag sets it


# -- a finished tiny run, trained from a run file and resumed from the config.toml it wrote

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("runs")
    write_plan(chain_plan("dcgan", [2]), tmp / "plan.json")
    run = tmp / "run"
    _write(tmp / "run.toml", f'plan = "{tmp / "plan.json"}"\nout = "{run}"\nrounds = 1\nsteps-per-round = 2\n'
           'emulate = "none"\ntimeout-s = 30\ntensorboard = true\n')
    first = _fsl("train", "--config", str(tmp / "run.toml"))
    assert first.exit_code == 0, first.stderr
    written = (run / "config.toml").read_text()
    # cut-noise as an integer: check_resume compares the saved 0.0 with what the file gives
    _write(tmp / "again.toml", written.replace("cut-noise = 0.0", "cut-noise = 0"))
    printed = _fsl("train", "--config", str(tmp / "again.toml"), "--resume", "--rounds", "2", "--print-config")
    second = _fsl("train", "--config", str(tmp / "again.toml"), "--resume", "--rounds", "2")
    assert second.exit_code == 0, second.stderr
    assert (run / "config.toml").read_text() == printed.stdout  # the resumed command's options, resolved
    return run


@pytest.mark.slow
def test_a_run_resumes_from_the_config_it_wrote(finished_run):
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    config = read_run_file(finished_run / "config.toml")
    assert config["rounds"] == 2 and config["resume"] is True and config["tensorboard"] is True


def _grid_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.slow
def test_tensorboard_holds_what_metrics_jsonl_holds(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(finished_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    board.Reload()
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]

    def series(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in board.Scalars(tag)]

    expected = {"loss/generator": [r["g_loss"] for r in rows],
                "loss/discriminator/client0": [r["d_loss"]["client0"] for r in rows],
                "quality/fid": [r["fid"] for r in rows], "quality/kid": [r["kid"] for r in rows],
                "quality/confidence": [r["confidence"] for r in rows],
                "round/time_s": [r["round_time_s"] for r in rows],
                "client/client0/step_time_s": [r["clients"]["client0"]["step_time_s"] for r in rows],
                "client/client0/predicted_step_time_s": [r["clients"]["client0"]["predicted_step_time_s"]
                                                         for r in rows]}
    for device in rows[0]["devices"]:
        expected[f"device/{device}/compute_s"] = [r["devices"][device]["compute_s"] for r in rows]
        expected[f"device/{device}/predicted_compute_s"] = [r["devices"][device]["predicted_compute_s"]
                                                            for r in rows]
    for tag, values in expected.items():
        got = series(tag)
        assert [s for s, _ in got] == [1, 2], tag  # each round once, across the two starts' event files
        assert [v for _, v in got] == pytest.approx(values, rel=1e-6), tag  # float32 in the event file
    images = board.Images("samples")
    assert [i.step for i in images] == [1, 2]
    for event in images:
        shown = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        assert np.array_equal(shown, _grid_pixels(finished_run / "samples" / f"round_{event.step:04d}.png"))


def _check_report(run: Path, rounds: list[int]) -> str:
    page = (run / "report.html").read_text()
    table = page[page.index('id="rounds"'):]
    table = table[:table.index("</table>")]
    assert [int(r) for r in re.findall(r"<tr><td class=l>(\d+)</td>", table)] == rounds
    last = max(rounds)
    embedded = re.search(rf'<figure id="grid-{last}"><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(embedded.group(1)) == (run / "samples" / f"round_{last:04d}.png").read_bytes()
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page  # nothing fetched
    return page


@pytest.mark.slow
def test_report_names_every_round_and_embeds_the_last_grid(finished_run):
    r = _fsl("report", str(finished_run))
    assert r.exit_code == 0, r.stderr
    page = _check_report(finished_run, [1, 2])
    assert "losses.png" in page and "timeline.png" in page
    assert re.search(r"\b1\s.*\b2\s", r.stdout, re.S) and f"wrote {finished_run / 'report.html'}" in r.stdout


def test_report_of_a_run_folder_written_by_hand(tmp_path):
    """A folder of 30 rounds (metrics.jsonl and grids written here, not by the trainer)."""
    rows = [{"round": r, "g_loss": 0.5 + r / 100, "d_loss": {"a": 1.2}, "round_time_s": 2.0,
             "predicted_round_time_s": 1.5, **({"fid": 40.0 - r} if r % 10 == 0 else {})} for r in range(1, 31)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "samples").mkdir()
    for r in range(1, 31):
        Image.fromarray(np.full((8, 8), 8 * r, dtype=np.uint8)).save(tmp_path / "samples" / f"round_{r:04d}.png")
    r = _fsl("report", str(tmp_path))
    assert r.exit_code == 0, r.stderr
    page = _check_report(tmp_path, list(range(1, 31)))
    assert "<td>10.00</td>" in page  # round 30's FID, 40 - 30
    assert "20 of 30 rounds" in r.stdout  # the terminal shows a sample; the page has every round


def test_report_of_a_folder_that_is_no_run_is_exit_2(tmp_path):
    r = _fsl("report", str(tmp_path))
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {tmp_path}: holds no metrics.jsonl"), r.stderr
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\nnot json\n')
    r = _fsl("report", str(tmp_path))
    assert r.exit_code == 2 and "metrics.jsonl: line 2: not JSON" in r.stderr, r.stderr


def test_tensorboard_is_on_when_installed_and_refused_when_asked_for_without_it(monkeypatch):
    assert "tensorboard = true" in _fsl("train", "--plan", "p.json", "--print-config").stdout
    assert "tensorboard = false" in _fsl("train", "--plan", "p.json", "--no-tensorboard", "--print-config").stdout
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard"
                        else find_spec(name, *a))
    assert "tensorboard = false" in _fsl("train", "--plan", "p.json", "--print-config").stdout
    r = _fsl("train", "--plan", "p.json", "--tensorboard", "--print-config")
    assert r.exit_code == 2 and r.stderr.startswith("error: --tensorboard: the tensorboard package is not installed")
