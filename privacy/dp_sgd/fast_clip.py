"""Fast exact per-record clipping for DP-SGD: book-keeping / ghost norms, one backward pass.

What: per step, one forward per view (hooks record each supported layer's input) and ONE
backward of the summed per-record loss that computes only the gradients w.r.t. the layers'
*outputs* (no weight gradients). For a layer with per-record activations ``A_i`` (``T x K``;
an im2col/unfold of the input for a convolution) and output gradients ``G_i`` (``T x out``),
record ``i``'s weight gradient is ``A_i^T G_i``, where the ``T`` rows run over *all views* of
the record and all positions (tokens, spatial locations) of each view. From these:

1. per-record squared gradient norms, layer by layer, either by *materialising* ``A_i^T G_i``
   (one batched GEMM, ``T K out`` flops per record) or by the *ghost norm*
   ``||A_i^T G_i||_F^2 = sum((A_i A_i^T) * (G_i G_i^T))`` (``T^2 (K + out)`` flops), whichever
   is cheaper for the layer's shape;
2. clip factors ``c_i = min(1, C / (||g_i|| + 1e-6))`` (Opacus's exact formula);
3. the clipped sum per layer, ``sum_i c_i A_i^T G_i``: a weighted sum of the materialised
   per-record gradients, or one GEMM ``A^T (c * G)`` over the whole batch (no second backward).

GroupNorm/LayerNorm affine parameters and biases have closed-form per-record gradients (sums
over positions of ``grad * normalised input`` and of ``grad``); an Embedding is a Linear layer
on one-hot inputs (its per-record gradient is a scatter-add of ``G_i``).

Why: Opacus's hooks mode materialises a gradient row per record *per view call*, computes
the ordinary weight gradients as well, and then clips: 2-3x a non-DP step on fedssl's small
encoders (``benchmarks/dp_sgd.py``). Here the backward is the non-DP backward minus the weight
gradients, and the per-record work replaces the weight-gradient GEMMs.

Why not Opacus 1.6's own ghost clipping (``grad_sample_mode="ghost"``, Li et al. 2022):
measured by ``benchmarks/dp_sgd.py`` (row ``opacus-ghost``), it refuses every fedssl
encoder under a multi-view objective with ``NotImplementedError: Parameter tying is not
supported with Ghost Clipping``: its hooks treat a layer called twice in one step (the encoder
runs once per view) as tied parameters, so it cannot clip the sum over all views of a record
as one row, which is what makes the per-record sensitivity C (on all five settings: the 1-D
CNN at batch 64/256, the ResNet at 28x28 and 8x8). Even for a one-view objective it would
save little here: Opacus 1.6 has ghost norms only for ``nn.Linear`` and ``nn.Embedding``
(``register_norm_sampler``), so every convolution, most of fedssl's encoders' cost and the
weight-standardised ones (:mod:`fedssl.privacy.dp_sgd.ws_rules`) included, falls back to
materialised per-record gradients; and it takes a second backward pass for the clipped
gradient, which the book-keeping here avoids.

Soundness: the result is the same quantity Opacus clips (the gradient of record ``i``'s loss,
summed over all its views, clipped as one row), so the DP guarantee of
:mod:`fedssl.privacy.dp_sgd.opacus_engine` carries over unchanged
(``tests/privacy/test_fast_clip.py`` checks the clipped sums against Opacus,
``tests/privacy/test_sensitivity.py`` runs the sensitivity tests on both engines). The engine
refuses, with :class:`UnsupportedModelError`, anything it cannot account
for exactly: a trainable parameter owned by a layer type it has no rule for, tied parameters,
grouped/non-zero-padded convolutions, a layer called on a batch whose first dimension is not
the records, a layer input/output modified in place after the call, or a parameter that the
autograd graph uses other than once per recorded call of its own layer (e.g. ``layer.weight``
read directly elsewhere; checked on the first step). There is no silent fallback.

Parts: the per-layer rules and their registry (``@register_rule(nn.Linear)``, like Opacus's
``register_grad_sampler``) are in :mod:`fedssl.privacy.dp_sgd.fast_clip_rules` (the
weight-standardised
convolutions' rule in :mod:`fedssl.privacy.dp_sgd.ws_rules`), the engine :class:`FastClipper` in
:mod:`fedssl.privacy.dp_sgd.fast_clipper`, and the optimizer step :class:`FastDPSGD` here; this
module
re-exports the public names of all three.

References:
    Bu, Wang, Zha, Karypis, "Differentially Private Optimization on Large Model at Small Cost",
    ICML 2023 (book-keeping: per-layer choice of ghost norm vs materialised per-record
    gradient, clipped sum from the stored output gradients without a second backward).
    Li, Tramer, Liang, Hashimoto, "Large Language Models Can Be Strong Differentially Private
    Learners", ICLR 2022 (ghost clipping for sequences).
    Goodfellow, "Efficient Per-Example Gradient Computations", 2015 (the ``A^T G`` form).
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (DP-SGD).
"""


