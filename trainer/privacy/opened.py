"""Which files each role opened: measured by the interpreter, not declared by the role.

CPython raises an audit event (PEP 578) for every file opened through ``open``,
``io.open`` and ``os.open`` (event ``open``: the readers here all use them: scikit-learn's
digits through ``importlib.resources`` and ``gzip``, the IDX reader's ``open`` and
``np.memmap``, PIL's ``Image.open``) and for every folder listed (``os.listdir``,
``os.scandir``). One hook per process (``sys.addaudithook``; it cannot be removed) hands
each event to a :class:`Recorder`: the process's under the dist backend (every thread of a
role's process), the calling thread's under the local backend (all roles are threads of
one process). A role's ``hello`` carries :meth:`Recorder.summary` to the server, which
writes it to ``processes.json``: the data files as a count per folder and a sha256 of
their sorted real paths (:func:`paths_digest`), the folders listed under the data roots,
and every other file by name. At its end a role writes its whole run's record, data files
by name, to ``opened/<role>.json`` in its own run folder (:func:`save`): the hello covers
what it opened before training, this file everything up to the end.

What it does not see: a file opened by C code without Python's ``open`` (none of the data
readers here does that), and data that reaches a process without a file (a message).
Files of the Python installation (code, package metadata, matplotlib's styles) and the
folders that imports list are counted, not listed, unless they lie under a data root (the
digits file lies in scikit-learn's package).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from planner.jsonio import write_json
from trainer.data.datasets import CLIENT, DataSource

EVENTS = ("open", "os.listdir", "os.scandir")
CODE_SUFFIXES = (".py", ".pyc", ".pyd", ".so", ".pth")
LIBRARIES = tuple(sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}))


@dataclass
class Recorder:
    """Every file one role opened and every folder it listed; a path under one of
    ``roots`` (real paths) is a data file."""

    roots: tuple[str, ...]
    data_files: set[str] = field(default_factory=set)
    data_folders_listed: set[str] = field(default_factory=set)
    other_files: set[str] = field(default_factory=set)
    library_opens: int = 0  # opens of Python code, and of any file of the Python installation outside the roots
    other_listings: int = 0  # folders listed outside the roots (imports list their packages)

    def note(self, event: str, path: str) -> None:
        code = event == "open" and path.endswith(CODE_SUFFIXES)  # e.g. the .pyc beside the digits file
        data = not code and any(path == r or path.startswith(r + os.sep) for r in self.roots)
        if event != "open":
            if data:
                self.data_folders_listed.add(path)
            else:
                self.other_listings += 1
        elif data:
            self.data_files.add(path)
        elif code or any(path.startswith(p + os.sep) for p in LIBRARIES):
            self.library_opens += 1
        else:
            self.other_files.add(path)

    def summary(self) -> dict:
        """What ``processes.json`` lists for the role. Data files are not named (a client's
        file names are its own): per folder a count, and :func:`paths_digest` of them all."""
        return {"data_roots": list(self.roots),
                "data_files": dict(sorted(Counter(os.path.dirname(p) for p in self.data_files).items())),
                "data_files_sha256": paths_digest(self.data_files),
                "data_folders_listed": sorted(self.data_folders_listed),
                "other_files": sorted(self.other_files), "library_opens": self.library_opens,
                "other_listings": self.other_listings}


def paths_digest(paths) -> str:
    """sha256 of the sorted real paths, one per line (UTF-8): whoever knows which files a
    role should have opened can check the exact set without the role naming them."""
    return "sha256:" + hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()


_lock = threading.Lock()
_installed: list[bool] = []  # the hook is in (once per interpreter)
_threads: dict[int, Recorder] = {}  # local backend: a role's thread -> its recorder
_process: list[Recorder] = []  # dist backend: the one recorder of this role's process
_inside = threading.local()  # the hook's own work opens nothing, but never recurse


def _recorder() -> Recorder | None:
    """The calling thread's recorder (local backend), else this process's (dist backend)."""
    return _threads.get(threading.get_ident()) or (_process[0] if _process else None)


def _hook(event: str, args: tuple) -> None:
    if event not in EVENTS:
        return
    recorder = _recorder()
    if recorder is None or getattr(_inside, "busy", False):
        return
    _inside.busy = True
    try:
        target = args[0] if args else "."
        if isinstance(target, int):  # an already open descriptor: its open was seen
            return
        path = os.path.realpath(os.fsdecode(target if target is not None else "."))
        with _lock:
            recorder.note(event, path)
    except Exception:  # noqa: BLE001 - an audit hook must never break the call it watches
        pass
    finally:
        _inside.busy = False


def _install() -> None:
    with _lock:
        if not _installed:
            sys.addaudithook(_hook)
            _installed.append(True)


def data_roots(source: DataSource) -> tuple[str, ...]:
    """Where ``source``'s files live (real paths): scikit-learn's bundled data folder for
    the digits; the folder for MNIST and images; with ``{client}``, the folder that holds
    every client's folder."""
    if source.name == "digits":  # found without importing scikit-learn (a device without data never does)
        spec = importlib.util.find_spec("sklearn")
        return (os.path.realpath(Path(spec.submodule_search_locations[0]) / "datasets" / "data"),)
    root = str(source.root)
    if CLIENT in root:
        head = root.split(CLIENT)[0]
        root = head if head.endswith(os.sep) else os.path.dirname(head)
    return (os.path.realpath(root or "."),)


def record_process(source: DataSource) -> Recorder:
    """Record every file this process opens from now on (a process per role)."""
    _install()
    _process[:] = [Recorder(data_roots(source))]
    return _process[0]


def record_thread(source: DataSource) -> Recorder:
    """Record every file the calling thread opens until :func:`stop_thread`."""
    _install()
    recorder = Recorder(data_roots(source))
    with _lock:
        _threads[threading.get_ident()] = recorder
    return recorder


def stop_thread() -> None:
    with _lock:
        _threads.pop(threading.get_ident(), None)


def save(out_dir: str | Path, role: str) -> None:
    """At the end of the role: its whole run's record, data files by name, in
    ``out_dir/opened/<role>.json`` on the role's own machine (nothing is sent)."""
    recorder = _recorder()
    if recorder is None:
        return
    with _lock:
        record = {"role": role, "pid": os.getpid()} | recorder.summary() | \
            {"data_file_paths": sorted(recorder.data_files)}
    write_json(Path(out_dir) / "opened" / f"{role}.json", record)


def current() -> dict | None:
    """The calling role's record so far (None where nothing records)."""
    recorder = _recorder()
    if recorder is None:
        return None
    with _lock:
        return recorder.summary()
