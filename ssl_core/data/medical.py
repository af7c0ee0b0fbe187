"""Medical images: DICOM files (``pip install fedssl[dicom]``, pydicom) and NIfTI volumes
(``pip install fedssl[nifti]``, nibabel).

- ``dicom``: the ``.dcm`` files of a folder, found recursively (or one ``.dcm`` file), in the
  image folder's layout (``ROOT/<class>/**``, ``ROOT/train|test/<class>/**``, or unlabelled).
  Each frame is one record: the modality LUT (rescale slope/intercept) is applied, then the
  file's window (Window Center/Width; else its VOI LUT, then min-max) or, without one,
  min-max per image; MONOCHROME1 is inverted; resized to ``image_size``. Channels come from
  the data (1 grey, 3 colour); a folder mixing both is refused, naming a file of each shape.
  A non-DICOM ``.dcm`` file, a DICOM object without an image (a report, an RT plan), a
  corrupt file, and pixel data compressed in a transfer syntax no installed decoder reads
  (named with its UID) are errors naming the file.
- ``nifti``: ``.nii``/``.nii.gz`` volumes (one file, or a folder of them in the same layout),
  sliced along the last spatial axis into 2-D images (a 4-D series gives every slice of every
  volume), each scaled to [0, 1] by its own min-max after the file's scaling
  (``scl_slope``/``scl_inter``) and resized like DICOM.

Held-out splits are made by series (DICOM ``SeriesInstanceUID``) and by volume (NIfTI file),
so slices of one scan never land on both sides.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedssl.ssl_core.data.base import (
    HOLDOUT_FRACTION,
    DataError,
    SSLDataset,
    hold_out,
    standardize,
)
from fedssl.ssl_core.data.registry import (
    DataFormat,
    LoadRequest,
    folder_kinds,
    register_format,
)

DICOM_SUFFIXES = (".dcm",)
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_dicom_file(path: Path) -> bool:
    return path.name.lower().endswith(DICOM_SUFFIXES)


def _is_nifti_file(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


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
        x_tr, y_tr, x_te, y_te, note = hold_out(x, y, seed, what)
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
    x_tr, x_te = standardize(x_tr, x_te)
    name = root.name.removesuffix(".gz").removesuffix(".nii") if root.is_file() else root.name
    return SSLDataset(name, x_tr, y_tr, x_te, y_te, classes if y_tr is not None else 0,
                      tuple(notes), source=str(root))


def load_dicom(root: str | Path, image_size: int = 28, seed: int = 0,
               with_test: bool = True) -> SSLDataset:
    """Load the ``.dcm`` files under ``root`` (recursively; or one file) as images resized to
    ``image_size`` (see the module doc for windowing, channels, labels and errors).
    ``with_test=False``: a site's data, every image trains.

    Args:
        root: a ``.dcm`` file or a folder of them.
        image_size: the side every image is resized to.
        seed: seeds the held-out split.
        with_test: hold records out for evaluation.

    Returns:
        The data set.

    Raises:
        DataError: nothing readable, or files that cannot be combined (see the module doc).
    """
    return _load_medical(root, "dicom", image_size, seed, with_test)


def load_nifti(path: str | Path, image_size: int = 28, seed: int = 0,
               with_test: bool = True) -> SSLDataset:
    """Load a ``.nii``/``.nii.gz`` volume, or the volumes under a folder, as 2-D slices
    resized to ``image_size`` (see the module doc). ``with_test=False``: a site's data.

    Args:
        path: a volume or a folder of volumes.
        image_size: the side every slice is resized to.
        seed: seeds the held-out split.
        with_test: hold records out for evaluation.

    Returns:
        The data set.

    Raises:
        DataError: nothing readable, or volumes that cannot be combined (see the module doc).
    """
    return _load_medical(path, "nifti", image_size, seed, with_test)


class _MedicalFormat(DataFormat):
    """A medical format: one file of it, or a folder holding such files at any depth."""

    def matches(self, path: Path) -> bool:
        return self.is_file(path) if path.is_file() else (
            path.is_dir() and self.name in folder_kinds(path))

    def load(self, request: LoadRequest) -> SSLDataset:
        return _load_medical(request.path(self.name), self.name, request.image_size,
                             request.seed, request.with_test)


@register_format
class Nifti(_MedicalFormat):
    """NIfTI ``.nii``/``.nii.gz`` volumes, sliced into 2-D images (see the module doc)."""

    name = "nifti"
    file_kind = "NIfTI (.nii/.nii.gz)"

    def is_file(self, path: Path) -> bool:
        return _is_nifti_file(path)


@register_format
class Dicom(_MedicalFormat):
    """DICOM ``.dcm`` files, one record per frame (see the module doc)."""

    name = "dicom"
    file_kind = "DICOM (.dcm)"

    def is_file(self, path: Path) -> bool:
        return _is_dicom_file(path)