from __future__ import annotations

import torch
from torch import nn

from fedssl.privacy.dp_sgd.engine import PoissonEngine
from fedssl.privacy.dp_sgd.fast_clip_rules import (
    GRAM_2D_MAX_POSITIONS,
    RULES,
    LayerRule,
    UnsupportedModelError,
    register_rule,
)
from fedssl.privacy.dp_sgd.fast_clipper import FastClipper, unsupported_reason
from fedssl.ssl_core.objectives.base import Objective

__all__ = ["GRAM_2D_MAX_POSITIONS", "RULES", "FastClipper", "FastDPSGD", "LayerRule",
           "UnsupportedModelError", "register_rule", "unsupported_reason"]


class FastDPSGD(PoissonEngine):
    """DP-SGD with :class:`FastClipper`: same sampling, clipping, noise and scaling as
    :class:`fedssl.privacy.dp_sgd.opacus_engine.DPSGD` (Opacus), one backward per step.

    * Poisson sampling: the same Opacus ``DPDataLoader`` at rate ``batch_size / n``;
    * clipping: per record over all views, ``min(1, C / (||g_i|| + 1e-6))``;
    * noise: Opacus's ``_generate_noise`` with std ``sigma * C`` on each parameter's clipped
      sum, drawn from ``generator`` in the optimizer's parameter order (so with the same
      generator the draws equal those of ``DPOptimizer``);
    * scaling: divided by the expected batch size ``round(q n)``, then the wrapped optimizer's
      ``step()``.

    Accounting is unchanged (Poisson-subsampled Gaussian at rate ``sample_rate``).

    Step protocol::

        with dp.record():
            losses = objective.per_record_loss(dp.module, views)
        dp.step(losses)             # or dp.empty_step() for an empty Poisson batch
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: torch.Tensor,
        batch_size: int,
        noise_multiplier: float,
        max_grad_norm: float,
        objective: Objective,
        generator: torch.Generator | None = None,
        pin_memory: bool = False,
        noise_generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(data, batch_size, noise_multiplier, max_grad_norm, objective,
                         generator, pin_memory)
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.generator = noise_generator or generator
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]
                       if p.requires_grad]
        self.clipper = FastClipper(model, self.params)
        self.module = model

    def record(self):
        """Context manager around the forward pass of one step.

        Returns:
            The clipper's recording context (:meth:`FastClipper.record`).
        """
        return self.clipper.record()

    def step(self, per_record_loss: torch.Tensor) -> torch.Tensor:
        """Clip, sum, noise, scale and apply; returns the unclipped per-record norms.

        Args:
            per_record_loss: ``(N,)`` losses of the forward pass run under :meth:`record`.

        Returns:
            ``(N,)`` per-record gradient norms before clipping.
        """
        sums, norms = self.clipper.clipped_sum(per_record_loss, self.max_grad_norm,
                                               factors=self.constrain_sensitivity)
        self._apply(sums)
        return norms

    def empty_step(self) -> None:
        """A step on an empty Poisson batch: noise only (as Opacus does)."""
        self._apply([torch.zeros_like(p) for p in self.params])

    def _apply(self, sums: list[torch.Tensor]) -> None:
        for p, noisy in zip(self.params, self.add_noise(sums)):
            p.grad = noisy.view_as(p) / self.expected_batch_size
        self.optimizer.step()

    def __exit__(self, *exc: object) -> None:
        self.clipper.close()

