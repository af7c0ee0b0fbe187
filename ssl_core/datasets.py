"""Data sources for self-supervised pretraining and labelled evaluation.

Every source yields a :class:`SSLDataset`: float32 arrays in channels-first layout
(``(N, C, L)`` for 1-D signals, ``(N, C, H, W)`` for images) plus, where the data has them,
labels. SSL objectives never see labels: a site may train on unlabelled data. Labels are
needed only by the held-out evaluation (linear probe, kNN: :func:`require_labels`) and, in
simulations, by label-skewed partitioning. Labels are either one class per record (``(N,)``
integers; MedMNIST's ``(N, 1)`` is squeezed) or multi-label (``(N, K)`` 0/1 flags, e.g.
ChestMNIST's 14 findings), evaluated by K binary probes (:mod:`fedssl.ssl_core.evaluation`).

Sources (all offline, no network at run time):

- ``mnist1d``: the MNIST-1D benchmark (Greydanus 2020, "Scaling down deep learning"),
  generated locally with the ``mnist1d`` package for any number of samples.
- ``digits``: scikit-learn's 8x8 handwritten digits.
- ``npz``: arrays in the MedMNIST layout: ``train_images`` (``(N, H, W)`` grey or
  ``(N, H, W, C)`` with C = 1 or 3), optional ``train_labels``, optional ``test_images`` /
  ``test_labels`` (``val_*`` arrays are not used); or a single unlabelled ``images`` array
  (with optional ``labels``). Signals use ``train_signals`` / ``test_signals`` instead
  (``(N, C, L)``, or ``(N, L)`` for one channel, e.g. a 12-lead ECG as ``(N, 12, L)``): a 3-D
  ``train_images`` array is always read as greyscale images, and a note says so. Only
  numeric arrays are read: nothing is unpickled.
- ``imagefolder``: ``ROOT/<class>/<image>.png|jpg`` (PNG/JPEG via Pillow), resized to a
  common size, or ``ROOT/train/<class>/...`` and ``ROOT/test/<class>/...``, or unlabelled
  images directly in ``ROOT``. Channels come from the images: greyscale files give 1 channel,
  colour files 3 (RGB; alpha is dropped). A folder mixing both is converted to the mode of
  the majority of its files (a tie goes to RGB, which loses nothing), and a note says so.
- ``dicom`` (``pip install fedssl[dicom]``, pydicom): the ``.dcm`` files of a folder, found
  recursively (or one ``.dcm`` file), in the image folder's layout (``ROOT/<class>/**``,
  ``ROOT/train|test/<class>/**``, or unlabelled). Each frame is one record: the modality
  LUT (rescale slope/intercept) is applied, then the file's window (Window Center/Width;
  else its VOI LUT, then min-max) or, without one, min-max per image; MONOCHROME1 is
  inverted; resized to ``image_size`` like the image folder. Channels come from the data
  (1 grey, 3 colour); a folder mixing both is refused, naming a file of each shape. A
  non-DICOM ``.dcm`` file, a DICOM object without an image (a report, an RT plan), a
  corrupt file, and pixel data compressed in a transfer syntax no installed decoder reads
  (named with its UID) are errors naming the file.
- ``nifti`` (``pip install fedssl[nifti]``, nibabel): ``.nii``/``.nii.gz`` volumes (one file,
  or a folder of them in the same layout), sliced along the last spatial axis into 2-D
  images (a 4-D series gives every slice of every volume), each scaled to [0, 1] by its own
  min-max after the file's scaling (``scl_slope``/``scl_inter``) and resized like DICOM.

Held-out splits of DICOM and NIfTI data are made by series (DICOM ``SeriesInstanceUID``) and
by volume (NIfTI file), so slices of one scan never land on both sides.

The format of a ``--data-path`` is inferred by :func:`infer_dataset` (``.npz`` file -> npz,
``.nii``/``.nii.gz`` file or a folder of them -> nifti, ``.dcm`` file or a folder of them ->
dicom, any other folder -> imagefolder; a folder holding several of these kinds must be
named with ``--dataset``); an explicit dataset that cannot read the path is an error.

Without test arrays, a data set that must supply an evaluation split (``with_test=True``:
the simulator's and the server's) holds out 20 % of its training records, reproducibly from
the seed; a site's data (``with_test=False``) only trains, so it holds nothing out and every
record trains. Each such choice is recorded in :attr:`SSLDataset.notes` and printed by the
commands (:meth:`SSLDataset.describe`).

Bad input (missing paths, wrong shapes, NaN/Inf, empty folders, unreadable images, corrupt
archives, object arrays) raises :class:`DataError` with a message that names the problem and
the file.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm",)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: share of the training records held out for evaluation when a source has no test split
HOLDOUT_FRACTION = 0.2
#: Pillow modes read as one grey channel; every other mode is read as RGB
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: grey modes deeper than 8 bits, read without Pillow's 8-bit conversion (which clips)
DEEP_GREY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: npz arrays holding the training records, tried in order, with their labels' array
NPZ_TRAIN_KEYS = (("train_images", "train_labels"), ("images", "labels"),
                  ("train_signals", "train_labels"))
#: the npz arrays of records that are signals ``(N, C, L)`` (the others are images)
NPZ_SIGNAL_KEYS = ("train_signals", "test_signals")


#: the largest number of classes a labelled data set may have (class ids 0..K-1): the probes
#: and fine-tuning heads allocate one column per id, so an id of 10^9 must not reach them
MAX_CLASSES = 100_000


class DataError(ValueError):
    """Raised when a data source is missing, malformed or contains invalid values."""


@dataclass
class SSLDataset:
    """Arrays of one data source: a training pool and (optionally) a test split.

    ``y_train`` / ``y_test`` are ``None`` for unlabelled data; ``x_test`` is ``None`` for a
    training-only source (a site's data). ``num_classes`` is the number of classes, the
    number of labels for multi-label data, and 0 without labels. ``notes`` are the choices
    made while loading (held-out split, colour conversion, ...), printed by the commands.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int
    notes: tuple[str, ...] = ()
    source: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one record without the batch axis, e.g. ``(1, 40)`` or ``(3, 28, 28)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def channels(self) -> int:
        """Channels of a record (1 grey/signal, 3 RGB)."""
        return int(self.x_train.shape[1])

    @property
    def modality(self) -> str:
        """``"signal"`` for ``(C, L)`` records, ``"image"`` for ``(C, H, W)`` records."""
        return "signal" if len(self.input_shape) == 2 else "image"

    @property
    def label_kind(self) -> str:
        """``"none"``, ``"multi-class"`` (one class per record) or ``"multi-label"``."""
        if self.y_train is None:
            return "none"
        return "multi-label" if self.y_train.ndim == 2 else "multi-class"

    def describe(self) -> str:
        """One line: records, shape, channels, labels and the evaluation split."""
        if self.modality == "image":
            colour = {1: "greyscale", 3: "RGB"}.get(self.channels, "")
            chans = f"{self.channels} channel{'s' if self.channels != 1 else ''}" + (
                f", {colour}" if colour else "")
        else:
            chans = f"{self.channels} channel{'s' if self.channels != 1 else ''}"
        labels = {"none": "no labels", "multi-class": f"labels: {self.num_classes} classes",
                  "multi-label": f"labels: multi-label ({self.num_classes} labels)"}[
            self.label_kind]
        test = "no test split" if self.x_test is None else f"{len(self.x_test)} test records"
        where = f" from {self.source}" if self.source else ""
        return (f"{self.name}{where}: {len(self.x_train)} training records of shape "
                f"{self.input_shape} ({chans}); {labels}; {test}")

    def __post_init__(self) -> None:
        validate_arrays(self.x_train, self.y_train, f"{self.name} (train)")
        if self.x_test is None:
            if self.y_test is not None:
                raise DataError(f"{self.name}: test labels without test records")
            return
        validate_arrays(self.x_test, self.y_test, f"{self.name} (test)")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"{self.name}: train records have shape {self.x_train.shape[1:]} but test "
                f"records have shape {self.x_test.shape[1:]}"
            )
        if (self.y_train is None) != (self.y_test is None) or (
                self.y_train is not None and self.y_test is not None
                and self.y_train.shape[1:] != self.y_test.shape[1:]):
            raise DataError(f"{self.name}: train and test labels differ in kind "
                            f"({_label_shape(self.y_train)} vs {_label_shape(self.y_test)})")


