"""Data sources for self-supervised pretraining and labelled evaluation.

Every source yields a :class:`SSLDataset`: float32 arrays in channels-first layout
(``(N, C, L)`` for 1-D signals, ``(N, C, H, W)`` for images) plus integer labels. Labels are
used only for the held-out evaluation (linear probe, kNN) and, in simulations, for label-skewed
partitioning; the SSL objectives never see them.

Sources (all offline, no network at run time):

- ``mnist1d``: the MNIST-1D benchmark (Greydanus 2020, "Scaling down deep learning"),
  generated locally with the ``mnist1d`` package for any number of samples.
- ``digits``: scikit-learn's 8x8 handwritten digits.
- ``npz``: arrays in the MedMNIST layout (``train_images``, ``train_labels``,
  ``test_images``, ``test_labels``; optional ``val_*``).
- ``imagefolder``: ``ROOT/<class>/<image>.png|jpg`` (PNG/JPEG via Pillow), resized to a
  common size, or ``ROOT/train/<class>/...`` and ``ROOT/test/<class>/...``.

Bad input (missing paths, wrong shapes, NaN/Inf, empty folders, unreadable images) raises
:class:`DataError` with a message that names the problem and the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
    """Raised when a data source is missing, malformed or contains invalid values."""


@dataclass
class SSLDataset:
    """Arrays of one data source, split into a training pool and a labelled test split."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one record without the batch axis, e.g. ``(1, 40)`` or ``(1, 8, 8)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def modality(self) -> str:
        """``"signal"`` for ``(C, L)`` records, ``"image"`` for ``(C, H, W)`` records."""
        return "signal" if len(self.input_shape) == 2 else "image"

    def __post_init__(self) -> None:
        validate_arrays(self.x_train, self.y_train, f"{self.name} (train)")
        validate_arrays(self.x_test, self.y_test, f"{self.name} (test)")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"{self.name}: train records have shape {self.x_train.shape[1:]} but test "
                f"records have shape {self.x_test.shape[1:]}"
            )


def validate_arrays(x: np.ndarray, y: np.ndarray | None, what: str) -> None:
    """Check shape, dtype and finiteness of a record array (and its labels).

    Raises:
        DataError: naming ``what`` and the problem found.
    """
    if not isinstance(x, np.ndarray):
        raise DataError(f"{what}: expected a numpy array, got {type(x).__name__}")
    if x.ndim not in (3, 4):
        raise DataError(
            f"{what}: expected records of shape (N, C, L) for signals or (N, C, H, W) for "
            f"images, got an array of shape {x.shape}"
        )
    if x.shape[0] == 0:
        raise DataError(f"{what}: contains no records")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{what}: expected a floating-point array, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise DataError(f"{what}: {bad} record(s) contain NaN or Inf values")
    if y is not None:
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(
                f"{what}: labels must be a vector of length {len(x)}, got shape {y.shape}"
            )
        if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
            raise DataError(f"{what}: labels must be non-negative integers")


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale by the training pool's global mean/std (one scalar each, no per-record info)."""
    mean, std = float(x_train.mean()), float(x_train.std()) or 1.0
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def load_mnist1d(num_samples: int = 4000, seed: int = 0, test_fraction: float = 0.2) -> SSLDataset:
    """Generate MNIST-1D locally (40-sample signals, 10 classes)."""
    from mnist1d.data import get_dataset_args, make_dataset

    if num_samples < 20:
        raise DataError(f"mnist1d: num_samples must be at least 20, got {num_samples}")
    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.train_split = 1.0 - float(test_fraction)
    args.seed = int(seed)
    data = make_dataset(args)
    x_tr = np.asarray(data["x"], dtype=np.float32)[:, None, :]
    x_te = np.asarray(data["x_test"], dtype=np.float32)[:, None, :]
    x_tr, x_te = _standardize(x_tr, x_te)
    return SSLDataset(
        "mnist1d", x_tr, np.asarray(data["y"], np.int64), x_te,
        np.asarray(data["y_test"], np.int64), 10,
    )


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> SSLDataset:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), split reproducibly."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    te, tr = order[:n_test], order[n_test:]
    x_tr, x_te = _standardize(x[tr], x[te])
    return SSLDataset("digits", x_tr, y[tr], x_te, y[te], 10)


