"""Per-layer rules of the fast DP-SGD engine, and their registry.

A rule computes exact per-record gradients of one module's own parameters from the
``(input, output gradient)`` pairs the engine
(:class:`fedssl.privacy.dp_sgd.fast_clipper.FastClipper`)
recorded for it: :meth:`LayerRule.prepare` returns the per-record squared gradient norms
``||g_i||^2`` of the tracked parameters, :meth:`LayerRule.clipped` the clipped sum
``sum_i c_i g_i`` (the math of each rule is in its docstring; the overview is in
:mod:`fedssl.privacy.dp_sgd.fast_clip`).

Rules are registered by exact module type, like Opacus's ``register_grad_sampler``::

    @register_rule(nn.Linear)
    class LinearRule(LayerRule):
        ...

The engine looks a module's type up in :data:`RULES` (exact type: a subclass may override
``forward``, so it is refused unless it has its own rule) and refuses, with
:class:`UnsupportedModelError`, a module with trainable parameters and no rule. This module
holds the rules for ``torch.nn``'s layers; :mod:`fedssl.privacy.dp_sgd.ws_rules` registers the
weight-standardised convolutions' rule (next to their Opacus grad sampler), and the engine
imports it, so :data:`RULES` is complete whenever a :class:`FastClipper` exists.

A new rule must be exact (``tests/privacy/test_fast_clip.py`` compares every rule's norms and
clipped sums with Opacus's per-sample gradients): an approximate rule breaks the sensitivity bound
``C`` that the DP guarantee rests on.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fedssl.privacy.dp_sgd.engine import DPSoundnessError


class UnsupportedModelError(DPSoundnessError):
    """The fast engine cannot compute exact per-record gradients for this model or call."""


#: a 2-D ghost norm takes the shifted-Gram path (no im2col) up to this many padded positions
#: per view (measured on a 2-core CPU with ``benchmarks/dp_sgd.py``'s 8x8 ResNet: 0.5 ms vs
#: 1.2 ms for a 64-channel 2x2 map, 0.63 vs 0.70 ms for a strided 4x4 one; the whole DP step
#: 2-4 % faster in interleaved A/B runs)
GRAM_2D_MAX_POSITIONS = 64


class LayerRule:
    """Per-record gradients of one module's own parameters, from its recorded calls.

    :meth:`prepare` gets the ``(input, output gradient)`` pairs of every call of the step and
    returns the per-record squared gradient norm of the tracked parameters, shape ``(N,)``;
    :meth:`clipped` then returns ``{id(param): sum_i c_i g_i}``.
    """

    #: parameter names this rule knows how to differentiate
    known: tuple[str, ...] = ("weight", "bias")

    def __init__(self, name: str, module: nn.Module, tracked: set[int]) -> None:
        self.name = name
        self.module = module
        own = dict(module.named_parameters(recurse=False))
        unknown = [p for p in own if p not in self.known and id(own[p]) in tracked]
        if unknown:
            raise UnsupportedModelError(
                f"layer {name!r} ({type(module).__name__}) has parameters {unknown} that the "
                "fast DP engine has no per-record gradient rule for; use dp_engine='hooks'")
        self.weight = own.get("weight") if id(own.get("weight")) in tracked else None
        self.bias = own.get("bias") if id(own.get("bias")) in tracked else None

    def check_input(self, x: torch.Tensor) -> None:
        """Raise for inputs this rule does not cover.

        Args:
            x: the input of one call of the module.

        Raises:
            UnsupportedModelError: e.g. an unbatched input.
        """

    def prepare(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
        """Per-record squared gradient norms of the tracked parameters over all calls of the
        step; keeps what :meth:`clipped` needs.

        Args:
            pairs: ``(input, output gradient)`` of every call of the step.
            n: the number of records ``N``.

        Returns:
            ``(N,)`` squared norms ``||g_i||^2``.
        """
        raise NotImplementedError

    def clipped(self, c: torch.Tensor) -> dict[int, torch.Tensor]:
        """The clipped sum ``sum_i c_i g_i`` of each tracked parameter, from what :meth:`prepare`
        kept (then released).

        Args:
            c: ``(N,)`` per-record clip factors.

        Returns:
            ``{id(param): clipped sum}``, each in the parameter's shape.
        """
        raise NotImplementedError


def _same_class(a: type, b: type) -> bool:
    """One class imported twice under two module names."""
    return a.__qualname__ == b.__qualname__ and (
        inspect.getsourcefile(a) == inspect.getsourcefile(b))


#: exact module type -> its per-record rule (filled by :func:`register_rule`)
RULES: dict[type[nn.Module], type[LayerRule]] = {}


def register_rule(*module_types: type[nn.Module]
                  ) -> Callable[[type[LayerRule]], type[LayerRule]]:
    """Class decorator: ``rule`` computes the per-record gradients of ``module_types``
    (exact types; a later registration of another rule for the same type replaces the
    earlier one; a second import of the same rule, e.g. by pytest's doctest collection under
    another module name, keeps the first).

    Args:
        *module_types: the module types the rule covers.

    Returns:
        The decorator, which registers the rule class and returns it unchanged.
    """

    def decorator(rule: type[LayerRule]) -> type[LayerRule]:
        for t in module_types:
            old = RULES.get(t)
            if old is None or not _same_class(old, rule):
                RULES[t] = rule
        return rule

    return decorator


def sq_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-record squared Frobenius norm of ``(N, ...)`` without a squared temporary.

    Args:
        t: ``(N, ...)`` per-record tensors.

    Returns:
        ``(N,)`` squared norms.
    """
    return torch.linalg.vector_norm(t.reshape(len(t), -1), dim=1).square()


