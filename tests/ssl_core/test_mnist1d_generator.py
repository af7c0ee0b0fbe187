"""fedssl's MNIST-1D generator against the ``mnist1d`` package it replaces: the same bits."""

from __future__ import annotations

import numpy as np
import pytest
from mnist1d.data import get_dataset_args, make_dataset

from fedssl.ssl_core.data.generated import load_mnist1d, make_mnist1d


@pytest.mark.parametrize(("num_samples", "seed", "split"),
                         [(200, 0, 0.8), (1000, 3, 0.8), (505, 7, 1.0), (330, 42, 0.5)])
def test_same_records_as_the_package(num_samples: int, seed: int, split: float) -> None:
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, split
    want = make_dataset(args)
    got = make_mnist1d(num_samples, seed, split)
    for key in ("x", "y", "x_test", "y_test"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_leaves_the_global_generator_alone() -> None:
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    make_mnist1d(100, 0)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_load_mnist1d_splits_and_standardises() -> None:
    d = load_mnist1d(num_samples=500, seed=1, test_fraction=0.2)
    assert d.x_train.shape == (400, 1, 40) and d.x_test.shape == (100, 1, 40)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert abs(float(d.x_train.mean())) < 1e-5
    assert set(np.unique(d.y_train)) <= set(range(10))
