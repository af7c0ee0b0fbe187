"""SimSiam: self-distillation with a stop-gradient target and no negatives.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021.

For two views ``x1, x2`` of a record, with projections ``z = f(x)`` and predictions
``p = h(z)``::

    L = 1/2 * D(p1, sg(z2)) + 1/2 * D(p2, sg(z1)),    D(p, z) = -cos(p, z)

The target ``sg(z)`` is a stop-gradient of the record's *own* other view, so each record's loss
depends on that record alone: the objective is per-record decomposable and sound under DP-SGD
with per-record clipping over both views.

With ``K > 2`` views (augmentation multiplicity, ``TrainConfig.views``) the loss is the mean
over all ordered pairs ``i != j`` of ``D(p_i, sg(z_j))``, which is the loss above for ``K = 2``;
all ``K`` views are still the record's own, so it stays per-record decomposable.

Example:
    >>> from fedssl.ssl_core.heads import SSLModel
    >>> model = SSLModel((1, 40))
    >>> views = [torch.randn(8, 1, 40), torch.randn(8, 1, 40)]
    >>> SimSiam().per_record_loss(model, views).shape
    torch.Size([8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedssl.ssl_core.objectives.base import Objective


class SimSiam(Objective):
    """SimSiam negative-cosine loss with symmetric stop-gradient."""

    name = "simsiam"
    num_views = 2
    decomposable = True
    needs_predictor = True
    #: accepts any number K >= 2 of views per record
    multi_view = True

    def per_record_loss(self, model: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        """Negative mean cosine similarity over ordered pairs of the record's views between the
        prediction of one and the stop-gradient projection of the other (Chen & He 2021)."""
        if len(views) < 2:
            raise ValueError(f"SimSiam needs at least 2 views per record, got {len(views)}")
        out = [model(v) for v in views]
        z = [F.normalize(zi.detach(), dim=-1) for zi, _ in out]
        p = [F.normalize(pi, dim=-1) for _, pi in out]
        k = len(views)
        total = sum((p[i] * z[j]).sum(-1) for i in range(k) for j in range(k) if i != j)
        return -total / (k * (k - 1))