@register_rule(nn.Linear)
class LinearRule(LayerRule):
    """``nn.Linear`` on ``(N, *, in)``: all middle positions (tokens) are rows of the record.

    Per-record weight gradient ``A_i^T G_i`` with ``A_i`` the inputs and ``G_i`` the output
    gradients of the record's tokens in all views (``T x in`` and ``T x out``): the ghost norm
    when ``T (in + out) < in out`` (e.g. the heads, ``T`` = number of views), else
    materialised; clipped sum by one GEMM ``A^T (c G)`` or a weighted sum.
    """

    def rows(self, x: torch.Tensor, gy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``A (N, T, in)`` and ``G (N, T, out)`` of one call.

        Args:
            x: the call's input ``(N, *, in)``.
            gy: its output gradient ``(N, *, out)``.

        Returns:
            ``A`` and ``G``.
        """
        n = x.shape[0]
        return x.reshape(n, -1, x.shape[-1]), gy.reshape(n, -1, gy.shape[-1])

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse an unbatched input (fewer than 2 dimensions)."""
        if x.dim() < 2:
            raise UnsupportedModelError(f"layer {self.name!r} called on an unbatched input")

    def prepare(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
        """Ghost norms when ``T (in + out) < in out``, else the materialised per-record
        gradients."""
        rows = [self.rows(x, gy) for x, gy in pairs]
        t = sum(a.shape[1] for a, _ in rows)
        k, o = rows[0][0].shape[2], rows[0][1].shape[2]
        sq = torch.zeros(n, dtype=rows[0][1].dtype, device=rows[0][1].device)
        self._ghost: tuple[torch.Tensor, torch.Tensor] | None = None
        self._per_record: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None
        if self.weight is not None:
            if t * (k + o) < k * o:  # ghost norm is cheaper than materialising (BK, Sec. 3)
                a = torch.cat([r[0] for r in rows], 1) if len(rows) > 1 else rows[0][0]
                g = torch.cat([r[1] for r in rows], 1) if len(rows) > 1 else rows[0][1]
                aa = torch.bmm(a, a.transpose(1, 2))
                gg = torch.bmm(g, g.transpose(1, 2))
                sq += (aa * gg).sum(dim=(1, 2))
                self._ghost = (a, g)
            else:
                per = torch.bmm(rows[0][1].transpose(1, 2), rows[0][0])  # (N, out, K)
                for a, g in rows[1:]:
                    per.baddbmm_(g.transpose(1, 2), a)
                sq += sq_norms(per)
                self._per_record = per
        if self.bias is not None:
            gb = rows[0][1].sum(1)
            for _, g in rows[1:]:
                gb += g.sum(1)
            sq += sq_norms(gb)
            self._bias = gb
        return sq

    def clipped(self, c: torch.Tensor) -> dict[int, torch.Tensor]:
        """One GEMM ``A^T (c G)`` after ghost norms, else the weighted sum of the materialised
        gradients."""
        out: dict[int, torch.Tensor] = {}
        if self.weight is not None:
            if self._ghost is not None:
                a, g = self._ghost
                gc = (g * c[:, None, None]).reshape(-1, g.shape[2])
                w = gc.t().mm(a.reshape(-1, a.shape[2]))
            else:
                assert self._per_record is not None
                w = torch.mv(self._per_record.reshape(len(c), -1).t(), c)
            out[id(self.weight)] = w.reshape(self.weight.shape)
        if self.bias is not None:
            assert self._bias is not None
            out[id(self.bias)] = torch.mv(self._bias.t(), c)
        self._ghost = self._per_record = self._bias = None
        return out


def _conv_weight_grad(layer: ConvRule, x: torch.Tensor, gy: torch.Tensor, groups: int,
                      weight_shape: tuple[int, ...]) -> torch.Tensor:
    """Weight gradient of the layer's convolution (oneDNN's backward-weight kernel)."""
    return torch.ops.aten.convolution_backward(
        gy, x, x.new_empty(weight_shape), None, list(layer.module.stride), list(layer.padding),
        list(layer.module.dilation), False, [0] * layer.dims, groups, [False, True, False])[1]


@register_rule(nn.Conv1d, nn.Conv2d)
class ConvRule(LayerRule):
    """``nn.Conv1d`` / ``nn.Conv2d`` (groups 1, zero padding, any stride / dilation).

    Per-record squared weight-gradient norms, whichever is cheaper by the layer's shape:

    * materialised: 1-D, ``k`` batched GEMMs ``G_i X_{i,j}^T`` over the kernel taps ``j``
      (shifted strided views of the padded input, no im2col copy); 2-D, the same per tap
      for small maps or many channels, else one grouped backward-weight convolution with
      the records as groups;
    * ghost: ``<A_i A_i^T, G_i G_i^T>`` over all positions of all views (used when there are
      few output positions); ``A_i A_i^T`` is the sum over taps of shifted blocks of the
      input Gram matrix ``X_i^T X_i`` (no im2col) for 1-D and for small 2-D maps, else
      from an unfold.

    Clipped sum: the weighted sum of the materialised gradients, or the ordinary
    backward-weight convolution with the output gradient scaled by ``c_i`` per record.
    """

    def __init__(self, name: str, module: nn.Module, tracked: set[int]) -> None:
        super().__init__(name, module, tracked)
        m = module
        assert isinstance(m, nn.Conv1d | nn.Conv2d)
        if m.groups != 1:
            raise UnsupportedModelError(f"conv {name!r} has groups={m.groups}; the fast DP "
                                        "engine supports groups=1 only")
        if m.padding_mode != "zeros":
            raise UnsupportedModelError(f"conv {name!r} has padding_mode={m.padding_mode!r}; "
                                        "the fast DP engine supports 'zeros' only")
        if isinstance(m.padding, str):
            if m.padding != "valid":
                raise UnsupportedModelError(f"conv {name!r} has padding={m.padding!r}; the "
                                            "fast DP engine supports integer padding only")
            self.padding: tuple[int, ...] = (0,) * len(m.kernel_size)
        else:
            self.padding = tuple(m.padding)
        self.dims = 1 if isinstance(m, nn.Conv1d) else 2
        self._gram_index: dict[tuple, torch.Tensor] = {}

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse an unbatched input (not ``(N, C, *spatial)``)."""
        if x.dim() != self.dims + 2:
            raise UnsupportedModelError(f"conv {self.name!r} called on an unbatched input")

    def prepare(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
        """Materialised or ghost norms, whichever the layer's shape makes cheaper."""
        m = self.module
        out, cin = m.out_channels, m.in_channels
        k = math.prod(m.kernel_size)
        t = sum(math.prod(gy.shape[2:]) for _, gy in pairs)  # positions over all views
        sq = pairs[0][1].new_zeros(n)
        self._pairs = pairs
        self._per_record: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None
        if self.weight is not None:
            same = len({tuple(x.shape) for x, _ in pairs}) == 1
            if self.dims == 1:
                lp = sum(x.shape[2] + 2 * self.padding[0] for x, _ in pairs)
                ghost = lp * lp * cin + t * t * (out + k)
            else:
                ghost = t * t * (cin * k + out) + 2 * t * cin * k
            if same and 2 * ghost < t * cin * k * out:
                sq += self._ghost_norms(pairs, n)
            else:
                self._per_record = self._materialise(pairs, n)
                for per in self._per_record:  # per tap: contiguous (N, F) reductions
                    sq += sq_norms(per)
        if self.bias is not None:
            gb = sum(gy.reshape(n, out, -1).sum(2) for _, gy in pairs)
            assert isinstance(gb, torch.Tensor)
            sq += sq_norms(gb)
            self._bias = gb
        return sq

    def _materialise(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], n: int
                     ) -> torch.Tensor:
        """Per-record weight gradients: ``(taps, N, out * C)`` from per-tap batched GEMMs, or
        ``(1, N, out * C * taps)`` from a grouped backward-weight convolution.

        Per-tap GEMMs read the taps as shifted strided views of the zero-padded input: for
        1-D directly; for 2-D with stride 1 on the row-flattened padded image, with the
        output gradient padded to the padded width (the extra columns are zero, so they add
        nothing); for strided 2-D each tap's positions are copied out. They are used for 2-D
        maps of fewer than 64 output positions or many channels (``out * C >= 4096``); the
        grouped convolution (records as groups) otherwise. Thresholds from interleaved A/B
        runs of a whole DP step on a 2-core CPU (``benchmarks/dp_sgd.py``'s ResNets: the
        grouped convolution on 4x4 maps made the 8x8 step 7 % slower, the strided taps made
        the 28x28 step 2-5 % faster than the grouped convolution).
        """
        m = self.module
        out, cin = m.out_channels, m.in_channels
        self._taps_first = True
        if self.dims == 1:
            k, (s,), (d,), (p,) = m.kernel_size[0], m.stride, m.dilation, self.padding
            per = pairs[0][1].new_empty(k, n, out, cin)
            for v, (x, gy) in enumerate(pairs):
                xp = F.pad(x, (p, p)) if p else x
                span = s * (gy.shape[2] - 1) + 1
                for j in range(k):
                    xj = xp[:, :, j * d: j * d + span: s].transpose(1, 2)  # (N, T, C) view
                    if v == 0:
                        torch.bmm(gy, xj, out=per[j])
                    else:
                        per[j].baddbmm_(gy, xj)
            return per.reshape(k, n, out * cin)
        if math.prod(pairs[0][1].shape[2:]) < 64 or out * cin >= 4096:
            (kh, kw), (sh, sw), (dh, dw), (ph, pw) = (m.kernel_size, m.stride, m.dilation,
                                                      self.padding)
            per = pairs[0][1].new_empty(kh * kw, n, out, cin)
            for v, (x, gy) in enumerate(pairs):
                ho, wo = gy.shape[2:]
                if (sh, sw) == (1, 1):  # taps are windows of the row-flattened padded image
                    wp = x.shape[3] + 2 * pw
                    xp = F.pad(x, (pw, pw, ph, ph)).reshape(n, cin, -1)
                    xp = F.pad(xp, (0, (kw - 1) * dw))
                    gw = F.pad(gy, (0, wp - wo)).reshape(n, out, ho * wp)
                else:  # strided: each tap's positions copied out (ho * wo per channel)
                    xp = F.pad(x, (pw, pw, ph, ph))
                    gw = gy.reshape(n, out, ho * wo)
                for i in range(kh):
                    for j in range(kw):
                        if (sh, sw) == (1, 1):
                            off = i * dh * wp + j * dw
                            xs = xp[:, :, off: off + ho * wp].transpose(1, 2)
                        else:
                            xs = xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh,
                                    j * dw: j * dw + sw * (wo - 1) + 1: sw]
                            xs = xs.reshape(n, cin, ho * wo).transpose(1, 2)
                        if v == 0:
                            torch.bmm(gw, xs, out=per[i * kw + j])
                        else:
                            per[i * kw + j].baddbmm_(gw, xs)
            return per.reshape(kh * kw, n, out * cin)
        self._taps_first = False
        shape = (n * out, cin, *m.kernel_size)
        grouped = None
        for x, gy in pairs:
            g = _conv_weight_grad(self, x.reshape(1, n * cin, *x.shape[2:]),
                                  gy.reshape(1, n * out, *gy.shape[2:]), n, shape)
            grouped = g if grouped is None else grouped.add_(g)
        assert grouped is not None
        return grouped.reshape(1, n, -1)

    def _ghost_norms(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], n: int
                     ) -> torch.Tensor:
        """``sum((A_i A_i^T) * (G_i G_i^T))`` over the positions of all views."""
        m = self.module
        v = len(pairs)
        g = torch.cat([gy.reshape(n, m.out_channels, -1) for _, gy in pairs], 2)
        t1 = g.shape[2] // v
        ggt = torch.bmm(g.transpose(1, 2), g)
        if self.dims == 1:
            k, (s,), (d,), (p,) = m.kernel_size[0], m.stride, m.dilation, self.padding
            xcat = torch.cat([F.pad(x, (p, p)) if p else x for x, _ in pairs], 2)
            lp = xcat.shape[2] // v
            gram = torch.bmm(xcat.transpose(1, 2), xcat).view(n, v, lp, v, lp)
            span = s * (t1 - 1) + 1
            aat = gram[:, :, 0:span:s, :, 0:span:s].clone()
            for j in range(1, k):
                o = j * d
                aat += gram[:, :, o:o + span:s, :, o:o + span:s]
            aat = aat.reshape(n, v * t1, v * t1)
        else:
            hp, wp = (pairs[0][0].shape[2 + i] + 2 * self.padding[i] for i in range(2))
            if hp * wp <= GRAM_2D_MAX_POSITIONS:
                aat = self._shifted_gram_2d(pairs, n, hp, wp, tuple(pairs[0][1].shape[2:]))
            else:
                a = torch.cat([F.unfold(x, m.kernel_size, dilation=m.dilation,
                                        padding=self.padding, stride=m.stride)
                               for x, _ in pairs], 2)
                aat = torch.bmm(a.transpose(1, 2), a)
        return (aat * ggt).sum(dim=(1, 2))

    def _shifted_gram_2d(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], n: int,
                         hp: int, wp: int, out_hw: tuple[int, ...]) -> torch.Tensor:
        """``A_i A_i^T`` of a 2-D convolution without im2col: the Gram matrix ``X_i^T X_i``
        of the zero-padded inputs of all views (positions x positions, summed over channels),
        then, for output positions ``t, t'``, the sum over kernel taps ``j`` of
        ``Gram[p(t) + j, p(t') + j]`` (one gather with a cached index, one sum).

        ATen's im2col loops over the records one at a time, which dominates on small
        feature maps; this path is used when a view has at most
        :data:`GRAM_2D_MAX_POSITIONS` padded positions.
        """
        m = self.module
        v, p = len(pairs), hp * wp
        ph, pw = self.padding
        xp = torch.cat([F.pad(x, (pw, pw, ph, ph)).reshape(n, m.in_channels, p)
                        for x, _ in pairs], 2)
        gram = torch.bmm(xp.transpose(1, 2), xp)  # (N, v p, v p)
        key = (hp, wp, out_hw, v, gram.device)
        idx = self._gram_index.get(key)
        if idx is None:
            (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
            ho, wo = out_hw
            base = torch.tensor([a * p + oy * sh * wp + ox * sw for a in range(v)
                                 for oy in range(ho) for ox in range(wo)])
            taps = torch.tensor([i * dh * wp + j * dw for i in range(kh) for j in range(kw)])
            rows = base[None, :] + taps[:, None]  # (taps, T): padded position of each tap
            idx = (rows[:, :, None] * (v * p) + rows[:, None, :]).reshape(-1).to(gram.device)
            self._gram_index[key] = idx
        t = v * math.prod(out_hw)
        return gram.reshape(n, -1)[:, idx].view(n, -1, t, t).sum(1)

    def clipped(self, c: torch.Tensor) -> dict[int, torch.Tensor]:
        """The weighted sum of the materialised gradients, or the backward-weight convolution of
        the output gradient scaled per record."""
        out: dict[int, torch.Tensor] = {}
        m = self.module
        if self.weight is not None:
            w_shape = tuple(self.weight.shape)
            if self._per_record is not None:
                w = torch.matmul(c, self._per_record)  # (taps, N, F) -> (taps, F)
                if self._taps_first:  # (taps, out, C) -> (out, C, taps)
                    w = w.reshape(-1, m.out_channels, m.in_channels).permute(1, 2, 0)
                out[id(self.weight)] = w.reshape(w_shape).contiguous()
            else:
                w = None
                for x, gy in self._pairs:
                    gc = gy * c.view(-1, *([1] * (gy.dim() - 1)))
                    g = _conv_weight_grad(self, x, gc, 1, w_shape)
                    w = g if w is None else w.add_(g)
                assert w is not None
                out[id(self.weight)] = w
        if self.bias is not None:
            assert self._bias is not None
            out[id(self.bias)] = torch.mv(self._bias.t(), c)
        self._pairs, self._per_record, self._bias = [], None, None
        return out


class NormRule(LayerRule):
    """GroupNorm / LayerNorm: ``y = xhat * w + b``; per-record sums over positions."""

    #: the positions' axis of :meth:`normalised` / :meth:`grads` (summed per record)
    pos_dim = 1

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """``xhat`` of one call as a 3-D ``(N, P, D)`` or ``(N, D, P)`` (see ``pos_dim``),
        with ``D`` the parameters' size, in the memory layout of the input (no copy).

        Args:
            x: the call's input.

        Returns:
            ``xhat``, 3-D.
        """
        raise NotImplementedError

    def grads(self, gy: torch.Tensor) -> torch.Tensor:
        """``gy`` in the layout of :meth:`normalised`.

        Args:
            gy: the call's output gradient.

        Returns:
            ``gy``, 3-D, laid out as :meth:`normalised`'s result.
        """
        raise NotImplementedError

    def prepare(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
        """Per-record ``sum over positions of xhat * gy`` (weight) and of ``gy`` (bias)."""
        gw: torch.Tensor | None = None
        gb: torch.Tensor | None = None
        for x, gy in pairs:
            g = self.grads(gy)
            if self.weight is not None:  # xhat is a fresh temporary: multiply in place
                t = self.normalised(x).mul_(g).sum(self.pos_dim)
                gw = t if gw is None else gw + t
            if self.bias is not None:
                t = g.sum(self.pos_dim)
                gb = t if gb is None else gb + t
        dtype, device = pairs[0][1].dtype, pairs[0][1].device
        sq = torch.zeros(n, dtype=dtype, device=device)
        for t in (gw, gb):
            if t is not None:
                sq += sq_norms(t)
        self._w, self._b = gw, gb
        return sq

    def clipped(self, c: torch.Tensor) -> dict[int, torch.Tensor]:
        """The per-record weight and bias gradients weighted by ``c``."""
        out: dict[int, torch.Tensor] = {}
        if self.weight is not None and self._w is not None:
            out[id(self.weight)] = torch.mv(self._w.t(), c).reshape(self.weight.shape)
        if self.bias is not None and self._b is not None:
            out[id(self.bias)] = torch.mv(self._b.t(), c).reshape(self.bias.shape)
        self._w = self._b = None
        return out


@register_rule(nn.GroupNorm)
class GroupNormRule(NormRule):
    """``nn.GroupNorm`` on ``(N, C, *)``: per channel, summed over positions."""

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse an unbatched input (fewer than 2 dimensions)."""
        if x.dim() < 2:
            raise UnsupportedModelError(f"GroupNorm {self.name!r} called on an unbatched input")

    pos_dim = 2

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """``xhat`` as ``(N, C, positions)``."""
        m = self.module
        return F.group_norm(x, m.num_groups, eps=m.eps).reshape(len(x), m.num_channels, -1)

    def grads(self, gy: torch.Tensor) -> torch.Tensor:
        """``gy`` as ``(N, C, positions)``."""
        return gy.reshape(len(gy), gy.shape[1], -1)


@register_rule(nn.LayerNorm)
class LayerNormRule(NormRule):
    """``nn.LayerNorm`` on ``(N, *, *normalized_shape)``."""

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse an input with no batch dimension before ``normalized_shape``."""
        if x.dim() <= len(self.module.normalized_shape):
            raise UnsupportedModelError(f"LayerNorm {self.name!r} called on an unbatched input")

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """``xhat`` as ``(N, positions, prod(normalized_shape))``."""
        m = self.module
        d = math.prod(m.normalized_shape)
        return F.layer_norm(x, m.normalized_shape, eps=m.eps).reshape(len(x), -1, d)

    def grads(self, gy: torch.Tensor) -> torch.Tensor:
        """``gy`` as ``(N, positions, prod(normalized_shape))``."""
        return gy.reshape(len(gy), -1, math.prod(self.module.normalized_shape))


@register_rule(nn.Embedding)
class EmbeddingRule(LayerRule):
    """``nn.Embedding`` (dense, no max_norm): per-record scatter-add of ``G_i`` into rows."""

    known = ("weight",)

    def __init__(self, name: str, module: nn.Module, tracked: set[int]) -> None:
        super().__init__(name, module, tracked)
        m = module
        assert isinstance(m, nn.Embedding)
        if m.sparse or m.max_norm is not None or m.scale_grad_by_freq:
            raise UnsupportedModelError(f"embedding {name!r}: sparse / max_norm / "
                                        "scale_grad_by_freq are not supported by the fast "
                                        "DP engine")

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse a 0-dimensional index input."""
        if x.dim() < 1:
            raise UnsupportedModelError(f"embedding {self.name!r} called on an unbatched input")

    def prepare(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
        """Per-record gradients scattered into the table's rows (none for ``padding_idx``)."""
        m = self.module
        per = torch.zeros(n, m.num_embeddings, m.embedding_dim, dtype=pairs[0][1].dtype,
                          device=pairs[0][1].device)
        for idx, gy in pairs:
            i = idx.reshape(n, -1)
            g = gy.reshape(n, -1, m.embedding_dim)
            if m.padding_idx is not None:  # PyTorch gives the padding row no gradient
                g = g * (i != m.padding_idx).unsqueeze(-1).to(g.dtype)
            per.scatter_add_(1, i.unsqueeze(-1).expand(-1, -1, m.embedding_dim), g)
        self._per = per
        return sq_norms(per) if self.weight is not None else per.new_zeros(n)

    def clipped(self, c: torch.Tensor) -> dict[int, torch.Tensor]:
        """The per-record table gradients weighted by ``c``."""
        out = {}
        if self.weight is not None:
            out[id(self.weight)] = torch.mv(self._per.reshape(len(c), -1).t(),
                                            c).reshape(self.weight.shape)
        self._per = None
        return out

