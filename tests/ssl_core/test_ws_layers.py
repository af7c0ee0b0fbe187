"""Weight Standardization: the layer, its closed-form backward, and both DP engines on it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedssl.privacy.dp_sgd.fast_clip import FastClipper, unsupported_reason
from fedssl.privacy.dp_sgd.opacus_engine import clipped_gradient_sum
from fedssl.ssl_core.encoders import ConvEncoder1d, ResNetEncoder2d
from fedssl.ssl_core.objectives import get_objective
from fedssl.ssl_core.ws_layers import WSConv1d, WSConv2d, standardize, ws_backward


def test_standardized_kernel_has_zero_mean_unit_variance_per_output_channel() -> None:
    w = torch.randn(6, 3, 5) * 3 + 2
    hat = standardize(w).reshape(6, -1)
    assert torch.allclose(hat.mean(1), torch.zeros(6), atol=1e-5)
    assert torch.allclose(hat.var(1, unbiased=False), torch.ones(6), atol=1e-3)


@pytest.mark.parametrize("shape", [(4, 3, 5), (4, 2, 3, 3)])
def test_ws_backward_equals_autograd(shape: tuple[int, ...]) -> None:
    w = torch.randn(*shape, requires_grad=True)
    g_hat = torch.randn(3, *shape)  # three "records"
    for i in range(3):
        (grad,) = torch.autograd.grad((standardize(w) * g_hat[i]).sum(), w)
        assert torch.allclose(ws_backward(g_hat, w)[i], grad, atol=1e-5)


def test_encoders_use_ws_convolutions_by_default_and_plain_ones_on_request() -> None:
    assert any(isinstance(m, WSConv1d) for m in ConvEncoder1d().modules())
    assert any(isinstance(m, WSConv2d) for m in ResNetEncoder2d(width=8).modules())
    assert not any(isinstance(m, WSConv1d | WSConv2d)
                   for m in ConvEncoder1d(ws=False).modules())


def _per_record_clipped_sum(model: nn.Module, objective, views, c: float) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    total = torch.zeros(sum(p.numel() for p in params))
    for i in range(len(views[0])):
        loss = objective.per_record_loss(model, [v[i:i + 1] for v in views]).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        g = torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                       for x, p in zip(grads, params)])
        total += g * min(1.0, c / (float(g.norm()) + 1e-6))
    return total


@pytest.mark.parametrize("engine", ["hooks", "fast"])
@pytest.mark.parametrize("shape", [(1, 24), (1, 8, 8)], ids=["signal", "image"])
def test_both_engines_clip_the_raw_weight_gradient_exactly(engine: str, shape) -> None:
    torch.manual_seed(0)
    objective = get_objective("simsiam")
    model = objective.build_model(shape, width=8)
    views = [torch.randn(5, *shape) for _ in range(2)]
    got = clipped_gradient_sum(model, objective, views, 0.5, engine)
    want = _per_record_clipped_sum(model, objective, views, 0.5)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def test_ghost_norm_of_the_standardised_gradient_would_be_wrong() -> None:
    """The WS backward is not an isometry: the rule must not reuse the plain conv's norms."""
    w = torch.randn(4, 3, 5)
    g_hat = torch.randn(2, 4, 3, 5)
    assert not torch.allclose(ws_backward(g_hat, w).norm(), g_hat.norm(), rtol=1e-2)


def test_fast_engine_accepts_ws_encoders_and_refuses_grouped_ws_convs() -> None:
    model = get_objective("simsiam").build_model((1, 24), width=8)
    assert unsupported_reason(model) is None
    grouped = nn.Sequential(WSConv1d(4, 4, 3, padding=1, groups=2))
    with pytest.raises(ValueError, match="groups"):
        FastClipper(grouped)
