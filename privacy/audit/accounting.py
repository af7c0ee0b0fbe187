"""The audit's recomputation of epsilon: independent accountants over a ledger's history.

Each ledger entry is a segment ``(noise multiplier / sensitivity, sample rate, steps)`` of the
Poisson-subsampled Gaussian mechanism; :func:`recompute` composes a history of them with each
accountant of :func:`~fedssl.privacy.accounting.audit_accountants` (the registry's accountants
marked ``audit``, named as the registry names them) and returns the cumulative epsilon after
every entry:

- ``prv``: Opacus's privacy-random-variable accountant (Gopi, Lee & Wutschitz, NeurIPS 2021),
  upper end of its error bound (:data:`PRV_EPS_ERROR`);
- ``pld``: Google dp-accounting's privacy-loss-distribution accountant, pessimistic
  connect-the-dots discretisation (Doroshenko et al., PETS 2022), an upper bound by
  construction;
- ``dpa-rdp``: dp-accounting's Rényi-DP accountant (Mironov 2017), looser but conservative
  (not Opacus's ``rdp``, which clients may record with).

The reference the audit checks claims against is the larger of the :data:`REFERENCE`
accountants, ``max(prv, pld)`` (:func:`reference_epsilon`); every other audit accountant is a
cross-check that must not fall below them. What the audit does with these numbers is in
:mod:`fedssl.privacy.audit.checks`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from fedssl.privacy.accounting import (
    Segment,
    audit_accountants,
    create_accountant,
    pld_interval,
    quiet,
)

#: the two tight upper bounds whose larger value is the audit's reference epsilon
REFERENCE = ("prv", "pld")
#: what an accountant raises when it cannot evaluate a history (Opacus's PRV on extreme
#: settings, a numerical overflow): recorded as ``nan``, an accountant failure
ACCOUNTANT_FAILURES: tuple[type[Exception], ...] = (
    ValueError, RuntimeError, OverflowError, ArithmeticError)
#: Opacus's PRV accountant returns the upper end of an absolute 0.01 error band, so PRV sits
#: 0.01 above PLD at every setting measured: at small epsilons that is several per cent
PRV_EPS_ERROR = 0.01

__all__ = ["ACCOUNTANT_FAILURES", "PRV_EPS_ERROR", "REFERENCE", "audit_accountants",
           "dpa_rdp_epsilons", "epsilons_or_nan", "pld_epsilons", "pld_interval",
           "prv_epsilons", "recompute", "reference_epsilon"]


def pld_epsilons(history: Sequence[Segment], deltas: Sequence[float],
                 interval: float | None = None) -> list[float]:
    """Cumulative epsilon after each segment, Google dp-accounting PLD (pessimistic; the
    interval defaults to :func:`pld_interval` of the ``dpa-rdp`` epsilon).

    Args:
        history: the segments ``(noise multiplier / sensitivity, sample rate, steps)``.
        deltas: the delta of each segment's claim, one per segment.
        interval: the PLD's value-discretisation interval.

    Returns:
        One cumulative epsilon per segment.
    """
    return create_accountant("pld", interval=interval).epsilons(history, deltas)


def dpa_rdp_epsilons(history: Sequence[Segment], deltas: Sequence[float]) -> list[float]:
    """Cumulative epsilon after each segment, Google dp-accounting RDP (``dpa-rdp``,
    conservative).

    Args:
        history: the segments ``(noise multiplier / sensitivity, sample rate, steps)``.
        deltas: the delta of each segment's claim, one per segment.

    Returns:
        One cumulative epsilon per segment.
    """
    return create_accountant("dpa-rdp").epsilons(history, deltas)


def prv_epsilons(history: Sequence[Segment], deltas: Sequence[float]) -> list[float]:
    """Cumulative epsilon after each segment, Opacus PRV (the project's accountant).

    Args:
        history: the segments ``(noise multiplier / sensitivity, sample rate, steps)``.
        deltas: the delta of each segment's claim, one per segment.

    Returns:
        One cumulative epsilon per segment; ``nan`` where Opacus fails (an accountant failure,
        never a pass).
    """
    return epsilons_or_nan("prv", history, deltas)


def epsilons_or_nan(name: str, history: Sequence[Segment],
                    deltas: Sequence[float]) -> list[float]:
    """Cumulative epsilon after each segment with registry accountant ``name``; ``nan`` for
    the entries it cannot evaluate (it raised one of :data:`ACCOUNTANT_FAILURES`), which the
    audit reports as an accountant failure, never as a pass.

    Args:
        name: a registered accountant's name.
        history: the segments ``(noise multiplier / sensitivity, sample rate, steps)``.
        deltas: the delta of each segment's claim, one per segment.

    Returns:
        One cumulative epsilon (or ``nan``) per segment.

    Raises:
        AccountingError: no accountant is registered as ``name``.
    """
    accountant = create_accountant(name)
    history = list(history)
    with quiet():
        try:
            return accountant.epsilons(history, deltas)
        except ACCOUNTANT_FAILURES:
            pass  # find the entries it cannot evaluate, one prefix at a time
        out: list[float] = []
        for i, delta in enumerate(deltas):
            try:
                out.append(accountant.epsilon(history[: i + 1], delta))
            except ACCOUNTANT_FAILURES:
                out.append(math.nan)
        return out


def recompute(history: tuple[Segment, ...], deltas: tuple[float, ...],
              accountants: tuple[str, ...] | None = None) -> dict[str, list[float]]:
    """Cumulative epsilon after every segment of ``history`` with each accountant.

    Args:
        history: the segments ``(noise multiplier / sensitivity, sample rate, steps)``.
        deltas: the delta of each segment's claim, one per segment.
        accountants: registry names (default :func:`audit_accountants`).

    Returns:
        Registry name -> the cumulative epsilon after each segment, in ``accountants`` order
        (``nan`` where an accountant fails: :func:`epsilons_or_nan`).
    """
    names = audit_accountants() if accountants is None else tuple(accountants)
    return _recompute(tuple((float(s), float(q), int(n)) for s, q, n in history),
                      tuple(deltas), names)


@functools.lru_cache(maxsize=1024)
def _recompute(history: tuple[Segment, ...], deltas: tuple[float, ...],
               names: tuple[str, ...]) -> dict[str, list[float]]:
    return {name: epsilons_or_nan(name, history, deltas) for name in names}


def reference_epsilon(prv: float, pld: float) -> float:
    """The audit's reference: the larger of the two tight upper bounds that are finite.

    Args:
        prv: the ``prv`` epsilon (``nan`` if it failed).
        pld: the ``pld`` epsilon (``nan`` if it failed).

    Returns:
        The larger of the two, the one that is not ``nan``, or ``nan`` if both are.
    """
    vals = [v for v in (prv, pld) if not math.isnan(v)]
    return max(vals) if vals else math.nan
