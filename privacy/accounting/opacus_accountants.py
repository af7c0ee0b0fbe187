"""Opacus's accountants of the Poisson-subsampled Gaussian mechanism: ``prv``, ``rdp``, ``gdp``.

- ``prv``: privacy random variables, Gopi, Lee & Wutschitz, "Numerical Composition of
  Differential Privacy", NeurIPS 2021. Opacus returns the *upper* end of its error bound, so
  the epsilon is a true upper bound (the project's default).
- ``rdp``: Rényi DP, Mironov 2017 / Mironov, Talwar & Zhang 2019; a looser upper bound.
- ``gdp``: Gaussian DP via the CLT, Dong, Roth & Su 2019 / Bu et al. 2020; an *approximation*
  that is not guaranteed to be an upper bound (``upper_bound = False``).

Segments of the same mechanism are merged before composing (``k`` then ``m`` steps is
``k + m`` steps: composition is order-independent), which keeps PRV/RDP evaluation fast, and
evaluations are memoised (a client asks for the same composition when planning and when
recording).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from fedssl.privacy.accounting.base import (
    AccountingError,
    GaussianAccountant,
    Segment,
    register_accountant,
)


def merge_segments(segments: list[Segment]) -> list[Segment]:
    """Merge segments of the same mechanism: k steps then m steps == k + m steps (exact,
    since composition is order-independent), which keeps PRV/RDP evaluation fast.

    Args:
        segments: ``(noise_multiplier, sample_rate, steps)`` triples.

    Returns:
        One segment per ``(noise_multiplier, sample_rate)``, in first-seen order.
    """
    merged: dict[tuple[float, float], int] = {}
    for s, q, n in segments:
        merged[(s, q)] = merged.get((s, q), 0) + n
    return [(s, q, n) for (s, q), n in merged.items()]


@contextmanager
def _prv_domain_quiet(accountant: str) -> Iterator[None]:
    """Under ``prv``, drop Opacus's "Optimal order is the largest alpha" warning. Opacus's PRV
    accountant sizes its discretisation domain with an RDP epsilon
    (``opacus.accountants.analysis.prv.domain.compute_safe_domain_size``, Gopi et al. 2021,
    remark 5.6); at a large noise multiplier (a run extended into an almost spent budget)
    the best RDP order is past Opacus's largest, so that RDP epsilon is looser than it could
    be. A looser one only makes the domain larger: the PRV epsilon stays a true upper bound,
    and the warning, which asks for more orders, says nothing about it. Under ``rdp`` itself
    the warning is about the reported bound and is kept."""
    with warnings.catch_warnings():
        if accountant == "prv":
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha",
                                    category=UserWarning,
                                    module=r"opacus\.accountants\.analysis\.rdp")
        yield


@functools.lru_cache(maxsize=4096)
def _composed_epsilon(segments: tuple[Segment, ...], delta: float, accountant: str) -> float:
    """Memoised: a client asks for the same composition when planning and when recording."""
    from opacus.accountants import create_accountant  # lazy: opacus imports take ~2 s

    acc = create_accountant(mechanism=accountant)
    acc.history = list(segments)
    with _prv_domain_quiet(accountant):
        return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=1024)
def _calibrate_fresh(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                     accountant: str) -> float:
    """Opacus's bisection, memoised: clients of one data size all need the same answer."""
    try:
        from opacus.accountants.utils import get_noise_multiplier

        with _prv_domain_quiet(accountant):
            return float(get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                steps=steps, accountant=accountant, epsilon_tolerance=0.01,
            ))
    except ValueError as exc:
        raise AccountingError(
            f"cannot reach epsilon={target_epsilon} at delta={delta} with sample rate "
            f"{sample_rate:.4g} over {steps} steps: {exc}"
        ) from exc


class OpacusAccountant(GaussianAccountant):
    """One of Opacus's accountants (``opacus.accountants.create_accountant(name)``)."""

    def epsilon(self, history: Iterable[Segment], delta: float) -> float:
        """Returns ``inf`` if any segment ran without noise, ``0.0`` for an empty history.

        Args:
            history: the segments ``(noise_multiplier, sample_rate, steps)``.
            delta: the guarantee's delta.

        Returns:
            The cumulative epsilon from Opacus's accountant of this name.
        """
        segments = merge_segments([(float(s), float(q), int(n)) for s, q, n in history
                                   if n > 0])
        if not segments:
            return 0.0
        if any(s <= 0 for s, _, _ in segments):
            return math.inf
        return _composed_epsilon(tuple(sorted(segments)), float(delta), self.name)

    def calibrate(self, target_epsilon: float, delta: float, sample_rate: float,
                  steps: int, spent: Sequence[Segment] = ()) -> float:
        """Smallest noise multiplier reaching ``target_epsilon`` at ``delta``; with nothing
        ``spent``, Opacus's own bisection (to 1 % of epsilon, memoised), else the base
        class's over the composed history (:meth:`GaussianAccountant.calibrate`).

        Args:
            target_epsilon: the epsilon the whole history may reach.
            delta: the guarantee's delta.
            sample_rate: Poisson sampling rate of the new steps, in (0, 1].
            steps: how many new steps.
            spent: the history already spent.

        Returns:
            The noise multiplier of the new steps.

        Raises:
            AccountingError: the target cannot be met.
        """
        if list(spent):
            return super().calibrate(target_epsilon, delta, sample_rate, steps, spent)
        return _calibrate_fresh(float(target_epsilon), float(delta), float(sample_rate),
                                int(steps), self.name)


@register_accountant
class PRVAccountant(OpacusAccountant):
    """Opacus PRV (Gopi et al. 2021), upper end of its error bound: a guaranteed bound."""

    name = "prv"
    budget = True
    audit = True
    label = "Opacus PRV (Gopi et al. 2021)"


@register_accountant
class RDPAccountant(OpacusAccountant):
    """Opacus RDP (Mironov 2017; Mironov, Talwar & Zhang 2019): a looser guaranteed bound."""

    name = "rdp"
    budget = True
    label = "Opacus RDP (Mironov 2017)"


@register_accountant
class GDPAccountant(OpacusAccountant):
    """Opacus GDP (CLT; Dong, Roth & Su 2019): an approximation, never for budgets."""

    name = "gdp"
    upper_bound = False
    label = "Opacus GDP (Dong, Roth & Su 2019)"
