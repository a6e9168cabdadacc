"""The bad-input corpus (``tests/test_bad_inputs.py``) by surface -> RELIABILITY.md.

    python benchmarks/bad_inputs.py [--before COMMIT]

Every row runs on this checkout in this process (typer's CliRunner, as the test does)
and, with ``--before``, on that commit's code (``git archive`` into a temporary folder)
as a subprocess (a factory there may end or hang its process): each row is judged by
the corpus's ``problems`` (exit code, one line naming the flag or file, no traceback, time, the
folder unchanged). Rows that run longer than ``--timeout-s`` count as failed. The
section between the ``bad-inputs`` markers of RELIABILITY.md is replaced;
``benchmarks/reliability.py`` keeps it.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, machine, md_table  # noqa: E402
from benchmarks import bad_input_corpus as corpus  # noqa: E402

BEGIN, END = "<!-- bad-inputs -->", "<!-- /bad-inputs -->"
SURFACES = {"plan": "fsl plan: flags and output paths", "profile": "fsl profile", "factory": "user model factories",
            "calibrate": "fsl calibrate: flags and output paths", "train": "fsl train: flags, --out, the plan",
            "images": "image folders", "resume": "--resume of another run", "diverge": "divergence (exit 1)"}


def run_rows(code_dir: Path, plans: dict[str, Path], work: Path, timeout_s: float, *,
             workers: int) -> dict[str, list[str]]:
    """Each row's problems, ``fsl`` running from ``code_dir``, ``workers`` rows at a time."""
    env = {**os.environ, "PYTHONPATH": str(code_dir)}

    def one(case) -> tuple[str, list[str]]:
        name = corpus.row(case)[0]
        tmp = work / name
        tmp.mkdir()
        args, before = corpus.prepare(case, plans, tmp)
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", "from cli import main; main()", *args], cwd=tmp, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout_s)
            code = p.returncode
        except subprocess.TimeoutExpired:
            code, err, out = "timeout", "", ""
        finally:  # the command's own processes too (an old fsl calibrate spawns one per device)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.communicate()
        found = corpus.problems(case, args, tmp, before, exit_code=code, stderr=err, stdout=out,
                                took_s=time.perf_counter() - t0)
        print(name, "ok" if not found else found, flush=True)
        return name, found

    with ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(one, corpus.CASES))


def run_in_process(plans: dict[str, Path], work: Path) -> dict[str, list[str]]:
    """Each row's problems on this checkout, in this process (as the test runs them)."""
    from typer.testing import CliRunner

    from cli import app

    found, here = {}, Path.cwd()
    for case in corpus.CASES:
        name = corpus.row(case)[0]
        tmp = work / name
        tmp.mkdir()
        args, before = corpus.prepare(case, plans, tmp)
        os.chdir(tmp)
        t0 = time.perf_counter()
        r = CliRunner().invoke(app, args)
        found[name] = corpus.problems(case, args, tmp, before, exit_code=r.exit_code, stderr=r.stderr,
                                      stdout=r.stdout, took_s=time.perf_counter() - t0)
        os.chdir(here)
        print(name, "ok" if not found[name] else found[name], flush=True)
    return found


def checkout(commit: str, into: Path) -> Path:
    data = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def section(now: dict[str, list[str]], before: dict[str, list[str]] | None, commit: str | None) -> str:
    surface = collections.defaultdict(list)
    for name in now:
        surface[name.split("-")[0]].append(name)
    rows = []
    for key, names in surface.items():
        rows.append([SURFACES.get(key, key), len(names), sum(not now[n] for n in names),
                     "-" if before is None else sum(bool(before[n]) for n in names)])
    total = [len(now), sum(not p for p in now.values()), "-" if before is None else sum(map(bool, before.values()))]
    rows.append(["all", *total])
    head = ["surface", "rows", "handled now"] + ([f"failed at {commit[:7]}"] if commit else [])
    body = [r if commit else r[:3] for r in rows]
    failing = [f"{n}: {'; '.join(p)}" for n, p in now.items() if p]
    return "\n".join([
        BEGIN, f"## Bad-input corpus ({len(now)} rows, `tests/test_bad_inputs.py`)", "",
        f"Made by `python benchmarks/bad_inputs.py{' --before ' + commit if commit else ''}` on {machine()}. "
        "Each row is handled when it ends with its exit code (2 a wrong input, "
        "1 a run that diverged), one line on stderr naming the flag or file, no traceback, within the time "
        "limit, and (exit 2) the folder byte-identical afterwards; a diverged run keeps its metrics (standard "
        "JSON), samples and checkpoint up to the round before." + (
            f" The last column counts the rows the code of {commit[:7]} (before issue 24) failed." if commit else ""),
        "", md_table(head, body), "", *(["Not handled now: " + "; ".join(failing), ""] if failing else []), END])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", help="also run every row on this commit's code")
    ap.add_argument("--timeout-s", type=float, default=40.0)
    ap.add_argument("--workers", type=int, default=1, help="rows run at a time (their time limits share the CPU)")
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.environ.setdefault("FSL_CACHE_DIR", str(tmp / "cache"))
        plans = corpus.make_plans((tmp / "plans").mkdir() or tmp / "plans")
        now = run_in_process(plans, (tmp / "now").mkdir() or tmp / "now")
        before = None
        if opts.before:
            old = checkout(opts.before, (tmp / "old").mkdir() or tmp / "old")
            # its `fsl plan` profiles before it looks at --out: measured once here, not in each row's time limit
            subprocess.run([sys.executable, "-c", "from cli import main; main()", "profile"], cwd=tmp,
                           env={**os.environ, "PYTHONPATH": str(old)}, capture_output=True, timeout=900)
            before = run_rows(old, plans, (tmp / "then").mkdir() or tmp / "then", opts.timeout_s, workers=opts.workers)
    text = section(now, before, opts.before)
    path = ROOT / "RELIABILITY.md"
    doc = path.read_text()
    doc = doc[:doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):] if BEGIN in doc else doc.rstrip() + "\n\n" + text
    path.write_text(doc.rstrip() + "\n")
    print(text)


if __name__ == "__main__":
    main()
