"""benchmarks/quality.py --validation: rows are evaluated on records held out of the training
pool, never on the test split, and no row trains on the held-out records."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import quality  # benchmarks/ is not a package

from fedssl.ssl_core.datasets import SSLDataset


def _data() -> SSLDataset:
    x = np.arange(50, dtype=np.float32).reshape(50, 1, 1)
    y = np.arange(50) % 3
    return SSLDataset("blobs", x, y, x[:5] + 100, y[:5], 3)


def test_the_held_out_records_replace_the_test_split_and_leave_the_pool() -> None:
    data = _data()
    split = quality.validation_split(data, 10)
    held, kept = split.x_test.ravel(), split.x_train.ravel()
    assert len(held) == 10 and len(kept) == 40
    assert set(held).isdisjoint(kept) and set(held) | set(kept) == set(range(50))
    assert np.array_equal(split.y_test, held.astype(int) % 3)
    assert np.array_equal(split.y_train, kept.astype(int) % 3)
    assert not set(held) & set(data.x_test.ravel())  # the test split is not used
    again = quality.validation_split(data, 10)  # the same records every run
    assert np.array_equal(again.x_test, split.x_test)
    assert "validation" in split.notes[-1]


def test_bad_validation_sizes_and_unlabelled_data_are_refused() -> None:
    with pytest.raises(ValueError, match="between 1 and the pool"):
        quality.validation_split(_data(), 50)
    unlabelled = SSLDataset("u", np.zeros((5, 1, 1), np.float32), None, None, None, 0)
    with pytest.raises(ValueError, match="needs labels"):
        quality.validation_split(unlabelled, 2)
