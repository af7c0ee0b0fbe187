"""Data sets generated on this machine (no data path): MNIST-1D and scikit-learn's digits.

- ``mnist1d``: the MNIST-1D benchmark (Greydanus 2020, "Scaling down deep learning"),
  generated locally for any number of samples: the ``mnist1d`` package's templates and
  random draws, its per-record transform applied to all records at once (same bits).
- ``digits``: scikit-learn's 8x8 handwritten digits.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from fedssl.ssl_core.data.base import DataError, SSLDataset, standardize
from fedssl.ssl_core.data.registry import DataFormat, LoadRequest, register_format


def make_mnist1d(num_samples: int, seed: int, train_split: float = 0.8) -> dict[str, np.ndarray]:
    """MNIST-1D exactly as ``mnist1d.data.make_dataset`` makes it, about 10x faster.

    What and why: the ``mnist1d`` package (Greydanus 2020) transforms one record at a time
    with a fresh ``scipy.interpolate.interp1d`` and ``gaussian_filter`` per call; a 160,000
    record pool (a 1,000-client simulation) took about a minute of a run's start-up. This
    draws the same random numbers in the same order from a ``RandomState`` of ``seed`` (so
    the global NumPy generator is left alone, where the package reseeds it) and applies the
    same floating-point operations to all records at once: ``np.interp`` is what ``interp1d``
    calls for 1-D float64 data, and ``gaussian_filter1d`` along the last axis is the
    package's 1-D ``gaussian_filter`` row by row. The output is bit-for-bit the package's
    (``tests/ssl_core/test_mnist1d_generator.py``), so every seed's data, and every result
    measured on it, is unchanged.

    Args:
        num_samples: records to make (rounded down to a multiple of the 10 classes).
        seed: the package's ``args.seed``.
        train_split: the share of the shuffled records in the training split.

    Returns:
        ``x``/``y`` (training records, float64 ``(n, 40)`` and their labels) and
        ``x_test``/``y_test``, standardised together as the package does.
    """
    from mnist1d.data import get_dataset_args, get_templates

    args = get_dataset_args()
    templates = get_templates()["x"]
    rng = np.random.RandomState(int(seed))
    per_class = int(num_samples) // len(templates)
    n = per_class * len(templates)
    length = args.template_len + args.padding[-1]  # the dilated signal's length
    grid = np.linspace(0, 1, length)
    low, high = args.padding
    dilated, corr, iid = (np.empty((n, length)) for _ in range(3))
    scale, shear = np.empty(n), np.empty(n)
    shift = np.empty(n, np.int64)
    grids: dict[int, np.ndarray] = {}
    i = 0
    for label in range(len(templates)):  # the package's order of random draws, record by record
        x = templates[label] + 1e-8
        for _ in range(per_class):
            pad = low + int(rng.rand() * (high - low + 1))
            size = len(x) + pad
            if size not in grids:
                grids[size] = np.linspace(0, 1, size)
            dilated[i] = np.interp(grid, grids[size], np.concatenate([x, np.zeros(pad)]))
            scale[i] = 1 + args.scale_coeff * (rng.rand() - 0.5)
            shift[i] = rng.choice(args.max_translation)
            corr[i] = args.corr_noise_scale * rng.randn(length)
            iid[i] = args.iid_noise_scale * rng.randn(length)
            shear[i] = args.shear_scale * (rng.rand() - 0.5)
            i += 1
    dilated *= scale[:, None]
    # translate: concatenate(x[-k:], x[:-k]) is a roll by k
    dilated = np.take_along_axis(
        dilated, (np.arange(length)[None, :] - shift[:, None]) % length, axis=1)
    mask = dilated != 0  # padding gets correlated noise, then every entry white noise
    dilated = mask * dilated + (1 - mask) * gaussian_filter1d(corr, 2, axis=-1)
    dilated = dilated + iid
    dilated = dilated - shear[:, None] * np.linspace(-0.5, 0.5, length)[None, :]
    final = np.linspace(0, 1, args.final_seq_length)
    xs = np.stack([np.interp(final, grid, row) for row in dilated])
    ys = np.repeat(np.arange(len(templates)), per_class)
    order = rng.permutation(n)
    xs, ys = xs[order], ys[order]
    xs = (xs - xs.mean()) / xs.std()
    split = int(n * train_split)
    return {"x": xs[:split], "y": ys[:split], "x_test": xs[split:], "y_test": ys[split:]}


def load_mnist1d(num_samples: int = 4000, seed: int = 0, test_fraction: float = 0.2) -> SSLDataset:
    """Generate MNIST-1D locally (40-sample signals, 10 classes; :func:`make_mnist1d`).

    Args:
        num_samples: records in both splits together.
        seed: the generator's seed.
        test_fraction: the share held out as the test split.

    Returns:
        The data set, standardised by the training split's statistics.

    Raises:
        DataError: ``num_samples`` is below 20.
    """
    if num_samples < 20:
        raise DataError(f"mnist1d: num_samples must be at least 20, got {num_samples}")
    data = make_mnist1d(int(num_samples), int(seed), 1.0 - float(test_fraction))
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
