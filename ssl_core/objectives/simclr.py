"""SimCLR: in-batch contrastive learning with the NT-Xent loss.

Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020.

For a batch of ``N`` records and two views each, every view's positive is the other view of the
same record and its negatives are the ``2N - 2`` views of the other records::

    l(i, j) = -log( exp(sim(z_i, z_j)/T) / sum_{k != i} exp(sim(z_i, z_k)/T) )

Every record appears in the denominator of every other record's loss, so the objective is NOT
per-record decomposable: removing one record changes all other records' gradients. Plain
per-record clipping gives no sensitivity bound, and fedssl refuses SimCLR under DP-SGD.

Example:
    >>> from fedssl.ssl_core.heads import SSLModel
    >>> model = SSLModel((1, 40), predictor=False)
    >>> views = [torch.randn(8, 1, 40), torch.randn(8, 1, 40)]
    >>> SimCLR().per_record_loss(model, views).shape
    torch.Size([8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedssl.ssl_core.objectives.base import Objective


class SimCLR(Objective):
    """NT-Xent loss over two views with in-batch negatives."""

    name = "simclr"
    num_views = 2
    decomposable = False
    needs_predictor = False

    def __init__(self, temperature: float = 0.2) -> None:
        self.temperature = temperature

    def per_record_loss(self, model: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        """NT-Xent over the batch's two views (each view's loss averaged per record); every
        record is in every other record's denominator, so it is not per-record decomposable."""
        z1, _ = model(views[0])
        z2, _ = model(views[1])
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]), dim=-1)
        sim = z @ z.T / self.temperature
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        per_view = F.cross_entropy(sim, target, reduction="none")
        return 0.5 * (per_view[:n] + per_view[n:])
