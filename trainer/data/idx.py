"""MNIST's IDX files (LeCun et al., the MNIST page, "FILE FORMATS"), read and checked
byte by byte: a magic number (0, 0, 0x08, ndim), ndim big-endian int32 sizes, then
exactly prod(sizes) unsigned bytes. Any problem raises ``InputError`` naming the file.
``trainer.data.datasets`` turns them into a ``Dataset``."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from planner.errors import InputError


def mnist_labels(root: str | Path, split: str) -> tuple[Path, np.ndarray]:
    """(the images file, every label of ``split``), checked."""
    if split not in ("train", "test"):
        raise InputError("split", None, f"must be 'train' or 'test', got {split!r}")
    folder = Path(root)
    if not folder.is_dir():
        raise InputError(str(folder), None, "MNIST folder does not exist")
    prefix = "train" if split == "train" else "t10k"
    image_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    label_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    labels = _parse_idx(label_path, _read_bytes(label_path), magic=2049, dims=1)
    if len(labels) and labels.max() > 9:
        raise InputError(str(label_path), "labels", f"label {int(labels.max())} found, "
                         "expected digits 0..9")
    return image_path, labels


def idx_rows(path: Path, *, magic: int, dims: int, rows: np.ndarray | None) -> tuple[np.ndarray, int]:
    """(rows of an IDX file as a fresh array (all if ``rows`` is None), the file's row
    count). A raw file is memory-mapped and only the wanted rows are read."""
    if path.suffix == ".gz":
        table = _parse_idx(path, _read_bytes(path), magic=magic, dims=dims)
    else:
        header = 4 + 4 * dims
        try:
            with open(path, "rb") as f:
                head = f.read(header)
            size = path.stat().st_size
        except OSError as err:
            raise InputError(str(path), None, f"cannot be read: {err}") from err
        shape = _check_header(path, head, size, magic=magic, dims=dims)
        table = np.memmap(path, dtype=np.uint8, mode="r", offset=header, shape=shape)
    if rows is None:
        return np.array(table), len(table)
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= len(table)):
        raise InputError(str(path), "rows", f"asked for rows up to {int(rows.max())}, the file has {len(table)}")
    return np.array(table[rows]), len(table)


def _find_idx(folder: Path, stem: str) -> Path:
    for place in (folder, folder / "MNIST" / "raw", folder / "raw"):
        for name in (stem, stem + ".gz"):
            if (place / name).is_file():
                return place / name
    raise InputError(str(folder), None, f"neither {stem} nor {stem}.gz found "
                     "(looked in the folder, MNIST/raw and raw)")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise InputError(str(path), None, f"cannot be read: {err}") from err


def _check_header(path: Path, head: bytes, size: int, *, magic: int, dims: int) -> tuple[int, ...]:
    """The shape an IDX file of unsigned bytes declares, checked against its size: magic
    (0, 0, 0x08, ndim), ndim big-endian int32 sizes, then exactly prod(sizes) bytes
    (LeCun's MNIST page, "FILE FORMATS")."""
    header = 4 + 4 * dims
    if size < header or len(head) < header:
        raise InputError(str(path), "header", f"file is {size} bytes, the header "
                         f"alone needs {header} (truncated?)")
    found = int.from_bytes(head[:4], "big")
    if found != magic:
        raise InputError(str(path), "magic", f"found {found} (0x{found:08x}), expected "
                         f"{magic} (0x{magic:08x}); is this the right file?")
    shape = tuple(int(v) for v in np.frombuffer(head, ">u4", dims, offset=4))
    body = int(np.prod(shape))
    if size != header + body:
        what = "truncated" if size < header + body else "has trailing bytes"
        raise InputError(str(path), "length", f"{what}: {size} bytes, header says "
                         f"{'x'.join(map(str, shape))} needs {header + body}")
    return shape


def _parse_idx(path: Path, data: bytes, *, magic: int, dims: int) -> np.ndarray:
    shape = _check_header(path, data[: 4 + 4 * dims], len(data), magic=magic, dims=dims)
    return np.frombuffer(data, np.uint8, int(np.prod(shape)), offset=4 + 4 * dims).reshape(shape)
