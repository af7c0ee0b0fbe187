"""Arrays in a ``.npz`` file, in the MedMNIST layout (images) or as signals.

``train_images`` (``(N, H, W)`` grey or ``(N, H, W, C)`` with C = 1 or 3), optional
``train_labels``, optional ``test_images`` / ``test_labels`` (``val_*`` arrays are not used);
or a single unlabelled ``images`` array (with optional ``labels``). Signals use
``train_signals`` / ``test_signals`` instead (``(N, C, L)``, or ``(N, L)`` for one channel,
e.g. a 12-lead ECG as ``(N, 12, L)``): a 3-D ``train_images`` array is always read as
greyscale images, and a note says so. Only numeric arrays are read: nothing is unpickled.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from fedssl.ssl_core.data.base import (
    DataError,
    SSLDataset,
    hold_out,
    labels_from,
    num_classes_of,
    standardize,
    validate_arrays,
)
from fedssl.ssl_core.data.registry import DataFormat, LoadRequest, register_format

#: npz arrays holding the training records, tried in order, with their labels' array
NPZ_TRAIN_KEYS = (("train_images", "train_labels"), ("images", "labels"),
                  ("train_signals", "train_labels"))
#: the npz arrays of records that are signals ``(N, C, L)`` (the others are images)
NPZ_SIGNAL_KEYS = ("train_signals", "test_signals")


def _images_to_nchw(images: np.ndarray, what: str) -> np.ndarray:
    """MedMNIST stores (N, H, W) grey or (N, H, W, C) colour images (C = 1 or 3); an
    (N, C, H, W) array with C = 1 or 3 is taken as it is."""
    if not isinstance(images, np.ndarray) or not (
            np.issubdtype(images.dtype, np.number) or images.dtype == np.bool_):
        raise DataError(f"{what}: expected a numeric image array, got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if np.issubdtype(images.dtype, np.complexfloating):
        raise DataError(f"{what}: complex-valued images ({images.dtype}) are not read (the "
                        "imaginary part would be dropped): store the magnitude or the real "
                        "part as a real array")
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    elif not (images.ndim == 4 and images.shape[1] in (1, 3)):
        raise DataError(
            f"{what}: expected images of shape (N, H, W) or (N, H, W, C) with C = 1 (grey) "
            f"or 3 (RGB), got {images.shape}"
        )
    images = images.astype(np.float32)
    if images.size and np.isfinite(images).all() and images.max() > 1.0:
        images = images / 255.0
    return images


def _signals_to_ncl(signals: np.ndarray, what: str) -> np.ndarray:
    """Signals ``(N, L)`` (one channel) or ``(N, C, L)`` as float32 ``(N, C, L)``.

    Raises:
        DataError: for another shape, or non-real data.
    """
    if not isinstance(signals, np.ndarray) or not (
            np.issubdtype(signals.dtype, np.integer) or np.issubdtype(signals.dtype, np.floating)):
        raise DataError(f"{what}: expected a real-valued signal array, got "
                        f"{getattr(signals, 'dtype', type(signals).__name__)}")
    if signals.ndim == 2:
        signals = signals[:, None, :]
    if signals.ndim != 3:
        raise DataError(f"{what}: expected signals of shape (N, L) or (N, C, L), got "
                        f"{signals.shape}")
    return signals.astype(np.float32)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, refusing anything that is not numeric data."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a valid .npz file (not a zip archive of .npy arrays; "
                        "write one with numpy.savez)")
    content: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as arrays:
            for key in arrays.files:
                try:
                    value = arrays[key]
                except ValueError as exc:
                    if "pickle" in str(exc) or "Object arrays" in str(exc):
                        raise DataError(f"{path}: array {key!r} holds Python objects, which "
                                        "fedssl does not load (only numeric arrays are "
                                        "read)") from None
                    raise
                if not isinstance(value, np.ndarray):
                    raise DataError(f"{path}: member {key!r} is not a .npy array")
                content[key] = value
    except DataError:
        raise
    # RuntimeError covers encrypted members and NotImplementedError (an unknown compression
    # method); MemoryError a header that claims more than the machine holds
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError,
            RuntimeError, MemoryError) as exc:
        raise DataError(f"{path} is not a valid .npz file ({type(exc).__name__}: "
                        f"{exc})") from None
    return content


def load_npz(path: str | Path, with_test: bool = True, seed: int = 0) -> SSLDataset:
    """Load a ``.npz`` file in the MedMNIST layout (labels optional, see the module doc).

    ``with_test=False`` (a site's training data): only the training images are read and
    every one of them trains; nothing is held out.

    Args:
        path: the ``.npz`` file.
        with_test: read the test arrays (or hold records out) for evaluation.
        seed: seeds the held-out split.

    Returns:
        The data set.

    Raises:
        DataError: the file is missing, has no training images, mixes signal and image arrays,
            or holds invalid values.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz data file not found: {path}")
    content = _read_npz(path)
    keys = next(((x, y) for x, y in NPZ_TRAIN_KEYS if x in content), None)
    if keys is None:
        images = [k for k, _ in NPZ_TRAIN_KEYS if k not in NPZ_SIGNAL_KEYS]
        raise DataError(f"{path}: no training images: expected an array named "
                        f"{' or '.join(images)}; found {sorted(content)} (signals: an array "
                        f"named {NPZ_SIGNAL_KEYS[0]})")
    x_key, y_key = keys
    notes: list[str] = []
    signals = x_key in NPZ_SIGNAL_KEYS
    if signals and any(k in content for k in ("train_images", "test_images")):
        raise DataError(f"{path}: holds both signal and image arrays; keep one kind")
    records = _signals_to_ncl if signals else _images_to_nchw
    test_key = "test_signals" if signals else "test_images"
    shape = np.shape(content[x_key])
    if not signals and len(shape) == 3 and shape[1] != shape[2]:  # images are mostly square
        notes.append(f"{path.name}:{x_key} of shape {shape} is read as greyscale "
                     f"{shape[1]}x{shape[2]} images; store signals (e.g. multichannel time "
                     "series) as train_signals/test_signals of shape (N, C, L)")
    x_tr = records(content[x_key], f"{path}:{x_key}")
    y_tr = labels_from(content[y_key], len(x_tr), f"{path}:{y_key}") if y_key in content else None
    validate_arrays(x_tr, y_tr, f"{path}:{x_key}")
    x_te = y_te = None
    if not with_test:
        if test_key in content:
            notes.append(f"{test_key} of {path.name} not used: a site only trains (the "
                         "server evaluates on its own data)")
    elif test_key in content:
        x_te = records(content[test_key], f"{path}:{test_key}")
        if "test_labels" in content:
            y_te = labels_from(content["test_labels"], len(x_te), f"{path}:test_labels")
        validate_arrays(x_te, y_te, f"{path}:{test_key}")
    else:
        x_tr, y_tr, x_te, y_te, note = hold_out(x_tr, y_tr, seed, path.name)
        notes.append(note)
    x_tr, x_te = standardize(x_tr, x_te)
    return SSLDataset(path.stem, x_tr, y_tr, x_te, y_te, num_classes_of(y_tr, y_te),
                      tuple(notes), source=str(path))


@register_format
class Npz(DataFormat):
    """A ``.npz`` file (see the module doc)."""

    name = "npz"

    def matches(self, path: Path) -> bool:
        return path.suffix.lower() == ".npz"

    def load(self, request: LoadRequest) -> SSLDataset:
        return load_npz(request.path(self.name), with_test=request.with_test, seed=request.seed)
