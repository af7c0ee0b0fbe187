"""What every DP-SGD engine shares: the soundness checks, Poisson sampling, the engine base.

The three engines (:class:`fedssl.privacy.dp_sgd.opacus_engine.DPSGD` on Opacus hooks,
:class:`fedssl.privacy.dp_sgd.fast_clip.FastDPSGD` with book-keeping / ghost norms and
:class:`fedssl.privacy.dp_sgd.group_clip.GroupDPSGD` for group-clipped objectives) sample, check and
account identically because they all start from :class:`PoissonEngine`: the objective's
sensitivity must have a proven bound (:func:`clip_sensitivity`), its clipping unit must be the
engine's, and each step's batch is a Poisson sample of the local records at rate
``q = batch_size / n`` (Opacus ``DPDataLoader``), which is what the accountant
(:mod:`fedssl.privacy.accounting.budget`) composes.

This module imports no other DP engine, so every engine may import it (no import cycle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import torch
from torch.utils.data import TensorDataset

from fedssl.privacy.accounting.mechanisms import GAUSSIAN_ACCOUNTANTS, Mechanism
from fedssl.ssl_core.dp_soundness import DPSoundnessError
from fedssl.ssl_core.objectives.base import Objective

__all__ = ["DPSetup", "DPSoundnessError", "PoissonEngine", "clip_sensitivity",
           "poisson_loader", "require_clip_unit", "require_dp_sound"]


def clip_sensitivity(objective: Objective) -> int:
    """L2 sensitivity of ``objective``'s clipped DP-SGD sum in units of the clip norm ``C``
    (add/remove one record): 1 for a per-record decomposable objective clipped per record, 2
    for one clipped per randomly drawn group (:mod:`fedssl.privacy.dp_sgd.group_clip`). The ledger
    records it as ``extra.sensitivity`` and every epsilon is computed at
    ``noise_multiplier / sensitivity``.

    Args:
        objective: the SSL objective (its ``clip_unit`` and ``decomposable``).

    Returns:
        The sensitivity in units of ``C``: 1 or 2.

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
    clipping of a decomposable loss: C; group clipping of a group loss: 2C).

    Args:
        objective: the SSL objective.

    Raises:
        DPSoundnessError: it has no proven bound (:func:`clip_sensitivity`).
    """
    clip_sensitivity(objective)


def require_clip_unit(objective: Objective, clip_unit: str) -> None:
    """Refuse an objective whose clipping unit (``record`` or ``group``) is not the engine's.

    Args:
        objective: the SSL objective (its ``clip_unit``, ``record`` when absent).
        clip_unit: what the calling engine clips.

    Raises:
        DPSoundnessError: the units differ, so the engine would not bound the sensitivity.
    """
    unit = getattr(objective, "clip_unit", "record")
    if unit != clip_unit:
        raise DPSoundnessError(
            f"method {objective.name!r} must be clipped per {unit}, but this DP engine clips "
            f"per {clip_unit}: its sensitivity would not be bounded (group objectives run on "
            "fedssl.privacy.dp_sgd.group_clip.GroupDPSGD, selected by dp_engine 'auto' or 'hooks')")


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
    is what the calling engine clips ("record"; "group" for
    :mod:`fedssl.privacy.dp_sgd.group_clip`).

    Args:
        data: the client's records.
        batch_size: the expected batch size; the sample rate is ``batch_size / len(data)``
            (at most 1).
        noise_multiplier: noise standard deviation over the clip norm.
        max_grad_norm: the clip norm ``C``.
        objective: the SSL objective, checked for a sensitivity bound.
        generator: draws the Poisson samples (a secret one in training).
        pin_memory: pin the batches' memory.
        clip_unit: what the calling engine clips.

    Returns:
        The Poisson loader, the sample rate and the expected batch size (at least 1).

    Raises:
        DPSoundnessError: for an objective without a proven bound, one whose clipping unit is
            not the engine's, a non-positive clip norm or a negative noise multiplier.
    """
    require_dp_sound(objective)
    require_clip_unit(objective, clip_unit)
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


