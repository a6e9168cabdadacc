"""A corpus of bad inputs, one row each: the command, the files it finds, and what must
come out (``tests/test_bad_inputs.py`` runs it in-process, ``benchmarks/bad_inputs.py``
as subprocesses, also on older code). A row is handled when the command ends with the
row's exit code (2 a wrong input, 1 a run that diverged), one line on stderr that
contains the row's text (the flag or the file), no traceback, within a bounded time,
with nothing left behind: the folder holds afterwards exactly the files it held before,
byte for byte (a refused ``--resume`` touches none of the run's files); a diverged run
keeps its metrics (standard JSON), samples and checkpoint up to the round before.

Placeholders in a row's argv: ``{tmp}`` the row's folder, ``{lab}`` profiles/lab.json,
``{plan}`` a two-stage plan of dcgan for one client, ``{plan1}`` the same with the
whole model on the data device, ``{plannan}`` a factory whose discriminator outputs
NaN, ``{run}`` a copy of a finished one-round run of ``{plan}`` (``--steps-per-round 1
--eval-every 0 --emulate none``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import torch
from PIL import Image
from typer.testing import CliRunner

from cli import app
from planner.planfile import write_plan
from benchmarks.handplans import chain_plan

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "profiles" / "lab.json"
QUICK = ["--emulate", "none", "--eval-every", "0", "--steps-per-round", "1", "--timeout-s", "20"]
TIME_LIMIT_S = 40.0  # any row; the slowest start roles and stop them


def _png_header(width: int, height: int) -> bytes:
    """A PNG that is only its header: PIL reads the size without any pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(
        b"IEND", b"")


def _png(size=(8, 8), fmt="PNG") -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("L", size, 128).save(buf, format=fmt)
    return buf.getvalue()


FACTORIES = {
    "exit0": "import sys\ndef build():\n    sys.exit(0)\n",
    "exit3": "import sys\ndef build():\n    sys.exit(3)\n",
    "os_exit3": "import os\ndef build():\n    os._exit(3)\n",
    "os_exit0": "import os\ndef build():\n    os._exit(0)\n",
    "sigkill": "import os, signal\ndef build():\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "hang": "import time\ndef build():\n    while True:\n        time.sleep(0.1)\n",
    "interrupt": "def build():\n    raise KeyboardInterrupt\n",
    "exit_at_import": "import sys\nsys.exit(0)\ndef build():\n    pass\n",
    "returns_none": "def build():\n    return None\n",
    "nan_out": ("from torch import nn\nfrom planner.models import Generator\n"
                "class NaN(nn.Module):\n    def forward(self, x):\n        return x * float('nan')\n"
                "def build():\n    return {'discriminator': nn.Sequential(nn.Flatten(), nn.Linear(784, 1), NaN()),"
                " 'input_shape': (1, 28, 28), 'generator': Generator()}\n"),
}


def _setup(tmp: Path, files: dict[str, str]) -> None:
    """``files``: relative path -> what to put there (``dir``, ``png``, ``png64``,
    ``bmp``, ``bomb``, ``huge``, ``truncated``, ``factory:NAME``, ``run``, or text)."""
    for rel, what in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if what == "dir":
            p.mkdir(exist_ok=True)
        elif what == "png":
            p.write_bytes(_png())
        elif what == "png64":
            p.write_bytes(_png((64, 64)))
        elif what == "bmp":
            p.write_bytes(_png(fmt="BMP"))
        elif what == "bomb":
            p.write_bytes(_png_header(20000, 20000))  # > 2x PIL's limit: DecompressionBombError
        elif what == "huge":
            p.write_bytes(_png_header(10000, 10000))  # > PIL's limit: its DecompressionBombWarning
        elif what == "truncated":
            p.write_bytes(_png((64, 64))[:60])  # the header whole, the pixels cut
        elif what.startswith("factory:"):
            p.write_text(FACTORIES[what.split(":", 1)[1]])
        else:
            p.write_text(what)


RESUME = ["train", "--plan", "{plan}", "--out", "{run}", "--resume", "--steps-per-round", "1"]
IMG = {"imgs/a.png": "png", "imgs/b.png": "png"}
SLOW = {"diverge-lr-evaluated"}  # the evaluator's set-up: ~40 s

