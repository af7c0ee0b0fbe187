"""The audit's checks: each turns what it verifies into :class:`Finding` s of an
:class:`AuditResult`.

- :func:`check_config`: soundness of the configuration (objective decomposable under DP-SGD,
  noise, an upper-bound accountant, clip norm, delta);
- :func:`load_ledger`: a ledger's hash chain and signatures, its key against the identity
  registry;
- :func:`check_entries`: each entry's parameters, sensitivity, accountant and delta;
- :func:`check_epsilons`: recorded run and lifetime epsilons against the recomputation
  (:mod:`fedssl.privacy.audit.accounting`), accountant agreement, the budget;
- :func:`check_report`: ``report.json``'s privacy block against the verified ledgers;
- :func:`check_client_level`: the client-level DP claim of ``report.json``.

The run directory is read by :func:`fedssl.privacy.audit.auditor.audit_run`, which runs these checks
in order; the checks get the paths they read from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedssl.privacy.accounting import budget_accountants
from fedssl.privacy.accounting.budget import Segment
from fedssl.privacy.audit.accounting import (
    PRV_EPS_ERROR,
    REFERENCE,
    pld_epsilons,
    prv_epsilons,
    recompute,
    reference_epsilon,
)
from fedssl.privacy.audit.findings import (
    AuditResult,
    ClientAudit,
    EntryCheck,
    FindingKind,
    Severity,
)
from fedssl.privacy.identity.keys import IdentityError, load_public_key
from fedssl.privacy.identity.ledger import (
    LEGACY_RUN,
    LedgerEntry,
    LedgerError,
    effective_noise_multiplier,
    read_ledger,
)

#: relative tolerance of "recorded below recomputed" and of recomputed-vs-budget
DEFAULT_TOLERANCE = 0.01
#: PRV and PLD further apart than this (relative, plus PRV's absolute eps_error) warn
AGREEMENT_TOLERANCE = 0.05

def key_fingerprint(key: Ed25519PublicKey) -> str:
    """``SHA256:`` and the first 16 hex digits of SHA-256 over the raw 32-byte public key.

    Args:
        key: an Ed25519 public key.

    Returns:
        The fingerprint, e.g. ``SHA256:0123456789abcdef``.
    """
    import hashlib

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()[:16]



def _as_float(x: Any) -> float:
    return math.inf if x == "inf" else float(x)


def _method_sensitivity(method: str | None) -> int | None:
    """The clip sensitivity of ``method``'s objective under DP-SGD
    (:func:`fedssl.privacy.dp_sgd.opacus_engine.clip_sensitivity`: 1 per-record, 2 group-clipped);
    None for
    an unknown method or one with no proven bound."""
    from fedssl.privacy.dp_sgd.engine import DPSoundnessError, clip_sensitivity
    from fedssl.ssl_core.objectives import OBJECTIVES

    if not method or method not in OBJECTIVES:
        return None
    try:
        return clip_sensitivity(OBJECTIVES[method]())
    except DPSoundnessError:
        return None


def check_config(res: AuditResult, cfg: Mapping[str, Any]) -> None:
    """Add a finding for each unsound DP setting of the run's configuration: an unknown or
    non-decomposable method, no noise and no target, an accountant that is not an upper
    bound, no clipping, a delta outside (0, 1). Nothing is checked when DP is off.

    Args:
        res: the audit's result, which collects the findings.
        cfg: the run's settings (:func:`~fedssl.privacy.audit.auditor.read_config_table`).
    """
    from fedssl.ssl_core.objectives import OBJECTIVES

    if not res.dp:
        return
    method = str(cfg.get("method", ""))
    if method not in OBJECTIVES:
        res.add(Severity.ERROR, FindingKind.UNSOUND_CONFIG,
                f"dp = true with unknown method {method!r}: its per-record decomposability "
                "(required for per-record clipping to bound the sensitivity) can't be checked")
    elif _method_sensitivity(method) is None:
        res.add(Severity.ERROR, FindingKind.UNSOUND_CONFIG,
                f"dp = true with method {method!r}, whose objective is not per-record "
                "decomposable: per-record clipping does not bound one record's influence, so "
                "no recorded epsilon of this run is a valid guarantee")
    noise = float(cfg.get("noise_multiplier", 0.0) or 0.0)
    # 0.0, not RunSpec's 8.0, on purpose: a target the run did not record is not assumed
    target = float(cfg.get("target_epsilon", 0.0) or 0.0)
    if noise <= 0 and target <= 0:
        res.add(Severity.ERROR, FindingKind.UNSOUND_CONFIG,
                "dp = true but neither a target epsilon nor a positive noise multiplier is "
                "set: DP-SGD without noise gives no privacy (epsilon = inf)")
    accountant = str(cfg.get("accountant", "prv"))
    if accountant not in budget_accountants():
        res.add(Severity.ERROR, FindingKind.UNSOUND_CONFIG,
                f"accountant {accountant!r} is not a guaranteed upper bound (use one of "
                f"{', '.join(budget_accountants())})")
    clip = float(cfg.get("max_grad_norm", 1.0) or 0.0)
    if clip <= 0:
        res.add(Severity.ERROR, FindingKind.UNSOUND_CONFIG,
                f"max_grad_norm = {clip}: nothing is clipped")
    delta = cfg.get("delta")
    if delta is not None and not 0 < float(delta) < 1:
        res.add(Severity.ERROR, FindingKind.UNSOUND_CONFIG, f"delta = {delta} is not in (0, 1)")


def load_ledger(res: AuditResult, path: Path, audit: ClientAudit,
                 registry: dict[str, Ed25519PublicKey] | None) -> list[LedgerEntry]:
    """Verify a ledger, turning every failure into a finding; returns what can be read.

    Signatures are verified with the ``.pub`` next to the ledger (the registry's key when
    that is missing); the ``.pub`` must then be the registry's key for the client.

    Args:
        res: the audit's result, which collects the findings.
        path: the ledger, ``RUN/ledger/<client>.jsonl``.
        audit: the client's audit (signature, chain and key status are set on it).
        registry: the identity registry's keys by client id, or None without one.

    Returns:
        The entries that could be read (empty if the ledger is unreadable).
    """
    name = audit.client
    pub = path.with_suffix(".pub")
    key = None
    if not pub.exists():
        res.add(Severity.ERROR, FindingKind.MISSING_PUBLIC_KEY,
                f"{pub.name} is missing: the ledger's signatures cannot be verified", name)
    else:
        try:
            key = load_public_key(pub)
        except IdentityError as exc:
            res.add(Severity.ERROR, FindingKind.BAD_PUBLIC_KEY, f"{pub.name}: {exc}", name)
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
            res.add(Severity.ERROR, FindingKind.LEDGER_KEY_NOT_REGISTERED,
                    f"the ledger key {audit.key_fingerprint or '-'} of {name} is not in the "
                    f"identity registry ({res.registry}), under its name or any other: "
                    "nothing ties it to a site", name)
        elif key is not None and audit.key_fingerprint != audit.registry_fingerprint:
            res.add(Severity.ERROR, FindingKind.LEDGER_KEY_MISMATCH,
                    f"{pub.name} holds key {audit.key_fingerprint}, but the identity registry "
                    f"lists {audit.registry_fingerprint} for {name}: the ledger was not signed "
                    "with the site's registered key", name)
        elif key is None:
            key = anchor  # verify against the registered key instead
        shared = [c.client for c in res.clients if c is not audit and c.registry_name
                  and c.registry_name == audit.registry_name]
        if audit.registered and shared:
            res.add(Severity.ERROR, FindingKind.LEDGER_KEY_SHARED,
                    f"{name}'s ledger is signed with registered identity "
                    f"{audit.registry_name}'s key, as {', '.join(shared)}'s is: one registered "
                    "key signs one site's ledger", name)
    entries: list[LedgerEntry] = []
    if key is not None:
        try:
            entries = read_ledger(path, key)
            audit.signature_verified = audit.chain_verified = True
        except LedgerError as exc:
            res.add(Severity.ERROR, FindingKind.LEDGER_INVALID, str(exc), name)
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
            res.add(Severity.ERROR, FindingKind.LEDGER_INVALID, str(exc), name)
    return entries


def check_entries(res: AuditResult, audit: ClientAudit, entries: list[LedgerEntry]) -> None:
    """Check each entry of one client's ledger: its client name, parameters, delta and the
    sensitivity the run's method needs; fills ``audit.entries`` (the audited run's) and
    ``audit.all_entries`` with one :class:`EntryCheck` each.

    Args:
        res: the audit's result, which collects the findings.
        audit: the client's audit.
        entries: the ledger's verified entries.
    """
    name = audit.client
    for e in entries:
        if e.client != name:
            res.add(Severity.ERROR, FindingKind.CLIENT_MISMATCH,
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
            res.add(Severity.ERROR, FindingKind.INVALID_ENTRY, str(exc), name, e.round)
            sensitivity = math.nan
        if required is not None and sensitivity < required:
            # the accountant divides the noise by the recorded sensitivity: one below the
            # method's would make every epsilon over this entry too small
            recorded = ("extra.sensitivity" if "sensitivity" in e.extra
                        else "no extra.sensitivity, so the default")
            res.add(Severity.ERROR, FindingKind.SENSITIVITY_UNDERSTATED,
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
        if e.accountant not in budget_accountants():
            res.add(Severity.ERROR, FindingKind.UNSOUND_ACCOUNTANT,
                    f"recorded with accountant {e.accountant!r}, which is not a guaranteed "
                    "upper bound", name, e.round)
        if e.steps > 0 and e.noise_multiplier <= 0:
            res.add(Severity.ERROR, FindingKind.ZERO_NOISE,
                    f"{e.steps} DP-SGD steps with noise multiplier {e.noise_multiplier}: "
                    "epsilon is infinite", name, e.round)
        if not (0 < e.sample_rate <= 1) or e.steps < 0 or e.max_grad_norm <= 0:
            res.add(Severity.ERROR, FindingKind.INVALID_ENTRY,
                    f"impossible parameters: sample_rate={e.sample_rate}, steps={e.steps}, "
                    f"max_grad_norm={e.max_grad_norm}", name, e.round)
        if not 0 < e.delta < 1:
            res.add(Severity.ERROR, FindingKind.INVALID_ENTRY, f"delta {e.delta} not in (0, 1)",
                    name, e.round)
        elif (e.run == audit.run_id and res.delta is not None
              and not math.isclose(e.delta, res.delta, rel_tol=1e-9)):
            res.add(Severity.ERROR, FindingKind.DELTA_MISMATCH,
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


def check_epsilons(res: AuditResult, audit: ClientAudit) -> None:
    """Recompute every entry's run epsilon (its run's entries composed; a legacy entry's
    claim is over the whole ledger) and lifetime epsilon (every entry composed).

    Args:
        res: the audit's result, which collects the findings.
        audit: the client's audit; its entries get their recomputed epsilons.
    """
    checks = audit.all_entries
    valid = [c for c in checks if 0 < c.sample_rate <= 1 and 0 < c.delta < 1 and c.steps >= 0
             and math.isfinite(c.sensitivity)]
    if len(valid) != len(checks) or not checks:
        return
    life = recompute(_history(checks), tuple(c.delta for c in checks))
    for i, c in enumerate(checks):
        c.lifetime_epsilons = {a: eps[i] for a, eps in life.items()}
    groups: dict[str, list[EntryCheck]] = {}
    for c in checks:
        groups.setdefault(c.run, []).append(c)
    for run, group in groups.items():
        if run == LEGACY_RUN:  # computed over the whole ledger when written
            for c in group:
                c.epsilons = dict(c.lifetime_epsilons)
            continue
        run_eps = recompute(_history(group), tuple(c.delta for c in group))
        for i, c in enumerate(group):
            c.epsilons = {a: eps[i] for a, eps in run_eps.items()}
    tol = res.tolerance
    name = audit.client
    for c in checks:
        ref = c.reference
        prv, pld = (c.epsilons.get(a, math.nan) for a in REFERENCE)
        other = "" if c.run == audit.run_id else f" (run {c.run})"
        if math.isnan(ref):
            res.add(Severity.ERROR, FindingKind.ACCOUNTANT_FAILURE,
                    "neither PRV nor PLD could evaluate this entry", name, c.round)
            continue
        if c.recorded < ref * (1 - tol):
            res.add(Severity.ERROR, FindingKind.EPSILON_UNDERSTATED,
                    f"recorded epsilon{other} {c.recorded:.4g} is below the recomputed "
                    f"{ref:.4g} (max of prv {prv:.4g}, pld {pld:.4g}) by "
                    f"{100 * (1 - c.recorded / ref):.1f} % (> {100 * tol:g} %)", name, c.round)
        lref = c.lifetime_reference
        if not math.isnan(lref) and c.recorded_lifetime < lref * (1 - tol):
            res.add(Severity.ERROR, FindingKind.EPSILON_UNDERSTATED,
                    f"recorded lifetime epsilon{other} {c.recorded_lifetime:.4g} is below the "
                    f"recomputed composition of every entry so far {lref:.4g} by more than "
                    f"{100 * tol:g} %", name, c.round)
        finite = [v for v in (prv, pld) if math.isfinite(v)]
        if len(finite) == 2 and abs(finite[0] - finite[1]) > (
                AGREEMENT_TOLERANCE * max(finite) + 2 * PRV_EPS_ERROR):
            res.add(Severity.WARNING, FindingKind.ACCOUNTANT_DISAGREEMENT,
                    f"prv {prv:.4g} and pld {pld:.4g} differ by more than "
                    f"{100 * AGREEMENT_TOLERANCE:g} % + {2 * PRV_EPS_ERROR:g}", name, c.round)
        for failed in (a for a, eps in c.epsilons.items() if math.isnan(eps)):
            res.add(Severity.WARNING, FindingKind.ACCOUNTANT_FAILURE,
                    f"{failed} could not evaluate this entry (checked against "
                    f"{'the other of prv/pld' if failed in REFERENCE else 'prv/pld'} only)",
                    name, c.round)
        for other_name, eps in c.epsilons.items():  # the looser cross-checks (dpa-rdp)
            if (other_name not in REFERENCE and math.isfinite(eps) and finite
                    and eps < min(finite) * (1 - tol)):
                res.add(Severity.WARNING, FindingKind.ACCOUNTANT_DISAGREEMENT,
                        f"{other_name} {eps:.4g} is below prv/pld {min(finite):.4g}: one "
                        "accountant is not an upper bound here", name, c.round)
    if res.budget is not None:  # a run's target: checked against the run's epsilon
        for c in audit.entries:
            if c.recorded > res.budget:
                res.add(Severity.ERROR, FindingKind.BUDGET_OVERRUN,
                        f"recorded epsilon {c.recorded:.4g} exceeds the budget "
                        f"{res.budget:g} ({res.budget_source})", name, c.round)
                break
            if c.reference > res.budget * (1 + tol):
                res.add(Severity.ERROR, FindingKind.BUDGET_OVERRUN,
                        f"recomputed epsilon {c.reference:.4g} exceeds the budget "
                        f"{res.budget:g} ({res.budget_source}) by more than {100 * tol:g} %",
                        name, c.round)
                break


def check_report(res: AuditResult, path: Path) -> None:
    """Cross-check the run's ``report.json`` (``path``) against the verified ledgers.

    Args:
        res: the audit's result, which collects the findings.
        path: the run's ``report.json``.
    """
    if not path.exists():
        res.notes.append("report.json not found (run unfinished?): report not cross-checked")
        return
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        res.add(Severity.ERROR, FindingKind.REPORT_MISMATCH, f"report.json unreadable: {exc}")
        return
    privacy = report.get("privacy") if isinstance(report, dict) else None
    ledgers = {c.client: c for c in res.clients if c.entries}
    if (isinstance(privacy, dict) and privacy.get("run_id") is not None
            and res.run_id is not None and str(privacy["run_id"]) != res.run_id):
        res.add(Severity.ERROR, FindingKind.REPORT_MISMATCH,
                f"report.json is for run {privacy['run_id']}, the run directory's run id is "
                f"{res.run_id}")
    if not privacy:
        if res.dp or ledgers:
            res.add(Severity.ERROR, FindingKind.REPORT_MISMATCH,
                    "report.json has no privacy block although DP is on / ledgers exist")
        return
    if res.delta is not None and privacy.get("delta") is not None and not math.isclose(
            float(privacy["delta"]), res.delta, rel_tol=1e-9):
        res.add(Severity.ERROR, FindingKind.REPORT_MISMATCH,
                f"report.json delta {privacy['delta']} differs from the configured "
                f"{res.delta:g}")
    reported = privacy.get("clients") or {}
    for cid, row in sorted(reported.items()):
        audit = ledgers.get(cid)
        if audit is None:
            res.add(Severity.ERROR, FindingKind.REPORT_MISMATCH,
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
            res.add(Severity.ERROR, FindingKind.REPORT_MISMATCH,
                    "report.json disagrees with the ledger: " + "; ".join(problems), cid)
    for cid in sorted(set(ledgers) - set(reported)):
        res.add(Severity.ERROR, FindingKind.REPORT_MISMATCH,
                f"{cid} has a ledger but report.json gives no epsilon for it", cid)


def check_client_level(res: AuditResult, path: Path) -> None:
    """Recompute the client-level DP claim of ``report.json`` (central DP-FedAvg: PRV and PLD
    over the Poisson-subsampled Gaussian; distributed Skellam: the Skellam RDP bound from the
    per-round sensitivities, never below the Gaussian mechanism with the same noise);
    ``path`` is the run's ``report.json``.

    Args:
        res: the audit's result, which collects the findings.
        path: the run's ``report.json``.
    """
    try:
        level = (json.loads(path.read_text()).get("privacy") or {}).get("client_level")
    except (OSError, ValueError, AttributeError):
        return  # _check_report names an unreadable report
    if not level:
        return
    from fedssl.privacy.accounting import SkellamRound, create_accountant

    try:
        delta, recorded = float(level["delta"]), float(level["epsilon"])
        z, rate = float(level["noise_multiplier"]), float(level["sample_rate"])
        rounds = int(level["rounds"])
        released = [SkellamRound(**{k: float(v) for k, v in r.items()})
                    for r in level.get("released", [])]
    except (KeyError, TypeError, ValueError) as exc:
        res.add(Severity.ERROR, FindingKind.CLIENT_LEVEL,
                f"report.json client_level block malformed ({exc})")
        return
    if "Skellam" in str(level.get("mechanism", "")):
        if len(released) != rounds:
            res.add(Severity.ERROR, FindingKind.CLIENT_LEVEL,
                    f"client_level lists {len(released)} released rounds but claims {rounds}")
        if any(r.noise_multiplier != z for r in released):
            res.add(Severity.ERROR, FindingKind.CLIENT_LEVEL,
                    "a released round's noise multiplier differs from the configured one")
        recomputed = create_accountant("skellam").epsilon(released, delta)
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
        res.add(Severity.ERROR, FindingKind.UNDERSTATED_EPSILON,
                f"client-level epsilon {recorded:.4g} is below the recomputation "
                f"{recomputed:.4g} ({what}; Gaussian floor {floor:.4g})")
    if res.budget is not None and recomputed > res.budget * (1 + res.tolerance):
        res.notes.append(f"client-level epsilon {recomputed:.3f} exceeds the record-level "
                         f"budget {res.budget:g} (different privacy unit: a whole client)")

