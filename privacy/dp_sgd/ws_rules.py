"""Exact per-record gradients of weight-standardised convolutions in both DP engines.

A :class:`~fedssl.ssl_core.ws_layers.WSConv1d` / ``WSConv2d`` convolves with
``W_hat = standardize(W)`` while the trainable parameter is ``W``. Record ``i``'s gradient
w.r.t. ``W`` is ``J^T G_i``, where ``G_i`` is its gradient w.r.t. ``W_hat`` (the ordinary
per-record convolution weight gradient) and ``J^T`` the WS backward
(:func:`~fedssl.ssl_core.ws_layers.ws_backward`, closed form per output channel, one map for
all records because it depends on ``W`` only). So both engines compute ``G_i`` exactly as for
a plain convolution, then apply ``J^T`` record by record:

- Opacus hooks mode: :func:`compute_ws_conv_grad_sample`, registered with Opacus's
  ``register_grad_sampler`` (Opacus's own conv sampler dispatches on the exact type and would
  not unfold a subclass's input);
- the fast engine: :class:`WSConvRule`, registered with
  :func:`~fedssl.privacy.dp_sgd.fast_clip_rules.register_rule` (this module imports the rules, never
  the fast engine; the engine imports this module, so the rule is registered whenever a
  ``FastClipper`` exists). Ghost norms ``||G_i||`` do not carry over through ``J^T`` (it is
  not an isometry), so that rule always materialises ``G_i``, maps it, and takes norms and the
  clipped sum of the mapped gradients.

The clip norm therefore bounds the gradient w.r.t. the parameter actually updated, and the
per-record sensitivity argument of :mod:`fedssl.privacy.dp_sgd.opacus_engine` holds unchanged
(``tests/ssl_core/test_ws_layers.py`` checks both against autograd,
``tests/privacy/test_sensitivity.py`` and ``tests/privacy/test_fast_clip.py`` run the WS encoders
through both engines).

The Opacus engines (:mod:`fedssl.privacy.dp_sgd.opacus_engine`,
:mod:`fedssl.privacy.dp_sgd.group_clip`) import
this module before they build a model wrapper, so the registration is always in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample.utils import register_grad_sampler
from opacus.utils.tensor_utils import unfold2d
from torch import nn

from fedssl.privacy.dp_sgd.fast_clip_rules import ConvRule, register_rule, sq_norms
from fedssl.ssl_core.ws_layers import WS_EPS, WSConv1d, WSConv2d, ws_backward


def _conv_grad_hat(layer: nn.Conv1d | nn.Conv2d, x: torch.Tensor, gy: torch.Tensor
                   ) -> torch.Tensor:
    """Per-record gradient w.r.t. the kernel the layer convolved with: ``(N, *W.shape)``."""
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ValueError(f"WS convolution {type(layer).__name__} with groups={layer.groups}, "
                         f"padding={layer.padding!r}, padding_mode={layer.padding_mode!r} has "
                         "no per-record rule; use groups=1 and integer zero padding")
    n = x.shape[0]
    if isinstance(layer, nn.Conv1d):
        (p,) = layer.padding
        a = F.unfold(F.pad(x, (p, p)).unsqueeze(-2), kernel_size=(1, layer.kernel_size[0]),
                     stride=(1, layer.stride[0]), dilation=(1, layer.dilation[0]))
    else:
        a = unfold2d(x, kernel_size=layer.kernel_size, padding=layer.padding,
                     stride=layer.stride, dilation=layer.dilation)
    g = gy.reshape(n, layer.out_channels, -1)
    return torch.einsum("noq,npq->nop", g, a.to(g.dtype)).reshape(n, *layer.weight.shape)


@register_grad_sampler([WSConv1d, WSConv2d])
def compute_ws_conv_grad_sample(
    layer: nn.Conv1d | nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Opacus grad sampler: per-sample gradients of a WS conv's raw weight (and bias).

    Args:
        layer: the WS convolution.
        activations: its recorded inputs (the first is used).
        backprops: the output gradient.

    Returns:
        ``{param: (N, *param.shape)}`` per-sample gradients of the trainable weight and bias.
    """
    x = activations[0].to(backprops.dtype)
    ret: dict[nn.Parameter, torch.Tensor] = {}
    if x.shape[0] == 0:
        ret[layer.weight] = torch.zeros_like(layer.weight).unsqueeze(0)
        if layer.bias is not None and layer.bias.requires_grad:
            ret[layer.bias] = torch.zeros_like(layer.bias).unsqueeze(0)
        return ret
    if layer.weight.requires_grad:
        ret[layer.weight] = ws_backward(_conv_grad_hat(layer, x, backprops), layer.weight,
                                        WS_EPS)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.reshape(x.shape[0], layer.out_channels, -1).sum(2)
    return ret


@register_rule(WSConv1d, WSConv2d)
class WSConvRule(ConvRule):
    """Rule for weight-standardised convolutions (:mod:`fedssl.ssl_core.ws_layers`):
    materialised per-record kernel gradients, mapped through the WS backward
    (:func:`~fedssl.ssl_core.ws_layers.ws_backward`), then norms and clipped sum of the mapped
    gradients (ghost norms do not carry over through that map; the Opacus engine's rule is
    :func:`compute_ws_conv_grad_sample`)."""

    def prepare(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
        """Materialised per-record kernel gradients mapped through the WS backward, and their
        norms."""
        m = self.module
        out, cin = m.out_channels, m.in_channels
        sq = pairs[0][1].new_zeros(n)
        self._pairs = pairs
        self._per_record = None
        self._bias = None
        if self.weight is not None:
            per = self._materialise(pairs, n)
            if self._taps_first:  # (taps, N, out * C) -> (N, out, C, taps) = weight layout
                per = per.reshape(-1, n, out, cin).permute(1, 2, 3, 0)
            per = per.reshape(n, *self.weight.shape)
            raw = ws_backward(per, self.weight, WS_EPS).reshape(1, n, -1)
            self._taps_first = False
            self._per_record = raw
            sq += sq_norms(raw[0])
        if self.bias is not None:
            gb = sum(gy.reshape(n, out, -1).sum(2) for _, gy in pairs)
            assert isinstance(gb, torch.Tensor)
            sq += sq_norms(gb)
            self._bias = gb
        return sq
