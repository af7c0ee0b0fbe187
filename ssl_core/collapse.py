"""Collapse metrics of an encoder's features: is self-distillation learning or collapsing?

- ``feature_std``: the mean over dimensions of the per-dimension standard deviation of the
  L2-normalised features (SimSiam, Chen & He, CVPR 2021, Sec. 4.1 / Fig. 2). Complete
  collapse (every record mapped to one vector) gives 0; features spread uniformly on the
  unit sphere give ``1/sqrt(d)``. ``feature_std_ratio = feature_std * sqrt(d)`` puts it on a
  0..~1 scale independent of ``d``.
- ``effective_rank``: Roy & Vetterli, "The effective rank: a measure of effective
  dimensionality", EUSIPCO 2007: ``exp(H(p))`` with ``p`` the singular values of the centred
  feature matrix normalised to sum 1 (1 for a rank-one collapse, up to ``d``).
"""

from __future__ import annotations

import numpy as np


def collapse_metrics(features: np.ndarray) -> dict[str, float]:
    """``feature_std``, ``feature_std_ratio`` and ``effective_rank`` of ``(N, d)`` features.

    Args:
        features: ``(N, d)`` features.

    Returns:
        Metric name -> value.

    Raises:
        ValueError: for fewer than 2 records or a non-2-D array.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"collapse metrics need (N >= 2, d) features, got shape {f.shape}")
    d = f.shape[1]
    z = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)
    std = float(z.std(axis=0).mean())
    s = np.linalg.svd(f - f.mean(axis=0), compute_uv=False)
    total = s.sum()
    if total <= 1e-12:
        erank = 1.0
    else:
        p = s / total
        p = p[p > 0]
        erank = float(np.exp(-(p * np.log(p)).sum()))
    return {"feature_std": std, "feature_std_ratio": std * float(np.sqrt(d)),
            "effective_rank": erank}
