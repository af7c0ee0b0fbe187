"""Representation quality of a frozen encoder on a labelled split: linear probe and kNN.

- Linear probe: multinomial logistic regression on standardised frozen features (the standard
  SSL protocol, e.g. Chen et al. 2020 SimCLR, Sec. 4).
- kNN: cosine-similarity k-nearest-neighbour vote (Wu et al. 2018, "Unsupervised Feature
  Learning via Non-Parametric Instance Discrimination"), weighted by exp(sim / 0.07).
- Few-label: both, trained on ``k`` labelled records per class (``labels_per_class``).
- Multi-label data (labels ``(N, K)`` of 0/1 flags, e.g. ChestMNIST's 14 findings): one
  binary probe per label, as in the MedMNIST benchmark (Yang et al. 2023, "MedMNIST v2",
  which reports mean AUC and accuracy for ChestMNIST). ``linear_probe_accuracy`` and
  ``knn_accuracy`` are then the mean per-label accuracy at threshold 0.5, and
  ``linear_probe_auc`` / ``knn_auc`` the mean ROC AUC over the labels whose test split holds
  both values. Few-label probes are skipped for multi-label data: "k labels per class" has no
  meaning when a record carries several labels (:data:`FEW_LABEL_SKIPPED` says why).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from torch import nn

#: why ``evaluate_encoder`` reports no few-label metrics for multi-label data
FEW_LABEL_SKIPPED = ("few-label probes skipped: 'k labels per class' is undefined for "
                     "multi-label records (each record carries several labels)")


@torch.no_grad()
def extract_features(
    encoder: nn.Module, x: np.ndarray, batch_size: int = 512, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Frozen encoder features of ``x`` in eval mode, as float32 ``(N, D)``.

    ``x`` may be a read-only memory map (the run's shared data cache): each batch is copied
    into a writable float32 array first, since torch cannot share a read-only buffer (it
    warns, and a tensor over it would allow writes numpy forbids).

    Args:
        encoder: the frozen encoder.
        x: ``(N, ...)`` records.
        batch_size: records per forward call.
        device: where the encoder runs.

    Returns:
        The features.
    """
    encoder.eval().to(device)
    out = [
        encoder(torch.as_tensor(np.require(x[i:i + batch_size], np.float32, "W"),
                                device=device)).cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out).numpy().astype(np.float32)


def linear_probe_accuracy(
    f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
    max_iter: int = 1000, c: float = 1.0,
) -> float:
    """Test accuracy of a logistic-regression probe trained on frozen features.

    Args:
        f_train: training features.
        y_train: training labels.
        f_test: test features.
        y_test: test labels.
        max_iter: the solver's iteration limit.
        c: inverse regularisation strength.

    Returns:
        The accuracy, in [0, 1].
    """
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
    """Weighted cosine kNN accuracy.

    Args:
        f_train: training features.
        y_train: training labels.
        f_test: test features.
        y_test: test labels.
        k: neighbours.
        temperature: scales the similarity weights ``exp(s / T)``.

    Returns:
        The accuracy, in [0, 1].
    """
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


