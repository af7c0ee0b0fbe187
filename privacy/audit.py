"""Independent audit of a run directory's privacy claims: ledgers, accountants, configuration.

What and why: a run's epsilons are written by the clients that spent them (their signed ledgers,
:mod:`fedssl.privacy.ledger`) and summarised by the server (``report.json``). An auditor should
not have to trust either, nor the single accountant that produced the numbers. This module

1. verifies every ledger's hash chain and Ed25519 signatures against the client's public key
   (``RUN/ledger/<client>.jsonl`` with ``RUN/ledger/<client>.pub``), that the ``client``
   field matches the file name, and that the public key is the one the identity registry
   (``RUN/identities.json``, or ``--registry``; :func:`fedssl.privacy.identity.load_registry`)
   lists for that client: anyone can re-sign a ledger with a fresh key and replace the
   ``.pub``, only the registry (distributed out of band) ties a key to a site. Without a
   registry that is a finding, never a silent pass; key fingerprints (SHA-256 of the raw
   32-byte Ed25519 key) are printed per client;
2. recomputes each client's cumulative epsilon after every entry from the recorded noise
   multiplier (divided by ``extra.sensitivity`` when recorded,
   :meth:`fedssl.privacy.ledger.LedgerEntry.segment`), sample rate and steps with
   independent accountants of the Poisson-subsampled Gaussian mechanism:

   - ``prv``: Opacus's privacy-random-variable accountant (Gopi, Lee & Wutschitz, "Numerical
     Composition of Differential Privacy", NeurIPS 2021), upper end of its error bound;
   - ``pld``: Google dp-accounting's privacy-loss-distribution accountant with the
     pessimistic connect-the-dots discretisation (Doroshenko, Ghazi, Kamath, Kumar &
     Manurangsi, "Connect the Dots: Tighter Discrete Approximations of Privacy Loss
     Distributions", PETS 2022), an upper bound by construction;
   - ``rdp``: dp-accounting's Rényi-DP accountant (Mironov, "Rényi Differential Privacy",
     CSF 2017; Mironov, Talwar & Zhang 2019 for the subsampled Gaussian), a looser but
     conservative upper bound, used as a sanity check (RDP >= PRV, PLD);

   and flags an entry whose recorded epsilon is below the reference ``max(prv, pld)`` by more
   than the tolerance (1 % by default). A site's ledger may span several server runs: an
   entry's ``epsilon`` is its run's (the composition of that run's entries; entries without a
   run id were computed over the whole ledger) and ``lifetime_epsilon`` all runs'; both are
   recomputed and checked. The run audited is ``RUN/run_id`` (server runs) or the run of each
   ledger's last entry; its epsilon and the site's lifetime epsilon are shown side by side;
3. checks budgets (the run's recorded or recomputed epsilon above ``target_epsilon`` of
   ``config.toml``, a per-run target, or an explicit budget) and the delta of every entry
   against the config. ``config.toml`` is either the simulator's (``[experiment]``) or the
   server's (``[run]``, :mod:`fedssl.server.run_record`);
4. checks soundness of the configuration: DP-SGD with an objective that is not per-record
   decomposable, DP without noise, an accountant that is not an upper bound;
5. cross-checks ``report.json``'s privacy block against the verified ledgers.

Every problem becomes a :class:`Finding`; :func:`write_audit` writes ``audit.json`` (machine
readable), ``report.md`` and ``epsilon.png`` (recorded vs recomputed epsilon per round).
The empirical counterpart (a lower bound from a canary experiment) is
:mod:`fedssl.privacy.empirical_audit`.

Example::

    from fedssl.privacy.audit import audit_run, format_table, write_audit

    result = audit_run(Path("runs/demo"), config=cfg_table)
    write_audit(result, Path("runs/demo/audit"))
    print(format_table(result)); sys.exit(0 if result.clean else 1)
"""

from __future__ import annotations

import functools
import json
import logging
import math
import tomllib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedssl.privacy.accountant import UPPER_BOUND_ACCOUNTANTS, Segment, epsilon_of
from fedssl.privacy.identity import IdentityError, load_public_key, load_registry
from fedssl.privacy.ledger import (
    LEGACY_RUN,
    LedgerEntry,
    LedgerError,
    effective_noise_multiplier,
    read_ledger,
)

#: accountants recomputed by the audit, in table order
AUDIT_ACCOUNTANTS = ("prv", "pld", "rdp")
#: relative tolerance of "recorded below recomputed" and of recomputed-vs-budget
DEFAULT_TOLERANCE = 0.01
#: PRV and PLD further apart than this (relative, plus PRV's absolute eps_error) warn
AGREEMENT_TOLERANCE = 0.05
#: Opacus's PRV accountant returns the upper end of an absolute 0.01 error band, so PRV sits
#: 0.01 above PLD at every setting measured: at small epsilons that is several per cent
PRV_EPS_ERROR = 0.01

