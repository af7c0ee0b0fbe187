"""DP-SGD for SSL objectives on Opacus: per-record clipping over all views of a record.

Mechanism (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016): each step draws a
Poisson sample of the local records (rate ``q``), computes one gradient per *record*, clips it
to norm ``C`` (``max_grad_norm``), sums, and adds ``N(0, sigma^2 C^2 I)``.

Guarantee: (epsilon, delta)-DP at the record level for the client's local data set, with
epsilon from composing the Poisson-subsampled Gaussian mechanism over all steps (see
:mod:`fedssl.privacy.accountant`), *provided* that removing one record changes the clipped sum
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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedssl.ssl_core.objectives.base import Objective


class DPSoundnessError(ValueError):
    """Raised when a configuration would make the reported epsilon not a true upper bound."""


def clip_sensitivity(objective: Objective) -> int:
    """L2 sensitivity of ``objective``'s clipped DP-SGD sum in units of the clip norm ``C``
    (add/remove one record): 1 for a per-record decomposable objective clipped per record, 2
    for one clipped per randomly drawn group (:mod:`fedssl.privacy.group_clip`). The ledger
    records it as ``extra.sensitivity`` and every epsilon is computed at
    ``noise_multiplier / sensitivity``.

    Raises:
        DPSoundnessError: for an objective with no proven bound (see :func:`require_dp_sound`).
    """
    unit = getattr(objective, "clip_unit", "record")
    if unit == "group":
        return 2
    if unit == "record" and objective.decomposable:
        return 1
    raise DPSoundnessError(
        f"method {objective.name!r} is not per-record decomposable (every record appears "
        "in every other record's loss), so per-record clipping does not bound its "
        "sensitivity and DP-SGD would report a false epsilon; with sample-level DP use a "
        "DP-sound method (e.g. 'simsiam', 'infonce-public', 'infonce-group'), or train it "
        "under client-level DP only (--no-dp --client-dp central|distributed)"
    )


def require_dp_sound(objective: Objective) -> None:
    """Refuse objectives whose sensitivity under DP-SGD has no proven bound (per-record
    clipping of a decomposable loss: C; group clipping of a group loss: 2C)."""
    clip_sensitivity(objective)


def _require_clip_unit(objective: Objective, clip_unit: str) -> None:
    unit = getattr(objective, "clip_unit", "record")
    if unit != clip_unit:
        raise DPSoundnessError(
            f"method {objective.name!r} must be clipped per {unit}, but this DP engine clips "
            f"per {clip_unit}: its sensitivity would not be bounded (group objectives run on "
            "fedssl.privacy.group_clip.GroupDPSGD, selected by dp_engine 'auto' or 'hooks')")


@dataclass
class DPSetup:
    """What a DP-SGD round runs with; recorded in the ledger."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int


def poisson_loader(
    data: torch.Tensor, batch_size: int, noise_multiplier: float, max_grad_norm: float,
    objective: Objective, generator: torch.Generator | None = None, pin_memory: bool = False,
    clip_unit: str = "record",
) -> tuple[Any, float, int]:
    """Check a DP-SGD setup and return ``(Poisson loader, sample rate, expected batch
    size)``, shared by all DP engines so they sample and account identically. ``clip_unit``
    is what the calling engine clips ("record"; "group" for :mod:`fedssl.privacy.group_clip`).

    Raises:
        DPSoundnessError: for an objective without a proven bound, one whose clipping unit is
            not the engine's, a non-positive clip norm or a negative noise multiplier.
    """
    require_dp_sound(objective)
    _require_clip_unit(objective, clip_unit)
    if max_grad_norm <= 0:
        raise DPSoundnessError(f"max_grad_norm must be positive, got {max_grad_norm}")
    if noise_multiplier < 0:
        raise DPSoundnessError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    # opacus is imported on first use: it costs ~2 s per process, which a non-DP simulation
    # worker should not pay
    from opacus.data_loader import DPDataLoader

    sample_rate = min(1.0, batch_size / len(data))
    loader = DPDataLoader(TensorDataset(data), sample_rate=sample_rate, generator=generator,
                          pin_memory=pin_memory)
    return loader, sample_rate, max(1, round(sample_rate * len(data)))


class DPSGD:
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
        self.loader, self.sample_rate, expected = poisson_loader(
            data, batch_size, noise_multiplier, max_grad_norm, objective, generator, pin_memory)
        self.num_batches = max(1, round(1 / self.sample_rate))
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        import fedssl.privacy.ws_rules  # noqa: F401 (registers the WS conv grad samplers)

        self.module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        self.optimizer = DPOptimizer(
            optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=expected, loss_reduction="mean",
            generator=noise_generator or generator,
        )

    def __enter__(self) -> DPSGD:
        return self

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
    (:class:`fedssl.privacy.fast_clip.FastDPSGD`); both flatten the trainable parameters in
    ``model.parameters()`` order. Group-clipped objectives are refused (their sum is
    :func:`fedssl.privacy.group_clip.group_clipped_gradient_sum`).
    """
    _require_clip_unit(objective, "record")
    if engine == "fast":
        from fedssl.privacy.fast_clip import FastClipper  # fast_clip imports this module

        with FastClipper(model) as clipper:
            with clipper.record():
                losses = objective.per_record_loss(model, views)
            sums, _ = clipper.clipped_sum(losses, max_grad_norm)
        return torch.cat([s.reshape(-1) for s in sums])
    if engine != "hooks":
        raise ValueError(f"engine must be 'hooks' or 'fast', got {engine!r}")
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    import fedssl.privacy.ws_rules  # noqa: F401 (registers the WS conv grad samplers)

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
