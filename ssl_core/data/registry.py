"""The registry of data formats, and the two things that read it: inferring a data path's
format (:func:`infer_dataset`) and loading a data set by name (:func:`load_dataset`).

A format is a :class:`DataFormat` subclass registered with :func:`register_format`: its
``name`` (the ``--dataset`` choice), whether it is ``generated`` (it makes its own records and
reads no path), how it recognises a data path (:meth:`DataFormat.matches`) and, for formats
whose files may sit in a folder, one such file (:meth:`DataFormat.is_file`, named in
messages by ``file_kind``), and how it loads (:meth:`DataFormat.load`). Inference tries the
path formats in registration order, the first match winning (so the catch-all image folder
is registered last), and refuses a folder holding files of several formats. A new format is
one module in :mod:`fedssl.ssl_core.data` and one import line in its ``__init__``; the
``--dataset`` choices, inference and dispatch all read the registry.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

from fedssl.ssl_core.data.base import DataError, SSLDataset

#: the data set a run uses when neither a dataset nor a data path is given
DEFAULT_DATASET = "mnist1d"


@dataclass(frozen=True)
class LoadRequest:
    """What a format is asked to load: the data path ("" for generated sets), the number of
    records a generator makes, the seed of generation and held-out splits, the side images
    are resized to, and whether an evaluation split is needed (``with_test=False``: a site's
    data, every record trains)."""

    data_path: str = ""
    num_samples: int = 4000
    seed: int = 0
    image_size: int = 28
    with_test: bool = True

    def path(self, name: str) -> str:
        """The data path, which format ``name`` needs.

        Args:
            name: the format asking for it (named in the error).

        Returns:
            The data path.

        Raises:
            DataError: no data path was given.
        """
        if not self.data_path:
            raise DataError(f"dataset {name!r} needs a data path (--data-path)")
        return self.data_path


class DataFormat(ABC):
    """One data format (see the module doc for the contract)."""

    name: ClassVar[str] = ""
    #: makes its own records; reads no data path
    generated: ClassVar[bool] = False
    #: how messages name one file of this format in a folder (None: not a folder format)
    file_kind: ClassVar[str | None] = None

    def matches(self, path: Path) -> bool:
        """Whether the data path ``path`` is in this format (generated sets: never).

        Args:
            path: the data path.

        Returns:
            True if this format reads it.
        """
        return False

    def is_file(self, path: Path) -> bool:
        """Whether ``path`` (a file name) is one file of this format inside a data folder.

        Args:
            path: a file inside a data folder.

        Returns:
            True if it is one of this format's files.
        """
        return False

    @abstractmethod
    def load(self, request: LoadRequest) -> SSLDataset:
        """The data set.

        Args:
            request: the data path and the loading options.

        Returns:
            The data set, validated.

        Raises:
            DataError: the data is missing, malformed or holds invalid values.
        """


#: format name -> the format, in registration order (filled by :func:`register_format`)
FORMATS: dict[str, DataFormat] = {}

F = TypeVar("F", bound=type[DataFormat])


def register_format(cls: F) -> F:
    """Class decorator: register an instance of ``cls`` under ``cls.name``.

    Args:
        cls: a :class:`DataFormat` subclass with a name.

    Returns:
        ``cls``, unchanged.

    Raises:
        TypeError: ``cls`` has no format name.
    """
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no format name")
    FORMATS[cls.name] = cls()
    return cls


def dataset_names() -> tuple[str, ...]:
    """Every ``--dataset`` choice besides "auto", in registration order.

    Returns:
        The format names.
    """
    return tuple(FORMATS)


def generated_names() -> tuple[str, ...]:
    """The data sets generated locally (they read no data path).

    Returns:
        Their names.
    """
    return tuple(n for n, f in FORMATS.items() if f.generated)


def folder_kinds(folder: Path) -> set[str]:
    """Which formats' files (:meth:`DataFormat.is_file`) ``folder`` holds, at any depth
    (hidden files and folders are skipped; the walk stops once every kind was seen).

    Args:
        folder: the data folder.

    Returns:
        The names of the formats found.
    """
    kinds = [f for f in FORMATS.values() if f.file_kind]
    found: set[str] = set()
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            for fmt in kinds:
                if fmt.name not in found and fmt.is_file(Path(name)):
                    found.add(fmt.name)
            if len(found) == len(kinds):
                return found
    return found


def infer_dataset(data_path: str | Path, dataset: str = "auto",
                  default: str = DEFAULT_DATASET) -> str:
    """Resolve ``dataset`` ("auto" or a name) against ``data_path`` ("" for none).

    "auto" with a path gives the path's format (the first registered format that
    :meth:`~DataFormat.matches` it), without a path ``default``. An explicit dataset is
    returned if the path suits it.

    Args:
        data_path: the data path, "" for none.
        dataset: "auto" or a format name.
        default: the data set without a path.

    Returns:
        The format name.

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
    fmt = FORMATS.get(dataset)
    if fmt is not None and fmt.generated:
        raise DataError(
            f"--dataset {dataset} generates its own records and reads no data path, but "
            f"--data-path {path} was given: drop --dataset to infer the format from the path"
            f"{_looks_like(path)}, or drop --data-path")
    # an empty folder contradicts nothing: the loader says it is empty
    if fmt is not None and path.exists() and not fmt.matches(path) and not _is_empty_dir(path):
        raise DataError(f"--dataset {dataset} cannot read --data-path {path}"
                        f"{_looks_like(path)}: drop --dataset to infer the format from the path")
    return dataset  # an unknown name: refused by load_dataset/validation with the choices


def _looks_like(path: Path) -> str:
    try:
        return f" (it looks like {_format_of(path)} data)"
    except DataError:
        return ""


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _format_of(path: Path) -> str:
    if path.is_dir() and len(kinds := folder_kinds(path)) > 1:
        names = [n for n in FORMATS if n in kinds]
        raise DataError(
            f"{path} holds {' and '.join(str(FORMATS[n].file_kind) for n in names)} files: "
            f"name the format with --dataset ({' or '.join(names)}); only that format's files "
            "are read")
    for name, fmt in FORMATS.items():
        if not fmt.generated and fmt.matches(path):
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
    """Load a data set by format name ("auto" infers it from the path).

    Args:
        name: a registered format (:func:`dataset_names`) or "auto".
        data_path: the file or folder to read ("" for a generated set).
        num_samples: records a generator makes.
        seed: seed of generation and of a held-out split.
        image_size: side length images are resized to (image folders, DICOM, NIfTI).
        with_test: whether an evaluation split is needed (False: a site's training data, no
            record is held out).

    Returns:
        The data set.

    Raises:
        DataError: an unknown format, a path it cannot read, or bad data.
    """
    name = infer_dataset(data_path, name)
    fmt = FORMATS.get(name)
    if fmt is None:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(FORMATS)}")
    return fmt.load(LoadRequest(data_path, num_samples, seed, image_size, with_test))