def key_fingerprint(key: Ed25519PublicKey) -> str:
    """``SHA256:`` and the first 16 hex digits of SHA-256 over the raw 32-byte public key."""
    import hashlib

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# accountants
# --------------------------------------------------------------------------------------------
@contextmanager
def _quiet() -> Iterator[None]:
    """Silence dp-accounting's RDP convergence warnings (an excluded order only makes the RDP
    bound looser, never wrong) and Opacus PRV's numpy warnings at q = 1."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        absl.setLevel(level)


def _event(noise: float, rate: float, steps: int) -> Any:
    import dp_accounting as dpa

    return dpa.SelfComposedDpEvent(
        dpa.PoissonSampledDpEvent(rate, dpa.GaussianDpEvent(noise)), steps)


def pld_interval(epsilon: float) -> float:
    """PLD value-discretisation interval for a PLD whose epsilon is at most ``epsilon`` (the
    RDP bound): 1e-3 relative, at most 1e-3 absolute. Measured here: the pessimistic PLD at
    1e-3 is within 0.05 % of the one at 1e-4 from 100 to 10k steps and ~10x faster; 1e-2
    overshoots by 5 % at 10k steps (q=0.01, sigma=1)."""
    if not math.isfinite(epsilon) or epsilon <= 0:
        return 1e-3
    return float(min(1e-3, max(1e-5, 1e-3 * epsilon)))


def pld_epsilons(history: Sequence[Segment], deltas: Sequence[float],
                 interval: float | None = None) -> list[float]:
    """Cumulative epsilon after each segment, Google dp-accounting PLD (pessimistic)."""
    from dp_accounting.pld import PLDAccountant

    if interval is None:
        interval = pld_interval(rdp_epsilons(history, deltas)[-1] if history else 1.0)
    acc = PLDAccountant(value_discretization_interval=interval)
    return _cumulative(acc, history, deltas)


def _cumulative(acc, history: Sequence[Segment], deltas: Sequence[float]) -> list[float]:
    """Compose the segments into a dp-accounting accountant one by one; epsilon after each
    (``inf`` from the first noise-free segment on)."""
    out, spent, broken = [], False, False
    with _quiet():
        for (noise, rate, steps), delta in zip(history, deltas, strict=True):
            if steps > 0 and rate > 0:
                if noise <= 0:
                    broken = True
                else:
                    acc.compose(_event(noise, rate, steps))
                    spent = True
            out.append(math.inf if broken else
                       float(acc.get_epsilon(delta)) if spent else 0.0)
    return out


def rdp_epsilons(history: Sequence[Segment], deltas: Sequence[float]) -> list[float]:
    """Cumulative epsilon after each segment, Google dp-accounting RDP (conservative)."""
    from dp_accounting.rdp import RdpAccountant

    acc = RdpAccountant()
    return _cumulative(acc, history, deltas)


def prv_epsilons(history: Sequence[Segment], deltas: Sequence[float]) -> list[float]:
    """Cumulative epsilon after each segment, Opacus PRV (the project's accountant)."""
    return [_prv(tuple(history[: i + 1]), delta) for i, delta in enumerate(deltas)]


@functools.lru_cache(maxsize=4096)
def _prv(history: tuple[Segment, ...], delta: float) -> float:
    with _quiet():
        try:
            return epsilon_of(history, delta, "prv")
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


# --------------------------------------------------------------------------------------------
# result types
# --------------------------------------------------------------------------------------------
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


@dataclass
class Finding:
    """One problem found. Every finding fails the audit (exit 1); ``severity`` ranks them:
    ``error`` (a privacy claim is false or unverifiable) or ``warning`` (suspicious)."""

    severity: str
    kind: FindingKind
    message: str
    client: str | None = None
    round: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FindingKind):
            raise TypeError(f"Finding.kind must be a FindingKind, got {self.kind!r}")


@dataclass
class EntryCheck:
    """One ledger entry: what it recorded and what the accountants recompute."""

    round: int
    steps: int
    cumulative_steps: int
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    delta: float
    recorded: float
    prv: float = math.nan
    pld: float = math.nan
    rdp: float = math.nan
    #: the run the entry belongs to (:data:`~fedssl.privacy.ledger.LEGACY_RUN` without id)
    run: str = LEGACY_RUN
    #: ``extra.sensitivity`` (1 when absent): the accountants see noise / sensitivity
    sensitivity: float = 1.0
    #: recorded ``lifetime_epsilon`` (legacy entries: their ``epsilon`` is the lifetime one)
    recorded_lifetime: float = math.nan
    lifetime_prv: float = math.nan
    lifetime_pld: float = math.nan
    lifetime_rdp: float = math.nan

    @property
    def reference(self) -> float:
        return reference_epsilon(self.prv, self.pld)

    @property
    def lifetime_reference(self) -> float:
        return reference_epsilon(self.lifetime_prv, self.lifetime_pld)

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

    def add(self, severity: str, kind: FindingKind, message: str, client: str | None = None,
            round: int | None = None) -> None:
        self.findings.append(Finding(severity, kind, message, client, round))
        for c in self.clients:
            if client is not None and c.client == client:
                c.kinds.append(kind)

    def to_dict(self) -> dict[str, Any]:
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
                            **{a: getattr(last, a) if last else None
                               for a in AUDIT_ACCOUNTANTS},
                            "reference": last.reference if last else None},
                "lifetime_epsilon": {
                    "recorded": life.recorded_lifetime if life else None,
                    **{a: getattr(life, f"lifetime_{a}") if life else None
                       for a in AUDIT_ACCOUNTANTS},
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
            "accountants": {"reference": "max(prv, pld)", "prv": "opacus PRV (Gopi et al. "
                            "2021)", "pld": "dp-accounting PLD, pessimistic connect-the-dots "
                            "(Doroshenko et al. 2022)", "rdp": "dp-accounting RDP (Mironov "
                            "2017), conservative"},
            "findings": [asdict(f) for f in self.findings],
            "notes": self.notes, "clients": clients, "empirical": self.empirical,
            "client_level": self.client_level,
        })


# --------------------------------------------------------------------------------------------
# the audit
# --------------------------------------------------------------------------------------------
def read_config_table(path: Path) -> dict[str, Any]:
    """A run's ``config.toml`` as the simulator's ``[experiment]`` keys, unvalidated (an
    unsound configuration must reach the audit, not be rejected before it).

    Reads the simulator's format (an ``[experiment]`` table), the server's (a ``[run]`` table
    of kebab-case run-config keys, :mod:`fedssl.server.run_record`: mapped to the same names,
    ``num-server-rounds`` to ``rounds``), or a bare top-level table."""
    raw = tomllib.loads(path.read_text())
    if isinstance(raw.get("experiment"), dict):
        return dict(raw["experiment"])
    if isinstance(raw.get("run"), dict):
        table = {k.replace("-", "_"): v for k, v in raw["run"].items()}
        if "num_server_rounds" in table:
            table["rounds"] = table.pop("num_server_rounds")
        return table
    return dict(raw)


