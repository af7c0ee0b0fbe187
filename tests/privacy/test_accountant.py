"""Accounting: calibration meets its target, composition is exact and monotone."""

from __future__ import annotations

import math

import pytest

from fedssl.privacy.accounting.budget import AccountingError, calibrate_noise, epsilon_of


def test_calibrated_noise_meets_target_tightly() -> None:
    sigma = calibrate_noise(8.0, 1e-5, 0.08, 60)
    eps = epsilon_of([(sigma, 0.08, 60)], 1e-5)
    assert eps <= 8.0
    assert eps > 7.8  # not wastefully noisy
    assert epsilon_of([(sigma * 0.95, 0.08, 60)], 1e-5) > 8.0


def test_split_history_equals_single_segment() -> None:
    whole = epsilon_of([(1.0, 0.05, 100)], 1e-5, "rdp")
    parts = epsilon_of([(1.0, 0.05, 40), (1.0, 0.05, 60)], 1e-5, "rdp")
    assert parts == pytest.approx(whole, rel=1e-9)


def test_epsilon_grows_with_steps_and_shrinks_with_noise() -> None:
    assert epsilon_of([(1.0, 0.05, 100)], 1e-5) < epsilon_of([(1.0, 0.05, 200)], 1e-5)
    assert epsilon_of([(2.0, 0.05, 100)], 1e-5) < epsilon_of([(1.0, 0.05, 100)], 1e-5)


def test_prv_is_tighter_than_rdp_upper_bound() -> None:
    prv = epsilon_of([(1.0, 0.01, 1000)], 1e-5, "prv")
    rdp = epsilon_of([(1.0, 0.01, 1000)], 1e-5, "rdp")
    assert prv < rdp


def test_no_noise_means_infinite_epsilon_and_empty_history_zero() -> None:
    assert math.isinf(epsilon_of([(0.0, 0.1, 10)], 1e-5))
    assert epsilon_of([], 1e-5) == 0.0


def test_calibration_with_prior_spend_stays_within_target() -> None:
    spent = [(1.0, 0.05, 200)]
    sigma = calibrate_noise(6.0, 1e-5, 0.05, 300, spent=spent)
    assert epsilon_of([*spent, (sigma, 0.05, 300)], 1e-5) <= 6.0


def test_spent_budget_and_approximate_accountant_refused() -> None:
    with pytest.raises(AccountingError, match="already spent"):
        calibrate_noise(0.5, 1e-5, 0.5, 10, spent=[(0.5, 0.5, 100)])
    with pytest.raises(AccountingError, match="upper bound"):
        epsilon_of([(1.0, 0.1, 10)], 1e-5, "gdp")


def test_registry_holds_every_accountant_behind_one_interface() -> None:
    from fedssl.privacy.accounting import (
        REGISTRY,
        Accountant,
        audit_accountants,
        create_accountant,
    )
    from fedssl.privacy.accounting.budget import ACCOUNTANTS, UPPER_BOUND_ACCOUNTANTS

    assert set(REGISTRY) == {"prv", "rdp", "gdp", "pld", "dpa-rdp", "skellam"}
    assert all(issubclass(c, Accountant) and c.name == n for n, c in REGISTRY.items())
    # the audit's accountants come from the registry, named as it names them
    assert audit_accountants() == ("prv", "pld", "dpa-rdp")
    # a second import of a module (pytest's doctest collection: privacy.x besides
    # fedssl.privacy.x) keeps the first registration
    assert all(c.__module__.startswith("fedssl.privacy.accounting.") for c in REGISTRY.values())
    assert set(ACCOUNTANTS) <= set(REGISTRY)
    assert {n for n in ACCOUNTANTS if REGISTRY[n].upper_bound} == set(UPPER_BOUND_ACCOUNTANTS)
    with pytest.raises(AccountingError, match="unknown accountant"):
        create_accountant("moments")


def test_accountant_steps_like_opacus_and_matches_epsilon_of() -> None:
    from fedssl.privacy.accounting import create_accountant

    acc = create_accountant("rdp")
    acc.step(1.0, 0.05, 40)
    acc.step(noise_multiplier=1.0, sample_rate=0.05, steps=60)
    assert acc.get_epsilon(1e-5) == epsilon_of([(1.0, 0.05, 100)], 1e-5, "rdp")
    assert create_accountant("pld").epsilon([], 1e-5) == 0.0
    assert math.isinf(create_accountant("dpa-rdp").epsilon([(0.0, 0.1, 10)], 1e-5))


