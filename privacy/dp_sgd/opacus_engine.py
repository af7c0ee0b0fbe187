"""DP-SGD for SSL objectives on Opacus: per-record clipping over all views of a record.

Mechanism (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016): each step draws a
Poisson sample of the local records (rate ``q``), computes one gradient per *record*, clips it
to norm ``C`` (``max_grad_norm``), sums, and adds ``N(0, sigma^2 C^2 I)``.

Guarantee: (epsilon, delta)-DP at the record level for the client's local data set, with
epsilon from composing the Poisson-subsampled Gaussian mechanism over all steps (see
:mod:`fedssl.privacy.accounting.budget`), *provided* that removing one record changes the clipped
sum
by at most ``C``. That holds when the objective is per-record decomposable and every view of a
record lands in that record's gradient row. Opacus's hooks mode sums per-sample gradients over
the several forward calls of one module by batch position, so calling the model once per view
(``model(v1); model(v2); loss.backward()``) gives one row per record covering all its views.
Objectives that are not decomposable (in-batch contrastive) are refused with
:class:`DPSoundnessError`.

Opacus: Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch", 2021.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

# the shared checks and sampling live in dp_engine (imported by every engine); their names stay
# importable from here
from fedssl.privacy.dp_sgd.engine import (
    DPSetup,
    DPSoundnessError,
    PoissonEngine,
    clip_sensitivity,
    poisson_loader,
    require_clip_unit,
    require_dp_sound,
)
from fedssl.ssl_core.objectives.base import Objective

__all__ = ["DPSGD", "DPSetup", "DPSoundnessError", "PoissonEngine", "clip_sensitivity",
           "clipped_gradient_sum", "poisson_loader", "require_clip_unit", "require_dp_sound"]


class DPSGD(PoissonEngine):
    """Wrap a model, optimizer and local data for one round of DP-SGD on Opacus.

    Use as a context manager: the Opacus hooks are removed on exit, leaving the original
    module (whose parameters were trained in place) clean for aggregation.
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
        """``generator`` draws the Poisson samples (CPU) and, unless ``noise_generator`` is
        given (needed on CUDA), the noise."""
        super().__init__(data, batch_size, noise_multiplier, max_grad_norm, objective,
                         generator, pin_memory)
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        import fedssl.privacy.dp_sgd.ws_rules  # noqa: F401 (registers the WS conv grad samplers)

        self.module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        self.optimizer = DPOptimizer(
            optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=self.expected_batch_size, loss_reduction="mean",
            generator=noise_generator or generator,
        )

    def __exit__(self, *exc: object) -> None:
        self.module._close()


def clipped_gradient_sum(
    model: nn.Module, objective: Objective, views: list[torch.Tensor], max_grad_norm: float,
    engine: str = "hooks",
) -> torch.Tensor:
    """Noise-free sum of per-record clipped gradients, flattened, via a DP-SGD engine.

    This is exactly the quantity the Gaussian mechanism perturbs; the sensitivity tests compare
    it for neighbouring batches (one record removed, the other records' views unchanged).
    ``engine`` is ``"hooks"`` (Opacus, :class:`DPSGD`) or ``"fast"``
    (:class:`fedssl.privacy.dp_sgd.fast_clip.FastDPSGD`); both flatten the trainable parameters in
    ``model.parameters()`` order. Group-clipped objectives are refused (their sum is
    :func:`fedssl.privacy.dp_sgd.group_clip.group_clipped_gradient_sum`).

    Args:
        model: the model.
        objective: a per-record objective.
        views: the batch's views, one tensor per view.
        max_grad_norm: the clip norm ``C``.
        engine: ``"hooks"`` or ``"fast"``.

    Returns:
        The flattened clipped sum.

    Raises:
        DPSoundnessError: the objective is clipped per group.
        ValueError: an unknown engine.
    """
    require_clip_unit(objective, "record")
    if engine == "fast":
        from fedssl.privacy.dp_sgd.fast_clip import FastClipper  # opacus: imported on first use

        with FastClipper(model) as clipper:
            with clipper.record():
                losses = objective.per_record_loss(model, views)
            sums, _ = clipper.clipped_sum(losses, max_grad_norm)
        return torch.cat([s.reshape(-1) for s in sums])
    if engine != "hooks":
        raise ValueError(f"engine must be 'hooks' or 'fast', got {engine!r}")
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    import fedssl.privacy.dp_sgd.ws_rules  # noqa: F401 (registers the WS conv grad samplers)

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    opt = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
        max_grad_norm=max_grad_norm, expected_batch_size=len(views[0]), loss_reduction="sum",
    )
    try:
        opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            objective.per_record_loss(gsm, views).sum().backward()
        opt.clip_and_accumulate()
        return torch.cat([
            p.summed_grad.reshape(-1) if p.summed_grad is not None else torch.zeros(p.numel())
            for p in opt.params
        ])
    finally:
        gsm._close()