def _as_float(x: Any) -> float:
    return math.inf if x == "inf" else float(x)


def _method_sensitivity(method: str | None) -> int | None:
    """The clip sensitivity of ``method``'s objective under DP-SGD
    (:func:`fedssl.privacy.dp_sgd.clip_sensitivity`: 1 per-record, 2 group-clipped); None for
    an unknown method or one with no proven bound."""
    from fedssl.privacy.dp_engine import DPSoundnessError, clip_sensitivity
    from fedssl.ssl_core.objectives import OBJECTIVES

    if not method or method not in OBJECTIVES:
        return None
    try:
        return clip_sensitivity(OBJECTIVES[method]())
    except DPSoundnessError:
        return None


def _check_config(res: AuditResult, cfg: Mapping[str, Any]) -> None:
    from fedssl.ssl_core.objectives import OBJECTIVES

    if not res.dp:
        return
    method = str(cfg.get("method", ""))
    if method not in OBJECTIVES:
        res.add("error", FindingKind.UNSOUND_CONFIG,
                f"dp = true with unknown method {method!r}: its per-record decomposability "
                "(required for per-record clipping to bound the sensitivity) can't be checked")
    elif _method_sensitivity(method) is None:
        res.add("error", FindingKind.UNSOUND_CONFIG,
                f"dp = true with method {method!r}, whose objective is not per-record "
                "decomposable: per-record clipping does not bound one record's influence, so "
                "no recorded epsilon of this run is a valid guarantee")
    noise = float(cfg.get("noise_multiplier", 0.0) or 0.0)
    target = float(cfg.get("target_epsilon", 0.0) or 0.0)
    if noise <= 0 and target <= 0:
        res.add("error", FindingKind.UNSOUND_CONFIG,
                "dp = true but neither a target epsilon nor a positive noise multiplier is "
                "set: DP-SGD without noise gives no privacy (epsilon = inf)")
    accountant = str(cfg.get("accountant", "prv"))
    if accountant not in UPPER_BOUND_ACCOUNTANTS:
        res.add("error", FindingKind.UNSOUND_CONFIG,
                f"accountant {accountant!r} is not a guaranteed upper bound (use one of "
                f"{', '.join(UPPER_BOUND_ACCOUNTANTS)})")
    clip = float(cfg.get("max_grad_norm", 1.0) or 0.0)
    if clip <= 0:
        res.add("error", FindingKind.UNSOUND_CONFIG, f"max_grad_norm = {clip}: nothing is clipped")
    delta = cfg.get("delta")
    if delta is not None and not 0 < float(delta) < 1:
        res.add("error", FindingKind.UNSOUND_CONFIG, f"delta = {delta} is not in (0, 1)")


def _load_ledger(res: AuditResult, path: Path, audit: ClientAudit,
                 registry: dict[str, Ed25519PublicKey] | None) -> list[LedgerEntry]:
    """Verify a ledger, turning every failure into a finding; returns what can be read.

    Signatures are verified with the ``.pub`` next to the ledger (the registry's key when
    that is missing); the ``.pub`` must then be the registry's key for the client."""
    name = audit.client
    pub = path.with_suffix(".pub")
    key = None
    if not pub.exists():
        res.add("error", FindingKind.MISSING_PUBLIC_KEY,
                f"{pub.name} is missing: the ledger's signatures cannot be verified", name)
    else:
        try:
            key = load_public_key(pub)
        except IdentityError as exc:
            res.add("error", FindingKind.BAD_PUBLIC_KEY, f"{pub.name}: {exc}", name)
    if key is not None:
        audit.key_fingerprint = key_fingerprint(key)
    if registry is not None:
        # the registry names a site by its identity (a deployment's node name, e.g. node-1),
        # its ledger by the client id (e.g. site-1): the same rules as the server's copies
        # (fedssl.server.ledger_copies): registered under the client's name, that key; else
        # the key must be one the registry lists, under a name no other ledger uses
        by_fp = {key_fingerprint(k): n for n, k in registry.items()}
        anchor = registry.get(name)
        if anchor is None and key is not None and audit.key_fingerprint in by_fp:
            audit.registry_name = by_fp[audit.key_fingerprint]
            anchor = registry[audit.registry_name]
        elif anchor is not None:
            audit.registry_name = name
        audit.registry_fingerprint = key_fingerprint(anchor) if anchor is not None else None
        audit.registered = anchor is not None and (
            key is None or audit.key_fingerprint == audit.registry_fingerprint)
        if anchor is None:
            res.add("error", FindingKind.LEDGER_KEY_NOT_REGISTERED,
                    f"the ledger key {audit.key_fingerprint or '-'} of {name} is not in the "
                    f"identity registry ({res.registry}), under its name or any other: "
                    "nothing ties it to a site", name)
        elif key is not None and audit.key_fingerprint != audit.registry_fingerprint:
            res.add("error", FindingKind.LEDGER_KEY_MISMATCH,
                    f"{pub.name} holds key {audit.key_fingerprint}, but the identity registry "
                    f"lists {audit.registry_fingerprint} for {name}: the ledger was not signed "
                    "with the site's registered key", name)
        elif key is None:
            key = anchor  # verify against the registered key instead
        shared = [c.client for c in res.clients if c is not audit and c.registry_name
                  and c.registry_name == audit.registry_name]
        if audit.registered and shared:
            res.add("error", FindingKind.LEDGER_KEY_SHARED,
                    f"{name}'s ledger is signed with registered identity "
                    f"{audit.registry_name}'s key, as {', '.join(shared)}'s is: one registered "
                    "key signs one site's ledger", name)
    entries: list[LedgerEntry] = []
    if key is not None:
        try:
            entries = read_ledger(path, key)
            audit.signature_verified = audit.chain_verified = True
        except LedgerError as exc:
            res.add("error", FindingKind.LEDGER_INVALID, str(exc), name)
            key = None
            entries = []
            # still show numbers if at least the chain holds (wrong key or forged signature)
            try:
                entries = read_ledger(path, None)
                audit.chain_verified = True
            except LedgerError:
                pass
            return entries
    else:
        try:
            entries = read_ledger(path, None)
            audit.chain_verified = True
        except LedgerError as exc:
            res.add("error", FindingKind.LEDGER_INVALID, str(exc), name)
    return entries