def _label_shape(y: np.ndarray | None) -> str:
    return "none" if y is None else f"shape {y.shape}"


#: what a run on unlabelled evaluation data says it does instead of the probes
TRAINING_ONLY = ("no labels: the run trains and exports the encoder; each evaluation reports "
                 "the collapse metrics of its features (label-free) instead of probe "
                 "accuracies; score the encoder on labelled data later with "
                 "`fedssl evaluate RUN --data LABELLED`")


def evaluation_labels(data: SSLDataset, where: str) -> bool:
    """Whether ``data`` (a run's evaluation data) supports the probes: True for labelled
    data (checked by :func:`require_labels`), False for data without any labels (a
    training-only run: :data:`TRAINING_ONLY`).

    Raises:
        DataError: for labelled data the probes cannot use (no test split, or a test split
            without labels), naming ``where``.
    """
    if data.y_train is None and data.y_test is None:
        return False
    require_labels(data, where)
    return True


def require_labels(data: SSLDataset, where: str) -> SSLDataset:
    """Check that ``data`` can be evaluated on (labels on both splits); returns it.

    Raises:
        DataError: naming ``where`` (e.g. "the server's evaluation data"), if labels or the
            test split are missing: the linear probe and kNN need them.
    """
    if data.y_train is None or (data.x_test is not None and data.y_test is None):
        raise DataError(
            f"{where} ({data.source or data.name}) has no labels, but labels are required "
            "there: the linear probe and kNN evaluation are fitted and scored on labelled "
            "records (npz: add train_labels/test_labels; image folder, DICOM or NIfTI "
            "folder: one sub-folder per class). Sites may train on unlabelled data; the "
            "evaluation data must be labelled")
    if data.x_test is None:
        raise DataError(f"{where} ({data.source or data.name}) has no test split")
    return data


