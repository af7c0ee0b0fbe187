"""The accountant of the distributed Skellam mechanism (Agarwal, Kairouz & Liu, "The Skellam
Mechanism for Differentially Private Federated Learning", NeurIPS 2021): ``skellam``.

A history is a list of :class:`SkellamRound` (noise multiplier ``z``, integer L2 and L1
sensitivities ``D2``, ``D1``; total noise variance per coordinate ``mu = (z D2)^2``). Per round
(Theorem 3.5 / Corollary 3.6), for integer orders ``a > 1``::

    RDP(a) <= a D2^2 / (2 mu) + min(((2a - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu))

Rounds compose by adding RDP over :data:`ORDERS`; RDP converts to ``(epsilon, delta)`` with
Opacus's conversion (Balle et al. 2020). No amplification by sampling is claimed (every round
is charged at ``q = 1``; why, and the mechanism itself, in
:mod:`fedssl.privacy.client_level.distributed`).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fedssl.privacy.accounting.base import Accountant, register_accountant

#: integer RDP orders (the Skellam bound and the subsampling bound need integers >= 2)
ORDERS: tuple[int, ...] = (*range(2, 65), 80, 96, 128, 160, 192, 256, 384, 512)


class DistributedDPError(ValueError):
    """Raised when distributed DP cannot be configured soundly (clear message, no fallback).

    (Defined with the Skellam bound, which raises it; :mod:`fedssl.privacy.client_level.distributed`
    re-exports it.)"""


def skellam_rdp(order: int, l2: float, l1: float, mu: float) -> float:
    """RDP at integer ``order`` of one Skellam release (Agarwal et al. 2021, Thm 3.5).

    Args:
        order: the Rényi order, an integer >= 2.
        l2: integer L2 sensitivity.
        l1: integer L1 sensitivity.
        mu: total noise variance per coordinate.

    Returns:
        The RDP epsilon at ``order`` (``inf`` without noise).

    Raises:
        DistributedDPError: ``order`` is not an integer >= 2.
    """
    if order < 2 or int(order) != order:
        raise DistributedDPError(f"the Skellam bound needs an integer order >= 2, got {order}")
    if mu <= 0:
        return math.inf
    a = float(order)
    return a * l2 ** 2 / (2 * mu) + min(((2 * a - 1) * l2 ** 2 + 6 * l1) / (4 * mu ** 2),
                                        3 * l1 / (2 * mu))


@dataclass(frozen=True)
class SkellamRound:
    """What one round of the distributed mechanism was: enough to recompute its privacy."""

    noise_multiplier: float  # z: total noise std / integer L2 sensitivity
    l2_sensitivity: float    # D2, integer units
    l1_sensitivity: float    # D1, integer units

    @property
    def variance(self) -> float:
        """Total noise variance per coordinate, ``mu = (z D2)^2``."""
        return (self.noise_multiplier * self.l2_sensitivity) ** 2


@functools.lru_cache(maxsize=1024)
def _round_rdp(r: SkellamRound) -> tuple[float, ...]:
    return tuple(skellam_rdp(a, r.l2_sensitivity, r.l1_sensitivity, r.variance) for a in ORDERS)


@register_accountant
class SkellamAccountant(Accountant[SkellamRound]):
    """RDP accountant of the Skellam mechanism (a guaranteed upper bound)."""

    name = "skellam"
    label = "Skellam RDP (Agarwal, Kairouz & Liu 2021)"
    event = SkellamRound

    def step(self, round: SkellamRound) -> None:
        """Record one released round.

        Args:
            round: the released round.
        """
        self.compose(round)

    def epsilon(self, history: Iterable[SkellamRound], delta: float) -> float:
        """``epsilon`` at ``delta`` of composing the rounds (``inf`` if any had no noise).

        Args:
            history: the released rounds.
            delta: the guarantee's delta.

        Returns:
            The composed epsilon, from the RDP of every round summed per order.
        """
        rounds = list(history)
        if not rounds:
            return 0.0
        if any(r.noise_multiplier <= 0 for r in rounds):
            return math.inf
        from opacus.accountants.analysis.rdp import get_privacy_spent

        total = np.sum([_round_rdp(r) for r in rounds], axis=0)
        with warnings.catch_warnings():  # "optimal order is the smallest alpha": 2 is the
            warnings.simplefilter("ignore")  # least integer order the Skellam bound holds for
            eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=total, delta=delta)
        return float(eps)