def _check_entries(res: AuditResult, audit: ClientAudit, entries: list[LedgerEntry]) -> None:
    name = audit.client
    for e in entries:
        if e.client != name:
            res.add("error", FindingKind.CLIENT_MISMATCH,
                    f"entry names client {e.client!r} but the ledger file is {name}.jsonl",
                    name, e.round)
            break
    audit.run_id = (entries[-1].run if res.run_id is None
                    else (res.run_id or LEGACY_RUN))
    cumulative = 0
    required = _method_sensitivity(res.method) if res.dp else None
    for e in entries:
        try:
            effective_noise_multiplier(e.noise_multiplier, e.extra)
            sensitivity = float(e.extra.get("sensitivity", 1.0))
        except LedgerError as exc:
            res.add("error", FindingKind.INVALID_ENTRY, str(exc), name, e.round)
            sensitivity = math.nan
        if required is not None and sensitivity < required:
            # the accountant divides the noise by the recorded sensitivity: one below the
            # method's would make every epsilon over this entry too small
            recorded = ("extra.sensitivity" if "sensitivity" in e.extra
                        else "no extra.sensitivity, so the default")
            res.add("error", FindingKind.SENSITIVITY_UNDERSTATED,
                    f"entry records sensitivity {sensitivity:g} ({recorded}), but method "
                    f"{res.method!r} clips with sensitivity {required}: its "
                    f"epsilon is computed at noise {e.noise_multiplier:g} / {sensitivity:g} "
                    f"instead of / {required} and understates the spend", name, e.round)
        check = EntryCheck(
            round=e.round, steps=e.steps, cumulative_steps=0,
            noise_multiplier=e.noise_multiplier, sample_rate=e.sample_rate,
            max_grad_norm=e.max_grad_norm, delta=e.delta, recorded=e.epsilon, run=e.run,
            sensitivity=sensitivity,
            recorded_lifetime=e.lifetime if e.lifetime_epsilon is not None or not e.run_id
            else math.nan)
        audit.all_entries.append(check)
        if e.run == audit.run_id:
            cumulative += e.steps
            check.cumulative_steps = cumulative
            audit.entries.append(check)
        if e.accountant not in UPPER_BOUND_ACCOUNTANTS:
            res.add("error", FindingKind.UNSOUND_ACCOUNTANT,
                    f"recorded with accountant {e.accountant!r}, which is not a guaranteed "
                    "upper bound", name, e.round)
        if e.steps > 0 and e.noise_multiplier <= 0:
            res.add("error", FindingKind.ZERO_NOISE,
                    f"{e.steps} DP-SGD steps with noise multiplier {e.noise_multiplier}: "
                    "epsilon is infinite", name, e.round)
        if not (0 < e.sample_rate <= 1) or e.steps < 0 or e.max_grad_norm <= 0:
            res.add("error", FindingKind.INVALID_ENTRY,
                    f"impossible parameters: sample_rate={e.sample_rate}, steps={e.steps}, "
                    f"max_grad_norm={e.max_grad_norm}", name, e.round)
        if not 0 < e.delta < 1:
            res.add("error", FindingKind.INVALID_ENTRY, f"delta {e.delta} not in (0, 1)", name,
                    e.round)
        elif (e.run == audit.run_id and res.delta is not None
              and not math.isclose(e.delta, res.delta, rel_tol=1e-9)):
            res.add("error", FindingKind.DELTA_MISMATCH,
                    f"entry delta {e.delta:g} differs from the configured delta "
                    f"{res.delta:g}", name, e.round)
    if not audit.entries:
        res.notes.append(f"{name}'s ledger has no entry of run {audit.run_id} (entries of "
                         f"other runs only: {', '.join(audit.runs)})")
    elif len(audit.runs) > 1:
        res.notes.append(f"{name}'s ledger spans {len(audit.runs)} runs "
                         f"({', '.join(f'{r}: {n} entries' for r, n in audit.runs.items())}); "
                         "the table shows run "
                         f"{audit.run_id}'s epsilon and the site's lifetime epsilon")


def _history(checks: Sequence[EntryCheck]) -> tuple[Segment, ...]:
    return tuple((c.effective_noise, c.sample_rate, c.steps) for c in checks)


