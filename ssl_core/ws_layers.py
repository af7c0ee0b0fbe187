"""Weight-Standardized convolutions, and the backward of the standardisation.

Weight Standardization (Qiao, Wang, Liu, Shen, Yuille, "Micro-Batch Training with Batch-Channel
Normalization and Weight Standardization", arXiv 1903.10520, 2019) reparametrises each output
channel's kernel as ``W_hat = (W - mean(W)) / sqrt(var(W) + eps)`` (mean and biased variance
over the channel's fan-in ``C_in * k``). Together with GroupNorm it replaces BatchNorm without
using batch statistics: Richemond et al., "BYOL works even without batch statistics", arXiv
2010.10241, 2020 (GN + WS: 73.9 % vs BN's 74.3 % on ImageNet; no normalisation: collapse). It
is per-record (the standardisation acts on the weights only), so DP-SGD stays sound.

DP engines. The trainable parameter is the raw ``W``; the convolution uses ``W_hat``. Record
``i``'s gradient w.r.t. ``W`` is the WS backward of its gradient ``G_i`` w.r.t. ``W_hat``,
which is linear in ``G_i`` and the same map for every record (it depends on ``W`` only), in
closed form per output channel (``s = sqrt(var + eps)``, means over the fan-in)::

    dL/dW = (G - mean(G) - W_hat * mean(G * W_hat)) / s

(:func:`ws_backward`). Ghost norms of ``G_i`` do not carry over through this map, so both DP
engines materialise ``G_i`` for these layers and apply the map (an Opacus grad sampler in
:mod:`fedssl.privacy.dp_sgd.ws_rules`, a rule in :mod:`fedssl.privacy.dp_sgd.fast_clip`).

The standardisation is computed with ``F.layer_norm`` over the flattened fan-in, which is
exactly the formula above and makes ``W`` enter the autograd graph once per call (the fast
engine checks that every parameter enters once per recorded call of its own layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: the standardisation's epsilon (inside the square root)
WS_EPS = 1e-5


def standardize(weight: torch.Tensor, eps: float = WS_EPS) -> torch.Tensor:
    """``(W - mean) / sqrt(var + eps)`` per output channel (dim 0) over the fan-in.

    Args:
        weight: the raw convolution weight.
        eps: added to the variance.

    Returns:
        The standardised weight.
    """
    flat = weight.reshape(weight.shape[0], -1)
    return F.layer_norm(flat, flat.shape[1:], eps=eps).reshape(weight.shape)


def ws_backward(grad_hat: torch.Tensor, weight: torch.Tensor, eps: float = WS_EPS
                ) -> torch.Tensor:
    """Gradients w.r.t. the raw weight from gradients w.r.t. the standardised weight.

    Args:
        grad_hat: ``(N, *weight.shape)`` per-record gradients w.r.t. ``W_hat`` (any leading
            batch dimension ``N``).
        weight: the raw weight ``W`` (``out, ...``).

    Returns:
        ``(N, *weight.shape)``: ``(G - mean(G) - W_hat * mean(G * W_hat)) / s`` per channel.
    """
    out = weight.shape[0]
    w = weight.detach().reshape(out, -1)
    s = (w.var(dim=1, unbiased=False, keepdim=True) + eps).sqrt()
    w_hat = (w - w.mean(dim=1, keepdim=True)) / s
    g = grad_hat.reshape(grad_hat.shape[0], out, -1)
    raw = (g - g.mean(dim=2, keepdim=True)
           - w_hat * (g * w_hat).mean(dim=2, keepdim=True)) / s
    return raw.reshape(grad_hat.shape)


class WSConv1d(nn.Conv1d):
    """``nn.Conv1d`` whose kernel is weight-standardised per output channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution with the standardised weight.

        Args:
            x: ``(N, C, L)`` input.

        Returns:
            The output.
        """
        return self._conv_forward(x, standardize(self.weight), self.bias)


class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose kernel is weight-standardised per output channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution with the standardised weight.

        Args:
            x: ``(N, C, H, W)`` input.

        Returns:
            The output.
        """
        return self._conv_forward(x, standardize(self.weight), self.bias)


WS_CONVS: tuple[type[nn.Module], ...] = (WSConv1d, WSConv2d)
