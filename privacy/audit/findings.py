"""What an audit finds: the :class:`Finding` kinds and the result types of an audit.

:class:`AuditResult` collects the :class:`ClientAudit` of every ledger (each a list of
:class:`EntryCheck`: what an entry recorded and what the accountants recompute), the findings
(every finding fails the audit) and notes; :meth:`AuditResult.to_dict` is ``audit.json``.
The checks that produce findings are in :mod:`fedssl.privacy.audit.checks`, the rendering in
:mod:`fedssl.privacy.audit.report`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from fedssl.privacy.accounting import REGISTRY, audit_accountants
from fedssl.privacy.audit.accounting import REFERENCE, reference_epsilon
from fedssl.privacy.identity.ledger import (
    LEGACY_RUN,
)


class FindingKind(StrEnum):
    """What an audit finding is about. A ``str`` (``StrEnum``): ``Finding.kind`` compares,
    hashes, prints and serialises to JSON exactly as the string value, which is what the text
    and JSON reports have always carried (``epsilon-understated`` is a ledger entry whose
    recorded epsilon is below the recomputed one; ``understated-epsilon`` the client-level
    claim of ``report.json``)."""

    UNSOUND_CONFIG = "unsound-config"
    MISSING_PUBLIC_KEY = "missing-public-key"
    BAD_PUBLIC_KEY = "bad-public-key"
    LEDGER_KEY_NOT_REGISTERED = "ledger-key-not-registered"
    LEDGER_KEY_MISMATCH = "ledger-key-mismatch"
    LEDGER_KEY_SHARED = "ledger-key-shared"
    LEDGER_INVALID = "ledger-invalid"
    CLIENT_MISMATCH = "client-mismatch"
    INVALID_ENTRY = "invalid-entry"
    SENSITIVITY_UNDERSTATED = "sensitivity-understated"
    UNSOUND_ACCOUNTANT = "unsound-accountant"
    ZERO_NOISE = "zero-noise"
    DELTA_MISMATCH = "delta-mismatch"
    ACCOUNTANT_FAILURE = "accountant-failure"
    EPSILON_UNDERSTATED = "epsilon-understated"
    ACCOUNTANT_DISAGREEMENT = "accountant-disagreement"
    BUDGET_OVERRUN = "budget-overrun"
    REPORT_MISMATCH = "report-mismatch"
    CLIENT_LEVEL = "client-level"
    UNDERSTATED_EPSILON = "understated-epsilon"
    NO_IDENTITY_REGISTRY = "no-identity-registry"
    BAD_REGISTRY = "bad-registry"
    MISSING_CONFIG = "missing-config"
    MISSING_LEDGER = "missing-ledger"
    UNEXPECTED_LEDGER = "unexpected-ledger"
    EMPTY_LEDGER = "empty-ledger"
    EMPIRICAL_VIOLATION = "empirical-violation"


class Severity(StrEnum):
    """How bad a :class:`Finding` is. Both fail the audit (exit 1); the severity ranks them.
    A ``str`` (``StrEnum``): it prints and serialises as its value, as the reports always
    carried it."""

    #: a privacy claim is false or cannot be verified
    ERROR = "error"
    #: suspicious (e.g. accountants that disagree beyond tolerance)
    WARNING = "warning"


@dataclass
class Finding:
    """One problem found. Every finding fails the audit (exit 1); ``severity`` ranks them
    (:class:`Severity`)."""

    severity: Severity
    kind: FindingKind
    message: str
    client: str | None = None
    round: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.severity, Severity):
            raise TypeError(f"Finding.severity must be a Severity, got {self.severity!r}")
        if not isinstance(self.kind, FindingKind):
            raise TypeError(f"Finding.kind must be a FindingKind, got {self.kind!r}")


def _unset() -> dict[str, float]:
    return dict.fromkeys(audit_accountants(), math.nan)


@dataclass
class EntryCheck:
    """One ledger entry: what it recorded and what the accountants recompute (keyed by the
    registry's names, :func:`~fedssl.privacy.accounting.audit_accountants`)."""

    round: int
    steps: int
    cumulative_steps: int
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    delta: float
    recorded: float
    #: this run's epsilon after the entry, per audit accountant (``nan`` until recomputed)
    epsilons: dict[str, float] = field(default_factory=_unset)
    #: the run the entry belongs to (:data:`~fedssl.privacy.identity.ledger.LEGACY_RUN` without id)
    run: str = LEGACY_RUN
    #: ``extra.sensitivity`` (1 when absent): the accountants see noise / sensitivity
    sensitivity: float = 1.0
    #: recorded ``lifetime_epsilon`` (legacy entries: their ``epsilon`` is the lifetime one)
    recorded_lifetime: float = math.nan
    #: every entry of the ledger so far composed, per audit accountant
    lifetime_epsilons: dict[str, float] = field(default_factory=_unset)

    @property
    def reference(self) -> float:
        """This run's reference epsilon, ``max(prv, pld)`` (:func:`reference_epsilon`)."""
        return reference_epsilon(*(self.epsilons.get(a, math.nan) for a in REFERENCE))

    @property
    def lifetime_reference(self) -> float:
        """The lifetime reference epsilon, ``max(prv, pld)`` over every entry so far."""
        return reference_epsilon(*(self.lifetime_epsilons.get(a, math.nan)
                                   for a in REFERENCE))

    @property
    def effective_noise(self) -> float:
        return self.noise_multiplier / self.sensitivity


@dataclass
class ClientAudit:
    """One client's ledger: verification status, entries and their recomputation."""

    client: str
    ledger: str
    signature_verified: bool = False
    chain_verified: bool = False
    #: this run's entries (what the run's claims are checked against)
    entries: list[EntryCheck] = field(default_factory=list)
    kinds: list[FindingKind] = field(default_factory=list)
    #: every entry of the ledger, all runs (the lifetime spend)
    all_entries: list[EntryCheck] = field(default_factory=list)
    run_id: str | None = None
    key_fingerprint: str | None = None
    registry_fingerprint: str | None = None
    #: True: key is the registry's; False: not registered or differs; None: no registry
    registered: bool | None = None
    #: the registry name the key is registered under (the client id, or a node name)
    registry_name: str | None = None

    @property
    def runs(self) -> dict[str, int]:
        """Entries per run in this ledger."""
        out: dict[str, int] = {}
        for e in self.all_entries:
            out[e.run] = out.get(e.run, 0) + 1
        return out

    @property
    def lifetime(self) -> EntryCheck | None:
        """The ledger's last entry (its lifetime fields are the site's lifetime spend)."""
        return self.all_entries[-1] if self.all_entries else None

    @property
    def steps(self) -> int:
        return sum(e.steps for e in self.entries)

    @property
    def last(self) -> EntryCheck | None:
        return self.entries[-1] if self.entries else None

    @property
    def status(self) -> str:
        return "ok" if not self.kinds else ",".join(dict.fromkeys(self.kinds))


@dataclass
class AuditResult:
    """Everything :func:`audit_run` found, and what :func:`write_audit` writes."""

    run_dir: str
    budget: float | None
    budget_source: str
    delta: float | None
    tolerance: float
    dp: bool | None
    method: str | None
    clients: list[ClientAudit] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    empirical: list[dict[str, Any]] = field(default_factory=list)
    #: the client-level DP claim and its recomputation (None: no client-level DP)
    client_level: dict[str, Any] | None = None
    #: the run audited (None: each ledger's last run)
    run_id: str | None = None
    #: where the identity registry came from (None: no registry)
    registry: str | None = None

    @property
    def clean(self) -> bool:
        return not self.findings

    def add(self, severity: Severity, kind: FindingKind, message: str, client: str | None = None,
            round: int | None = None) -> None:
        """Record a finding, and its kind on the client's audit when it names one.

        Args:
            severity: how bad it is.
            kind: what it is about.
            message: what was found, for people.
            client: the client it concerns, if any.
            round: the round it concerns, if any.
        """
        self.findings.append(Finding(severity, kind, message, client, round))
        for c in self.clients:
            if client is not None and c.client == client:
                c.kinds.append(kind)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data: ``audit.json`` (non-finite floats as ``None``, ``"inf"``
        or ``"-inf"``).

        Returns:
            The run's settings, each client's verification and epsilons (keyed by the audit
            accountants' registry names), the findings, notes and empirical audits.
        """
        def clean_float(x: Any) -> Any:
            if isinstance(x, float) and not math.isfinite(x):
                return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
            if isinstance(x, dict):
                return {k: clean_float(v) for k, v in x.items()}
            if isinstance(x, list):
                return [clean_float(v) for v in x]
            return x

        clients = {}
        for c in self.clients:
            last, life = c.last, c.lifetime
            clients[c.client] = {
                "ledger": c.ledger, "signature_verified": c.signature_verified,
                "chain_verified": c.chain_verified, "rounds": len(c.entries), "steps": c.steps,
                "status": c.status, "run_id": c.run_id, "runs": c.runs,
                "key_fingerprint": c.key_fingerprint,
                "registry_fingerprint": c.registry_fingerprint, "registered": c.registered,
                "registry_name": c.registry_name,
                "epsilon": {"recorded": last.recorded if last else None,
                            **{a: last.epsilons.get(a) if last else None
                               for a in audit_accountants()},
                            "reference": last.reference if last else None},
                "lifetime_epsilon": {
                    "recorded": life.recorded_lifetime if life else None,
                    **{a: life.lifetime_epsilons.get(a) if life else None
                       for a in audit_accountants()},
                    "reference": life.lifetime_reference if life else None},
                "entries": [{**asdict(e), "reference": e.reference,
                             "lifetime_reference": e.lifetime_reference}
                            for e in c.all_entries],
            }
        return clean_float({
            "run_dir": self.run_dir, "clean": self.clean, "run_id": self.run_id,
            "registry": self.registry,
            "budget": self.budget, "budget_source": self.budget_source, "delta": self.delta,
            "tolerance": self.tolerance, "dp": self.dp, "method": self.method,
            "accountants": {"reference": f"max({', '.join(REFERENCE)})",
                            **{a: REGISTRY[a].label or a for a in audit_accountants()}},
            "findings": [asdict(f) for f in self.findings],
            "notes": self.notes, "clients": clients, "empirical": self.empirical,
            "client_level": self.client_level,
        })
