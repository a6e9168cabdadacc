"""Solving a binary program with the CBC that PuLP bundles, without PuLP's model objects.

The search of :mod:`planner.ilp` solves many small models; building PuLP objects and
writing MPS through them cost more than CBC itself (measured: 60 % of the planner's time
on 20 clients of 8 devices x 32 layers). :class:`BinaryProgram` is the model as arrays;
:func:`solve` writes it as fixed-name MPS, runs the same CBC binary with the same
options PuLP would pass, and reads the solution file the way PuLP does
(``pulp.apis.coin_api.COIN_CMD.get_status``):

- first word ``Optimal``: proven optimal;
- ``Infeasible`` or ``Integer`` (``Integer infeasible``): proven infeasible;
- ``Stopped`` with ``objective value`` as the 4th-5th words: a time limit hit with an
  incumbent (``feasible``); ``Stopped`` otherwise: no solution (``unknown``).
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass

import pulp

# Measured on the search's models from 4 seeded 8x32 clients (73 models, CBC child CPU
# time): these 2.0 s, CBC's defaults 3.0 s. Exactness is unaffected.
CBC_OPTIONS = ("preprocess off", "feas off", "strong 0")


@dataclass(frozen=True)
class BinaryProgram:
    """Minimise ``objective . x`` over binary ``x`` subject to named rows."""

    columns: list[str]  # column names (for a reader; the MPS file numbers them)
    objective: list[float]  # [column] cost
    rows: list[tuple[str, str, float, list[int], list[float]]]  # (name, sense "E"|"L"|"G", rhs, columns, coefs)


_files = {"dir": None, "lock": threading.Lock(), "count": itertools.count()}


def _scratch_paths() -> tuple[str, str]:
    """A fresh ``(model.mps, model.sol)`` pair in one directory per process (removing a
    directory per call cost 3 ms on this VM's file system, a tenth of a CBC call)."""
    with _files["lock"]:
        if _files["dir"] is None:
            _files["dir"] = tempfile.mkdtemp(prefix="fsl-cbc-")
            atexit.register(shutil.rmtree, _files["dir"], ignore_errors=True)
        n = next(_files["count"])
    return os.path.join(_files["dir"], f"{n}.mps"), os.path.join(_files["dir"], f"{n}.sol")


@functools.cache
def cbc_path() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD().path


def write_mps(bp: BinaryProgram, path: str) -> None:
    by_col: list[list[str]] = [[f"    C{j}  OBJ  {c!r}"] for j, c in enumerate(bp.objective)]
    for r, (_, _, _, cols, coefs) in enumerate(bp.rows):
        for j, a in zip(cols, coefs):
            by_col[j].append(f"    C{j}  R{r}  {a!r}")
    lines = ["NAME placement", "ROWS", " N  OBJ"]
    lines += [f" {sense}  R{r}" for r, (_, sense, _, _, _) in enumerate(bp.rows)]
    lines += ["COLUMNS", "    MARKER  'MARKER'  'INTORG'"]
    lines += [line for col in by_col for line in col]
    lines += ["    MARKER  'MARKER'  'INTEND'", "RHS"]
    lines += [f"    RHS  R{r}  {rhs!r}" for r, (_, _, rhs, _, _) in enumerate(bp.rows) if rhs != 0]
    lines += ["BOUNDS"] + [f" BV BND C{j}" for j in range(len(bp.columns))] + ["ENDATA", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def read_solution(path: str, n_columns: int) -> tuple[str, list[float]]:
    """(outcome, column values) from CBC's solution file: its first line says how the
    solve ended, as PuLP's ``COIN_CMD.get_status`` reads it."""
    with open(path) as f:
        words = f.readline().split()
        values = [0.0] * n_columns
        for line in f:
            parts = line.split()
            if parts and parts[0] == "**":
                parts = parts[1:]
            if len(parts) >= 3 and parts[1].startswith("C") and parts[1][1:].isdigit():
                values[int(parts[1][1:])] = float(parts[2])
    head = words[0] if words else ""
    if head == "Optimal":
        return "optimal", values
    if head in ("Infeasible", "Integer"):
        return "infeasible", values
    if head == "Stopped" and len(words) >= 5 and words[4] == "objective":
        return "feasible", values
    return "unknown", values


def solve(bp: BinaryProgram, *, time_limit_s: float | None, gap_abs: float) -> tuple[str, list[float]]:
    """``(outcome, column values)``; outcome optimal, feasible, infeasible or unknown."""
    mps, sol = _scratch_paths()
    try:
        write_mps(bp, mps)
        args = [cbc_path(), mps]
        if time_limit_s is not None:
            args += ["-sec", str(time_limit_s)]
        for option in (*CBC_OPTIONS, "ratio 0", f"allow {gap_abs}", "threads 1", "timeMode elapsed"):
            args += ["-" + option.split()[0], *option.split()[1:]]
        args += ["-solve", "-printingOptions", "normal", "-solution", sol]  # nonzero columns only
        done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        if done.returncode != 0 or not os.path.exists(sol):
            raise RuntimeError(f"CBC failed (exit {done.returncode}) on a placement model")
        return read_solution(sol, len(bp.columns))
    finally:
        for path in (mps, sol):
            if os.path.exists(path):
                os.unlink(path)
