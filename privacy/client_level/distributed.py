"""Distributed client-level DP under secure aggregation: the Skellam mechanism.

What: each sampled client clips its model update to L2 norm ``S``, scales it to integers,
rounds stochastically, and adds *its share* of integer Skellam noise **before** masking it for
secure aggregation (:mod:`fedssl.privacy.secagg`). The server recovers only the sum, which is
the sum of the clients' integer updates plus Skellam noise of the summed variance (a sum of
independent Skellam variables is Skellam), so no party - the server included - ever sees an
update without noise. Agarwal, Kairouz & Liu, "The Skellam Mechanism for Differentially
Private Federated Learning", NeurIPS 2021; Kairouz, Liu & Steinke, "The Distributed Discrete
Gaussian Mechanism for Federated Learning with Secure Aggregation", ICML 2021.

Why Skellam rather than the discrete Gaussian: the sum of discrete Gaussians is *not* a
discrete Gaussian (its analysis needs an extra slack term), whereas the sum of Skellams is
exactly Skellam, so the per-round privacy bound is exact in the number of contributing shares.

Privacy unit and neighbouring relation: one client's whole dataset, *zero-out* neighbours (the
client's update replaced by the all-zero update; it still contributes its noise share), the
relation used for user-level DP with secure aggregation. The integer sensitivity is then
deterministic: with scale ``s`` (levels per unit), coordinate clip ``c`` and L2 clip ``S``,
``||q(x) - q(0)||_2 <= s S + 2 sqrt(d)`` (coordinate clipping is a contraction towards 0, and
stochastic rounding moves each coordinate of ``q(x)`` and of ``q(0)`` by at most 1), and for
integer vectors
``||.||_1 <= ||.||_2 * min(sqrt(d), ||.||_2)``.

Per round (Agarwal et al. 2021, Theorem 3.5 / Corollary 3.6), for integer orders ``a > 1``::

    RDP(a) <= a D2^2 / (2 mu) + min(((2a - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu))

with ``mu`` the total noise variance per coordinate. Given the cohort, the client's own share
is independent noise added on both sides of the comparison (post-processing), so the shift of
its update is hidden by the noise of *all* shares in the sum, at least ``mu``. Rounds compose by
adding RDP; RDP converts to ``(epsilon, delta)`` with Opacus's conversion (Balle et al. 2020).
The bound and its accountant are :mod:`fedssl.privacy.accounting.skellam` (registry name
``skellam``); this module is the mechanism (plan, clipping, quantisation, noise shares).

Client sampling: no amplification is claimed. The server chooses the cohort, and the released
sum's offset reveals how many shares it holds, so "this client may not have been sampled" hides
nothing from the server; every round is charged to every client at ``q = 1`` (an upper bound for
the rounds a client sat out). Amplification by sampling is claimed only for central DP-FedAvg
(:mod:`fedssl.privacy.client_level.central`), where the server is trusted.

Assumptions (said in the report): at least ``min_clients`` honest clients' shares are in each
released sum (the server does not unmask a round with fewer masked inputs, and SecAgg+ cannot
unmask fewer than its threshold; semi-honest server, as in docs/threat-model.md); the masked
sum wraps modulo ``2^32`` only with negligible probability (headroom of 10 standard
deviations), and a wrap would only harm accuracy: the modular sum is post-processing of the
mechanism's output.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from fedssl.privacy.accounting import create_accountant
from fedssl.privacy.accounting.mechanisms import Mechanism
from fedssl.privacy.accounting.skellam import (
    ORDERS,
    DistributedDPError,
    SkellamRound,
    skellam_rdp,
)
from fedssl.privacy.secagg.quantization import MODULUS, Quantizer

__all__ = ["HEADROOM_SIGMAS", "MAX_SHARE_VARIANCE", "MIN_LEVELS", "ORDERS", "DistributedDPError",
           "SkellamPlan", "SkellamRound", "clip_l2", "encode_with_noise", "skellam_epsilon",
           "skellam_noise", "skellam_rdp"]

#: headroom reserved per client, in standard deviations of its noise share
HEADROOM_SIGMAS = 10.0
#: largest variance of one client's share: numpy's Poisson sampler (PTRS) works in float64 and
#: was measured to give 25 % too much variance at a mean of 5e15 (past 2^52) and the right one
#: (within the 1 % sampling error) at 1e12; shares' Poisson means stay <= 2^39 ~ 5.5e11, which
#: still allows ~1e6 levels per clip norm
MAX_SHARE_VARIANCE = float(2 ** 40)
#: fewest quantisation levels per unit accepted (below, rounding would swamp the update)
MIN_LEVELS = 256


def skellam_epsilon(rounds: Iterable[SkellamRound], delta: float) -> float:
    """``epsilon`` at ``delta`` of composing ``rounds`` (``inf`` if any had no noise): the
    registry's ``skellam`` accountant
    (:class:`~fedssl.privacy.accounting.skellam.SkellamAccountant`).

    Args:
        rounds: the released rounds (:meth:`SkellamPlan.round_record`).
        delta: the guarantee's delta.

    Returns:
        The composed epsilon.
    """
    return create_accountant("skellam").epsilon(rounds, delta)


@dataclass(frozen=True)
class SkellamPlan(Mechanism):
    """How a client encodes its update for one round: scale, headroom, noise share. One round
    of the distributed Skellam mechanism (the release is the unmasked sum of
    :func:`encode_with_noise` outputs).

    Guarantee: (epsilon, delta)-DP for **one client's entire data** under *zero-out*
    neighbours, epsilon from the ``skellam`` accountant
    (:class:`~fedssl.privacy.accounting.skellam.SkellamAccountant`) over the released rounds'
    :meth:`round_record`; no amplification by client sampling is claimed.

    Sensitivity: :attr:`l2_sensitivity` ``D2 = s S + 2 sqrt(d)`` and :attr:`l1_sensitivity` in
    integer units (clip, quantisation, stochastic rounding); the total noise std is
    ``z D2``, so the sensitivity is 1 in units of ``D2``.

    Assumptions: at least ``min_clients`` honest shares in every released sum (semi-honest
    server, SecAgg+ threshold), and the modular sum wraps only with negligible probability.

    The quantiser maps ``[-c, c]`` affinely onto ``[h, h + M]``; the integer sensitivity is
    ``s S + 2 sqrt(d)`` with ``s = M / (2c)``. ``M`` is the largest even level count for which
    ``M + 2h`` fits one client's ``2^32 / n`` slot, ``h`` being ``10`` standard deviations of a
    noise share, and a share's variance is at most :data:`MAX_SHARE_VARIANCE`.
    """

    clip: float              # S, L2 clip of the client update (float units)
    coord_clip: float        # c, per-coordinate clip of the secure-aggregation quantiser
    noise_multiplier: float  # z
    min_clients: int         # shares assumed in every released sum
    num_clients: int         # most contributors this round (sizes the 2^32 slots)
    dim: int                 # d
    levels: int              # M
    headroom: int            # h

    privacy_unit: ClassVar[str] = "one client's entire data"
    neighbouring: ClassVar[str] = "zero-out"
    accountants: ClassVar[tuple[str, ...]] = ("skellam",)
    assumptions: ClassVar[tuple[str, ...]] = (
        "at least min_clients honest shares in every released sum (semi-honest server)",
        "the modular sum wraps only with negligible probability (10-sigma headroom)")
    #: L2 sensitivity in units of ``D2`` (the noise multiplier is ``std / D2``)
    sensitivity: ClassVar[float] = 1.0

    def constrain_sensitivity(self, contribution: NDArray[np.float64]
                              ) -> NDArray[np.float64]:
        """A client's flattened update scaled down to L2 norm at most ``S`` (the
        quantiser's clipping and rounding, which :attr:`l2_sensitivity` also counts, follow
        in :func:`encode_with_noise`).

        Raises:
            DistributedDPError: if the update's size is not the plan's ``d``.
        """
        if contribution.shape != (self.dim,):
            raise DistributedDPError(f"update has {contribution.size} values, the plan "
                                     f"{self.dim}")
        return clip_l2(contribution, self.clip)

    def add_noise(self, aggregate: NDArray[np.uint32],
                  noise_rng: np.random.Generator | None = None) -> NDArray[np.uint32]:
        """This client's Skellam share (variance :attr:`share_variance`; OS entropy unless
        ``noise_rng``) added to its quantised update, modulo ``2^32``: the unmasked sum of
        ``min_clients`` or more shares carries the mechanism's whole noise."""
        noise = skellam_noise(aggregate.size, self.share_variance, noise_rng)
        return ((aggregate.astype(np.int64) + noise) % MODULUS).astype(np.uint32)

    @classmethod
    def make(cls, clip: float, coord_clip: float, noise_multiplier: float, min_clients: int,
             num_clients: int, dim: int) -> SkellamPlan:
        """Solve for ``M`` and ``h``; raises :class:`DistributedDPError` if nothing fits.

        Args:
            clip: ``S``, the L2 clip of a client's update.
            coord_clip: ``c``, the quantiser's per-coordinate clip.
            noise_multiplier: ``z``.
            min_clients: the fewest shares assumed in every released sum.
            num_clients: the most contributors this round.
            dim: ``d``, the update's size.

        Returns:
            The plan with the most levels that fits the 32-bit slot.

        Raises:
            DistributedDPError: invalid parameters, or fewer than :data:`MIN_LEVELS` levels per
                unit fit.
        """
        if not (clip > 0 and coord_clip > 0 and noise_multiplier >= 0 and dim > 0):
            raise DistributedDPError("distributed DP needs clip > 0, a coordinate clip > 0, "
                                     "noise multiplier >= 0 and a non-empty update")
        if not 1 <= min_clients <= num_clients:
            raise DistributedDPError(
                f"min_clients must be in [1, {num_clients}] (clients this round), got "
                f"{min_clients}: fewer shares than assumed would leave the sum under-noised")
        slot = (MODULUS - 1) // num_clients
        k = HEADROOM_SIGMAS * noise_multiplier / math.sqrt(min_clients)
        # h(M) = ceil(k (M S / (2c) + 2 sqrt d)) + 1 and M + 2 h(M) <= slot
        levels = int((slot - 2 * (2 * k * math.sqrt(dim) + 2)) / (1 + k * clip / coord_clip))
        if noise_multiplier > 0:  # keep each Poisson mean exact in float64 (see MAX_SHARE_VAR)
            top_scale = (math.sqrt(MAX_SHARE_VARIANCE * min_clients) / noise_multiplier
                         - 2 * math.sqrt(dim)) / clip
            levels = min(levels, int(2 * coord_clip * top_scale))
        levels -= levels % 2
        while levels >= 2:
            plan = cls(clip, coord_clip, noise_multiplier, min_clients, num_clients, dim,
                       levels, cls._headroom(levels, clip, coord_clip, k, dim))
            if levels + 2 * plan.headroom <= slot:
                break
            levels -= 2
        if levels / (2 * coord_clip) * clip < MIN_LEVELS:
            raise DistributedDPError(
                f"32-bit secure aggregation has no room for this noise: with {num_clients} "
                f"clients, noise multiplier {noise_multiplier} and {min_clients} minimum "
                f"shares the update would get under {MIN_LEVELS} levels; lower the noise, "
                "raise the minimum number of clients or lower the client clip")
        return plan

    @staticmethod
    def _headroom(levels: int, clip: float, coord_clip: float, k: float, dim: int) -> int:
        return math.ceil(k * (levels / (2 * coord_clip) * clip + 2 * math.sqrt(dim))) + 1

    @property
    def scale(self) -> float:
        """``s``: integer levels per unit of update."""
        return self.levels / (2 * self.coord_clip)

    @property
    def l2_sensitivity(self) -> float:
        """``D2 = s S + 2 sqrt(d)`` in integer units (deterministic: no conditional rounding)."""
        return self.scale * self.clip + 2 * math.sqrt(self.dim)

    @property
    def l1_sensitivity(self) -> float:
        """``D1 = D2 min(sqrt(d), D2)`` (for integer vectors ``||v||_1 <= ||v||_2^2``)."""
        d2 = self.l2_sensitivity
        return d2 * min(math.sqrt(self.dim), d2)

    @property
    def total_variance(self) -> float:
        """``mu``: noise variance per coordinate in a sum of ``min_clients`` shares."""
        return (self.noise_multiplier * self.l2_sensitivity) ** 2

    @property
    def share_variance(self) -> float:
        """Variance of one client's share, ``mu / min_clients``."""
        return self.total_variance / self.min_clients

    def quantizer(self) -> Quantizer:
        """The secure-aggregation quantiser this plan encodes with (and the server decodes).

        Returns:
            A :class:`~fedssl.privacy.secagg.quantization.Quantizer` with the plan's clip, levels
            and headroom.
        """
        return Quantizer(self.coord_clip, self.num_clients, headroom=self.headroom,
                         levels=self.levels)

    def round_record(self) -> SkellamRound:
        """The accounting record of a round released with this plan.

        Returns:
            Its noise multiplier and integer L2 and L1 sensitivities.
        """
        return SkellamRound(self.noise_multiplier, self.l2_sensitivity, self.l1_sensitivity)

    def to_dict(self) -> dict[str, float | int]:
        """The plan's fields as a dict (the round's metrics row records it).

        Returns:
            Field name -> value.
        """
        return asdict(self)