def validate_arrays(x: np.ndarray, y: np.ndarray | None, what: str) -> None:
    """Check shape, dtype and finiteness of a record array (and its labels).

    Labels are ``(N,)`` non-negative integers or ``(N, K)`` 0/1 multi-label flags.

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
        if y.ndim not in (1, 2) or len(y) != len(x):
            raise DataError(
                f"{what}: labels must be a vector of length {len(x)} (one class per record) "
                f"or a ({len(x)}, K) 0/1 multi-label array, got shape {y.shape}"
            )
        if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
            raise DataError(f"{what}: labels must be non-negative integers")
        if y.ndim == 1 and len(y) and y.max() >= MAX_CLASSES:
            raise DataError(f"{what}: class id {int(y.max())} is out of range: class ids "
                            f"must be 0..K-1 with K <= {MAX_CLASSES:,} (the probes allocate "
                            "one column per id); renumber the classes")
        if y.ndim == 2 and len(y) and y.max() > 1:
            raise DataError(f"{what}: multi-label labels of shape {y.shape} must be 0/1 "
                            f"flags, found the value {int(y.max())}")


def _labels(raw: np.ndarray, n: int, what: str) -> np.ndarray:
    """Labels as ``(N,)`` classes or ``(N, K)`` multi-label flags (``(N, 1)`` is squeezed)."""
    y = np.asarray(raw)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2) or len(y) != n:
        raise DataError(
            f"{what}: labels must be a vector of length {n} (one class per record) or an "
            f"({n}, K) 0/1 multi-label array, got shape {y.shape}")
    integral = np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_) or (
        np.issubdtype(y.dtype, np.floating) and bool(np.all(y == np.round(y))))
    if not integral:
        raise DataError(f"{what}: labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def _num_classes(*ys: np.ndarray | None) -> int:
    present = [y for y in ys if y is not None and len(y)]
    if not present:
        return 0
    if present[0].ndim == 2:
        return int(present[0].shape[1])
    return int(max(int(y.max()) for y in present) + 1)


def _standardize(x_train: np.ndarray, x_test: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale by the training pool's global mean/std (one scalar each, no per-record info)."""
    mean, std = float(x_train.mean()), float(x_train.std()) or 1.0
    scaled = ((x_train - mean) / std).astype(np.float32)
    return scaled, None if x_test is None else ((x_test - mean) / std).astype(np.float32)


