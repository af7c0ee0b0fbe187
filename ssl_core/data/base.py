"""What every data source yields, and the checks every record and label passes.

:class:`SSLDataset` holds float32 records in channels-first layout (``(N, C, L)`` signals,
``(N, C, H, W)`` images) and, where the data has them, labels (one class per record, or
multi-label 0/1 flags); :func:`validate_arrays` refuses wrong shapes, NaN/Inf and label sets
too large to allocate; :func:`hold_out` makes the evaluation split of a source without one.
The formats themselves are in the sibling modules, one per format
(:mod:`fedssl.ssl_core.data.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: share of the training records held out for evaluation when a source has no test split
HOLDOUT_FRACTION = 0.2


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
        """One line: records, shape, channels, labels and the evaluation split.

        Returns:
            The description.
        """
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

    Args:
        data: the evaluation data.
        where: names the data in errors.

    Returns:
        True if labelled, False if unlabelled.

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

    Args:
        data: the evaluation data.
        where: names the data in errors.

    Returns:
        ``data``.

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

    Args:
        x: the records, ``(N, ...)`` floats.
        y: their labels, or None.
        what: names the arrays in errors.

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


def labels_from(raw: np.ndarray, n: int, what: str) -> np.ndarray:
    """Labels as ``(N,)`` classes or ``(N, K)`` multi-label flags (``(N, 1)`` is squeezed).

    Args:
        raw: the labels as read.
        n: the number of records.
        what: names the labels in errors.

    Returns:
        int64 labels.

    Raises:
        DataError: the count does not match ``n``, or the labels are not integers.
    """
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


def num_classes_of(*ys: np.ndarray | None) -> int:
    """The number of classes of label arrays: ``K`` of ``(N, K)`` multi-label flags, else the
    largest class id plus one (0 without labels).

    Args:
        *ys: label arrays, None for a split without labels.

    Returns:
        The number of classes.
    """
    present = [y for y in ys if y is not None and len(y)]
    if not present:
        return 0
    if present[0].ndim == 2:
        return int(present[0].shape[1])
    return int(max(int(y.max()) for y in present) + 1)


def standardize(x_train: np.ndarray, x_test: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale by the training pool's global mean/std (one scalar each, no per-record info).

    Args:
        x_train: the training records.
        x_test: the test records, or None.

    Returns:
        Both, scaled with the training statistics, as float32.
    """
    mean, std = float(x_train.mean()), float(x_train.std()) or 1.0
    scaled = ((x_train - mean) / std).astype(np.float32)
    return scaled, None if x_test is None else ((x_test - mean) / std).astype(np.float32)


def hold_out(x: np.ndarray, y: np.ndarray | None, seed: int, what: str
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None, str]:
    """Split off :data:`HOLDOUT_FRACTION` of the records (reproducibly); returns
    ``x_train, y_train, x_test, y_test, note``.

    Args:
        x: the records.
        y: their labels, or None.
        seed: makes the split reproducible.
        what: names the data in errors and the note.

    Returns:
        The split and a note saying what was held out.

    Raises:
        DataError: fewer than 2 records.
    """
    if len(x) < 2:
        raise DataError(f"{what} holds fewer than 2 records: nothing can be held out for "
                        "evaluation")
    order = np.random.default_rng(seed).permutation(len(x))
    cut = max(1, int(len(x) * HOLDOUT_FRACTION))
    te, tr = order[:cut], order[cut:]
    note = (f"no test split in {what}: holding out {HOLDOUT_FRACTION:.0%} of the training "
            f"records ({cut} of {len(x)}) for evaluation; they are not trained on")
    return (x[tr], None if y is None else y[tr], x[te], None if y is None else y[te], note)