def _images_to_nchw(images: np.ndarray, what: str) -> np.ndarray:
    """MedMNIST stores (N, H, W) grey or (N, H, W, C) colour uint8 images."""
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    elif images.ndim != 4:
        raise DataError(
            f"{what}: expected images of shape (N, H, W) or (N, H, W, C), got {images.shape}"
        )
    images = images.astype(np.float32)
    if images.size and images.max() > 1.0:
        images = images / 255.0
    return images


def load_npz(path: str | Path) -> SSLDataset:
    """Load a ``.npz`` file in the MedMNIST layout."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            content = {k: arrays[k] for k in arrays.files}
    except Exception as exc:  # zipfile/ValueError/OSError: a corrupt archive
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc
    missing = [k for k in ("train_images", "train_labels") if k not in content]
    if missing:
        raise DataError(f"{path}: missing arrays {missing}; found {sorted(content)}")
    x_tr = _images_to_nchw(content["train_images"], f"{path}:train_images")
    y_tr = np.asarray(content["train_labels"]).reshape(-1).astype(np.int64)
    validate_arrays(x_tr, y_tr, f"{path}:train")
    if "test_images" in content and "test_labels" in content:
        x_te = _images_to_nchw(content["test_images"], f"{path}:test_images")
        y_te = np.asarray(content["test_labels"]).reshape(-1).astype(np.int64)
    else:  # hold out 20 % of the training pool, reproducibly
        order = np.random.default_rng(0).permutation(len(x_tr))
        cut = max(1, len(x_tr) // 5)
        x_te, y_te, x_tr, y_tr = x_tr[order[:cut]], y_tr[order[:cut]], x_tr[order[cut:]], y_tr[
            order[cut:]]
    validate_arrays(x_tr, y_tr, f"{path}:train")
    validate_arrays(x_te, y_te, f"{path}:test")
    x_tr, x_te = _standardize(x_tr, x_te)
    num_classes = int(max(y_tr.max(), y_te.max()) + 1)
    return SSLDataset(path.stem, x_tr, y_tr, x_te, y_te, num_classes)


def _read_class_folders(root: Path, size: int, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    xs: list[np.ndarray] = []
    ys: list[int] = []
    for label, cls in enumerate(classes):
        for file in sorted((root / cls).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    img = img.convert("L").resize((size, size))
                    xs.append(np.asarray(img, dtype=np.float32)[None] / 255.0)
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"unreadable or corrupt image file: {file} ({exc})") from exc
            ys.append(label)
    if not xs:
        raise DataError(f"image folder {root} holds no PNG/JPEG images under {classes}")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def load_image_folder(root: str | Path, image_size: int = 28, seed: int = 0) -> SSLDataset:
    """Load ``ROOT/<class>/*.png|jpg`` (or ``ROOT/train`` and ``ROOT/test`` class folders).

    Images are converted to grey scale and resized to ``image_size`` x ``image_size``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"image folder {root / 'train'} has no class sub-folders")
        x_tr, y_tr = _read_class_folders(root / "train", image_size, classes)
        x_te, y_te = _read_class_folders(root / "test", image_size, classes)
    else:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"image folder {root} is empty: expected one sub-folder per class")
        x, y = _read_class_folders(root, image_size, classes)
        if len(x) < 2:
            raise DataError(f"image folder {root} holds fewer than 2 images")
        order = np.random.default_rng(seed).permutation(len(x))
        cut = max(1, len(x) // 5)
        x_te, y_te, x_tr, y_tr = x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]
    x_tr, x_te = _standardize(x_tr, x_te)
    return SSLDataset(root.name, x_tr, y_tr, x_te, y_te, len(classes))


DATASETS = ("mnist1d", "digits", "npz", "imagefolder")


def load_dataset(
    name: str, data_path: str = "", num_samples: int = 4000, seed: int = 0, image_size: int = 28
) -> SSLDataset:
    """Load a data source by name (see :data:`DATASETS`)."""
    if name == "mnist1d":
        return load_mnist1d(num_samples=num_samples, seed=seed)
    if name == "digits":
        return load_digits(seed=seed)
    if name in ("npz", "imagefolder"):
        if not data_path:
            raise DataError(f"dataset {name!r} needs a data path (--data-path)")
        return load_npz(data_path) if name == "npz" else load_image_folder(data_path, image_size)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")