def test_extending_into_a_spent_budget_prints_no_rdp_order_warning() -> None:
    """A run extended into an almost spent budget composes a huge noise multiplier; Opacus's
    PRV accountant then warned "Optimal order is the largest alpha" from the RDP bound that
    only sizes its domain (issue 16's --extend output). The PRV epsilon is unaffected and the
    warning is gone; the rdp accountant, whose own bound it is about, still warns."""
    import warnings

    from fedssl.privacy.accounting.budget import calibrate_noise

    spent = [(0.8461, 0.4444, 2), (0.8461, 0.4444, 2)]  # numbers no other test caches
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sigma = calibrate_noise(8.0, 1e-5, 0.4444, 2, spent=spent)
        eps = epsilon_of([*spent, (sigma, 0.4444, 2)], 1e-5)
    assert sigma > 5 and eps <= 8.0
    assert not [w for w in caught if "Optimal order" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        epsilon_of([(20.0001, 0.4444, 2)], 1e-5, "rdp")
    assert [w for w in caught if "Optimal order is the largest alpha" in str(w.message)]


def test_delta_must_be_below_one_over_the_records() -> None:
    """Issue 22 item 7: `--delta 0.5` was accepted ("epsilon 7.99 at delta 0.5")."""
    from fedssl.privacy.accounting import AccountingError
    from fedssl.privacy.accounting.budget import check_delta

    check_delta(1e-5, 480, "a site")
    check_delta(0.5, 0, "nothing")  # no records: nothing to protect, nothing to refuse
    check_delta(1 / 500, 480, "a site")
    with pytest.raises(AccountingError, match=r"delta 0.0025 is not below 1/records .*480"):
        check_delta(1 / 400, 480, "a site")
    with pytest.raises(AccountingError, match=r"1/480 \(e.g. 0.0001\)"):
        check_delta(0.5, 480, "a site")


def test_a_new_accountant_is_added_in_one_place() -> None:
    """Issue 23 (c): a toy accountant registered with ``register_accountant`` alone is what
    the run setting ``accountant`` accepts, what a client budgets and calibrates with (the
    base class's bisection, no Opacus-only cast) and what the audit accepts in a ledger;
    an approximation (``upper_bound = False``) is refused everywhere."""
    from fedssl.privacy.accounting import (
        REGISTRY,
        GaussianAccountant,
        budget_accountants,
        create_accountant,
        register_accountant,
    )
    from fedssl.privacy.audit.checks import check_config
    from fedssl.privacy.audit.findings import AuditResult
    from fedssl.run_spec import ConfigError, RunSpec

    @register_accountant
    class DoubledRDP(GaussianAccountant):
        """Twice Opacus RDP's epsilon: a (loose) upper bound."""

        name = "toy-doubled-rdp"
        budget = True

        def epsilon(self, history, delta: float) -> float:
            return 2 * create_accountant("rdp").epsilon(history, delta)

    try:
        assert "toy-doubled-rdp" in budget_accountants()
        RunSpec(accountant="toy-doubled-rdp").validate()
        sigma = calibrate_noise(8.0, 1e-5, 0.05, 200, "toy-doubled-rdp")
        eps = epsilon_of([(sigma, 0.05, 200)], 1e-5, "toy-doubled-rdp")
        assert 7.9 <= eps <= 8.0 and sigma > calibrate_noise(8.0, 1e-5, 0.05, 200, "rdp")
        spent = [(sigma, 0.05, 100)]
        more = calibrate_noise(8.0, 1e-5, 0.05, 100, "toy-doubled-rdp", spent=spent)
        assert epsilon_of([*spent, (more, 0.05, 100)], 1e-5, "toy-doubled-rdp") <= 8.0
        res = AuditResult("run", None, "", 1e-5, 0.01, True, "simsiam")
        check_config(res, {"method": "simsiam", "target_epsilon": 8.0,
                           "accountant": "toy-doubled-rdp"})
        assert not [f for f in res.findings if "accountant" in f.message], res.findings

        DoubledRDP.upper_bound = False  # an approximation: never for a budget
        assert "toy-doubled-rdp" not in budget_accountants()
        with pytest.raises(ConfigError, match="not an upper-bound accountant"):
            RunSpec(accountant="toy-doubled-rdp").validate()
        with pytest.raises(AccountingError, match="cannot be used for budgets"):
            epsilon_of([(1.0, 0.1, 10)], 1e-5, "toy-doubled-rdp")
        check_config(res, {"method": "simsiam", "target_epsilon": 8.0,
                           "accountant": "toy-doubled-rdp"})
        assert [f for f in res.findings if "not a guaranteed upper bound" in f.message]
    finally:
        REGISTRY.pop("toy-doubled-rdp", None)
