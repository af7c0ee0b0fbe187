"""Data sets generated on this machine (no data path): MNIST-1D and scikit-learn's digits.

- ``mnist1d``: the MNIST-1D benchmark (Greydanus 2020, "Scaling down deep learning"),
  generated locally with the ``mnist1d`` package for any number of samples.
- ``digits``: scikit-learn's 8x8 handwritten digits.
"""

from __future__ import annotations

import numpy as np

from fedssl.ssl_core.data.base import DataError, SSLDataset, standardize
from fedssl.ssl_core.data.registry import DataFormat, LoadRequest, register_format


def load_mnist1d(num_samples: int = 4000, seed: int = 0, test_fraction: float = 0.2) -> SSLDataset:
    """Generate MNIST-1D locally (40-sample signals, 10 classes).

    Args:
        num_samples: records in all (at least 20).
        seed: seeds the generator and the split.
        test_fraction: the share of records held out for evaluation.

    Returns:
        The data set, standardised.

    Raises:
        DataError: ``num_samples`` is below 20.
    """
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
    x_tr, x_te = standardize(x_tr, x_te)
    return SSLDataset(
        "mnist1d", x_tr, np.asarray(data["y"], np.int64), x_te,
        np.asarray(data["y_test"], np.int64), 10, source="generated (mnist1d package)",
    )


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> SSLDataset:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), split reproducibly.

    Args:
        seed: seeds the split.
        test_fraction: the share of records held out for evaluation.

    Returns:
        The data set, ``(1, 8, 8)`` records, standardised.
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    te, tr = order[:n_test], order[n_test:]
    x_tr, x_te = standardize(x[tr], x[te])
    return SSLDataset("digits", x_tr, y[tr], x_te, y[te], 10, source="scikit-learn")


@register_format
class MNIST1D(DataFormat):
    """MNIST-1D, generated for ``num_samples`` records from the run's seed."""

    name = "mnist1d"
    generated = True

    def load(self, request: LoadRequest) -> SSLDataset:
        return load_mnist1d(num_samples=request.num_samples, seed=request.seed)


@register_format
class Digits(DataFormat):
    """scikit-learn's 8x8 digits, split by the run's seed."""

    name = "digits"
    generated = True

    def load(self, request: LoadRequest) -> SSLDataset:
        return load_digits(seed=request.seed)
