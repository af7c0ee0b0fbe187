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
#: Opacus's PRV accountant returns the upper end of an absolute 0.01 error band, so PRV sits
#: 0.01 above PLD at every setting measured: at small epsilons that is several per cent
PRV_EPS_ERROR = 0.01

__all__ = ["PRV_EPS_ERROR", "REFERENCE", "audit_accountants", "dpa_rdp_epsilons",
           "pld_epsilons", "pld_interval", "prv_epsilons", "recompute", "reference_epsilon"]


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
    return [_prv(tuple(history[: i + 1]), delta) for i, delta in enumerate(deltas)]


@functools.lru_cache(maxsize=4096)
def _prv(history: tuple[Segment, ...], delta: float) -> float:
    with quiet():
        try:
            return create_accountant("prv").epsilon(history, delta)
        except (ValueError, RuntimeError, OverflowError, ArithmeticError):
            return math.nan  # reported as an accountant failure, never as a pass


def recompute(history: tuple[Segment, ...], deltas: tuple[float, ...],
              accountants: tuple[str, ...] | None = None) -> dict[str, list[float]]:
    """Cumulative epsilon after every segment of ``history`` with each accountant.

    Args:
        history: the segments ``(noise multiplier / sensitivity, sample rate, steps)``.
        deltas: the delta of each segment's claim, one per segment.
        accountants: registry names (default :func:`audit_accountants`).

    Returns:
        Registry name -> the cumulative epsilon after each segment, in ``accountants`` order
        (``nan`` where PRV fails).
    """
    names = audit_accountants() if accountants is None else tuple(accountants)
    return _recompute(tuple((float(s), float(q), int(n)) for s, q, n in history),
                      tuple(deltas), names)


@functools.lru_cache(maxsize=1024)
def _recompute(history: tuple[Segment, ...], deltas: tuple[float, ...],
               names: tuple[str, ...]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    if "pld" in names or "dpa-rdp" in names:
        out["dpa-rdp"] = dpa_rdp_epsilons(history, deltas)
    for name in names:
        if name == "pld":  # discretisation relative to the (larger) dp-accounting RDP epsilon
            rdp = out["dpa-rdp"]
            out[name] = pld_epsilons(history, deltas, pld_interval(rdp[-1] if rdp else 1.0))
        elif name == "prv":
            out[name] = prv_epsilons(history, deltas)
        elif name not in out:
            out[name] = create_accountant(name).epsilons(history, deltas)
    return {name: out[name] for name in names}


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
