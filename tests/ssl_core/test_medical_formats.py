"""DICOM and NIfTI data (issue 15 item 3): windowing, slicing, resizing, labels, inference,
held-out splits by scan, and every bad input named in a DataError.

The sample files are the ones pydicom and nibabel ship (offline), copied into tmp folders.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from nibabel.testing import data_path as NIFTI_DIR  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from fedssl.cli import build_parser  # noqa: E402
from fedssl.simulations.config import ExperimentConfig  # noqa: E402
from fedssl.ssl_core.data.medical import (  # noqa: E402
    _dicom_images,
    _nifti_images,
    _resize_planes,
)
from fedssl.ssl_core.data_cache import DataSpec, cached_dataset  # noqa: E402
from fedssl.ssl_core.datasets import (  # noqa: E402
    DATASETS,
    DataError,
    infer_dataset,
    load_dataset,
    load_dicom,
    load_nifti,
)

CT = Path(get_testdata_file("CT_small.dcm"))  # 128x128 int16, rescale -1024, no window
MR = Path(get_testdata_file("MR_small.dcm"))  # 64x64 int16, window 600/1600
RGB = Path(get_testdata_file("SC_rgb_small_odd.dcm"))  # 3x3 RGB
RGB_2FRAMES = Path(get_testdata_file("SC_rgb_rle_2frame.dcm"))  # RLE (pydicom decodes it)
JPEG_LS = Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))  # needs a plugin
RTPLAN = Path(get_testdata_file("rtplan.dcm"))  # DICOM without an image
VOL4D = Path(NIFTI_DIR) / "example4d.nii.gz"  # (128, 96, 24, 2)
ANAT = Path(NIFTI_DIR) / "anatomical.nii"  # (33, 41, 25)


def _folder(root: Path, files: dict[str, Path | bytes]) -> Path:
    """``root`` holding ``files`` (relative name -> a file to copy, or raw bytes)."""
    for name, src in files.items():
        dest = root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            dest.write_bytes(src)
        else:
            shutil.copy(src, dest)
    return root


def _with_series(src: Path, dest: Path, series: str, **attrs: object) -> Path:
    """A copy of ``src`` in another series (and with ``attrs`` changed)."""
    ds = pydicom.dcmread(src)
    ds.SeriesInstanceUID = series
    for key, value in attrs.items():
        setattr(ds, key, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


# --- DICOM pixels: modality LUT, window, MONOCHROME1, colour, frames, resizing -------------
def test_dicom_rescale_then_min_max_without_window() -> None:
    images, _, shape = _dicom_images(CT, 128)  # native size: no resampling
    ds = pydicom.dcmread(CT)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = (hu - hu.min()) / (hu.max() - hu.min())
    assert shape == (128, 128) and images.shape == (1, 1, 128, 128)
    np.testing.assert_allclose(images[0, 0], expected, atol=1e-6)


def test_dicom_window_center_width() -> None:
    images, _, _ = _dicom_images(MR, 64)
    raw = pydicom.dcmread(MR).pixel_array.astype(np.float32)
    expected = np.clip((raw - 599.5) / 1599.0 + 0.5, 0.0, 1.0)  # center 600, width 1600
    np.testing.assert_allclose(images[0, 0], expected, atol=1e-6)
    assert not np.allclose(images[0, 0], (raw - raw.min()) / np.ptp(raw))  # not min-max


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    inverted = _with_series(MR, tmp_path / "m1.dcm", "1.2.3",
                            PhotometricInterpretation="MONOCHROME1")
    np.testing.assert_allclose(_dicom_images(inverted, 64)[0],
                               1.0 - _dicom_images(MR, 64)[0], atol=1e-6)


def test_dicom_resized_like_the_image_folder() -> None:
    images, _, _ = _dicom_images(CT, 32)
    native = _dicom_images(CT, 128)[0][0]
    assert images.shape == (1, 1, 32, 32)
    np.testing.assert_allclose(images[0], _resize_planes(native, 32))
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_dicom_colour_and_frames() -> None:
    one, _, _ = _dicom_images(RGB, 8)
    assert one.shape == (1, 3, 8, 8)
    two, _, shape = _dicom_images(RGB_2FRAMES, 8)
    assert shape[0] == 2 and two.shape == (2, 3, 8, 8)  # every frame is a record


# --- DICOM folders: recursion, labels, held-out split by series, notes --------------------
def test_dicom_folder_unlabelled_site(tmp_path: Path) -> None:
    root = _folder(tmp_path / "site", {"CT_small.dcm": CT, "MR_small.dcm": MR,
                                       "notes.txt": b"not an image"})
    data = load_dataset("auto", str(root), image_size=16, with_test=False)
    assert data.name == "site" and data.x_train.shape == (2, 1, 16, 16)
    assert data.y_train is None and data.x_test is None and data.num_classes == 0
    assert any("not read (e.g. notes.txt)" in n for n in data.notes)


def test_dicom_tree_read_recursively_sub_folders_are_classes(tmp_path: Path) -> None:
    """A DICOM export (ROOT/<patient>/<study>/<series>/*.dcm): every file under a sub-folder
    is read; as in an image folder, the sub-folders name the classes and loose files in ROOT
    are left out with a note."""
    root = _folder(tmp_path / "export", {"loose.dcm": CT})
    _with_series(MR, root / "p1" / "study" / "series" / "mr.dcm", "1.2.3")
    _with_series(CT, root / "p2" / "st" / "ct.dcm", "1.2.4")
    data = load_dataset("auto", str(root), image_size=16, with_test=False)
    assert data.x_train.shape == (2, 1, 16, 16) and data.y_train.tolist() == [0, 1]
    notes = " ".join(data.notes)
    assert "loose.dcm" in notes and "2 classes (p1, p2)" in notes


def test_dicom_class_folders_give_labels_and_split_by_series(tmp_path: Path) -> None:
    root = tmp_path / "eval"
    for cls, src in (("ct", CT), ("mr", MR)):
        for i in range(3):
            _with_series(src, root / cls / f"s{i}" / "img.dcm", f"1.2.{cls == 'mr':d}.{i}")
    data = load_dicom(root, image_size=16, seed=0)
    assert data.num_classes == 2 and data.label_kind == "multi-class"
    assert len(data.x_train) + len(data.x_test) == 6
    assert len(data.x_test) == 1  # one of six series held out, whole
    assert any("1 of its 6 series" in n for n in data.notes)
    assert sorted(np.concatenate([data.y_train, data.y_test]).tolist()) == [0, 0, 0, 1, 1, 1]


def test_dicom_single_series_held_out_by_record_with_a_note(tmp_path: Path) -> None:
    root = _folder(tmp_path / "one", {f"{i}.dcm": CT for i in range(5)})
    data = load_dicom(root, image_size=8)
    assert (len(data.x_train), len(data.x_test)) == (4, 1)
    assert any("one series only" in n for n in data.notes)


def test_dicom_train_test_folders(tmp_path: Path) -> None:
    root = _folder(tmp_path / "tt", {"train/a/1.dcm": CT, "train/b/2.dcm": MR,
                                     "test/a/3.dcm": CT, "test/b/4.dcm": MR})
    data = load_dataset("dicom", str(root), image_size=8)
    assert data.y_train.tolist() == [0, 1] and data.y_test.tolist() == [0, 1]
    site = load_dataset("dicom", str(root), image_size=8, with_test=False)
    assert site.x_test is None and any("not used" in n for n in site.notes)


# --- DICOM errors ----------------------------------------------------------------------------
def test_dicom_mixed_channels_refused_naming_both(tmp_path: Path) -> None:
    root = _folder(tmp_path / "mixed", {"a_grey.dcm": CT, "b_rgb.dcm": RGB})
    with pytest.raises(DataError) as err:
        load_dicom(root, image_size=8)
    msg = str(err.value)
    assert "(1, 8, 8)" in msg and "(3, 8, 8)" in msg
    assert "a_grey.dcm" in msg and "b_rgb.dcm" in msg


def test_dicom_corrupt_file_named(tmp_path: Path) -> None:
    raw = CT.read_bytes()
    for cut in (len(raw) // 2, 300):
        root = _folder(tmp_path / f"cut{cut}", {"ok.dcm": MR, "broken.dcm": raw[:cut]})
        with pytest.raises(DataError, match=r"broken\.dcm: corrupt"):
            load_dicom(root, image_size=8)


def test_dicom_non_dicom_file_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "txt", {"ok.dcm": MR, "readme.dcm": b"this is text, not DICOM"})
    with pytest.raises(DataError, match=r"readme\.dcm is not a DICOM file"):
        load_dicom(root, image_size=8)


def test_dicom_without_an_image_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "plan", {"ok.dcm": MR, "plan.dcm": RTPLAN})
    with pytest.raises(DataError, match=r"plan\.dcm is a DICOM object without an image"):
        load_dicom(root, image_size=8)


def test_dicom_compressed_without_a_decoder_names_the_transfer_syntax(tmp_path: Path) -> None:
    from pydicom.pixels.decoders.base import get_decoder

    if get_decoder(pydicom.dcmread(JPEG_LS).file_meta.TransferSyntaxUID).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    root = _folder(tmp_path / "jls", {"ok.dcm": MR, "jpegls.dcm": JPEG_LS})
    with pytest.raises(DataError) as err:
        load_dicom(root, image_size=8)
    msg = str(err.value)
    assert "jpegls.dcm" in msg and "1.2.840.10008.1.2.4.80" in msg
    assert "JPEG-LS Lossless" in msg and "install" in msg


def test_dicom_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for load in (lambda: load_dicom(tmp_path / "empty"),
                 lambda: load_dataset("dicom", str(tmp_path / "empty"))):
        with pytest.raises(DataError, match=r"is empty: it holds no \.dcm files"):
            load()
    _folder(tmp_path / "only_text", {"a.txt": b"x"})
    with pytest.raises(DataError, match=r"holds no \.dcm files"):
        load_dicom(tmp_path / "only_text")


# --- NIfTI ---------------------------------------------------------------------------------
def test_nifti_slices_along_the_last_axis() -> None:
    images, _, shape = _nifti_images(ANAT, 16)
    assert shape == (33, 41, 25) and images.shape == (25, 1, 16, 16)
    data = nib.load(ANAT).get_fdata(dtype=np.float32)
    k = 12
    plane = data[:, :, k].T
    expected = _resize_planes(((plane - plane.min()) / np.ptp(plane))[None], 16)
    np.testing.assert_allclose(images[k], expected, atol=1e-6)


def test_nifti_4d_gives_every_slice_of_every_volume() -> None:
    data = load_nifti(VOL4D, image_size=16, with_test=False)
    assert data.x_train.shape == (24 * 2, 1, 16, 16) and data.y_train is None
    assert data.name == "example4d"
    assert infer_dataset(VOL4D) == "nifti" and infer_dataset(ANAT) == "nifti"


def test_nifti_folder_labels_and_split_by_volume(tmp_path: Path) -> None:
    root = _folder(tmp_path / "vols", {"a/anat.nii": ANAT, "b/one.nii.gz": VOL4D,
                                       "b/two.nii.gz": VOL4D})
    assert infer_dataset(root) == "nifti"
    data = load_dataset("auto", str(root), image_size=8)
    assert data.num_classes == 2
    assert len(data.x_test) in (25, 48)  # one whole volume held out
    assert len(data.x_train) + len(data.x_test) == 25 + 48 + 48


def test_nifti_corrupt_and_foreign_files_named(tmp_path: Path) -> None:
    raw = ANAT.read_bytes()
    cut = _folder(tmp_path / "cut", {"ok.nii": ANAT, "short.nii": raw[: len(raw) // 2]})
    with pytest.raises(DataError, match=r"short\.nii"):
        load_nifti(cut)
    junk = _folder(tmp_path / "junk", {"junk.nii": b"not a nifti volume" * 30})
    with pytest.raises(DataError, match=r"junk\.nii is not a NIfTI file"):
        load_nifti(junk)
    with pytest.raises(DataError, match="is empty"):
        load_nifti(_folder(tmp_path / "none", {"x.txt": b""}))


# --- inference and the commands -----------------------------------------------------------
def test_inference_and_ambiguous_folders(tmp_path: Path) -> None:
    dcm = _folder(tmp_path / "dcm", {"x/y/z.dcm": CT})
    assert infer_dataset(dcm) == "dicom" and infer_dataset(dcm / "x/y/z.dcm") == "dicom"
    mixed = _folder(tmp_path / "mixed", {"a.dcm": CT, "b/c.png": b"\x89PNG"})
    with pytest.raises(DataError, match=r"DICOM \(\.dcm\) and PNG/JPEG.*--dataset"):
        infer_dataset(mixed)
    assert infer_dataset(mixed, "dicom") == "dicom"  # named: only the .dcm files are read
    assert load_dicom(mixed, image_size=8, with_test=False).x_train.shape == (1, 1, 8, 8)
    with pytest.raises(DataError, match="--dataset nifti cannot read"):
        infer_dataset(dcm, "nifti")
    assert infer_dataset(tmp_path / "nothing_yet", "dicom") == "dicom"
    assert {"dicom", "nifti"} <= set(DATASETS)


def test_commands_accept_the_formats(tmp_path: Path) -> None:
    dcm = _folder(tmp_path / "dcm", {"a.dcm": CT, "b.dcm": MR})
    cfg = ExperimentConfig.from_dict({"num_clients": 2, "rounds": 1, "dp": False,
                                      "secagg": False, "data_path": str(dcm)})
    assert cfg.dataset == "dicom"
    parser = build_parser()
    for fmt in ("dicom", "nifti"):
        args = parser.parse_args(["client", "--server", "h:1", "--certs", "c", "--node-key",
                                  "k", "--data", str(dcm), "--state-dir", "s",
                                  "--dataset", fmt])
        assert args.dataset == fmt
    site = cached_dataset(DataSpec("dicom", str(dcm), image_size=12, with_test=False))
    assert site.x_train.shape == (2, 1, 12, 12) and site.x_test is None


def test_missing_reader_package_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pydicom" else real(name, *a))
    with pytest.raises(DataError, match=r"needs the pydicom package: .*'fedssl\[dicom\]'"):
        load_dicom(_folder(tmp_path / "d", {"a.dcm": CT}))