def _recompute(res: AuditResult, audit: ClientAudit) -> None:
    """Recompute every entry's run epsilon (its run's entries composed; a legacy entry's
    claim is over the whole ledger) and lifetime epsilon (every entry composed)."""
    checks = audit.all_entries
    valid = [c for c in checks if 0 < c.sample_rate <= 1 and 0 < c.delta < 1 and c.steps >= 0
             and math.isfinite(c.sensitivity)]
    if len(valid) != len(checks) or not checks:
        return
    life = recompute(_history(checks), tuple(c.delta for c in checks))
    for i, c in enumerate(checks):
        c.lifetime_prv, c.lifetime_pld, c.lifetime_rdp = (
            life["prv"][i], life["pld"][i], life["rdp"][i])
    groups: dict[str, list[EntryCheck]] = {}
    for c in checks:
        groups.setdefault(c.run, []).append(c)
    for run, group in groups.items():
        if run == LEGACY_RUN:  # computed over the whole ledger when written
            for c in group:
                c.prv, c.pld, c.rdp = c.lifetime_prv, c.lifetime_pld, c.lifetime_rdp
            continue
        eps = recompute(_history(group), tuple(c.delta for c in group))
        for i, c in enumerate(group):
            c.prv, c.pld, c.rdp = eps["prv"][i], eps["pld"][i], eps["rdp"][i]
    tol = res.tolerance
    name = audit.client
    for c in checks:
        ref = c.reference
        other = "" if c.run == audit.run_id else f" (run {c.run})"
        if math.isnan(ref):
            res.add("error", FindingKind.ACCOUNTANT_FAILURE,
                    "neither PRV nor PLD could evaluate this entry", name, c.round)
            continue
        if c.recorded < ref * (1 - tol):
            res.add("error", FindingKind.EPSILON_UNDERSTATED,
                    f"recorded epsilon{other} {c.recorded:.4g} is below the recomputed "
                    f"{ref:.4g} (max of PRV {c.prv:.4g}, PLD {c.pld:.4g}) by "
                    f"{100 * (1 - c.recorded / ref):.1f} % (> {100 * tol:g} %)", name, c.round)
        lref = c.lifetime_reference
        if not math.isnan(lref) and c.recorded_lifetime < lref * (1 - tol):
            res.add("error", FindingKind.EPSILON_UNDERSTATED,
                    f"recorded lifetime epsilon{other} {c.recorded_lifetime:.4g} is below the "
                    f"recomputed composition of every entry so far {lref:.4g} by more than "
                    f"{100 * tol:g} %", name, c.round)
        finite = [v for v in (c.prv, c.pld) if math.isfinite(v)]
        if len(finite) == 2 and abs(finite[0] - finite[1]) > (
                AGREEMENT_TOLERANCE * max(finite) + 2 * PRV_EPS_ERROR):
            res.add("warning", FindingKind.ACCOUNTANT_DISAGREEMENT,
                    f"PRV {c.prv:.4g} and PLD {c.pld:.4g} differ by more than "
                    f"{100 * AGREEMENT_TOLERANCE:g} % + {2 * PRV_EPS_ERROR:g}", name, c.round)
        if math.isfinite(c.rdp) and finite and c.rdp < min(finite) * (1 - tol):
            res.add("warning", FindingKind.ACCOUNTANT_DISAGREEMENT,
                    f"RDP {c.rdp:.4g} is below PRV/PLD {min(finite):.4g}: one accountant "
                    "is not an upper bound here", name, c.round)
    if res.budget is not None:  # a run's target: checked against the run's epsilon
        for c in audit.entries:
            if c.recorded > res.budget:
                res.add("error", FindingKind.BUDGET_OVERRUN,
                        f"recorded epsilon {c.recorded:.4g} exceeds the budget "
                        f"{res.budget:g} ({res.budget_source})", name, c.round)
                break
            if c.reference > res.budget * (1 + tol):
                res.add("error", FindingKind.BUDGET_OVERRUN,
                        f"recomputed epsilon {c.reference:.4g} exceeds the budget "
                        f"{res.budget:g} ({res.budget_source}) by more than {100 * tol:g} %",
                        name, c.round)
                break


def _check_report(res: AuditResult, run_dir: Path) -> None:
    path = run_dir / "report.json"
    if not path.exists():
        res.notes.append("report.json not found (run unfinished?): report not cross-checked")
        return
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        res.add("error", FindingKind.REPORT_MISMATCH, f"report.json unreadable: {exc}")
        return
    privacy = report.get("privacy") if isinstance(report, dict) else None
    ledgers = {c.client: c for c in res.clients if c.entries}
    if (isinstance(privacy, dict) and privacy.get("run_id") is not None
            and res.run_id is not None and str(privacy["run_id"]) != res.run_id):
        res.add("error", FindingKind.REPORT_MISMATCH,
                f"report.json is for run {privacy['run_id']}, the run directory's run id is "
                f"{res.run_id}")
    if not privacy:
        if res.dp or ledgers:
            res.add("error", FindingKind.REPORT_MISMATCH,
                    "report.json has no privacy block although DP is on / ledgers exist")
        return
    if res.delta is not None and privacy.get("delta") is not None and not math.isclose(
            float(privacy["delta"]), res.delta, rel_tol=1e-9):
        res.add("error", FindingKind.REPORT_MISMATCH,
                f"report.json delta {privacy['delta']} differs from the configured "
                f"{res.delta:g}")
    reported = privacy.get("clients") or {}
    for cid, row in sorted(reported.items()):
        audit = ledgers.get(cid)
        if audit is None:
            res.add("error", FindingKind.REPORT_MISMATCH,
                    f"report.json gives epsilon for {cid}, which has no readable ledger", cid)
            continue
        last = audit.last
        assert last is not None
        problems = []
        try:
            eps = _as_float(row.get("epsilon"))
            if not math.isclose(eps, last.recorded, rel_tol=1e-6):
                problems.append(f"epsilon {eps:.6g} vs ledger {last.recorded:.6g}")
            if "steps" in row and int(row["steps"]) != audit.steps:
                problems.append(f"steps {row['steps']} vs ledger {audit.steps}")
            if "rounds" in row and int(row["rounds"]) != len(audit.entries):
                problems.append(f"rounds {row['rounds']} vs ledger {len(audit.entries)}")
            life = audit.lifetime
            if ("lifetime_epsilon" in row and life is not None
                    and not math.isnan(life.recorded_lifetime)
                    and not math.isclose(_as_float(row["lifetime_epsilon"]),
                                         life.recorded_lifetime, rel_tol=1e-6)):
                problems.append(f"lifetime_epsilon {row['lifetime_epsilon']} vs ledger "
                                f"{life.recorded_lifetime:.6g}")
            for key, attr in (("noise_multiplier", "noise_multiplier"),
                              ("sample_rate", "sample_rate"), ("sensitivity", "sensitivity"),
                              ("effective_noise_multiplier", "effective_noise")):
                if key in row and not math.isclose(float(row[key]), getattr(last, attr),
                                                   rel_tol=1e-9):
                    problems.append(f"{key} {row[key]} vs ledger {getattr(last, attr)}")
        except (TypeError, ValueError) as exc:
            problems.append(f"unreadable values ({exc})")
        if problems:
            res.add("error", FindingKind.REPORT_MISMATCH,
                    "report.json disagrees with the ledger: " + "; ".join(problems), cid)
    for cid in sorted(set(ledgers) - set(reported)):
        res.add("error", FindingKind.REPORT_MISMATCH,
                f"{cid} has a ledger but report.json gives no epsilon for it", cid)