def _hold_out(x: np.ndarray, y: np.ndarray | None, seed: int, what: str
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None, str]:
    """Split off :data:`HOLDOUT_FRACTION` of the records (reproducibly); returns
    ``x_train, y_train, x_test, y_test, note``."""
    if len(x) < 2:
        raise DataError(f"{what} holds fewer than 2 records: nothing can be held out for "
                        "evaluation")
    order = np.random.default_rng(seed).permutation(len(x))
    cut = max(1, int(len(x) * HOLDOUT_FRACTION))
    te, tr = order[:cut], order[cut:]
    note = (f"no test split in {what}: holding out {HOLDOUT_FRACTION:.0%} of the training "
            f"records ({cut} of {len(x)}) for evaluation; they are not trained on")
    return (x[tr], None if y is None else y[tr], x[te], None if y is None else y[te], note)


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
        np.asarray(data["y_test"], np.int64), 10, source="generated (mnist1d package)",
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
    return SSLDataset("digits", x_tr, y[tr], x_te, y[te], 10, source="scikit-learn")


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
    y_tr = _labels(content[y_key], len(x_tr), f"{path}:{y_key}") if y_key in content else None
    validate_arrays(x_tr, y_tr, f"{path}:{x_key}")
    x_te = y_te = None
    if not with_test:
        if test_key in content:
            notes.append(f"{test_key} of {path.name} not used: a site only trains (the "
                         "server evaluates on its own data)")
    elif test_key in content:
        x_te = records(content[test_key], f"{path}:{test_key}")
        if "test_labels" in content:
            y_te = _labels(content["test_labels"], len(x_te), f"{path}:test_labels")
        validate_arrays(x_te, y_te, f"{path}:{test_key}")
    else:
        x_tr, y_tr, x_te, y_te, note = _hold_out(x_tr, y_tr, seed, path.name)
        notes.append(note)
    x_tr, x_te = _standardize(x_tr, x_te)
    return SSLDataset(path.stem, x_tr, y_tr, x_te, y_te, _num_classes(y_tr, y_te),
                      tuple(notes), source=str(path))


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
    every image trains (``ROOT/test`` is not read)."""
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
        x_tr, y_tr, x_te, y_te, held = _hold_out(x_tr, y_tr, seed, f"image folder {root}")
        notes.append(held)
    x_tr, x_te = _standardize(x_tr, x_te)
    return SSLDataset(root.name, x_tr, y_tr, x_te, y_te,
                      len(classes) if y_tr is not None else 0, tuple(notes), source=str(root))


# --------------------------------------------------------------------------- medical formats
def _is_dicom_file(path: Path) -> bool:
    return path.name.lower().endswith(DICOM_SUFFIXES)


def _is_nifti_file(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


#: the kinds of file a data folder may hold, by the test that recognises one
_FILE_KINDS: tuple[tuple[str, Callable[[Path], bool]], ...] = (
    ("nifti", _is_nifti_file), ("dicom", _is_dicom_file), ("imagefolder", _is_image_file),
)
_KIND_NAMES = {"nifti": "NIfTI (.nii/.nii.gz)", "dicom": "DICOM (.dcm)",
               "imagefolder": "PNG/JPEG"}


def _folder_kinds(folder: Path) -> set[str]:
    """Which kinds of data file (:data:`_FILE_KINDS`) ``folder`` holds, at any depth (hidden
    files and folders are skipped; the walk stops once every kind was seen)."""
    found: set[str] = set()
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            for kind, matches in _FILE_KINDS:
                if kind not in found and matches(Path(name)):
                    found.add(kind)
            if len(found) == len(_FILE_KINDS):
                return found
    return found


def _files_under(folder: Path, matches: Callable[[Path], bool]) -> list[Path]:
    """Files under ``folder`` (recursively, sorted, hidden ones skipped) that ``matches``."""
    return sorted(f for f in folder.rglob("*") if f.is_file() and matches(f)
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def _medical_layout(root: Path, matches: Callable[[Path], bool], what: str, with_test: bool
                    ) -> tuple[list[Path], np.ndarray | None, list[Path], np.ndarray | None,
                               int, list[str]]:
    """The image folder's layout over the files ``matches`` accepts, found recursively:
    ``ROOT/train|test/<class>/**``, ``ROOT/<class>/**`` (labels: the sub-folder names, only
    sub-folders holding such files count), or unlabelled files directly in ``ROOT``; a single
    file is unlabelled. Returns ``train files, labels, test files, labels, classes, notes``.
    """
    notes: list[str] = []
    if root.is_file():
        return [root], None, [], None, 0, notes

    def class_files(folder: Path) -> dict[str, list[Path]]:
        """The sub-folders of ``folder`` that hold such files, with their files."""
        found = {d.name: _files_under(d, matches) for d in sorted(folder.iterdir())
                 if d.is_dir() and not d.name.startswith(".")}
        return {name: files for name, files in found.items() if files}

    def labelled(by_class: dict[str, list[Path]], classes: list[str]
                 ) -> tuple[list[Path], np.ndarray]:
        files: list[Path] = []
        ys: list[int] = []
        for label, cls in enumerate(classes):
            files += by_class.get(cls, [])
            ys += [label] * len(by_class.get(cls, []))
        return files, np.asarray(ys, dtype=np.int64)

    te_files: list[Path] = []
    y_te: np.ndarray | None = None
    if (root / "train").is_dir() and (root / "test").is_dir():
        by_class = class_files(root / "train")
        classes = sorted(by_class)
        if not classes:
            raise DataError(f"{what} {root / 'train'} has no class sub-folders holding files")
        tr_files, y_tr = labelled(by_class, classes)
        if with_test:
            te_files, y_te = labelled(class_files(root / "test"), classes)
            if not te_files:
                raise DataError(f"{what} {root / 'test'} holds no files under {classes}")
        else:
            notes.append(f"{root / 'test'} not used: a site only trains (the server evaluates "
                         "on its own data)")
        return tr_files, y_tr, te_files, y_te, len(classes), notes
    by_class = class_files(root)
    classes = sorted(by_class)
    if classes:
        tr_files, y_tr = labelled(by_class, classes)
        loose = [f for f in sorted(root.iterdir()) if f.is_file() and matches(f)]
        if loose:
            notes.append(f"{len(loose)} file(s) directly in {root} (e.g. {loose[0].name}) not "
                         "read: with class sub-folders, each file belongs in one")
        notes.append(f"labels from the sub-folder names of {root}: {len(classes)} classes "
                     f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
        return tr_files, y_tr, [], None, len(classes), notes
    tr_files = [f for f in sorted(root.iterdir()) if f.is_file() and matches(f)
                and not f.name.startswith(".")]
    if tr_files:
        notes.append(f"{root} has no class sub-folders: its images are unlabelled")
    return tr_files, None, [], None, 0, notes


def _min_max(plane: np.ndarray) -> np.ndarray:
    """``plane`` scaled to [0, 1] by its own minimum and maximum (zeros if constant)."""
    lo, hi = float(plane.min()), float(plane.max())
    if hi <= lo:
        return np.zeros(plane.shape, np.float32)
    return ((plane - lo) / (hi - lo)).astype(np.float32)


def _window(plane: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear VOI window (PS3.3 C.11.2.1.2.1) mapped onto [0, 1]."""
    scaled = (plane - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _resize_planes(image: np.ndarray, size: int) -> np.ndarray:
    """``(C, H, W)`` float image resized to ``(C, size, size)`` plane by plane, in float (as
    the image folder resizes 16-bit greyscale: Pillow's default filter), clipped to [0, 1]."""
    from PIL import Image

    if image.shape[1:] == (size, size):
        return image.astype(np.float32)
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32))
                      .resize((size, size)), dtype=np.float32) for p in image]
    return np.clip(np.stack(out), 0.0, 1.0)


def _first_value(value: Any) -> float:
    """A DICOM number, or the first of a multi-valued one (e.g. several windows)."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0])


def _decoder_hint(detail: str) -> str:
    return (". Install a decoder for it (pip install pylibjpeg pylibjpeg-libjpeg "
            "pylibjpeg-openjpeg, or python-gdcm) or convert the files to an uncompressed "
            "transfer syntax" if "missing" in detail or "plugin" in detail else "")


def _dicom_images(file: Path, size: int) -> tuple[np.ndarray, str, tuple[int, ...]]:
    """The frames of one DICOM file as ``(F, C, size, size)`` in [0, 1], its series (for the
    held-out split) and the shape of its decoded pixel array.

    Raises:
        DataError: naming the file: not DICOM, no image in it, corrupt, or compressed in a
            transfer syntax no installed decoder reads (with the transfer syntax's name and
            UID).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(file)
    except InvalidDicomError as exc:
        raise DataError(f"{file} is not a DICOM file ({exc}): move it out of the DICOM "
                        "folder") from None
    except Exception as exc:  # pydicom raises many kinds on a damaged file
        raise DataError(f"{file}: corrupt DICOM file ({type(exc).__name__}: {exc})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if "SOPClassUID" not in ds:  # not even its class was read: the file ends early
            raise DataError(f"{file}: corrupt or truncated DICOM file (no SOP class and no "
                            "pixel data in it)")
        kind = getattr(ds.SOPClassUID, "name", ds.SOPClassUID)
        raise DataError(f"{file} is a DICOM object without an image ({kind}): move it out "
                        "of the DICOM folder")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())
        name = f"{getattr(syntax, 'name', syntax)} ({syntax})" if syntax else "unknown"
        raise DataError(f"{file}: its pixel data (transfer syntax {name}) cannot be decoded: "
                        f"{detail}{_decoder_hint(str(exc))}") from None
    except Exception as exc:
        raise DataError(f"{file}: corrupt DICOM pixel data ({type(exc).__name__}: "
                        f"{exc})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    shape = tuple(pixels.shape)
    center = width = None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if photometric == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, ds)
        colour = pixels.ndim == (4 if frames > 1 else 3)
        if not colour:
            pixels = apply_modality_lut(pixels, ds)
            has_window = "WindowCenter" in ds and "WindowWidth" in ds
            if not has_window and "VOILUTSequence" in ds:
                pixels = apply_voi_lut(pixels, ds)
            if has_window:
                center, width = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise DataError(f"{file}: corrupt DICOM image attributes ({type(exc).__name__}: "
                        f"{exc})") from None
    pixels = np.asarray(pixels, dtype=np.float32)
    if frames == 1:
        pixels = pixels[None]
    if pixels.ndim != (4 if colour else 3) or (colour and pixels.shape[-1] != 3):
        raise DataError(f"{file}: unexpected pixel array of shape {shape} "
                        f"({photometric}, {frames} frame(s))")
    images = []
    for frame in pixels:
        if not np.isfinite(frame).all():
            raise DataError(f"{file}: pixel data holds NaN or Inf values")
        if colour:
            image = _min_max(frame).transpose(2, 0, 1)
        else:
            windowed = center is not None and width is not None
            image = (_window(frame, center, width) if windowed else _min_max(frame))[None]
            if photometric == "MONOCHROME1":  # lowest value shown white
                image = 1.0 - image
        images.append(_resize_planes(image, size))
    series = str(ds.get("SeriesInstanceUID", "")) or str(file.parent)
    return np.stack(images), series, shape


def _require(module: str, extra: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise DataError(f"{what} needs the {module} package: pip install 'fedssl[{extra}]' "
                        f"(or pip install {module})")


def _check_same_shape(shapes: dict[tuple[int, ...], tuple[Path, str]],
                      record: tuple[int, ...], file: Path, what: str, detail: str) -> None:
    """Refuse records of another shape than those read so far, naming a file of each."""
    if shapes and record not in shapes:
        first, (example, first_detail) = next(iter(shapes.items()))
        raise DataError(
            f"{what} mixes records of shape {first} (e.g. {example}, {first_detail}) and "
            f"{record} ({file}, {detail}): a data set has one shape; convert the files to one "
            "kind (channels come from the files: colour gives 3, greyscale 1)")
    shapes.setdefault(record, (file, detail))


def _read_medical(files: list[Path], reader: Callable[[Path, int], tuple], size: int,
                  what: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Read ``files`` with ``reader``; returns the records, each record's group (series or
    volume index) and the number of records each file gave."""
    records: list[np.ndarray] = []
    groups: list[int] = []
    counts: list[int] = []
    group_ids: dict[str, int] = {}
    shapes: dict[tuple[int, ...], tuple[Path, str]] = {}
    for file in files:
        images, group, raw_shape = reader(file, size)
        _check_same_shape(shapes, tuple(images.shape[1:]), file, what,
                          f"decoded pixel array {raw_shape}")
        gid = group_ids.setdefault(group, len(group_ids))
        records.append(images)
        groups += [gid] * len(images)
        counts.append(len(images))
    return np.concatenate(records), np.asarray(groups), counts


def _nifti_images(file: Path, size: int) -> tuple[np.ndarray, str, tuple[int, ...]]:
    """The 2-D slices of one NIfTI volume as ``(S, 1, size, size)`` in [0, 1] (each slice
    scaled by its own min-max), its volume (for the held-out split) and its shape.

    Raises:
        DataError: naming the file: not NIfTI, corrupt, or not a scalar image.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.load(file)
    except ImageFileError as exc:
        raise DataError(f"{file} is not a NIfTI file ({exc})") from None
    except Exception as exc:
        raise DataError(f"{file}: corrupt NIfTI file ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"{file} is a {type(img).__name__}, not a NIfTI-1/2 volume")
    shape = tuple(int(d) for d in img.shape)
    if len(shape) < 2 or min(shape) == 0:
        raise DataError(f"{file}: volume of shape {shape} holds no 2-D image")
    try:
        data = img.get_fdata(dtype=np.float32)  # applies scl_slope / scl_inter
    except Exception as exc:  # truncated data, RGB or complex voxels, ...
        raise DataError(f"{file}: cannot read its voxels ({type(exc).__name__}: "
                        f"{exc})") from None
    # every 2-D slice along the third axis, of every volume of a 4-D (or 5-D) series
    slices = data.reshape(shape[0], shape[1], -1, order="F").transpose(2, 1, 0)
    images = []
    for plane in slices:
        if not np.isfinite(plane).all():
            finite = plane[np.isfinite(plane)]
            fill = float(finite.min()) if finite.size else 0.0
            plane = np.where(np.isfinite(plane), plane, fill)
        images.append(_resize_planes(_min_max(plane)[None], size))
    return np.stack(images), str(file), shape


def _hold_out_groups(x: np.ndarray, y: np.ndarray | None, groups: np.ndarray, seed: int,
                     what: str, unit: str
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None,
                                str]:
    """Like :func:`_hold_out`, but whole groups (a scan's slices) go to one side; with a
    single group, records are split and the note says the slices are shared."""
    uniq = np.unique(groups)
    if len(uniq) < 2:
        x_tr, y_tr, x_te, y_te, note = _hold_out(x, y, seed, what)
        return x_tr, y_tr, x_te, y_te, f"{note} (one {unit} only: held-out slices share it)"
    order = np.random.default_rng(seed).permutation(uniq)
    cut = max(1, int(len(uniq) * HOLDOUT_FRACTION))
    test = np.isin(groups, order[:cut])
    note = (f"no test split in {what}: holding out {cut} of its {len(uniq)} {unit}s "
            f"({int(test.sum())} of {len(x)} records) for evaluation; they are not trained on")
    return (x[~test], None if y is None else y[~test], x[test],
            None if y is None else y[test], note)


def _load_medical(root: str | Path, kind: str, image_size: int, seed: int,
                  with_test: bool) -> SSLDataset:
    """Load a DICOM or NIfTI path (see the module doc) into an :class:`SSLDataset`."""
    root = Path(root)
    what, unit, reader, matches, suffixes = {
        "dicom": ("DICOM folder", "series", _dicom_images, _is_dicom_file, ".dcm"),
        "nifti": ("NIfTI data", "volume", _nifti_images, _is_nifti_file, ".nii/.nii.gz"),
    }[kind]
    if not root.exists():
        raise DataError(f"{what} not found: {root}")
    if root.is_file() and not matches(root):
        raise DataError(f"{root} is not a {suffixes} file")
    _require("pydicom" if kind == "dicom" else "nibabel", kind, what)
    tr_files, y_tr, te_files, y_te, classes, notes = _medical_layout(root, matches, what,
                                                                     with_test)
    if not tr_files:
        raise DataError(f"{what} {root} is empty: it holds no {suffixes} files (one "
                        "sub-folder per class, or the files directly in it, unlabelled)")
    if root.is_dir() and (other := sorted(f.name for f in root.iterdir() if f.is_file()
                                         and not matches(f) and not f.name.startswith("."))):
        notes.append(f"{len(other)} other file(s) in {root} not read (e.g. {other[0]})")
    x, groups, counts = _read_medical(tr_files + te_files, reader, image_size, f"{what} {root}")
    tr_counts, te_counts = counts[:len(tr_files)], counts[len(tr_files):]
    if y_tr is not None:  # a file's label, for every record (slice, frame) it gave
        y_tr = np.repeat(y_tr, tr_counts)
    if y_te is not None:
        y_te = np.repeat(y_te, te_counts)
    n_tr = sum(tr_counts)
    x_tr, x_te = x[:n_tr], (x[n_tr:] if te_files else None)
    if with_test and x_te is None:
        x_tr, y_tr, x_te, y_te, held = _hold_out_groups(x_tr, y_tr, groups[:n_tr], seed,
                                                        f"{what} {root}", unit)
        notes.append(held)
    x_tr, x_te = _standardize(x_tr, x_te)
    name = root.name.removesuffix(".gz").removesuffix(".nii") if root.is_file() else root.name
    return SSLDataset(name, x_tr, y_tr, x_te, y_te, classes if y_tr is not None else 0,
                      tuple(notes), source=str(root))


def load_dicom(root: str | Path, image_size: int = 28, seed: int = 0,
               with_test: bool = True) -> SSLDataset:
    """Load the ``.dcm`` files under ``root`` (recursively; or one file) as images resized to
    ``image_size`` (see the module doc for windowing, channels, labels and errors).
    ``with_test=False``: a site's data, every image trains."""
    return _load_medical(root, "dicom", image_size, seed, with_test)


def load_nifti(path: str | Path, image_size: int = 28, seed: int = 0,
               with_test: bool = True) -> SSLDataset:
    """Load a ``.nii``/``.nii.gz`` volume, or the volumes under a folder, as 2-D slices
    resized to ``image_size`` (see the module doc). ``with_test=False``: a site's data."""
    return _load_medical(path, "nifti", image_size, seed, with_test)


# --------------------------------------------------------------------------- format inference
def _is_npz(path: Path) -> bool:
    return path.suffix.lower() == ".npz"


def _is_nifti(path: Path) -> bool:
    return _is_nifti_file(path) if path.is_file() else (
        path.is_dir() and "nifti" in _folder_kinds(path))


def _is_dicom(path: Path) -> bool:
    return _is_dicom_file(path) if path.is_file() else (
        path.is_dir() and "dicom" in _folder_kinds(path))


def _is_image_folder(path: Path) -> bool:
    return path.is_dir()


#: data sets generated locally (they read no data path)
GENERATED_DATASETS = ("mnist1d", "digits")
#: how the format of a data path is recognised, tried in order (the first match wins; a
#: folder holding files of several of these formats is refused by :func:`infer_dataset`). A
#: new file format adds its rule here, before the catch-all folder rule, its file test to
#: ``_FILE_KINDS`` and its loader in :func:`load_dataset`.
PATH_FORMATS: tuple[tuple[str, Callable[[Path], bool]], ...] = (
    ("npz", _is_npz),
    ("nifti", _is_nifti),
    ("dicom", _is_dicom),
    ("imagefolder", _is_image_folder),
)
DATASETS = (*GENERATED_DATASETS, *(name for name, _ in PATH_FORMATS))
#: the data set a run uses when neither a dataset nor a data path is given
DEFAULT_DATASET = "mnist1d"


def infer_dataset(data_path: str | Path, dataset: str = "auto",
                  default: str = DEFAULT_DATASET) -> str:
    """Resolve ``dataset`` ("auto" or a name) against ``data_path`` ("" for none).

    "auto" with a path gives the path's format (:data:`PATH_FORMATS`), without a path
    ``default``. An explicit dataset is returned if the path suits it.

    Raises:
        DataError: the path's format is unknown or missing, or it contradicts the explicit
            dataset (naming both).
    """
    path = Path(data_path) if str(data_path) else None
    if dataset in ("auto", ""):
        if path is None:
            return default
        return _format_of(path)
    if path is None:
        return dataset
    if dataset in GENERATED_DATASETS:
        raise DataError(
            f"--dataset {dataset} generates its own records and reads no data path, but "
            f"--data-path {path} was given: drop --dataset to infer the format from the path"
            f"{_looks_like(path)}, or drop --data-path")
    for name, matches in PATH_FORMATS:
        if name == dataset:
            # an empty folder contradicts nothing: the loader says it is empty
            if path.exists() and not matches(path) and not _is_empty_dir(path):
                raise DataError(f"--dataset {dataset} cannot read --data-path {path}"
                                f"{_looks_like(path)}: drop --dataset to infer the format "
                                "from the path")
            return dataset
    return dataset  # an unknown name: refused by load_dataset/validation with the choices


def _looks_like(path: Path) -> str:
    try:
        return f" (it looks like {_format_of(path)} data)"
    except DataError:
        return ""


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _format_of(path: Path) -> str:
    if path.is_dir() and len(kinds := _folder_kinds(path)) > 1:
        names = [k for k, _ in _FILE_KINDS if k in kinds]
        raise DataError(
            f"{path} holds {' and '.join(_KIND_NAMES[k] for k in names)} files: name the "
            f"format with --dataset ({' or '.join(names)}); only that format's files are read")
    for name, matches in PATH_FORMATS:
        if matches(path):
            return name
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    raise DataError(f"cannot tell the format of {path}: give a .npz file (MedMNIST layout), "
                    "a .nii/.nii.gz file, or a folder of PNG/JPEG images (one sub-folder per "
                    "class), DICOM .dcm files or NIfTI volumes, or --dataset")


def load_dataset(
    name: str, data_path: str = "", num_samples: int = 4000, seed: int = 0,
    image_size: int = 28, with_test: bool = True,
) -> SSLDataset:
    """Load a data source by name (see :data:`DATASETS`; "auto" infers it from the path).

    ``with_test=False`` loads a site's training data: no evaluation split is held out.
    """
    name = infer_dataset(data_path, name)
    if name == "mnist1d":
        return load_mnist1d(num_samples=num_samples, seed=seed)
    if name == "digits":
        return load_digits(seed=seed)
    if name == "npz":
        if not data_path:
            raise DataError(f"dataset {name!r} needs a data path (--data-path)")
        return load_npz(data_path, with_test=with_test, seed=seed)
    if name in ("imagefolder", "dicom", "nifti"):
        if not data_path:
            raise DataError(f"dataset {name!r} needs a data path (--data-path)")
        loader = {"imagefolder": load_image_folder, "dicom": load_dicom,
                  "nifti": load_nifti}[name]
        return loader(data_path, image_size, seed=seed, with_test=with_test)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
