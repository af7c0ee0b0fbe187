"""The trained-parameter rules (fedssl.ssl_core.trainable): what each selects, the registry,
and that freezing is undone after the block."""

from __future__ import annotations

import pytest
from torch import nn

from fedssl.ssl_core.objectives import get_objective
from fedssl.ssl_core.trainable import (
    _RULES,
    TrainableRule,
    register_trainable,
    selected_parameters,
    trainable_names,
    trainable_subset,
)


@pytest.mark.parametrize("shape", [(1, 40), (1, 28, 28)], ids=["signal", "image"])
def test_norm_bias_selects_norm_layers_and_biases_only(shape) -> None:
    model = get_objective("infonce-public").build_model(shape)
    names = selected_parameters(model, "norm-bias")
    modules = dict(model.named_modules())
    for name, _ in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        is_norm = isinstance(modules[owner], (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d))
        assert (name in names) == (is_norm or leaf == "bias"), name
    assert any(n.startswith("encoder.") for n in names)
    assert selected_parameters(model, "all") == [n for n, _ in model.named_parameters()]


def test_subset_restores_requires_grad_even_on_error() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    net[0].weight.requires_grad_(False)  # frozen by the caller: stays frozen
    with pytest.raises(RuntimeError, match="boom"), trainable_subset(net, "norm-bias") as names:
        assert names == ["0.bias", "1.weight", "1.bias"]
        assert not net[0].weight.requires_grad
        raise RuntimeError("boom")
    assert [p.requires_grad for p in net.parameters()] == [False, True, True, True]


def test_unknown_rule_and_a_rule_selecting_nothing_are_refused() -> None:
    net = nn.Sequential(nn.Linear(3, 3, bias=False))
    with pytest.raises(ValueError, match="unknown trainable rule 'lora'"):
        selected_parameters(net, "lora")
    with pytest.raises(ValueError, match="selects no parameter"):
        selected_parameters(net, "norm-bias")


def test_a_registered_rule_is_listed_and_used() -> None:
    @register_trainable
    class FirstLayer(TrainableRule):
        name = "test-first-layer"

        def selects(self, model, module, param_name):
            return module is next(iter(model.children()))

    try:
        assert "test-first-layer" in trainable_names()
        assert trainable_names()[0] == "all"
        net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        with trainable_subset(net, "test-first-layer") as names:
            assert names == ["0.weight", "0.bias"]
            assert [p.requires_grad for p in net.parameters()] == [True, True, False, False]
        with pytest.raises(ValueError, match="already registered"):
            register_trainable(FirstLayer)
    finally:
        _RULES.pop("test-first-layer")


@pytest.mark.parametrize("shape", [(1, 40), (1, 28, 28)], ids=["signal", "image"])
def test_norm_bias_last_adds_the_encoders_last_block_to_norm_bias(shape) -> None:
    model = get_objective("infonce-public").build_model(shape)
    norm_bias = set(selected_parameters(model, "norm-bias"))
    in_block = {id(p) for p in model.encoder.last_block().parameters()}
    last = {f"encoder.{name}" for name, p in model.encoder.named_parameters()
            if id(p) in in_block}
    names = selected_parameters(model, "norm-bias-last")
    assert set(names) == norm_bias | last
    weights = [n for n in names if model.get_parameter(n).ndim >= 2]
    # only the last block's kernels: every earlier layer keeps the warm start's filters
    assert weights and all(n in last for n in weights)
    first = next(n for n, p in model.encoder.named_parameters() if p.ndim >= 2)
    assert f"encoder.{first}" not in names


def test_norm_bias_last_needs_an_encoder_that_names_its_last_block() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    with pytest.raises(ValueError, match="last_block"):
        selected_parameters(net, "norm-bias-last")
