"""Privacy accounting of DP-SGD (Poisson-subsampled Gaussian mechanism) for one client.

A client's privacy spend is a history of ``(noise_multiplier, sample_rate, steps)`` segments,
one per round it trained. The cumulative epsilon at a given delta is computed by composing the
whole history with one of Opacus's accountants:

- ``"prv"`` (default): privacy random variables, Gopi, Lee & Wutschitz, "Numerical Composition
  of Differential Privacy", NeurIPS 2021. Opacus returns the *upper* end of its error bound,
  so the reported epsilon is a true upper bound.
- ``"rdp"``: Rényi DP, Mironov 2017 / Mironov, Talwar & Zhang 2019; a looser upper bound.
- ``"gdp"``: Gaussian DP via the CLT, Dong, Roth & Su 2019 / Bu et al. 2020; an
  *approximation* that is not guaranteed to be an upper bound. It is accepted for comparison
  but never used for budgets (see :data:`UPPER_BOUND_ACCOUNTANTS`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

ACCOUNTANTS = ("prv", "rdp", "gdp")
#: accountants whose epsilon is a guaranteed upper bound (usable for budgets and reports)
UPPER_BOUND_ACCOUNTANTS = ("prv", "rdp")

#: steps of DP-SGD at one setting, as the accountants compose them:
#: ``(noise_multiplier, sample_rate, steps)``; a history is a sequence of them (the one
#: definition: :mod:`fedssl.privacy.audit` and the client's guard import it from here)
Segment = tuple[float, float, int]


class AccountingError(ValueError):
    """Raised for an unknown accountant or an impossible privacy target."""


def _check_accountant(name: str) -> None:
    if name not in UPPER_BOUND_ACCOUNTANTS:
        raise AccountingError(
            f"accountant {name!r} cannot be used for budgets: choose one of "
            f"{', '.join(UPPER_BOUND_ACCOUNTANTS)} (guaranteed upper bounds)"
        )


def epsilon_of(history: Iterable[Segment], delta: float, accountant: str = "prv") -> float:
    """Cumulative epsilon at ``delta`` of a history of DP-SGD segments.

    Returns ``inf`` if any segment ran without noise, ``0.0`` for an empty history.
    """
    _check_accountant(accountant)
    segments = _merge([(float(s), float(q), int(n)) for s, q, n in history if n > 0])
    if not segments:
        return 0.0
    if any(s <= 0 for s, _, _ in segments):
        return math.inf
    return _composed_epsilon(tuple(sorted(segments)), float(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _composed_epsilon(segments: tuple[Segment, ...], delta: float, accountant: str) -> float:
    """Memoised: a client asks for the same composition when planning and when recording."""
    from opacus.accountants import create_accountant  # lazy: opacus imports take ~2 s

    acc = create_accountant(mechanism=accountant)
    acc.history = list(segments)
    return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=1024)
def _calibrate_fresh(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                     accountant: str) -> float:
    """Opacus's bisection, memoised: clients of one data size all need the same answer."""
    try:
        from opacus.accountants.utils import get_noise_multiplier

        return float(get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
            steps=steps, accountant=accountant, epsilon_tolerance=0.01,
        ))
    except ValueError as exc:
        raise AccountingError(
            f"cannot reach epsilon={target_epsilon} at delta={delta} with sample rate "
            f"{sample_rate:.4g} over {steps} steps: {exc}"
        ) from exc


def _merge(segments: list[Segment]) -> list[Segment]:
    """Merge segments of the same mechanism: k steps then m steps == k + m steps (exact,
    since composition is order-independent), which keeps PRV/RDP evaluation fast."""
    merged: dict[tuple[float, float], int] = {}
    for s, q, n in segments:
        merged[(s, q)] = merged.get((s, q), 0) + n
    return [(s, q, n) for (s, q), n in merged.items()]


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    spent: Iterable[Segment] = (),
    hint: float | None = None,
) -> float:
    """Smallest noise multiplier (to 1 %) so that ``spent`` plus ``steps`` new steps at
    ``sample_rate`` stays within ``target_epsilon`` at ``delta``.

    ``hint`` (e.g. the noise multiplier of earlier rounds) is returned as is when it already
    keeps the plan within the target: a client keeps one noise level across rounds and pays
    one accountant evaluation instead of a search.

    Raises:
        AccountingError: if the target cannot be met (budget already spent or too small).
    """
    _check_accountant(accountant)
    if not (0 < sample_rate <= 1):
        raise AccountingError(f"sample rate must be in (0, 1], got {sample_rate}")
    spent = list(spent)
    if hint is not None and hint > 0 and epsilon_of(
        [*spent, (hint, sample_rate, steps)], delta, accountant
    ) <= target_epsilon:
        return float(hint)
    if not spent:
        return _calibrate_fresh(float(target_epsilon), float(delta), float(sample_rate),
                                int(steps), accountant)
    # with prior spend, bisect on sigma over the composed history
    if epsilon_of(spent, delta, accountant) >= target_epsilon:
        raise AccountingError(f"privacy budget epsilon={target_epsilon} is already spent")
    lo, hi = 0.0, 1.0
    while epsilon_of([*spent, (hi, sample_rate, steps)], delta, accountant) > target_epsilon:
        hi *= 2
        if hi > 1e4:
            raise AccountingError(f"cannot reach epsilon={target_epsilon}: budget too small")
    while hi - lo > 0.01 * hi:
        mid = (lo + hi) / 2
        if epsilon_of([*spent, (mid, sample_rate, steps)], delta, accountant) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