# (id, argv, files, exit code, text the one line contains)
CASES = [
    # fsl plan: flags
    ("plan-batch-0", ["plan", "--devices", "{lab}", "--batch-size", "0"], {}, 2, "--batch-size"),
    ("plan-batch-negative", ["plan", "--devices", "{lab}", "--batch-size", "-3"], {}, 2, "--batch-size"),
    ("plan-batch-huge", ["plan", "--devices", "{lab}", "--batch-size", str(2**40)], {}, 2, "--batch-size"),
    ("plan-micro-batches-0", ["plan", "--devices", "{lab}", "--objective", "throughput", "--micro-batches", "0"],
     {}, 2, "at least 1"),
    ("plan-micro-batches-text", ["plan", "--devices", "{lab}", "--micro-batches", "two"], {}, 2, "--micro-batches"),
    ("plan-micro-batches-3", ["plan", "--devices", "{lab}", "--objective", "throughput", "--micro-batches", "3"],
     {}, 2, "does not divide"),
    ("plan-time-limit-0", ["plan", "--devices", "{lab}", "--time-limit", "0"], {}, 2, "--time-limit"),
    ("plan-time-limit-nan", ["plan", "--devices", "{lab}", "--time-limit", "nan"], {}, 2, "--time-limit"),
    ("plan-objective", ["plan", "--devices", "{lab}", "--objective", "energy"], {}, 2, "--objective"),
    ("plan-solver", ["plan", "--devices", "{lab}", "--solver", "magic"], {}, 2, "--solver"),
    ("plan-codecs-empty", ["plan", "--devices", "{lab}", "--codecs", "none,"], {}, 2, "--codecs"),
    ("plan-recompute", ["plan", "--devices", "{lab}", "--recompute", "maybe"], {}, 2, "--recompute"),
    ("plan-ga-population-0", ["plan", "--devices", "{lab}", "--solver", "ga", "--ga-population", "0"], {}, 2,
     "--ga-population"),
    ("plan-model-unknown", ["plan", "--devices", "{lab}", "--model", "vgg"], {}, 2, "--model"),
    ("plan-model-timeout-0", ["plan", "--devices", "{lab}", "--model", "{tmp}/f.py:build", "--model-timeout-s", "0"],
     {"f.py": "factory:returns_none"}, 2, "--model-timeout-s"),
    # fsl plan: paths
    ("plan-devices-missing", ["plan", "--devices", "{tmp}/nope.json"], {}, 2, "nope.json"),
    ("plan-devices-folder", ["plan", "--devices", "{tmp}/d"], {"d": "dir"}, 2, "is a directory"),
    ("plan-out-folder", ["plan", "--devices", "{lab}", "--out", "{tmp}/d"], {"d": "dir"}, 2, "--out"),
    ("plan-out-under-file", ["plan", "--devices", "{lab}", "--out", "{tmp}/f.txt/plan.json"], {"f.txt": "x"}, 2,
     "is a file"),
    ("plan-out-unwritable", ["plan", "--devices", "{lab}", "--out", "/proc/fsl-plan.json"], {}, 2, "cannot write"),
    ("plan-table-beside-is-folder", ["plan", "--devices", "{lab}", "--out", "{tmp}/p.json"], {"p.txt": "dir"}, 2,
     "p.txt"),
    ("plan-figure-folder", ["plan", "--devices", "{lab}", "--out", "{tmp}/p.json", "--figure", "{tmp}/d"],
     {"d": "dir"}, 2, "--figure"),
    # user factories (planner.factorycheck): run in a child first
    ("factory-sys-exit-0", ["plan", "--devices", "{lab}", "--model", "{tmp}/f.py:build"],
     {"f.py": "factory:exit0"}, 2, "SystemExit"),
    ("factory-sys-exit-3", ["plan", "--devices", "{lab}", "--model", "{tmp}/f.py:build"],
     {"f.py": "factory:exit3"}, 2, "SystemExit"),
    ("factory-os-exit-3", ["plan", "--devices", "{lab}", "--model", "{tmp}/f.py:build"],
     {"f.py": "factory:os_exit3"}, 2, "ended its process (exit code 3)"),
    ("factory-os-exit-0", ["plan", "--devices", "{lab}", "--model", "{tmp}/f.py:build"],
     {"f.py": "factory:os_exit0"}, 2, "ended its process (exit code 0)"),
    ("factory-sigkill", ["plan", "--devices", "{lab}", "--model", "{tmp}/f.py:build"],
     {"f.py": "factory:sigkill"}, 2, "killed by signal 9"),
    ("factory-hang", ["plan", "--devices", "{lab}", "--model", "{tmp}/f.py:build", "--model-timeout-s", "1"],
     {"f.py": "factory:hang"}, 2, "did not return within 1 s"),
    ("factory-keyboard-interrupt", ["plan", "--devices", "{lab}", "--model", "{tmp}/f.py:build"],
     {"f.py": "factory:interrupt"}, 2, "KeyboardInterrupt"),
    ("factory-exit-at-import", ["profile", "--model", "{tmp}/f.py:build"],
     {"f.py": "factory:exit_at_import"}, 2, "f.py"),
    ("factory-returns-none", ["profile", "--model", "{tmp}/f.py:build"], {"f.py": "factory:returns_none"}, 2,
     "expected a dict"),
    ("factory-no-function", ["profile", "--model", "{tmp}/f.py:nothing"], {"f.py": "x = 1\n"}, 2, "nothing"),
    ("factory-syntax-error", ["profile", "--model", "{tmp}/f.py:build"], {"f.py": "def build(:\n"}, 2, "f.py"),
    ("factory-file-missing", ["profile", "--model", "{tmp}/none.py:build"], {}, 2, "none.py"),
    ("factory-exit-calibrate", ["calibrate", "--devices", "{lab}", "--model", "{tmp}/f.py:build", "--out",
                                "{tmp}/c.json"], {"f.py": "factory:os_exit3"}, 2, "exit code 3"),
    ("profile-batch-0", ["profile", "--batch-size", "0"], {}, 2, "--batch-size"),
    # fsl calibrate: checked before any process starts
    ("calibrate-out-folder", ["calibrate", "--devices", "{lab}", "--out", "{tmp}/d"], {"d": "dir"}, 2, "--out"),
    ("calibrate-out-under-file", ["calibrate", "--devices", "{lab}", "--out", "{tmp}/f.txt/c.json"],
     {"f.txt": "x"}, 2, "--out"),
    ("calibrate-measurements-folder", ["calibrate", "--devices", "{lab}", "--out", "{tmp}/c.json",
                                       "--measurements", "{tmp}/d"], {"d": "dir"}, 2, "--measurements"),
    ("calibrate-measurements-is-out", ["calibrate", "--devices", "{lab}", "--out", "{tmp}/c.json",
                                       "--measurements", "{tmp}/c.json"], {}, 2, "--measurements"),
    ("calibrate-default-out-folder", ["calibrate", "--devices", "{tmp}/lab.json"],
     {"lab.json": LAB.read_text(), "lab.calibrated.json": "dir"}, 2, "lab.calibrated.json"),
    ("calibrate-links-emulated", ["calibrate", "--devices", "{lab}", "--links", "--out", "{tmp}/c.json"], {}, 2,
     "--links"),
    ("calibrate-emulate", ["calibrate", "--devices", "{lab}", "--emulate", "fast", "--out", "{tmp}/c.json"], {}, 2,
     "--emulate"),
    ("calibrate-repeats-0", ["calibrate", "--devices", "{lab}", "--repeats", "0", "--out", "{tmp}/c.json"], {}, 2,
     "--repeats"),
    ("calibrate-batch-0", ["calibrate", "--devices", "{lab}", "--batch-size", "0", "--out", "{tmp}/c.json"], {}, 2,
     "--batch-size"),
    ("calibrate-devices-missing", ["calibrate", "--devices", "{tmp}/nope.json", "--out", "{tmp}/c.json"], {}, 2,
     "nope.json"),
    # fsl train: flags
    ("train-seed-negative", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--seed", "-1"], {}, 2, "--seed"),
    ("train-seed-2**70", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--seed", str(2**70)], {}, 2, "--seed"),
    ("train-seed-2**32", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--seed", str(2**32)], {}, 2, "--seed"),
    ("train-lr-0", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--lr", "0"], {}, 2, "--lr"),
    ("train-lr-nan", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--lr", "nan"], {}, 2, "--lr"),
    ("train-lr-inf", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--lr", "inf"], {}, 2, "--lr"),
    ("train-rounds-0", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--rounds", "0"], {}, 2, "--rounds"),
    ("train-steps-0", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--steps-per-round", "0"], {}, 2,
     "--steps-per-round"),
    ("train-alpha-0", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--alpha", "0"], {}, 2, "--alpha"),
    ("train-eval-every-negative", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--eval-every", "-1"], {}, 2,
     "--eval-every"),
    ("train-timeout-0", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--timeout-s", "0"], {}, 2, "--timeout-s"),
    ("train-deadline-negative", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--deadline-s", "-1"], {}, 2,
     "--deadline-s"),
    ("train-backend", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--backend", "mpi"], {}, 2, "--backend"),
    ("train-emulate", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--emulate", "fast"], {}, 2, "--emulate"),
    ("train-aggregate", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--aggregate", "median"], {}, 2,
     "--aggregate"),
    ("train-dp-clip-alone", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--dp-clip", "1"], {}, 2,
     "--dp-clip"),
    ("train-dp-epsilon-and-noise", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--dp-epsilon", "3",
                                    "--dp-noise", "1"], {}, 2, "--dp-noise"),
    ("train-dp-epsilon-0", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--dp-epsilon", "0"], {}, 2,
     "--dp-epsilon"),
    ("train-dp-delta-1", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--dp-epsilon", "3", "--dp-delta", "1"],
     {}, 2, "--dp-delta"),
    ("train-dp-clip-0", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--dp-clip", "0", "--dp-noise", "1"],
     {}, 2, "--dp-clip"),
    ("train-dp-noise-inf", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--dp-clip", "1", "--dp-noise", "inf"],
     {}, 2, "--dp-noise"),
    ("train-secure-agg-alone", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--secure-agg"], {}, 2,
     "--secure-agg"),
    ("train-cut-noise-negative", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--cut-noise", "-1"], {}, 2,
     "--cut-noise"),
    ("train-cut-noise-no-cut", ["train", "--plan", "{plan1}", "--out", "{tmp}/r", "--cut-noise", "0.5"], {}, 2,
     "whole model on the data device"),
    ("train-slowdown-syntax", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--slowdown", "c0-d1:2"], {}, 2,
     "--slowdown"),
    ("train-slowdown-unknown", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--slowdown", "phone=2@1"], {}, 2,
     "'phone'"),
    ("train-slowdown-after-last", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--rounds", "2", "--slowdown",
                                   "c0-d1=2@3"], {}, 2, "after the run's last (2)"),
    ("train-slowdown-not-emulated", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--emulate", "none",
                                     "--slowdown", "c0-d1=2@1"], {}, 2, "--emulate sleep"),
    ("train-data", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "cifar"], {}, 2, "--data"),
    ("train-data-images-empty", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "images:"], {}, 2,
     "--data"),
    ("train-mnist-no-root", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "mnist"], {}, 2,
     "--data-root"),
    ("train-root-without-mnist", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data-root", "{tmp}"], {}, 2,
     "--data-root"),
    ("train-plan-missing", ["train", "--plan", "{tmp}/nope.json", "--out", "{tmp}/r"], {}, 2, "nope.json"),
    ("train-plan-is-profile", ["train", "--plan", "{lab}", "--out", "{tmp}/r"], {}, 2, "lab.json"),
    # fsl train: --out
    ("train-out-is-file", ["train", "--plan", "{plan}", "--out", "{tmp}/f.txt"], {"f.txt": "x"}, 2, "--out"),
    ("train-out-under-file", ["train", "--plan", "{plan}", "--out", "{tmp}/f.txt/run"], {"f.txt": "x"}, 2,
     "is a file"),
    ("train-out-unwritable", ["train", "--plan", "{plan}", "--out", "/proc/fsl-run"], {}, 2, "cannot write"),
    ("train-out-in-image-folder", ["train", "--plan", "{plan}", "--out", "{tmp}/imgs/run", "--data",
                                   "images:{tmp}/imgs"], IMG, 2, "--out"),
    # image folders
    ("images-missing", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "images:{tmp}/none"], {}, 2,
     "does not exist"),
    ("images-empty", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "images:{tmp}/imgs"],
     {"imgs": "dir"}, 2, "no PNG/JPEG"),
    ("images-not-images", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "images:{tmp}/imgs"],
     {"imgs/a.txt": "x"}, 2, "a.txt"),
    ("images-bomb", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "images:{tmp}/imgs"],
     {**IMG, "imgs/c.png": "bomb"}, 2, "c.png"),
    ("images-huge", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "images:{tmp}/imgs"],
     {**IMG, "imgs/c.png": "huge"}, 2, "c.png"),
    ("images-sizes-differ", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "images:{tmp}/imgs"],
     {**IMG, "imgs/c.png": "png64"}, 2, "c.png"),
    ("images-bmp-named-png", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "images:{tmp}/imgs"],
     {**IMG, "imgs/c.png": "bmp"}, 2, "c.png"),
    ("images-text-named-png", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "images:{tmp}/imgs"],
     {**IMG, "imgs/c.png": "not an image"}, 2, "c.png"),
    ("images-and-folders", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "images:{tmp}/imgs"],
     {**IMG, "imgs/cls": "dir"}, 2, "holds both"),
    ("images-empty-class", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "images:{tmp}/imgs"],
     {"imgs/a/x.png": "png", "imgs/b": "dir"}, 2, "holds no PNG/JPEG"),
    ("images-alpha-unlabelled", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data", "images:{tmp}/imgs",
                                 "--alpha", "0.5"], IMG, 2, "--alpha"),
    ("images-truncated", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data",
                                      "images:{tmp}/imgs", *QUICK], {f"imgs/{i}.png": "truncated" for i in range(8)},
                 2, "cannot be decoded"),
    ("images-client-folder-missing", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--data",
                                                  "images:{tmp}/imgs/{client}", *QUICK], {"imgs/other/a.png": "png"},
                 2, "client0"),
    ("train-dp-noise-tiny", ["train", "--plan", "{plan}", "--out", "{tmp}/r", "--dp-clip", "1",
                                         "--dp-noise", "1e-300", *QUICK], {}, 2, "epsilon"),
    # --resume of {run}: a different run is refused, naming the option and both values
    ("resume-nothing", ["train", "--plan", "{plan}", "--out", "{tmp}/empty", "--resume"], {"empty": "dir"}, 2,
     "no checkpoint"),
    ("resume-without-flag", ["train", "--plan", "{plan}", "--out", "{run}"], {}, 2, "holds a run already"),
    ("resume-seed", [*RESUME, "--seed", "1"], {}, 2,
     "--seed: the run in"),
    ("resume-alpha", [*RESUME, "--alpha", "0.5"], {}, 2,
     "trained with None, this command says 0.5"),
    ("resume-data", [*RESUME, "--data", "images:{tmp}/imgs"],
     IMG, 2, "--data"),
    ("resume-aggregate", [*RESUME, "--aggregate", "fedavg"], {}, 2,
     "--aggregate"),
    ("resume-feedback", [*RESUME, "--feedback", "sum"], {}, 2,
     "trained with mean, this command says sum"),
    ("resume-steps", [*RESUME[:-1], "2"], {}, 2,
     "--steps-per-round"),
    ("resume-dp", [*RESUME, "--dp-clip", "1", "--dp-noise", "1"],
     {}, 2, "--dp-clip"),
    ("resume-cut-noise", [*RESUME, "--cut-noise", "0.1"], {}, 2,
     "--cut-noise"),
    ("resume-other-plan", ["train", "--plan", "{plan1}", *RESUME[3:]], {}, 2, "another plan"),
    # faults of the run, not of the input: exit 1, one line, the checkpoint kept
    ("diverge-lr", [*RESUME, "--rounds", "4",
                                "--lr", "1e30", *QUICK], {}, 1, "training diverged in round"),
    ("diverge-lr-evaluated", [*RESUME, "--rounds", "4", "--lr", "1e30", "--eval-every", "1", *QUICK[:2]], {}, 1,
     "training diverged in round"),
    ("diverge-nan-discriminator", ["train", "--plan", "{plannan}", "--out", "{tmp}/r", *QUICK], {}, 1,
                 "client client0's losses (d, g) are not finite"),
]