def _check_client_level(res: AuditResult, run_dir: Path) -> None:
    """Recompute the client-level DP claim of ``report.json`` (central DP-FedAvg: PRV and PLD
    over the Poisson-subsampled Gaussian; distributed Skellam: the Skellam RDP bound from the
    per-round sensitivities, never below the Gaussian mechanism with the same noise)."""
    path = run_dir / "report.json"
    try:
        level = (json.loads(path.read_text()).get("privacy") or {}).get("client_level")
    except (OSError, ValueError, AttributeError):
        return  # _check_report names an unreadable report
    if not level:
        return
    from fedssl.privacy.distributed_dp import SkellamRound, skellam_epsilon

    try:
        delta, recorded = float(level["delta"]), float(level["epsilon"])
        z, rate = float(level["noise_multiplier"]), float(level["sample_rate"])
        rounds = int(level["rounds"])
        released = [SkellamRound(**{k: float(v) for k, v in r.items()})
                    for r in level.get("released", [])]
    except (KeyError, TypeError, ValueError) as exc:
        res.add("error", FindingKind.CLIENT_LEVEL,
                f"report.json client_level block malformed ({exc})")
        return
    if "Skellam" in str(level.get("mechanism", "")):
        if len(released) != rounds:
            res.add("error", FindingKind.CLIENT_LEVEL,
                    f"client_level lists {len(released)} released rounds but claims {rounds}")
        if any(r.noise_multiplier != z for r in released):
            res.add("error", FindingKind.CLIENT_LEVEL,
                    "a released round's noise multiplier differs from the configured one")
        recomputed = skellam_epsilon(released, delta)
        floor = pld_epsilons([(z, 1.0, rounds)], [delta])[-1] if rounds else 0.0
        what = "Skellam RDP (Agarwal et al. 2021)"
    else:
        history = [(z, rate, rounds)]
        recomputed = reference_epsilon(prv_epsilons(history, [delta])[-1],
                                       pld_epsilons(history, [delta])[-1])
        floor, what = 0.0, "PRV/PLD, Poisson-subsampled Gaussian"
    res.client_level = {"mechanism": level.get("mechanism"), "recorded": recorded,
                        "recomputed": recomputed, "gaussian_floor": floor,
                        "accountant": what, "rounds": rounds}
    if recorded < recomputed * (1 - res.tolerance) or recorded < floor * (1 - res.tolerance):
        res.add("error", FindingKind.UNDERSTATED_EPSILON,
                f"client-level epsilon {recorded:.4g} is below the recomputation "
                f"{recomputed:.4g} ({what}; Gaussian floor {floor:.4g})")
    if res.budget is not None and recomputed > res.budget * (1 + res.tolerance):
        res.notes.append(f"client-level epsilon {recomputed:.3f} exceeds the record-level "
                         f"budget {res.budget:g} (different privacy unit: a whole client)")


def _load_registry(res: AuditResult, run_dir: Path, given: Path | None,
                   cfg: Mapping[str, Any], needed: bool = True
                   ) -> dict[str, Ed25519PublicKey] | None:
    """The identity registry's keys (client id -> public key), or None (with a finding when
    there are ledgers whose keys it should have vouched for)."""
    candidates = [Path(given)] if given is not None else [
        run_dir / "identities.json",
        *([Path(str(cfg["identity_registry"]))] if cfg.get("identity_registry") else [])]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        where = str(given) if given is not None else " or ".join(map(str, candidates))
        if not needed:
            res.notes.append(f"no identity registry ({where} not found); no ledger to check")
            return None
        res.add("warning", FindingKind.NO_IDENTITY_REGISTRY,
                f"no identity registry ({where} not found): each ledger's signatures were "
                "checked only against the .pub stored next to it, which whoever rewrote the "
                "ledger could replace; give --registry CERTS/identities.json")
        return None
    res.registry = str(path)
    try:
        return {cid: pub for cid, (_, pub) in load_registry(path).items()}
    except IdentityError as exc:
        res.add("error", FindingKind.BAD_REGISTRY, str(exc))
        return None


