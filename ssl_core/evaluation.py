"""Representation quality of a frozen encoder on a labelled split: linear probe and kNN.

- Linear probe: multinomial logistic regression on standardised frozen features (the standard
  SSL protocol, e.g. Chen et al. 2020 SimCLR, Sec. 4).
- kNN: cosine-similarity k-nearest-neighbour vote (Wu et al. 2018, "Unsupervised Feature
  Learning via Non-Parametric Instance Discrimination"), weighted by exp(sim / 0.07).
- Few-label: both, trained on ``k`` labelled records per class (``labels_per_class``).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn


@torch.no_grad()
def extract_features(
    encoder: nn.Module, x: np.ndarray, batch_size: int = 512, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Frozen encoder features of ``x`` in eval mode, as float32 ``(N, D)``."""
    encoder.eval().to(device)
    out = [
        encoder(torch.as_tensor(x[i:i + batch_size], dtype=torch.float32, device=device)).cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out).numpy().astype(np.float32)


def linear_probe_accuracy(
    f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
    max_iter: int = 1000, c: float = 1.0,
) -> float:
    """Test accuracy of a logistic-regression probe trained on frozen features."""
    scaler = StandardScaler().fit(f_train)
    clf = LogisticRegression(max_iter=max_iter, C=c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(f_train), y_train)
    return float((clf.predict(scaler.transform(f_test)) == y_test).mean())


def knn_accuracy(
    f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
    k: int = 20, temperature: float = 0.07,
) -> float:
    """Weighted cosine kNN accuracy."""
    tr = f_train / (np.linalg.norm(f_train, axis=1, keepdims=True) + 1e-12)
    te = f_test / (np.linalg.norm(f_test, axis=1, keepdims=True) + 1e-12)
    k = min(k, len(tr))
    num_classes = int(max(y_train.max(), y_test.max()) + 1)
    correct = 0
    for i in range(0, len(te), 1024):
        sim = te[i:i + 1024] @ tr.T
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        w = np.exp(np.take_along_axis(sim, idx, axis=1) / temperature)
        votes = np.zeros((len(idx), num_classes))
        np.add.at(votes, (np.arange(len(idx))[:, None], y_train[idx]), w)
        correct += int((votes.argmax(1) == y_test[i:i + 1024]).sum())
    return correct / len(te)


def few_label_subset(y: np.ndarray, labels_per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``labels_per_class`` records of each class (fewer if a class is smaller)."""
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(y == c))[:labels_per_class] for c in np.unique(y)]
    return np.concatenate(idx)


def evaluate_encoder(
    encoder: nn.Module,
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    labels_per_class: tuple[int, ...] = (),
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Linear-probe and kNN accuracy with full labels (and with few labels per class)."""
    f_tr = extract_features(encoder, x_train, device=device)
    f_te = extract_features(encoder, x_test, device=device)
    out = {
        "linear_probe_accuracy": linear_probe_accuracy(f_tr, y_train, f_te, y_test),
        "knn_accuracy": knn_accuracy(f_tr, y_train, f_te, y_test),
    }
    for k in labels_per_class:
        sub = few_label_subset(y_train, k, seed)
        out[f"linear_probe_{k}shot"] = linear_probe_accuracy(f_tr[sub], y_train[sub], f_te, y_test)
        out[f"knn_{k}shot"] = knn_accuracy(
            f_tr[sub], y_train[sub], f_te, y_test, k=min(20, len(sub)))
    return out