def make_plans(folder: Path) -> dict[str, Path]:
    """The plans and the finished run the rows name (module docstring), in ``folder``."""
    out = {}
    (folder / "nan.py").write_text(FACTORIES["nan_out"])
    for key, model, cuts in (("plan", "dcgan", [2]), ("plan1", "dcgan", []), ("plannan", f"{folder}/nan.py:build", [1])):
        out[key] = folder / f"{key}.json"
        write_plan(chain_plan(model, cuts), out[key])
    r = CliRunner().invoke(app, ["train", "--plan", str(out["plan"]), "--out", str(folder / "run"), "--rounds", "1",
                                 *QUICK])
    assert r.exit_code == 0, (r.stderr, r.exception)
    out["run"] = folder / "run"
    return out


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def row(case) -> tuple:
    """(id, argv, files, exit code, text) of a CASES entry."""
    return case


def prepare(case, plans: dict[str, Path], tmp: Path) -> tuple[list[str], dict[str, str]]:
    """Lay out ``case``'s files in ``tmp``; returns its argv and the folder's snapshot."""
    _, argv, files, _, _ = row(case)
    _setup(tmp, files)
    if any("{run}" in a for a in argv):
        shutil.copytree(plans["run"], tmp / "run")
    values = {"tmp": str(tmp), "lab": str(LAB), "run": str(tmp / "run"),
              **{k: str(plans[k]) for k in ("plan", "plan1", "plannan")}}
    return [a.replace("{client}", "\0").format(**values).replace("\0", "{client}") for a in argv], snapshot(tmp)


