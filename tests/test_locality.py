"""Each process opens only its own data: measured from the files each process opened
(``trainer.privacy.opened``'s audit hook, listed in ``processes.json``), checked against the
files this test wrote itself and shard sizes computed by hand, locally (a thread per
role) and with a process per role."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import assert_opened_exactly, chain_plan, digits_file, run
from trainer.privacy import opened
from trainer.data.datasets import SPLIT_SEED, DataSource

BACKENDS = ["local", pytest.param("dist", marks=pytest.mark.slow)]
DIGITS_FILE = digits_file()


def _processes(out: Path) -> dict[str, dict]:
    return {r["role"]: r for r in json.loads((out / "processes.json").read_text())["processes"]}


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_the_hook_sees_every_reader_and_only_the_recording_threads_opens(tmp_path):
    """The readers the data sets use (PIL, np.memmap, gzip, os.open, Path.read_bytes) and a
    folder listing, each seen; a file opened by another thread at the same time is not."""
    root = tmp_path / "data"
    root.mkdir()
    png, raw, gz, low, other = root / "a.png", root / "b.idx", root / "c.gz", root / "d.bin", root / "e.bin"
    Image.new("L", (4, 4), 7).save(png)
    raw.write_bytes(bytes(16))
    with gzip.open(gz, "wb") as f:
        f.write(b"x")
    low.write_bytes(b"y")
    other.write_bytes(b"z")
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not data")
    started, other_done, record = threading.Event(), threading.Event(), {}

    def role() -> None:
        opened.record_thread(DataSource("images", root=str(root)))
        try:
            started.set()
            other_done.wait(10)
            with Image.open(png) as img:
                img.convert("L")
            np.asarray(np.memmap(raw, dtype=np.uint8, mode="r"))
            with gzip.open(gz) as f:
                f.read()
            os.close(os.open(low, os.O_RDONLY))
            outside.read_bytes()
            os.listdir(root)
            record.update(opened.current())
        finally:
            opened.stop_thread()

    t = threading.Thread(target=role)
    t.start()
    started.wait(10)
    other.read_bytes()  # this thread records nothing: not in the role's record
    other_done.set()
    t.join(10)
    assert_opened_exactly({"role": "role", "opened": record}, [png, raw, gz, low])
    assert record["data_folders_listed"] == [os.path.realpath(root)]
    assert os.path.realpath(outside) in record["other_files"]
    assert opened.current() is None  # nothing records this thread


@pytest.mark.parametrize("backend", BACKENDS)
def test_digits_every_data_device_reads_the_one_embedded_file_and_keeps_its_shard(tmp_path, backend):
    """The embedded digits: every data device and the server open scikit-learn's one file
    (all 1,797 digits), and nothing else under its data folder; other devices open no
    data file. A data device keeps its shard: sizes by hand, rows recomputed here."""
    plan = chain_plan("dcgan", [[2], [4, 7], [5]], weights=[1.0, 2.0, 1.5])
    run(tmp_path, plan, rounds=1, steps_per_round=1, backend=backend, eval_every=1, eval_samples=64)
    out = tmp_path / "run"
    rows = _processes(out)
    assert set(rows) == {"server"} | {s.device for c in plan.planned for s in c.stages}
    held = round(1797 * 0.2)  # 359.4 -> 359 held out; the pool: 1438
    # 1438 * (1, 2, 1.5) / 4.5 = 319.56, 639.11, 479.33: floors 319 + 639 + 479 = 1437, the
    # one left goes to the largest remainder (0.56)
    sizes = [320, 639, 479]
    pool = np.setdiff1d(np.arange(1797), np.random.default_rng(SPLIT_SEED).permutation(1797)[:held])
    parts = np.split(np.random.default_rng(0).permutation(len(pool)), np.cumsum(sizes)[:-1])  # --seed 0
    assert rows["server"]["training_samples"] == 0 and rows["server"]["eval_samples"] == held
    assert_opened_exactly(rows["server"], [DIGITS_FILE], out=out)
    for k, c in enumerate(plan.planned):
        head, *rest = [s.device for s in c.stages]
        assert_opened_exactly(rows[head], [DIGITS_FILE], out=out)
        assert rows[head]["opened"]["data_folders_listed"] == []
        assert rows[head]["training_samples"] == sizes[k]
        mine = np.sort(pool[parts[k]]).astype(np.int64)
        assert rows[head]["indices_sha256"] == "sha256:" + hashlib.sha256(b"digits" + mine.tobytes()).hexdigest()
        for d in rest:
            assert_opened_exactly(rows[d], [], out=out)
            assert rows[d]["training_samples"] == 0 and rows[d]["opened"]["data_folders_listed"] == []
    assert len({r["pid"] for r in rows.values()}) == (len(rows) if backend == "dist" else 1)


def _idx(path: Path, magic: int, shape: tuple[int, ...], body: bytes) -> None:
    data = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in shape) + body
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _mnist(folder: Path, prefix: str, n: int, *, gz: bool, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    end = ".gz" if gz else ""
    pixels = rng.integers(0, 256, n * 784, np.uint8).tobytes()
    _idx(folder / f"{prefix}-images-idx3-ubyte{end}", 2051, (n, 28, 28), pixels)
    _idx(folder / f"{prefix}-labels-idx1-ubyte{end}", 2049, (n,), bytes(i % 10 for i in range(n)))


def _per_client(root: Path, kind: str) -> None:
    """client0, client1 and the server's folders, and one no process may open."""
    counts = {"client0": 10, "client1": 9, "server": 12, "nobody": 5}
    for i, (name, n) in enumerate(counts.items()):
        if kind == "mnist":
            _mnist(root / name, "t10k" if name == "server" else "train", n, gz=name == "client1", seed=i)
            continue
        (root / name).mkdir(parents=True)
        for j in range(n):
            Image.new("RGB", (20, 20), (25 * j, 60 * i, 0)).save(root / name / f"{j:02d}.png")


