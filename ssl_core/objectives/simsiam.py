"""SimSiam: self-distillation with a stop-gradient target and no negatives.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021.

For two views ``x1, x2`` of a record, with projections ``z = f(x)`` and predictions
``p = h(z)``::

    L = 1/2 * D(p1, sg(z2)) + 1/2 * D(p2, sg(z1)),    D(p, z) = -cos(p, z)

The target ``sg(z)`` is a stop-gradient of the record's *own* other view, so each record's loss
depends on that record alone: the objective is per-record decomposable and sound under DP-SGD
with per-record clipping over both views.

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

    def per_record_loss(self, model: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        z1, p1 = model(views[0])
        z2, p2 = model(views[1])
        d1 = F.cosine_similarity(p1, z2.detach(), dim=-1)
        d2 = F.cosine_similarity(p2, z1.detach(), dim=-1)
        return -0.5 * (d1 + d2)
