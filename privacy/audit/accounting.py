"""The audit's recomputation of epsilon: independent accountants over a ledger's history.

Each ledger entry is a segment ``(noise multiplier / sensitivity, sample rate, steps)`` of the
Poisson-subsampled Gaussian mechanism; :func:`recompute` composes a history of them with each
accountant of :data:`AUDIT_ACCOUNTANTS` and returns the cumulative epsilon after every entry:

- ``prv``: Opacus's privacy-random-variable accountant (Gopi, Lee & Wutschitz, NeurIPS 2021),
  upper end of its error bound (:data:`PRV_EPS_ERROR`);
- ``pld``: Google dp-accounting's privacy-loss-distribution accountant, pessimistic
  connect-the-dots discretisation (Doroshenko et al., PETS 2022), an upper bound by
  construction;
- ``rdp``: dp-accounting's Rényi-DP accountant (Mironov 2017), looser but conservative.

Each is an accountant of the registry (:mod:`fedssl.privacy.accounting`):
:data:`REGISTRY_NAMES` maps the audit's column names to the registry's (the audit's ``rdp`` is
dp-accounting's, ``dpa-rdp``, independent of Opacus's ``rdp`` that clients may record with).

The reference the audit checks claims against is ``max(prv, pld)``
(:func:`reference_epsilon`). What the audit does with these numbers is in
:mod:`fedssl.privacy.audit.checks`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from fedssl.privacy.accounting import Segment, create_accountant, pld_interval, quiet

#: accountants recomputed by the audit, in table order
AUDIT_ACCOUNTANTS = ("prv", "pld", "rdp")
#: the audit's accountant names -> the registry's (``create_accountant``)
REGISTRY_NAMES = {"prv": "prv", "pld": "pld", "rdp": "dpa-rdp"}
#: Opacus's PRV accountant returns the upper end of an absolute 0.01 error band, so PRV sits
#: 0.01 above PLD at every setting measured: at small epsilons that is several per cent
PRV_EPS_ERROR = 0.01

__all__ = ["AUDIT_ACCOUNTANTS", "PRV_EPS_ERROR", "REGISTRY_NAMES", "pld_epsilons",
           "pld_interval", "prv_epsilons", "rdp_epsilons", "recompute", "reference_epsilon"]


def pld_epsilons(history: Sequence[Segment], deltas: Sequence[float],
                 interval: float | None = None) -> list[float]:
    """Cumulative epsilon after each segment, Google dp-accounting PLD (pessimistic; the
    interval defaults to :func:`pld_interval` of the RDP epsilon)."""
    return create_accountant("pld", interval=interval).epsilons(history, deltas)


def rdp_epsilons(history: Sequence[Segment], deltas: Sequence[float]) -> list[float]:
    """Cumulative epsilon after each segment, Google dp-accounting RDP (conservative)."""
    return create_accountant(REGISTRY_NAMES["rdp"]).epsilons(history, deltas)


def prv_epsilons(history: Sequence[Segment], deltas: Sequence[float]) -> list[float]:
    """Cumulative epsilon after each segment, Opacus PRV (the project's accountant)."""
    return [_prv(tuple(history[: i + 1]), delta) for i, delta in enumerate(deltas)]


@functools.lru_cache(maxsize=4096)
def _prv(history: tuple[Segment, ...], delta: float) -> float:
    with quiet():
        try:
            return create_accountant("prv").epsilon(history, delta)
        except (ValueError, RuntimeError, OverflowError, ArithmeticError):
            return math.nan  # reported as an accountant failure, never as a pass


_ACCOUNTANT_FNS = {"prv": prv_epsilons, "pld": pld_epsilons, "rdp": rdp_epsilons}


@functools.lru_cache(maxsize=1024)
def recompute(history: tuple[Segment, ...], deltas: tuple[float, ...],
              accountants: tuple[str, ...] = AUDIT_ACCOUNTANTS) -> dict[str, list[float]]:
    """Cumulative epsilon after every segment of ``history`` with each accountant."""
    history = tuple((float(s), float(q), int(n)) for s, q, n in history)
    out: dict[str, list[float]] = {}
    rdp = rdp_epsilons(history, deltas)
    for name in accountants:
        if name == "rdp":
            out[name] = rdp
        elif name == "pld":  # discretisation relative to the (larger) RDP epsilon
            out[name] = pld_epsilons(history, deltas, pld_interval(rdp[-1] if rdp else 1.0))
        else:
            out[name] = _ACCOUNTANT_FNS[name](history, deltas)
    return out


def reference_epsilon(prv: float, pld: float) -> float:
    """The audit's reference: the larger of the two tight upper bounds that are finite."""
    vals = [v for v in (prv, pld) if not math.isnan(v)]
    return max(vals) if vals else math.nan
