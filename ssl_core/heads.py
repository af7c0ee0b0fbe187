"""Projection and prediction heads, and the SSL model that bundles them with an encoder.

The heads use LayerNorm rather than BatchNorm (see :mod:`fedssl.ssl_core.encoders` for why
BatchNorm is not allowed under DP-SGD). Which parts are shared with the server is decided by
:attr:`SSLModel.shared_prefixes`; by default the whole online network is averaged.
"""

from __future__ import annotations

import torch
from torch import nn

from fedssl.ssl_core.encoders import build_encoder


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Two-layer MLP head: Linear - LayerNorm - ReLU - Linear.

    Args:
        in_dim: input features.
        hidden: hidden units.
        out_dim: output features.

    Returns:
        The head.
    """
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
    )


#: widest projector hidden layer: ``2 * feature_dim`` up to this (every encoder of up to 128
#: features keeps ``2 * feature_dim``; the image ResNet's 2x2 readout, 256 features, gets
#: 256: on mnist5k hidden 128 and 512 gave the same probes, and DP-SGD noise grows with the
#: parameter count)
PROJ_HIDDEN_MAX = 256


class SSLModel(nn.Module):
    """Encoder + projector (+ predictor for the self-distillation methods)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        proj_dim: int = 64,
        predictor: bool = True,
        width: int | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.encoder = build_encoder(self.input_shape, width)
        feat = self.encoder.feature_dim
        self.projector = mlp(feat, min(2 * feat, PROJ_HIDDEN_MAX), proj_dim)
        self.predictor = mlp(proj_dim, 2 * proj_dim, proj_dim) if predictor else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projection ``z`` and prediction ``p`` (None without a predictor) of a batch.

        Args:
            x: ``(N, ...)`` records.

        Returns:
            ``(z, p)``.
        """
        z = self.projector(self.encoder(x))
        return z, (self.predictor(z) if self.predictor is not None else None)

