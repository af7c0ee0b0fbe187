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
  but never used for budgets (see
  :func:`~fedssl.privacy.accounting.budget_accountants`).

The accountants themselves are behind one interface in a registry
(:mod:`fedssl.privacy.accounting`, :func:`~fedssl.privacy.accounting.create_accountant`);
this module is the budget-facing API on top of them: it refuses accountants that are not
upper bounds and calibrates noise to a target.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from fedssl.privacy.accounting import (
    AccountingError,
    GaussianAccountant,
    OpacusAccountant,
    Segment,
    accountant_names,
    budget_accountants,
    create_accountant,
)

#: Opacus's accountants (derived from the registry)
ACCOUNTANTS = accountant_names(lambda c: issubclass(c, OpacusAccountant))
#: the budget accountants when this module was imported (guaranteed upper bounds, usable for
#: budgets and reports); :func:`~fedssl.privacy.accounting.budget_accountants` is the live list
UPPER_BOUND_ACCOUNTANTS = budget_accountants()

__all__ = ["ACCOUNTANTS", "UPPER_BOUND_ACCOUNTANTS", "AccountingError", "Segment",
           "calibrate_noise", "epsilon_of"]


def _accountant(name: str) -> GaussianAccountant:
    """The registry's accountant ``name``, refused unless clients may budget with it."""
    allowed = budget_accountants()
    if name not in allowed:
        raise AccountingError(
            f"accountant {name!r} cannot be used for budgets: choose one of "
            f"{', '.join(allowed)} (guaranteed upper bounds)"
        )
    acc = create_accountant(name)
    assert isinstance(acc, GaussianAccountant)  # budget_accountants() holds no other kind
    return acc


def check_delta(delta: float, records: int, who: str) -> None:
    """Refuse a ``delta`` that is not below ``1 / records``: an (epsilon, delta) guarantee
    with delta of order 1/N is met by a mechanism that publishes one of the N records in the
    clear (Dwork & Roth 2014, Sec. 2.3), which is why Opacus advises delta < 1/N.

    Args:
        delta: the guarantee's delta.
        records: the records the guarantee protects (a site's own data set).
        who: names the data set in the message.

    Raises:
        AccountingError: if ``records`` > 0 and ``delta >= 1 / records``.
    """
    if records > 0 and not delta < 1.0 / records:
        raise AccountingError(
            f"delta {delta:g} is not below 1/records = {1.0 / records:.3g} for {who} "
            f"({records} records): a guarantee with such a delta allows a record to be "
            f"published in the clear; use a delta below 1/{records} (e.g. "
            f"{10 ** math.floor(math.log10(0.1 / records)):g})")


def epsilon_of(history: Iterable[Segment], delta: float, accountant: str = "prv") -> float:
    """Cumulative epsilon at ``delta`` of a history of DP-SGD segments.

    Returns ``inf`` if any segment ran without noise, ``0.0`` for an empty history.

    Args:
        history: the segments ``(noise_multiplier, sample_rate, steps)``.
        delta: the guarantee's delta.
        accountant: a budget accountant's registry name (:func:`budget_accountants`).

    Returns:
        The cumulative epsilon.

    Raises:
        AccountingError: ``accountant`` is not one clients may budget with.
    """
    return _accountant(accountant).epsilon(history, delta)


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

    Args:
        target_epsilon: the epsilon the whole history may reach.
        delta: the guarantee's delta.
        sample_rate: Poisson sampling rate of the new steps, in (0, 1].
        steps: how many new steps.
        accountant: a budget accountant's registry name.
        spent: the history already spent.
        hint: a noise multiplier to keep if it already meets the target.

    Returns:
        The noise multiplier of the new steps.

    Raises:
        AccountingError: if the target cannot be met (budget already spent or too small).
    """
    acc = _accountant(accountant)
    if not (0 < sample_rate <= 1):
        raise AccountingError(f"sample rate must be in (0, 1], got {sample_rate}")
    spent = list(spent)
    if hint is not None and hint > 0 and epsilon_of(
        [*spent, (hint, sample_rate, steps)], delta, accountant
    ) <= target_epsilon:
        return float(hint)
    return acc.calibrate(target_epsilon, delta, sample_rate, steps, spent)