def clip_factors(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """Per-record clip factors ``min(1, C / (||g_i|| + 1e-6))``: Opacus's formula
    (``DPOptimizer.clip_and_accumulate``), so every engine clips alike.

    Args:
        norms: ``(N,)`` per-record gradient norms.
        max_grad_norm: the clip norm ``C``.

    Returns:
        ``(N,)`` factors in (0, 1].
    """
    return (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


class PoissonEngine(Mechanism):
    """Base of the DP-SGD engines: checks the setup and builds the Poisson loader. The
    mechanism every engine implements: DP-SGD's Poisson-subsampled Gaussian mechanism
    (Abadi et al., CCS 2016).

    Guarantee: (epsilon, delta)-DP for **one record** of the client's local data set
    (add/remove), epsilon from composing the Poisson-subsampled Gaussian mechanism (rate
    ``q = sample_rate``, noise multiplier ``noise_multiplier / sensitivity``) over all steps
    with an accountant of :data:`~fedssl.privacy.accounting.mechanisms.GAUSSIAN_ACCOUNTANTS`
    (``prv`` by
    default; ``fedssl.privacy.accounting.budget.epsilon_of``).

    Sensitivity: each step adds ``N(0, sigma^2 C^2 I)`` to the sum of gradients clipped to
    ``C = max_grad_norm``; one record moves that sum by at most ``sensitivity * C``, with
    ``sensitivity`` from the objective (:func:`clip_sensitivity`: 1 for a per-record
    decomposable objective clipped per record over all its views, 2 for a group-clipped one).

    Assumptions: the objective's sensitivity bound holds (checked: :func:`clip_sensitivity`
    refuses objectives without one), batches are Poisson samples drawn with a secret
    generator, and only the noisy sums (the model after the round) leave the client.

    The two operations: :meth:`constrain_sensitivity` (per-record clip factors from the
    per-record gradient norms) and :meth:`add_noise` (``N(0, sigma^2 C^2)`` on each
    parameter's clipped sum). The fast engine calls them in every step; the Opacus engines
    (hooks, group) run the same formulas inside Opacus's ``DPOptimizer``
    (``clip_and_accumulate``, ``add_noise``), which ``tests/privacy/test_mechanisms.py`` checks.

    Sets ``loader`` (the Poisson-sampled batches of ``data``), ``sample_rate`` (``q``),
    ``expected_batch_size`` (``round(q n)``, the divisor of the noisy sum) and ``num_batches``
    (``round(1 / q)``, the steps of one epoch). ``clip_unit`` is what the engine clips
    ("record"; "group" for :class:`fedssl.privacy.dp_sgd.group_clip.GroupDPSGD`). A context manager
    (subclasses release their hooks in ``__exit__``).

    Raises:
        DPSoundnessError: as :func:`poisson_loader`.
    """

    clip_unit = "record"
    privacy_unit = "one record of a client's local data"
    neighbouring = "add/remove"
    accountants = GAUSSIAN_ACCOUNTANTS
    assumptions = ("the objective's clip sensitivity bound holds (per-record decomposable, "
                   "or clipped per group)", "Poisson sampling with a secret generator",
                   "only the noisy clipped sums leave the client")

    def __init__(
        self,
        data: torch.Tensor,
        batch_size: int,
        noise_multiplier: float,
        max_grad_norm: float,
        objective: Objective,
        generator: torch.Generator | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.loader, self.sample_rate, self.expected_batch_size = poisson_loader(
            data, batch_size, noise_multiplier, max_grad_norm, objective, generator, pin_memory,
            clip_unit=self.clip_unit)
        self.num_batches = max(1, round(1 / self.sample_rate))
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.sensitivity = clip_sensitivity(objective)
        #: draws the noise (None: torch's default generator; a secret one in training)
        self.generator = generator

    def constrain_sensitivity(self, contribution: torch.Tensor) -> torch.Tensor:
        """Per-record clip factors from the ``(N,)`` per-record gradient norms (over all of
        a record's views): each record's clipped gradient has norm at most ``C``.

        Args:
            contribution: ``(N,)`` per-record gradient norms.

        Returns:
            ``(N,)`` clip factors (:func:`clip_factors`).
        """
        return clip_factors(contribution, self.max_grad_norm)

    def add_noise(self, aggregate: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each parameter's clipped sum plus ``N(0, sigma^2 C^2)`` noise, drawn from
        :attr:`generator` in parameter order (Opacus's ``_generate_noise``, so with the same
        generator the draws equal ``DPOptimizer``'s).

        Args:
            aggregate: each parameter's clipped gradient sum.

        Returns:
            The noisy sums, in the same order.
        """
        from opacus.optimizers.optimizer import _generate_noise  # opacus: on first use

        std = self.noise_multiplier * self.max_grad_norm
        return [s + _generate_noise(std=std, reference=s, generator=self.generator)
                for s in aggregate]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