def audit_run(
    run_dir: Path,
    config: Mapping[str, Any] | None = None,
    budget: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: bool = False,
    registry: Path | None = None,
    run_id: str | None = None,
) -> AuditResult:
    """Audit ``run_dir``: ledgers, keys, recomputed epsilons, budget, config, report.

    Args:
        run_dir: the run directory (see README.md, "Run directory").
        config: the ``[experiment]`` table of ``config.toml`` (defaults filled in by the
            caller); ``None`` reads ``run_dir/config.toml`` as is, and reports its absence.
        budget: epsilon budget overriding ``target_epsilon`` of the config.
        tolerance: relative tolerance of the recorded-vs-recomputed and budget checks.
        progress: tqdm progress bar over clients (recomputation takes ~0.5 s per entry).
        registry: the identity registry (default ``RUN/identities.json``, else the
            config's ``identity_registry``); without one the keys can't be checked, which
            is a finding.
        run_id: the run to audit (default ``RUN/run_id``, the config's ``run_id``, else
            each ledger's last run).
    """
    run_dir = Path(run_dir)
    cfg_error = ""
    if config is None:
        cfg_path = run_dir / "config.toml"
        if cfg_path.exists():
            try:
                config = read_config_table(cfg_path)
            except (OSError, tomllib.TOMLDecodeError) as exc:
                config = None
                cfg_error = f"config.toml unreadable: {exc}"
        else:
            cfg_error = "config.toml missing: budget, delta and soundness can't be checked"
    cfg = dict(config or {})
    dp = bool(cfg["dp"]) if "dp" in cfg else None
    delta = float(cfg["delta"]) if cfg.get("delta") is not None else None
    source = "config target_epsilon"
    if budget is not None:
        source = "--budget"
    elif float(cfg.get("target_epsilon", 0.0) or 0.0) > 0:
        budget = float(cfg["target_epsilon"])
    if run_id is None:
        id_file = run_dir / "run_id"
        run_id = (id_file.read_text().strip() if id_file.exists()
                  else str(cfg["run_id"]) if cfg.get("run_id") else None)
    res = AuditResult(run_dir=str(run_dir), budget=budget, budget_source=source, delta=delta,
                      tolerance=tolerance, dp=dp, method=cfg.get("method"), run_id=run_id)
    if config is None:
        res.add("error", FindingKind.MISSING_CONFIG, cfg_error)
    _check_config(res, cfg)
    if budget is None:
        res.notes.append("no epsilon budget (target_epsilon = 0 and no --budget): budget not "
                         "checked")

    ledger_dir = run_dir / "ledger"
    paths = sorted(ledger_dir.glob("*.jsonl")) if ledger_dir.is_dir() else []
    if not paths and dp:
        res.add("error", FindingKind.MISSING_LEDGER,
                "dp = true but RUN/ledger holds no ledgers: no privacy claim can be verified")
    if paths and dp is False:
        res.add("warning", FindingKind.UNEXPECTED_LEDGER, "ledgers exist although dp = false")
    keys = _load_registry(res, run_dir, registry, cfg, needed=bool(paths))
    for pub in sorted(ledger_dir.glob("*.pub")) if ledger_dir.is_dir() else []:
        if not pub.with_suffix(".jsonl").exists():
            res.notes.append(f"{pub.name} has no ledger (client never trained)")

    from tqdm.auto import tqdm

    for path in tqdm(paths, desc="auditing ledgers", unit="client", disable=not progress,
                     leave=False):
        audit = ClientAudit(client=path.stem, ledger=str(path.relative_to(run_dir)))
        res.clients.append(audit)
        entries = _load_ledger(res, path, audit, keys)
        if not entries:
            if audit.chain_verified:
                res.add("warning", FindingKind.EMPTY_LEDGER, f"{path.name} has no entries",
                        audit.client)
            continue
        _check_entries(res, audit, entries)
        _recompute(res, audit)
    _check_report(res, run_dir)
    _check_client_level(res, run_dir)
    return res


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return "inf" if math.isinf(x) else f"{x:.3f}"


TABLE_HEADER = ("client", "rounds", "steps", "recorded eps", "PRV", "PLD", "RDP",
                "lifetime eps", "runs", "key", "status")
_LEFT = (0, 9, 10)


def _key_status(c: ClientAudit) -> str:
    fp = c.key_fingerprint or "-"
    state = {True: "registered", False: "NOT REGISTERED" if c.registry_fingerprint is None
             else "MISMATCH", None: "no registry"}[c.registered]
    return f"{fp} {state}"


def table_rows(res: AuditResult) -> list[tuple[str, ...]]:
    """One row per client: this run's last cumulative epsilons (recorded, recomputed), the
    site's lifetime epsilon (recorded, all runs), its runs and its key."""
    rows = []
    for c in res.clients:
        last, life = c.last, c.lifetime
        rows.append((c.client, str(len(c.entries)), str(c.steps),
                     _fmt(last.recorded if last else None), _fmt(last.prv if last else None),
                     _fmt(last.pld if last else None), _fmt(last.rdp if last else None),
                     _fmt(life.recorded_lifetime if life else None), str(len(c.runs)),
                     _key_status(c), c.status))
    return rows