def _mean_auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Mean ROC AUC over the columns whose truth holds both values (None if none does)."""
    aucs = [roc_auc_score(y[:, j], scores[:, j]) for j in range(y.shape[1])
            if 0 < y[:, j].sum() < len(y)]
    return float(np.mean(aucs)) if aucs else None


def multilabel_linear_probe(
    f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
    max_iter: int = 1000, c: float = 1.0,
) -> dict[str, float]:
    """One logistic-regression probe per label of ``(N, K)`` 0/1 labels: mean per-label
    accuracy (``accuracy``) and mean ROC AUC (``auc``, if defined). A label constant in the
    training split is predicted as that constant.

    Args:
        f_train: training features.
        y_train: ``(N, K)`` training labels.
        f_test: test features.
        y_test: ``(M, K)`` test labels.
        max_iter: the solver's iteration limit.
        c: inverse regularisation strength.

    Returns:
        ``{"accuracy": ..., "auc": ...}`` (``auc`` left out when no label has both values in
        the test split).
    """
    scaler = StandardScaler().fit(f_train)
    tr, te = scaler.transform(f_train), scaler.transform(f_test)
    scores = np.empty(y_test.shape, np.float64)
    for j in range(y_train.shape[1]):
        if y_train[:, j].min() == y_train[:, j].max():
            scores[:, j] = float(y_train[0, j])
            continue
        clf = LogisticRegression(max_iter=max_iter, C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(tr, y_train[:, j])
        scores[:, j] = clf.predict_proba(te)[:, 1]
    out = {"accuracy": float(((scores >= 0.5) == (y_test == 1)).mean())}
    if (auc := _mean_auc(y_test, scores)) is not None:
        out["auc"] = auc
    return out


def multilabel_knn(
    f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
    k: int = 20, temperature: float = 0.07,
) -> dict[str, float]:
    """Weighted cosine kNN per label: a label's score is the neighbours' weighted share of
    positives; mean per-label accuracy at 0.5 (``accuracy``) and mean AUC (``auc``).

    Args:
        f_train: training features.
        y_train: ``(N, K)`` training labels.
        f_test: test features.
        y_test: ``(M, K)`` test labels.
        k: neighbours.
        temperature: scales the similarity weights.

    Returns:
        ``{"accuracy": ..., "auc": ...}`` (``auc`` left out when undefined).
    """
    tr = f_train / (np.linalg.norm(f_train, axis=1, keepdims=True) + 1e-12)
    te = f_test / (np.linalg.norm(f_test, axis=1, keepdims=True) + 1e-12)
    k = min(k, len(tr))
    scores = np.empty(y_test.shape, np.float64)
    flags = y_train.astype(np.float64)
    for i in range(0, len(te), 1024):
        sim = te[i:i + 1024] @ tr.T
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sim, idx, axis=1)
        w = np.exp((s - s.max(axis=1, keepdims=True)) / temperature)  # stable; ratio only
        scores[i:i + 1024] = np.einsum("nk,nkj->nj", w, flags[idx]) / w.sum(1, keepdims=True)
    out = {"accuracy": float(((scores >= 0.5) == (y_test == 1)).mean())}
    if (auc := _mean_auc(y_test, scores)) is not None:
        out["auc"] = auc
    return out


def few_label_subset(y: np.ndarray, labels_per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``labels_per_class`` records of each class (fewer if a class is smaller).

    Args:
        y: ``(N,)`` class labels.
        labels_per_class: records kept per class.
        seed: makes the choice reproducible.

    Returns:
        The chosen indices.
    """
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
    """Linear-probe and kNN accuracy with full labels (and with few labels per class).

    Multi-label ``(N, K)`` labels get per-label binary probes (see the module doc) and no
    few-label metrics.

    Args:
        encoder: the frozen encoder.
        x_train: training records.
        y_train: their labels.
        x_test: test records.
        y_test: their labels.
        labels_per_class: the few-label settings to add (e.g. ``(1, 10)``).
        device: where the encoder runs.
        seed: makes the few-label subsets reproducible.

    Returns:
        Metric name -> value: ``linear_probe_accuracy``, ``knn_accuracy``, for each ``k`` of
        ``labels_per_class`` ``linear_probe_{k}shot`` and ``knn_{k}shot``; multi-label data:
        the two accuracies and ``linear_probe_auc``, ``knn_auc`` where defined.

    Raises:
        ValueError: without labels (the caller checks earlier with a clearer message).
    """
    if y_train is None or y_test is None:
        raise ValueError("the linear probe and kNN need labelled evaluation data")
    f_tr = extract_features(encoder, x_train, device=device)
    f_te = extract_features(encoder, x_test, device=device)
    return evaluate_features(f_tr, y_train, f_te, y_test, labels_per_class, seed)


def evaluate_features(
    f_tr: np.ndarray, y_train: np.ndarray, f_te: np.ndarray, y_test: np.ndarray,
    labels_per_class: tuple[int, ...] = (), seed: int = 0, full: bool = True,
) -> dict[str, float]:
    """:func:`evaluate_encoder` on features already extracted (the server extracts them once
    per encoder and reuses them for the round's probes, the final few-label probes and the
    collapse metrics).

    Args:
        f_tr: the probe's training features.
        y_train: their labels.
        f_te: the test features.
        y_test: their labels.
        labels_per_class: the few-label settings to add.
        seed: makes the few-label subsets reproducible.
        full: include the full-label linear probe and kNN (False: few-label metrics only).

    Returns:
        As :func:`evaluate_encoder`.
    """
    if y_train.ndim == 2:
        if not full:
            return {}
        lin = multilabel_linear_probe(f_tr, y_train, f_te, y_test)
        knn = multilabel_knn(f_tr, y_train, f_te, y_test)
        multi = {"linear_probe_accuracy": lin["accuracy"], "knn_accuracy": knn["accuracy"]}
        multi |= {f"{name}_auc": r["auc"] for name, r in (("linear_probe", lin), ("knn", knn))
                  if "auc" in r}
        return multi
    out = {
        "linear_probe_accuracy": linear_probe_accuracy(f_tr, y_train, f_te, y_test),
        "knn_accuracy": knn_accuracy(f_tr, y_train, f_te, y_test),
    } if full else {}
    for k in labels_per_class:
        sub = few_label_subset(y_train, k, seed)
        out[f"linear_probe_{k}shot"] = linear_probe_accuracy(f_tr[sub], y_train[sub], f_te, y_test)
        out[f"knn_{k}shot"] = knn_accuracy(
            f_tr[sub], y_train[sub], f_te, y_test, k=min(20, len(sub)))
    return out
