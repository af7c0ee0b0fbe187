"""BYOL: self-distillation towards an exponential-moving-average (EMA) target network.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020. Without batch statistics (GroupNorm/LayerNorm instead of BatchNorm): Richemond
et al., "BYOL works even without batch statistics", 2020.

For two views of a record, the online network's prediction of one view regresses the target
network's projection of the other::

    L = 2 - 2 cos(q(z1), sg(z2')) / 2 + 2 - 2 cos(q(z2), sg(z1')) / 2

with ``z'`` from the target network, whose parameters follow ``xi <- m xi + (1 - m) theta``
after every step. The target is a no-grad function of earlier (already privatised) online
parameters and of the record's own views, so record i's loss depends on record i alone:
per-record decomposable, sound under DP-SGD with per-record clipping over both views. The EMA
update is post-processing of DP outputs and costs no privacy. With ``K > 2`` views
(``TrainConfig.views``) the loss is ``2/(K(K-1)) * sum_{i != j} (1 - cos(q_i, sg(z'_j)))``,
the loss above for ``K = 2``.

Example:
    >>> from fedssl.ssl_core.heads import SSLModel
    >>> model = SSLModel((1, 40))
    >>> byol = BYOL()
    >>> byol.start_round(model)
    >>> views = [torch.randn(8, 1, 40), torch.randn(8, 1, 40)]
    >>> byol.per_record_loss(model, views).shape
    torch.Size([8])
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fedssl.ssl_core.objectives.base import Objective


class BYOL(Objective):
    """BYOL regression loss with an EMA target network."""

    name = "byol"
    num_views = 2
    decomposable = True
    needs_predictor = True
    #: accepts any number K >= 2 of views per record
    multi_view = True

    def __init__(self, momentum: float = 0.99) -> None:
        self.momentum = momentum
        self.target: nn.Module | None = None

    def start_round(self, model: nn.Module) -> None:
        """Initialise the target as a frozen copy of the (freshly received) online model."""
        self.target = copy.deepcopy(_unwrap(model)).requires_grad_(False)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        """EMA update of the target towards the online network."""
        online = _unwrap(model)
        if self.target is None:
            self.start_round(online)
            return
        for t, o in zip(self.target.parameters(), online.parameters()):
            t.mul_(self.momentum).add_(o.detach(), alpha=1 - self.momentum)

    def per_record_loss(self, model: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        """Mean over ordered pairs of the record's views of the normalised MSE between the online
        prediction of one view and the target projection of the other (Grill et al. 2020)."""
        if len(views) < 2:
            raise ValueError(f"BYOL needs at least 2 views per record, got {len(views)}")
        if self.target is None:
            self.start_round(model)
        p = [F.normalize(model(v)[1], dim=-1) for v in views]
        with torch.no_grad():
            self.target.train(model.training)
            t = [F.normalize(self.target(v)[0], dim=-1) for v in views]
        k = len(views)
        total = sum(1 - (p[i] * t[j]).sum(-1) for i in range(k) for j in range(k) if i != j)
        return 2 * total / (k * (k - 1))


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside an Opacus GradSampleModule (or the module itself)."""
    return getattr(model, "_module", model)
