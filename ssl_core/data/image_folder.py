"""A folder of PNG/JPEG images: ``ROOT/<class>/<image>``, ``ROOT/train|test/<class>/...``,
or unlabelled images directly in ``ROOT``, resized to a common size.

Channels come from the images: greyscale files give 1 channel, colour files 3 (RGB; alpha is
dropped). A folder mixing both is converted to the mode of the majority of its files (a tie
goes to RGB, which loses nothing), and a note says so. 16-bit greyscale keeps its full range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedssl.ssl_core.data.base import (
    DataError,
    SSLDataset,
    hold_out,
    standardize,
)
from fedssl.ssl_core.data.registry import DataFormat, LoadRequest, register_format

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Pillow modes read as one grey channel; every other mode is read as RGB
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: grey modes deeper than 8 bits, read without Pillow's 8-bit conversion (which clips)
DEEP_GREY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _read_images(files: list[Path], size: int, root: Path) -> tuple[np.ndarray, str | None]:
    """Decode and resize ``files`` into ``(N, C, size, size)`` in [0, 1]; C is 1 if most
    files are greyscale, else 3. Returns the array and a note when modes were mixed."""
    from PIL import Image, UnidentifiedImageError

    decoded: list[np.ndarray] = []
    grey: list[bool] = []
    for file in files:
        try:
            with Image.open(file) as img:
                is_grey = img.mode in GREY_MODES
                if img.mode in DEEP_GREY_MODES:  # 16-bit/float grey: keep its full range
                    arr = _deep_grey(img, size)
                else:
                    img = img.convert("L" if is_grey else "RGB").resize((size, size))
                    arr = np.asarray(img, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError, MemoryError,
                Image.DecompressionBombError) as exc:
            raise DataError(f"unreadable or corrupt image file: {file} ({exc})") from exc
        decoded.append(arr[None] if is_grey else arr.transpose(2, 0, 1))
        grey.append(is_grey)
    n_grey = sum(grey)
    n_colour = len(files) - n_grey
    to_grey = n_grey > n_colour
    note = None
    if n_grey and n_colour:
        minority = next(f for f, g in zip(files, grey, strict=True) if g != to_grey)
        note = (f"image folder {root} mixes {n_grey} greyscale and {n_colour} colour images: "
                f"all read as {'greyscale (1 channel)' if to_grey else 'RGB (3 channels)'}, "
                f"the majority's mode (e.g. {minority} was converted)")
    if to_grey:  # ITU-R 601-2 luma, the weights Pillow's convert("L") uses
        weights = np.array([0.299, 0.587, 0.114], np.float32)[:, None, None]
        out = [a if a.shape[0] == 1 else (a * weights).sum(0, keepdims=True) for a in decoded]
    else:
        out = [a if a.shape[0] == 3 else np.repeat(a, 3, axis=0) for a in decoded]
    return np.stack(out).astype(np.float32), note


def _deep_grey(img: Any, size: int) -> np.ndarray:
    """A 16-bit (or 32-bit int / float) greyscale image resized in float and scaled to
    [0, 1]: 16-bit by 65535, wider integers by 65535 (or 255 if no value exceeds it), float
    by its maximum if above 1. (Pillow's ``convert("L")`` would clip every value above 255,
    turning most of a 16-bit medical image white.)"""
    from PIL import Image

    arr = np.asarray(img, dtype=np.float32)
    if img.mode.startswith("I;16"):
        scale = 65535.0
    elif img.mode == "I":
        scale = 65535.0 if arr.max() > 255 else 255.0
    else:
        scale = max(1.0, float(arr.max()))
    resized = Image.fromarray(arr, mode="F").resize((size, size))
    return np.clip(np.asarray(resized, dtype=np.float32) / scale, 0.0, 1.0)


def _image_files(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.iterdir())
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]


def _read_class_folders(root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    ys: list[int] = []
    for label, cls in enumerate(classes):
        found = _image_files(root / cls) if (root / cls).is_dir() else []
        files += found
        ys += [label] * len(found)
    if not files:
        raise DataError(f"image folder {root} holds no PNG/JPEG images under {classes}")
    return files, np.asarray(ys, dtype=np.int64)


def load_image_folder(root: str | Path, image_size: int = 28, seed: int = 0,
                      with_test: bool = True) -> SSLDataset:
    """Load ``ROOT/<class>/*.png|jpg`` (or ``ROOT/train`` and ``ROOT/test`` class folders, or
    unlabelled images directly in ``ROOT``), resized to ``image_size`` x ``image_size``;
    channels come from the images (see the module doc). ``with_test=False``: a site's data,
    every image trains (``ROOT/test`` is not read).

    Args:
        root: the image folder.
        image_size: the side every image is resized to.
        seed: seeds the held-out split.
        with_test: read ``ROOT/test`` (or hold records out) for evaluation.

    Returns:
        The data set.

    Raises:
        DataError: the folder is missing or empty, its layout is not one of the above, or an
            image cannot be read.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    notes: list[str] = []
    te_files: list[Path] = []
    y_te: np.ndarray | None = None
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"image folder {root / 'train'} has no class sub-folders")
        tr_files, y_tr = _read_class_folders(root / "train", classes)
        if with_test:
            te_files, y_te = _read_class_folders(root / "test", classes)
        else:
            notes.append(f"{root / 'test'} not used: a site only trains (the server evaluates "
                         "on its own data)")
    else:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if classes:
            tr_files, y_tr = _read_class_folders(root, classes)
            if loose := _image_files(root):
                notes.append(f"{len(loose)} image(s) directly in {root} (e.g. {loose[0].name}) "
                             "not read: with class sub-folders, each image belongs in one")
        else:
            tr_files = _image_files(root)
            if not tr_files:
                raise DataError(f"image folder {root} is empty: expected one sub-folder per "
                                "class, or PNG/JPEG images directly in it (unlabelled)")
            y_tr = None
            notes.append(f"{root} has no class sub-folders: its images are unlabelled")
    x, note = _read_images(tr_files + te_files, image_size, root)
    if note:
        notes.append(note)
    x_tr, x_te = x[:len(tr_files)], (x[len(tr_files):] if te_files else None)
    if with_test and x_te is None:
        x_tr, y_tr, x_te, y_te, held = hold_out(x_tr, y_tr, seed, f"image folder {root}")
        notes.append(held)
    x_tr, x_te = standardize(x_tr, x_te)
    return SSLDataset(root.name, x_tr, y_tr, x_te, y_te,
                      len(classes) if y_tr is not None else 0, tuple(notes), source=str(root))


@register_format
class ImageFolder(DataFormat):
    """A folder of PNG/JPEG images (see the module doc): the format of any folder that holds
    no other kind of data file, so it is registered last."""

    name = "imagefolder"
    file_kind = "PNG/JPEG"

    def is_file(self, path: Path) -> bool:
        return path.suffix.lower() in IMAGE_SUFFIXES

    def matches(self, path: Path) -> bool:
        return path.is_dir()

    def load(self, request: LoadRequest) -> SSLDataset:
        return load_image_folder(request.path(self.name), request.image_size,
                                 seed=request.seed, with_test=request.with_test)
