"""Privacy accountants behind one interface, in a registry (like ``opacus.accountants``).

:class:`~fedssl.privacy.accounting.base.Accountant` composes a history of a mechanism's
releases into ``(epsilon, delta)``; :func:`create_accountant` builds one by name:

=========== ============================================ ============== =====================
name        accountant                                   history item   upper bound
=========== ============================================ ============== =====================
``prv``     Opacus PRV (Gopi et al. 2021)                ``Segment``    yes (default)
``rdp``     Opacus RDP (Mironov 2017)                    ``Segment``    yes
``gdp``     Opacus GDP (CLT; Dong, Roth & Su 2019)       ``Segment``    no: approximation
``pld``     dp-accounting PLD, pessimistic (2022)        ``Segment``    yes
``dpa-rdp`` dp-accounting RDP (Mironov 2017)             ``Segment``    yes
``skellam`` Skellam RDP (Agarwal et al. 2021)            SkellamRound   yes
=========== ============================================ ============== =====================

To add an accountant: subclass :class:`~fedssl.privacy.accounting.base.Accountant` (or
:class:`~fedssl.privacy.accounting.base.GaussianAccountant` for DP-SGD histories), set
``name``, ``upper_bound``, ``budget`` and ``audit``, decorate it with
:func:`register_accountant`; every name list (the run setting ``accountant``, the client's
budget, the mechanisms' accountants, the audit's columns) is derived from the registry
(:func:`budget_accountants`, :func:`gaussian_accountants`, :func:`audit_accountants`).

Users: :func:`fedssl.privacy.accounting.budget.epsilon_of` and
:func:`~fedssl.privacy.accounting.budget.calibrate_noise` (a client's budget: ``prv`` or ``rdp``),
the audit's independent recomputation (:mod:`fedssl.privacy.audit.accounting`: the
``audit`` accountants ``prv``, ``pld``, ``dpa-rdp``; ``skellam`` for distributed DP) and
distributed DP (:func:`fedssl.privacy.client_level.distributed.skellam_epsilon`).
"""

from fedssl.privacy.accounting.base import (
    REGISTRY,
    Accountant,
    AccountingError,
    GaussianAccountant,
    Segment,
    accountant_names,
    audit_accountants,
    budget_accountants,
    create_accountant,
    gaussian_accountants,
    quiet,
    register_accountant,
)

# registration order is the order of every derived name list (prv, the default, first)
from fedssl.privacy.accounting.opacus_accountants import (  # isort: skip
    GDPAccountant,
    OpacusAccountant,
    PRVAccountant,
    RDPAccountant,
)
from fedssl.privacy.accounting.dpa import (  # isort: skip
    DpaRDPAccountant,
    PLDAccountant,
    pld_interval,
)
from fedssl.privacy.accounting.skellam import SkellamAccountant, SkellamRound

__all__ = ["REGISTRY", "Accountant", "AccountingError", "DpaRDPAccountant", "GDPAccountant",
           "GaussianAccountant", "OpacusAccountant", "PLDAccountant", "PRVAccountant",
           "RDPAccountant", "Segment", "SkellamAccountant", "SkellamRound",
           "accountant_names", "audit_accountants", "budget_accountants", "create_accountant",
           "gaussian_accountants", "pld_interval", "quiet",
           "register_accountant"]
