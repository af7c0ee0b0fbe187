"""Evaluation: probes separate separable features; few-label subsets are what they claim."""

from __future__ import annotations

import numpy as np
import torch

from fedssl.ssl_core.evaluation import (
    evaluate_encoder,
    few_label_subset,
    knn_accuracy,
    linear_probe_accuracy,
)


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    centers = np.eye(4, 16) * 6
    return (centers[y] + rng.normal(size=(n, 16))).astype(np.float32), y


def test_probes_on_separable_and_random_features() -> None:
    f_tr, y_tr = _blobs(400, 0)
    f_te, y_te = _blobs(200, 1)
    assert linear_probe_accuracy(f_tr, y_tr, f_te, y_te) > 0.95
    assert knn_accuracy(f_tr, y_tr, f_te, y_te) > 0.95
    noise = np.random.default_rng(2).normal(size=f_te.shape).astype(np.float32)
    assert knn_accuracy(f_tr, y_tr, noise, y_te) < 0.5


def test_few_label_subset_sizes() -> None:
    y = np.repeat(np.arange(5), 20)
    idx = few_label_subset(y, 3, seed=0)
    assert len(idx) == 15 and all((y[idx] == c).sum() == 3 for c in range(5))


def test_evaluate_encoder_reports_few_label_metrics() -> None:
    f_tr, y_tr = _blobs(200, 0)
    f_te, y_te = _blobs(100, 1)
    out = evaluate_encoder(torch.nn.Identity(), f_tr, y_tr, f_te, y_te, labels_per_class=(1, 5))
    assert {"linear_probe_accuracy", "knn_accuracy", "linear_probe_1shot", "knn_5shot"} <= set(out)