@pytest.mark.parametrize("kind", ["images", "mnist"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_per_client_folders_are_opened_only_by_their_own_data_device(tmp_path, backend, kind):
    """With ``DIR/{client}``: each data device opened every file of its own folder and no
    other data file, the server exactly its held-out folder, other devices no data file;
    nobody opened ``DIR/nobody``."""
    root = tmp_path / "data"
    _per_client(root, kind)
    plan = chain_plan("dcgan", [[2], []])  # client0 on two devices, client1 on one
    data = dict(data=f"images:{root}/{{client}}") if kind == "images" else \
        dict(data="mnist", data_root=f"{root}/{{client}}")
    run(tmp_path, plan, rounds=1, steps_per_round=1, backend=backend, eval_every=1, eval_samples=16, **data)
    out = tmp_path / "run"
    rows = _processes(out)
    assert set(rows) == {"server", "c0-d0", "c0-d1", "c1-d0"}
    for row, folder in ((rows["c0-d0"], "client0"), (rows["c1-d0"], "client1"), (rows["server"], "server")):
        assert_opened_exactly(row, _files(root / folder), out=out)
        listed = row["opened"]["data_folders_listed"]
        assert listed == ([os.path.realpath(root / folder)] if kind == "images" else []), row["role"]
    assert_opened_exactly(rows["c0-d1"], [], out=out)
    assert rows["c0-d1"]["opened"]["data_folders_listed"] == []
    assert [rows[d]["training_samples"] for d in ("c0-d0", "c1-d0")] == [10, 9]  # as written above
    assert rows["server"]["eval_samples"] == 12


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_mnist_folder_is_opened_by_the_data_devices_and_the_server_only(tmp_path, backend):
    """One MNIST folder for every client: each data device opens the training files and
    keeps its shard, the server the ``t10k`` files; other devices open no data file."""
    _mnist(tmp_path / "mnist", "train", 20, gz=False, seed=0)
    _mnist(tmp_path / "mnist", "t10k", 12, gz=True, seed=1)
    plan = chain_plan("dcgan", [[2], []])  # weights 1 and 2 (chain_plan's default)
    run(tmp_path, plan, rounds=1, steps_per_round=1, backend=backend, eval_every=1, eval_samples=16,
        data="mnist", data_root=tmp_path / "mnist")
    out = tmp_path / "run"
    rows = _processes(out)
    train, test = (sorted((tmp_path / "mnist").glob(f"{p}-*")) for p in ("train", "t10k"))
    for d in ("c0-d0", "c1-d0"):
        assert_opened_exactly(rows[d], train, out=out)
    assert_opened_exactly(rows["server"], test, out=out)
    assert_opened_exactly(rows["c0-d1"], [], out=out)
    # 20 * (1, 2) / 3 = 6.67, 13.33: floors 6 + 13 = 19, the one left to the larger remainder
    assert [rows[d]["training_samples"] for d in ("c0-d0", "c1-d0")] == [7, 13]
    assert rows["server"]["eval_samples"] == 12