def format_table(res: AuditResult) -> str:
    """Plain-text table, one row per client (last entry's cumulative epsilons)."""
    rows = [TABLE_HEADER, *table_rows(res)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
    lines = ["  ".join(v.ljust(w) if i in _LEFT else v.rjust(w)
                       for i, (v, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_findings(res: AuditResult) -> str:
    if not res.findings:
        return "no findings"
    out = []
    for f in res.findings:
        where = " ".join(x for x in (f.client or "", f"round {f.round}" if f.round else "") if x)
        out.append(f"[{f.severity}] {f.kind}{' (' + where + ')' if where else ''}: {f.message}")
    return "\n".join(out)


def plot_epsilons(res: AuditResult, path: Path) -> Path | None:
    """Recorded (solid) vs recomputed reference (dashed) cumulative epsilon per round."""
    clients = [c for c in res.clients if c.entries]
    if not clients:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colors = plt.get_cmap("tab10" if len(clients) <= 10 else "tab20")
    handles = []
    for i, c in enumerate(clients):
        color = colors(i % colors.N)
        rounds = [e.round for e in c.entries]
        ax.plot(rounds, [e.recorded for e in c.entries], marker="o", ms=3, color=color)
        ax.plot(rounds, [e.reference for e in c.entries], ls="--", marker="x", ms=4,
                color=color, alpha=0.8)
        handles.append(Line2D([], [], color=color, label=c.client))
    handles += [Line2D([], [], color="k", marker="o", ms=3, label="recorded"),
                Line2D([], [], color="k", ls="--", marker="x", label="recomputed")]
    if res.budget is not None:
        ax.axhline(res.budget, color="red", lw=1)
        handles.append(Line2D([], [], color="red", label=f"budget {res.budget:g}"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="round", ylabel="cumulative epsilon",
           title="Recorded vs recomputed max(PRV, PLD) epsilon"
           + (f" (delta={res.delta:g})" if res.delta else ""))
    ax.legend(handles=handles[-25:], fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_markdown(res: AuditResult, plot: str | None) -> str:
    lines = [f"# Privacy audit of `{res.run_dir}`", "",
             f"**Result: {'CLEAN' if res.clean else f'{len(res.findings)} FINDING(S)'}**", "",
             f"- DP: {res.dp}; method: {res.method}; delta: {res.delta}; run: "
             f"{res.run_id if res.run_id is not None else 'the last run of each ledger'}",
             f"- identity registry: {res.registry or 'NONE (ledger keys not checked)'}",
             f"- budget: {res.budget} ({res.budget_source if res.budget is not None else '-'})",
             "- accountants: PRV (Opacus; Gopi et al. 2021), PLD (dp-accounting, pessimistic "
             "connect-the-dots; Doroshenko et al. 2022), RDP (dp-accounting; Mironov 2017). "
             f"Reference = max(PRV, PLD); tolerance {100 * res.tolerance:g} %.", "",
             "## Clients (cumulative epsilon after the run's last entry)", "",
             "`recorded eps` and PRV/PLD/RDP: this run's epsilon; `lifetime eps`: the "
             "recorded composition of every entry of the site's ledger (all runs).", "",
             "| " + " | ".join(TABLE_HEADER) + " |",
             "|" + "|".join("---" for _ in TABLE_HEADER) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(res)]
    lines += ["", "## Ledger keys (SHA-256 of the raw Ed25519 public key, 16 hex digits)", "",
              "| client | ledger .pub | identity registry | registered as | status |",
              "|---|---|---|---|---|"]
    lines += [f"| {c.client} | {c.key_fingerprint or '-'} | "
              f"{c.registry_fingerprint or ('-' if res.registry else 'no registry')} | "
              f"{c.registry_name or '-'} | {_key_status(c).split(' ', 1)[1]} |"
              for c in res.clients]
    multi = [c for c in res.clients if len(c.runs) > 1]
    if multi:
        lines += ["", "## Sites whose ledger spans runs", "",
                  "| client | runs (entries) | run eps | lifetime eps recorded | "
                  "lifetime max(PRV, PLD) |", "|---|---|---|---|---|"]
        for c in multi:
            life = c.lifetime
            lines.append(
                f"| {c.client} | {', '.join(f'{r} ({n})' for r, n in c.runs.items())} | "
                f"{_fmt(c.last.recorded if c.last else None)} | "
                f"{_fmt(life.recorded_lifetime if life else None)} | "
                f"{_fmt(life.lifetime_reference if life else None)} |")
    if res.client_level:
        cl = res.client_level
        lines += ["", "## Client-level DP", "",
                  "| mechanism | rounds | recorded eps | recomputed | Gaussian floor | "
                  "accountant |", "|---|---|---|---|---|---|",
                  f"| {cl['mechanism']} | {cl['rounds']} | {_fmt(cl['recorded'])} | "
                  f"{_fmt(cl['recomputed'])} | {_fmt(cl['gaussian_floor'])} | "
                  f"{cl['accountant']} |"]
    lines += ["", "## Findings", ""]
    if res.findings:
        lines += ["| severity | kind | client | round | message |", "|---|---|---|---|---|"]
        lines += [f"| {f.severity} | {f.kind} | {f.client or ''} | {f.round or ''} | "
                  f"{f.message.replace('|', '/')} |" for f in res.findings]
    else:
        lines.append("None.")
    if res.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res.notes]
    if res.empirical:
        lines += ["", "## Empirical audit (Steinke, Nasr & Jagielski 2023, one run)", "",
                  "| client | canaries | guesses | correct | lower bound | claimed eps | "
                  "recomputed PRV / PLD | max certifiable (all right / no noise) | "
                  "noise scale | verdict | seconds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in res.empirical:
            by = e.get("claimed_by") or {}
            lines.append(
                f"| {e.get('client') or '-'} | {e['canaries']} | {e['guesses']} | "
                f"{e['correct']} | {_fmt(e['epsilon_lower_bound'])} | "
                f"{_fmt(e['claimed_epsilon'])} ({e.get('claim_source', '-')}) | "
                f"{_fmt(by.get('prv'))} / {_fmt(by.get('pld'))} | "
                f"{_fmt(e['max_detectable_epsilon'])} / {_fmt(e.get('noise_free_epsilon'))} | "
                f"{e['noise_scale']:g} | {e.get('verdict', '-')}: "
                f"{str(e.get('reason', '')).replace('|', '/')} | {e['seconds']:.1f} |")
        lines.append(f"\nConfidence {res.empirical[0]['confidence']:g}. A one-run audit gives a "
                     "lower bound: above the smallest upper bound of the recorded mechanism it "
                     "refutes the claim (violation); below it, it shows nothing unless the "
                     "audit could have certified more (no-violation-detected, with that power); "
                     "`inconclusive` means it could not have, even without any noise.")
    if plot:
        lines += ["", "## Epsilon per round", "", f"![epsilon per round]({plot})"]
    return "\n".join(lines) + "\n"


def write_audit(res: AuditResult, out_dir: Path, plot: bool = True) -> dict[str, Path]:
    """Write ``audit.json``, ``report.md`` and (with ``plot``) ``epsilon.png`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "audit.json", "markdown": out_dir / "report.md"}
    png = plot_epsilons(res, out_dir / "epsilon.png") if plot else None
    if png:
        paths["plot"] = png
    paths["json"].write_text(json.dumps(res.to_dict(), indent=2) + "\n")
    paths["markdown"].write_text(format_markdown(res, png.name if png else None))
    return paths
