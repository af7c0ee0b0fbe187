"""The fast DP-SGD engine: per-record clipped gradient sums with one backward pass.

:class:`FastClipper` records the supported layers' calls of a forward pass, runs one backward
to the layers' outputs, and lets each layer's rule (:mod:`fedssl.privacy.dp_sgd.fast_clip_rules`,
looked up in its registry :data:`~fedssl.privacy.dp_sgd.fast_clip_rules.RULES`) turn the recorded
``(input, output gradient)`` pairs into per-record norms and clipped sums. It owns the checks
that make the result attributable to records (one call per view with the records as first
dimension, no in-place edits, every parameter used only by its own layer, no tied weights).
The overview, the soundness argument and the references are in
:mod:`fedssl.privacy.dp_sgd.fast_clip`;
the optimizer step around it is :class:`fedssl.privacy.dp_sgd.fast_clip.FastDPSGD`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

import fedssl.privacy.dp_sgd.ws_rules  # noqa: F401 (registers the WS convolutions' rule)
from fedssl.privacy.dp_sgd.engine import clip_factors
from fedssl.privacy.dp_sgd.fast_clip_rules import RULES, LayerRule, UnsupportedModelError


@dataclass
class _Call:
    """One recorded forward call of a supported layer."""

    layer: LayerRule
    x: torch.Tensor
    y: torch.Tensor
    x_version: int
    y_version: int


class FastClipper:
    """Per-record clipped gradient sums of ``params`` of ``model`` with one backward pass.

    Usage::

        with FastClipper(model) as clipper:
            with clipper.record():
                losses = objective.per_record_loss(model, views)   # (N,)
            sums, norms = clipper.clipped_sum(losses, max_grad_norm)

    Row ``i`` of every recorded layer call is record ``i`` (the objective calls the model
    once per view on the batch), so record ``i``'s gradient sums its rows over all calls, i.e.
    over all views: the same per-record quantity as Opacus's hooks mode.

    Raises:
        UnsupportedModelError: at construction for layers / parameters without an exact rule,
            and in :meth:`clipped_sum` for calls it cannot attribute to records exactly.
    """

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter] | None = None) -> None:
        if params is None:
            params = list(model.parameters())
        self.params = [p for p in params if p.requires_grad]
        tracked = {id(p) for p in self.params}
        if len(tracked) != len(self.params):
            raise UnsupportedModelError("a parameter is listed twice")
        owners: dict[int, dict[int, tuple[str, nn.Module]]] = {}
        for mname, m in model.named_modules(remove_duplicate=False):
            for p in m.parameters(recurse=False):
                if id(p) in tracked:
                    owners.setdefault(id(p), {})[id(m)] = (mname, m)
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self._layers: dict[int, LayerRule] = {}
        for p in self.params:
            own = owners.get(id(p), {})
            pname = names.get(id(p), "?")
            if not own:
                raise UnsupportedModelError(f"parameter {pname!r} is not in the model")
            if len(own) > 1:
                raise UnsupportedModelError(
                    f"parameter {pname!r} is shared by layers "
                    f"{sorted(n for n, _ in own.values())} (tied weights); per-layer "
                    "per-record norms would be wrong, so the fast DP engine refuses it")
            (mname, m), = own.values()
            if id(m) in self._layers:
                continue
            rule = RULES.get(type(m))
            if rule is None:
                raise UnsupportedModelError(
                    f"layer {mname!r} of type {type(m).__name__} holds trainable parameters "
                    "and the fast DP engine has no exact per-record rule for it (supported: "
                    f"{', '.join(t.__name__ for t in RULES)}); use dp_engine='hooks'")
            self._layers[id(m)] = rule(mname, m, tracked)
        self._calls: list[_Call] = []
        self._recording = False
        self._graph_checked = False
        self._handles = [layer.module.register_forward_hook(self._hook_for(layer))
                         for layer in self._layers.values()]

    # ---------------------------------------------------------------------- recording
    def _hook_for(self, layer: LayerRule):
        """A forward hook bound to ``layer`` (a plain closure: a deep copy of the model, e.g.
        BYOL's target network, keeps the function but is a different module, so ignored)."""

        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if not self._recording or module is not layer.module:
                return
            if not isinstance(output, torch.Tensor) or not args or not isinstance(
                    args[0], torch.Tensor):
                raise UnsupportedModelError(f"layer {layer.name!r}: expected tensor in/out")
            if not output.requires_grad:  # no_grad / inference: no gradient flows from here
                return
            x = args[0]
            layer.check_input(x)
            self._calls.append(_Call(layer, x, output, x._version, output._version))

        return hook

    @contextmanager
    def record(self) -> Iterator[FastClipper]:
        """Record the supported layers' calls of the forward pass run inside.

        Yields:
            This clipper, recording.
        """
        self._calls = []
        self._recording = True
        try:
            yield self
        finally:
            self._recording = False

    def close(self) -> None:
        """Remove the hooks (the model is left as it was)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._calls = []

    def __enter__(self) -> FastClipper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------- checks
    def _check_calls(self, n: int) -> None:
        for call in self._calls:
            name = call.layer.name
            if call.x.shape[0] != n or call.y.shape[0] != n:
                raise UnsupportedModelError(
                    f"layer {name!r} was called on a batch of {call.x.shape[0]} rows but the "
                    f"loss has {n} records; each call's first dimension must be the records "
                    "(call the model once per view, never on concatenated views)")
            if call.x._version != call.x_version or call.y._version != call.y_version:
                raise UnsupportedModelError(
                    f"the input or output of layer {name!r} was modified in place after the "
                    "call; the recorded activations would be wrong")

    def _check_graph(self, loss: torch.Tensor) -> None:
        """Every tracked parameter must enter the autograd graph exactly once per recorded
        call of its own layer that reaches the loss; anything else (``layer.weight`` used
        directly elsewhere, weight caching shared between calls) is refused."""
        reachable: set[object] = set()
        uses: dict[int, int] = {}
        stack = [loss.grad_fn]
        while stack:
            fn = stack.pop()
            if fn is None or fn in reachable:
                continue
            reachable.add(fn)
            for nxt, _ in fn.next_functions:
                if nxt is None:
                    continue
                var = getattr(nxt, "variable", None)
                if var is not None:
                    uses[id(var)] = uses.get(id(var), 0) + 1
                stack.append(nxt)
        expected: dict[int, int] = {}
        for call in self._calls:
            if call.y.grad_fn in reachable:
                for p in (call.layer.weight, call.layer.bias):
                    if p is not None:
                        expected[id(p)] = expected.get(id(p), 0) + 1
        names = {id(p): layer.name for layer in self._layers.values()
                 for p in (layer.weight, layer.bias) if p is not None}
        for p in self.params:
            if uses.get(id(p), 0) != expected.get(id(p), 0):
                raise UnsupportedModelError(
                    f"a parameter of layer {names.get(id(p), '?')!r} enters the autograd graph "
                    f"{uses.get(id(p), 0)} times but its layer's recorded calls account for "
                    f"{expected.get(id(p), 0)}: it is used outside the layer's forward, so the "
                    "fast DP engine cannot attribute its gradient to records")

    # ---------------------------------------------------------------------- clipping
    def clipped_sum(self, per_record_loss: torch.Tensor, max_grad_norm: float,
                    factors: Callable[[torch.Tensor], torch.Tensor] | None = None
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Sum over records of the per-record gradients clipped to ``max_grad_norm``.

        Args:
            per_record_loss: ``(N,)`` losses from the forward pass run under :meth:`record`.
            max_grad_norm: the clip norm ``C``.
            factors: the per-record clip factors from the ``(N,)`` norms (the engine's
                :meth:`~fedssl.privacy.dp_sgd.engine.PoissonEngine.constrain_sensitivity`);
                default :func:`~fedssl.privacy.dp_sgd.engine.clip_factors` at ``C``.

        Returns:
            One tensor per parameter (in ``self.params`` order), and the ``(N,)`` unclipped
            per-record gradient norms.

        Raises:
            UnsupportedModelError: the losses are not ``(N,)``, no supported call was recorded
                for a loss that needs gradients, or a recorded call breaks the per-record
                attribution.
        """
        if per_record_loss.dim() != 1:
            raise UnsupportedModelError(f"expected per-record losses of shape (N,), got "
                                        f"{tuple(per_record_loss.shape)}")
        n = per_record_loss.shape[0]
        calls, self._calls = self._calls, []
        zeros = [torch.zeros_like(p) for p in self.params]
        norms = per_record_loss.new_zeros(n)
        if n == 0 or not calls:
            if n and per_record_loss.requires_grad:
                raise UnsupportedModelError("the loss needs gradients but no supported layer "
                                            "call was recorded (forward outside record()?)")
            return zeros, norms
        self._calls = calls
        try:
            self._check_calls(n)
            if not self._graph_checked:
                self._check_graph(per_record_loss)
                self._graph_checked = True
        finally:
            self._calls = []
        grads = torch.autograd.grad(per_record_loss.sum(), [c.y for c in calls],
                                    allow_unused=True)
        by_layer: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for call, g in zip(calls, grads):
            if g is not None:
                by_layer.setdefault(id(call.layer), []).append((call.x.detach(), g))
        layers = [layer for layer in self._layers.values() if id(layer) in by_layer]
        with torch.no_grad():
            sq = per_record_loss.new_zeros(n)
            for layer in layers:
                sq += layer.prepare(by_layer[id(layer)], n)
            norms = sq.sqrt()
            factor = (factors(norms) if factors is not None
                      else clip_factors(norms, max_grad_norm))
            summed: dict[int, torch.Tensor] = {}
            for layer in layers:
                summed.update(layer.clipped(factor))
        return [summed.get(id(p), z) for p, z in zip(self.params, zeros)], norms


def unsupported_reason(model: nn.Module, params: Sequence[nn.Parameter] | None = None
                       ) -> str | None:
    """Why the fast engine refuses ``model`` statically (None when it accepts it).

    Args:
        model: the model to train.
        params: the parameters to train (default: the model's trainable ones).

    Returns:
        The refusal's message, or None.
    """
    try:
        FastClipper(model, params).close()
    except UnsupportedModelError as exc:
        return str(exc)
    return None
