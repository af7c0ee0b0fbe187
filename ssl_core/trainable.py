"""Which parameters local training updates: all of them, or a small subset (rules in a registry).

Why: DP-SGD adds Gaussian noise of the same std ``sigma C / B`` to every trained coordinate, so
the noise's norm grows as ``sqrt(d)`` with the trained parameters ``d`` while the clipped
signal stays at most ``C`` per record. Starting from a good public or synthetic warm start,
training only a small subset (the normalisation layers' gains and offsets and the biases)
divides the noise norm by ``sqrt(d / d_subset)`` and leaves each record's whole clip budget
to the parameters that move (BiTFiT: Bu et al. 2022, "Differentially Private Bias-Term only
Fine-tuning of Foundation Models"; Yu et al. 2022, "Differentially Private Fine-tuning of
Language Models", ICLR). The frozen parameters are the warm start's, fixed independently of
the private data, and are sent back unchanged: post-processing, so epsilon is unchanged and
the per-record sensitivity of the trained subset is still ``C`` (tests/privacy/
test_sensitivity.py measures it through both DP-SGD engines).

A new rule is one :class:`TrainableRule` subclass registered with :func:`register_trainable`;
the run setting ``trainable`` lists the registry.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    >>> with trainable_subset(net, "norm-bias") as names:
    ...     names
    ['0.bias', '1.weight', '1.bias']
    >>> all(p.requires_grad for p in net.parameters())  # restored on exit
    True
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import ClassVar, TypeVar

from torch import nn

#: normalisation layers whose affine gain and offset the ``norm-bias`` rule trains
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm)


class TrainableRule(ABC):
    """Selects the parameters that local training updates (see the module doc)."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""

    @abstractmethod
    def selects(self, model: nn.Module, module: nn.Module, param_name: str) -> bool:
        """Whether ``module``'s own parameter ``param_name`` is trained.

        Args:
            model: the whole model.
            module: the module that owns the parameter.
            param_name: the parameter's name within ``module`` (e.g. ``"bias"``).

        Returns:
            True to train it.
        """


_RULES: dict[str, type[TrainableRule]] = {}
R = TypeVar("R", bound=type[TrainableRule])


def register_trainable(cls: R) -> R:
    """Class decorator: add a rule to the registry under ``cls.name``.

    Args:
        cls: the rule class.

    Returns:
        ``cls``.

    Raises:
        ValueError: the name is empty or taken.
    """
    if not cls.name or cls.name in _RULES:
        raise ValueError(f"trainable rule name {cls.name!r} is empty or already registered")
    _RULES[cls.name] = cls
    return cls


def trainable_names() -> tuple[str, ...]:
    """The registered rules' names, ``"all"`` first."""
    return tuple(sorted(_RULES, key=lambda n: (n != "all", n)))


@register_trainable
class AllParameters(TrainableRule):
    """Every parameter (ordinary training)."""

    name = "all"
    help = "every parameter"

    def selects(self, model: nn.Module, module: nn.Module, param_name: str) -> bool:
        return True


@register_trainable
class NormAndBias(TrainableRule):
    """The normalisation layers' gains and offsets and every bias (BiTFiT, Bu et al. 2022,
    extended to the norm layers' gains, which carry the channel scales of a weight-
    standardised encoder)."""

    name = "norm-bias"
    help = "normalisation gains and offsets and biases only (BiTFiT)"

    def selects(self, model: nn.Module, module: nn.Module, param_name: str) -> bool:
        return isinstance(module, NORM_LAYERS) or param_name == "bias"


def _last_block(model: nn.Module) -> nn.Module:
    """The encoder's last block (``encoder.last_block()``: the layers that form the features a
    frozen probe reads); the encoder is ``model.encoder`` when the model has one (SSLModel),
    else the model itself."""
    encoder = getattr(model, "encoder", model)
    last_block = getattr(encoder, "last_block", None)
    if not callable(last_block):
        raise ValueError(f"trainable rule 'norm-bias-last' needs an encoder with a "
                         f"last_block() method; {type(encoder).__name__} has none")
    block = last_block()
    if not isinstance(block, nn.Module):
        raise ValueError(f"{type(encoder).__name__}.last_block() returned "
                         f"{type(block).__name__}, not a module")
    return block


@register_trainable
class NormBiasAndLastBlock(NormAndBias):
    """:class:`NormAndBias` plus every parameter of the encoder's last block, between
    ``norm-bias`` and ``all``: the layers that form the features get full capacity while the
    earlier ones keep the warm start's filters. The noise norm grows with the block's size
    (the MNIST-1D encoder's last convolution: 49,152 weights; the image ResNet's last
    stage: 57,344)."""

    name = "norm-bias-last"
    help = "norm-bias plus every parameter of the encoder's last block"

    def __init__(self) -> None:
        #: the model last asked about and the ids of its last block's modules (found once
        #: per model, not once per parameter)
        self._block: tuple[nn.Module, frozenset[int]] | None = None

    def selects(self, model: nn.Module, module: nn.Module, param_name: str) -> bool:
        if super().selects(model, module, param_name):
            return True
        if self._block is None or self._block[0] is not model:
            self._block = (model, frozenset(id(m) for m in _last_block(model).modules()))
        return id(module) in self._block[1]


def selected_parameters(model: nn.Module, rule: str) -> list[str]:
    """The names (``model.named_parameters()`` order) of the parameters rule ``rule`` trains.

    Args:
        model: the model.
        rule: a registered rule's name.

    Returns:
        The selected parameters' names.

    Raises:
        ValueError: an unknown rule, or one that selects no parameter of ``model``.
    """
    if rule not in _RULES:
        raise ValueError(f"unknown trainable rule {rule!r}; one of {', '.join(trainable_names())}")
    chosen = _RULES[rule]()
    names = [f"{prefix}.{pname}" if prefix else pname
             for prefix, module in model.named_modules()
             for pname, _ in module.named_parameters(recurse=False)
             if chosen.selects(model, module, pname)]
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    names = sorted((n for n in names if n in order), key=order.__getitem__)
    if not names:
        raise ValueError(f"trainable rule {rule!r} selects no parameter of this model")
    return names


@contextlib.contextmanager
def trainable_subset(model: nn.Module, rule: str) -> Iterator[list[str]]:
    """Freeze every parameter that ``rule`` does not select for the duration of the block,
    then restore each parameter's ``requires_grad`` as it was.

    Args:
        model: the model.
        rule: a registered rule's name.

    Yields:
        The trained parameters' names.

    Raises:
        ValueError: see :func:`selected_parameters`.
    """
    names = set(selected_parameters(model, rule))
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(before[name] and name in names)
        yield [n for n, p in model.named_parameters() if p.requires_grad]
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(before[name])