def problems(case, args: list[str], tmp: Path, before: dict[str, str], *, exit_code, stderr: str, stdout: str,
             took_s: float) -> list[str]:
    """What is wrong with how a command ended on ``case`` (empty: nothing)."""
    _, _, _, code, text = row(case)
    lines = [x for x in stderr.splitlines() if x.strip()]
    out = []
    if exit_code != code:
        out.append(f"exit {exit_code}, expected {code}")
    if not (len(lines) == 1 and text in lines[0]):
        out.append(f"{len(lines)} lines on stderr, expected one with {text!r}: {stderr[-300:]!r}")
    if "Traceback" in stderr + stdout:
        out.append("a traceback")
    if took_s >= TIME_LIMIT_S * (3 if row(case)[0] in SLOW else 1):
        out.append(f"took {took_s:.0f} s")
    if code == 2 and snapshot(tmp) != before:
        changed = sorted(set(snapshot(tmp).items()) ^ set(before.items()))
        out.append(f"the folder changed: {[k for k, _ in changed][:4]}")
    if code == 1 and lines and "diverged in round" in lines[0]:
        out += _kept_until_divergence(lines[0], Path(args[args.index("--out") + 1]))
    return out


def _kept_until_divergence(line: str, out: Path) -> list[str]:
    """The round that diverged left nothing: metrics (standard JSON), samples and the
    server's checkpoint end at the round before it."""
    diverged = int(re.search(r"diverged in round (\d+)", line).group(1))
    try:
        rows = [json.loads(x, parse_constant=lambda c: 1 / 0) for x in (out / "metrics.jsonl").read_text().splitlines()]
    except ZeroDivisionError:
        return ["NaN or Infinity in metrics.jsonl"]
    bad = []
    if [r["round"] for r in rows] != list(range(1, diverged)):
        bad.append(f"metrics rows {[r['round'] for r in rows]} after divergence in round {diverged}")
    if (out / "samples" / f"round_{diverged:04d}.png").exists():
        bad.append("samples of the diverged round")
    server = out / "checkpoint" / "server.pt"
    kept = torch.load(server, weights_only=True)["round"] if server.exists() else 0
    if kept != diverged - 1:
        bad.append(f"checkpoint of round {kept}, expected {diverged - 1}")
    return bad