def clip_l2(update: NDArray[np.float64], clip: float) -> NDArray[np.float64]:
    """``update`` scaled down to L2 norm at most ``clip`` (unchanged if within).

    Args:
        update: a flattened update.
        clip: the L2 clip norm.

    Returns:
        The clipped update.
    """
    norm = float(np.linalg.norm(update))
    return update * min(1.0, clip / norm) if norm > 0 else update


def skellam_noise(size: int, variance: float,
                  rng: np.random.Generator | None = None) -> NDArray[np.int64]:
    """Symmetric Skellam noise ``Poisson(mu/2) - Poisson(mu/2)`` (variance ``mu``).

    Without ``rng`` the generator is seeded with 256 bits from the OS, so the noise is not
    reproducible from anything the server or another client knows.

    Args:
        size: how many coordinates.
        variance: ``mu``; 0 or less gives zeros.
        rng: the generator (default: seeded from the OS).

    Returns:
        ``size`` int64 noise values.
    """
    if variance <= 0:
        return np.zeros(size, np.int64)
    rng = rng or np.random.default_rng(np.frombuffer(os.urandom(32), dtype=np.uint64))
    lam = variance / 2.0
    return rng.poisson(lam, size).astype(np.int64) - rng.poisson(lam, size).astype(np.int64)


def encode_with_noise(update: NDArray[np.float64], plan: SkellamPlan, *,
                      rng: np.random.Generator | None = None,
                      noise_rng: np.random.Generator | None = None) -> NDArray[np.uint32]:
    """Clip (:meth:`SkellamPlan.constrain_sensitivity`), quantise and add this client's
    Skellam share (:meth:`SkellamPlan.add_noise`), modulo ``2^32``.

    ``rng`` drives the rounding coins, ``noise_rng`` the noise (OS entropy if ``None``).

    Args:
        update: the client's flattened update (``d`` values).
        plan: the round's plan.
        rng: the stochastic rounding's coins.
        noise_rng: the noise's generator.

    Returns:
        The encoded update, ``uint32`` modulo ``2^32``, ready for masking.

    Raises:
        DistributedDPError: if the update's size is not the plan's.
    """
    return plan.quantizer().encode(
        plan.constrain_sensitivity(update), rng=rng,
        noise_hook=lambda q: plan.add_noise(q, noise_rng), wrap=True)
