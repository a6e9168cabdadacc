"""Image folders (``--data images:DIR``): PNG and JPEG files, optionally one subfolder per class.

``DIR`` holds either images (unlabelled: every image is class 0) or subfolders that hold
images, one per class (the class is the subfolder's name, labels in sorted name order);
not both. Files whose names end in ``.png``, ``.jpg`` or ``.jpeg`` (any case) are images;
hidden files (``.name``) and other files are skipped; deeper folders are not read.
Every image of a folder has one size; each is converted to grayscale (``L``) or RGB as
the model's input has 1 or 3 channels (an alpha channel is dropped) and resized
bilinearly to the model's height and width, then scaled to [-1, 1].

Locality: :func:`list_folder` reads names only (labels come from the folder names), so
a data device computes every client's shard from names and labels alone
(``trainer.data.datasets.DataSource``) and then decodes only its own rows
(:func:`load_images`). :func:`check_folder` reads every file's header (a few hundred
bytes: format and size, no pixels) to fail early, before any role starts.
Every problem raises ``InputError`` naming the folder or the file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from planner.errors import InputError

SUFFIXES = (".png", ".jpg", ".jpeg")
FORMATS = ("PNG", "JPEG", "MPO")  # MPO: a JPEG with extra frames, as some cameras write


@dataclass(frozen=True)
class FolderIndex:
    """An image folder's files and labels, from their names alone."""

    root: Path
    files: tuple[str, ...]  # paths relative to root, in label then name order
    labels: np.ndarray  # int64, one per file: the index of its class folder (0 unlabelled)
    classes: tuple[str, ...]  # the class folders' names; () for an unlabelled folder

    def __len__(self) -> int:
        return len(self.files)

    def path(self, row: int) -> Path:
        return self.root / self.files[row]


def _images_in(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(images, subfolders, other files) of ``folder``, sorted, hidden entries skipped."""
    images, folders, others = [], [], []
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise InputError(str(folder), None, f"cannot list the image folder ({e.strerror or e})") from None
    for p in entries:
        if p.is_dir():
            folders.append(p)
        elif p.suffix.lower() in SUFFIXES:
            images.append(p)
        else:
            others.append(p)
    return images, folders, others


def list_folder(root: str | Path) -> FolderIndex:
    """The images of ``root`` and their labels, from names only (module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(str(root), None, "image folder does not exist" if not root.exists() else "is not a folder")
    top, folders, others = _images_in(root)
    if top and folders:
        raise InputError(str(root), None, f"holds both images ({top[0].name}) and folders ({folders[0].name}/): put "
                         "every image in a class folder, or none")
    if top:
        return FolderIndex(root, tuple(p.name for p in top), np.zeros(len(top), dtype=np.int64), ())
    files, labels, classes = [], [], []
    for folder in folders:
        images, _, _ = _images_in(folder)
        if not images:
            raise InputError(str(folder), None, "class folder holds no PNG/JPEG images")
        files += [f"{folder.name}/{p.name}" for p in images]
        labels += [len(classes)] * len(images)
        classes.append(folder.name)
    if not files:
        hint = f" (found {len(others)} other files, e.g. {others[0].name})" if others else ""
        raise InputError(str(root), None, f"no PNG/JPEG images in the folder{hint}")
    return FolderIndex(root, tuple(files), np.asarray(labels, dtype=np.int64), tuple(classes))


def _open(path: Path) -> Image.Image:
    """The image at ``path``, header read (no pixels yet), format checked."""
    try:
        with warnings.catch_warnings():  # PIL's warning of a huge image is this one line, not a raw warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(str(path), None, f"has more pixels than the {Image.MAX_IMAGE_PIXELS} PIL opens safely "
                         "(a decompression bomb, or an image far larger than a GAN trains on)") from None
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(str(path), None, f"cannot be read as an image ({type(e).__name__}: {e})") from None
    if img.format not in FORMATS:
        img.close()
        raise InputError(str(path), None, f"is a {img.format} image, expected PNG or JPEG")
    return img


def _check_size(path: Path, size: tuple[int, int], first: tuple[Path, tuple[int, int]]) -> None:
    if size != first[1]:
        raise InputError(str(path), None, f"is {size[0]}x{size[1]} pixels, {first[0].name} is "
                         f"{first[1][0]}x{first[1][1]}: every image of a folder must have one size")


def check_folder(index: FolderIndex) -> tuple[int, int]:
    """Every file's header (format and size) checked; returns the images' (width, height)."""
    first: tuple[Path, tuple[int, int]] | None = None
    for row in range(len(index)):
        path = index.path(row)
        with _open(path) as img:
            first = first or (path, img.size)
            _check_size(path, img.size, first)
    assert first is not None  # list_folder never returns an empty index
    return first[1]


def load_images(index: FolderIndex, rows: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Images ``rows`` of ``index`` as float32 [n, C, H, W] in [-1, 1] for a model input
    ``shape`` = (C, H, W), C 1 or 3; no other file is opened."""
    channels, height, width = shape
    mode = {1: "L", 3: "RGB"}[channels]
    out = np.empty((len(rows), height, width, channels), dtype=np.uint8)
    first: tuple[Path, tuple[int, int]] | None = None
    for i, row in enumerate(np.asarray(rows, dtype=np.int64)):
        path = index.path(int(row))
        with _open(path) as img:
            first = first or (path, img.size)
            _check_size(path, img.size, first)
            try:
                pixels = img.convert(mode)
            except OSError as e:  # a truncated or corrupt body shows when the pixels are decoded
                raise InputError(str(path), None, f"cannot be decoded ({e})") from None
        if pixels.size != (width, height):
            pixels = pixels.resize((width, height), Image.Resampling.BILINEAR)
        out[i] = np.asarray(pixels).reshape(height, width, channels)
    images = torch.from_numpy(out).permute(0, 3, 1, 2).float()
    return (images / 127.5 - 1.0).contiguous()
