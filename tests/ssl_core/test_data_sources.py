"""Data sources load the right shapes; bad input ends in a clear DataError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedssl.ssl_core.datasets import DataError, load_dataset, load_image_folder, load_npz


def test_mnist1d_and_digits_shapes() -> None:
    d = load_dataset("mnist1d", num_samples=200, seed=1)
    assert d.input_shape == (1, 40) and d.modality == "signal"
    assert len(d.x_train) == 160 and len(d.x_test) == 40
    digits = load_dataset("digits")
    assert digits.input_shape == (1, 8, 8) and digits.modality == "image"
    assert digits.num_classes == 10


def _medmnist(path: Path, train: np.ndarray, test: np.ndarray | None = None) -> Path:
    arrays = {"train_images": train, "train_labels": np.arange(len(train))[:, None] % 3}
    if test is not None:
        arrays |= {"test_images": test, "test_labels": np.zeros((len(test), 1), np.int64)}
    np.savez(path, **arrays)
    return path


def test_npz_medmnist_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (30, 28, 28), dtype=np.uint8)
    d = load_npz(_medmnist(tmp_path / "x.npz", imgs, imgs[:5]))
    assert d.input_shape == (1, 28, 28) and len(d.x_test) == 5
    rgb = rng.integers(0, 255, (30, 28, 28, 3), dtype=np.uint8)
    assert load_npz(_medmnist(tmp_path / "rgb.npz", rgb)).input_shape == (3, 28, 28)


def test_missing_data_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset("npz", str(tmp_path / "nope.npz"))
    with pytest.raises(DataError, match="needs a data path"):
        load_dataset("imagefolder")
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("cifar")


def test_wrong_array_shapes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"expected images of shape"):
        load_npz(_medmnist(tmp_path / "flat.npz", np.zeros((10, 784), np.float32)))
    path = tmp_path / "mismatch.npz"
    np.savez(path, train_images=np.zeros((10, 28, 28)), train_labels=np.zeros(7, np.int64))
    with pytest.raises(DataError, match="labels must be a vector of length 10"):
        load_npz(path)
    path = tmp_path / "sizes.npz"
    np.savez(path, train_images=np.zeros((10, 28, 28)), train_labels=np.zeros(10, np.int64),
             test_images=np.zeros((4, 32, 32)), test_labels=np.zeros(4, np.int64))
    with pytest.raises(DataError, match="train records have shape"):
        load_npz(path)


def test_nan_in_data(tmp_path: Path) -> None:
    imgs = np.ones((10, 8, 8), np.float32)
    imgs[3, 2, 2] = np.nan
    with pytest.raises(DataError, match=r"1 record\(s\) contain NaN or Inf"):
        load_npz(_medmnist(tmp_path / "nan.npz", imgs))


def test_corrupt_npz(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataError, match=r"bad\.npz is not a valid \.npz file"):
        load_npz(path)
    np.savez(tmp_path / "keys.npz", pixels=np.zeros((3, 8, 8)))
    with pytest.raises(DataError, match="no training images: expected an array named "
                                        "train_images or images; found"):
        load_npz(tmp_path / "keys.npz")


def test_image_folder(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(np.full((20, 30), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = load_image_folder(tmp_path, image_size=16)
    assert d.input_shape == (1, 16, 16) and d.num_classes == 2
    assert len(d.x_train) + len(d.x_test) == 10


def test_image_folder_empty_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is empty"):
        load_image_folder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="holds no PNG/JPEG"):
        load_image_folder(tmp_path)
    (tmp_path / "a" / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="corrupt image file"):
        load_image_folder(tmp_path)


def test_a_new_data_format_is_added_in_one_place(tmp_path) -> None:
    """Issue 23 (b): a toy format registered with ``register_format`` alone is a
    ``--dataset`` choice the run settings accept, inferred from a path it recognises, loaded
    by ``load_dataset`` (and so by the simulator, the server and ``fedssl evaluate``), and
    counted as a folder kind, so a folder mixing it with PNGs must be named."""
    import numpy as np
    import pytest

    from fedssl.run_spec import RunSpec
    from fedssl.ssl_core.data import (
        FORMATS,
        DataError,
        DataFormat,
        LoadRequest,
        SSLDataset,
        dataset_names,
        infer_dataset,
        load_dataset,
        register_format,
    )

    @register_format
    class SignalCsv(DataFormat):
        """One signal per line of a .csv file, one channel."""

        name = "toy-csv"
        file_kind = "CSV (.csv)"

        def is_file(self, path):
            return path.suffix == ".csv"

        def matches(self, path):
            return path.is_file() and self.is_file(path)

        def load(self, request: LoadRequest) -> SSLDataset:
            x = np.loadtxt(request.path(self.name), delimiter=",", dtype=np.float32)
            return SSLDataset("toy", x[:, None, :], None, None, None, 0)

    order = list(FORMATS)
    try:
        path = tmp_path / "signals.csv"
        np.savetxt(path, np.random.default_rng(0).normal(size=(12, 16)), delimiter=",")
        assert "toy-csv" in dataset_names()
        assert infer_dataset(path) == "toy-csv"
        RunSpec(dataset="toy-csv", data_path=str(path)).validate()
        data = load_dataset("auto", str(path), with_test=False)
        assert data.x_train.shape == (12, 1, 16) and data.modality == "signal"
        mixed = tmp_path / "mixed"
        mixed.mkdir()
        (mixed / "a.csv").write_text("1,2\n")
        (mixed / "b.png").write_bytes(b"")
        with pytest.raises(DataError, match="CSV"):
            infer_dataset(mixed)
    finally:
        FORMATS.pop("toy-csv", None)
    assert list(FORMATS) == [n for n in order if n != "toy-csv"]
