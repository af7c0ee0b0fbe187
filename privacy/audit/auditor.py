"""Independent audit of a run directory's privacy claims: ledgers, accountants, configuration.

What and why: a run's epsilons are written by the clients that spent them (their signed ledgers,
:mod:`fedssl.privacy.identity.ledger`) and summarised by the server (``report.json``). An auditor
should
not have to trust either, nor the single accountant that produced the numbers. This module

1. verifies every ledger's hash chain and Ed25519 signatures against the client's public key
   (``RUN/ledger/<client>.jsonl`` with ``RUN/ledger/<client>.pub``), that the ``client``
   field matches the file name, and that the public key is the one the identity registry
   (``RUN/identities.json``, or ``--registry``; :func:`fedssl.privacy.identity.keys.load_registry`)
   lists for that client: anyone can re-sign a ledger with a fresh key and replace the
   ``.pub``, only the registry (distributed out of band) ties a key to a site. Without a
   registry that is a finding, never a silent pass; key fingerprints (SHA-256 of the raw
   32-byte Ed25519 key) are printed per client;
2. recomputes each client's cumulative epsilon after every entry from the recorded noise
   multiplier (divided by ``extra.sensitivity`` when recorded,
   :meth:`fedssl.privacy.identity.ledger.LedgerEntry.segment`), sample rate and steps with
   independent accountants of the Poisson-subsampled Gaussian mechanism (the registry's
   accountants marked ``audit``, :func:`fedssl.privacy.accounting.audit_accountants`, named
   as the registry names them):

   - ``prv``: Opacus's privacy-random-variable accountant (Gopi, Lee & Wutschitz, "Numerical
     Composition of Differential Privacy", NeurIPS 2021), upper end of its error bound;
   - ``pld``: Google dp-accounting's privacy-loss-distribution accountant with the
     pessimistic connect-the-dots discretisation (Doroshenko, Ghazi, Kamath, Kumar &
     Manurangsi, "Connect the Dots: Tighter Discrete Approximations of Privacy Loss
     Distributions", PETS 2022), an upper bound by construction;
   - ``dpa-rdp``: dp-accounting's Rényi-DP accountant (Mironov, "Rényi Differential Privacy",
     CSF 2017; Mironov, Talwar & Zhang 2019 for the subsampled Gaussian), a looser but
     conservative upper bound, used as a sanity check (dpa-rdp >= prv, pld); not Opacus's
     ``rdp``, which a client may record its epsilons with;

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

Parts: this module is the entry (:func:`audit_run` reads the run directory and runs the checks;
every public name of the parts is importable from here): the recomputation in
:mod:`fedssl.privacy.audit.accounting`, the result and :class:`Finding` types in
:mod:`fedssl.privacy.audit.findings`, the checks in :mod:`fedssl.privacy.audit.checks`, the
rendering (text table, ``report.md``, ``audit.json``, ``epsilon.png``) in
:mod:`fedssl.privacy.audit.report`.
The empirical counterpart (a lower bound from a canary experiment) is
:mod:`fedssl.privacy.audit.empirical`.

Example::

    from fedssl.privacy.audit.auditor import audit_run, format_table, write_audit

    result = audit_run(Path("runs/demo"), config=cfg_table)
    write_audit(result, Path("runs/demo/audit"))
    print(format_table(result)); sys.exit(0 if result.clean else 1)
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedssl.privacy.audit.accounting import (
    PRV_EPS_ERROR,
    REFERENCE,
    audit_accountants,
    dpa_rdp_epsilons,
    pld_epsilons,
    pld_interval,
    prv_epsilons,
    recompute,
    reference_epsilon,
)
from fedssl.privacy.audit.checks import (
    AGREEMENT_TOLERANCE,
    DEFAULT_TOLERANCE,
    check_client_level,
    check_config,
    check_entries,
    check_epsilons,
    check_report,
    key_fingerprint,
    load_ledger,
)
from fedssl.privacy.audit.findings import (
    AuditResult,
    ClientAudit,
    EntryCheck,
    Finding,
    FindingKind,
    Severity,
)
from fedssl.privacy.audit.report import (
    format_findings,
    format_markdown,
    format_table,
    plot_epsilons,
    table_header,
    table_rows,
    write_audit,
)
from fedssl.privacy.identity.keys import IdentityError, load_registry
from fedssl.run_layout import RunLayout

__all__ = ["AGREEMENT_TOLERANCE", "DEFAULT_TOLERANCE", "PRV_EPS_ERROR", "REFERENCE",
           "AuditResult", "ClientAudit", "EntryCheck", "Finding",
           "FindingKind", "Severity", "audit_accountants", "audit_run", "dpa_rdp_epsilons",
           "format_findings", "format_markdown", "format_table", "key_fingerprint",
           "pld_epsilons", "pld_interval", "plot_epsilons", "prv_epsilons",
           "read_config_table", "recompute",
           "reference_epsilon", "table_header", "table_rows", "write_audit"]


def read_config_table(path: Path) -> dict[str, Any]:
    """A run's ``config.toml`` as the simulator's ``[experiment]`` keys, unvalidated (an
    unsound configuration must reach the audit, not be rejected before it).

    Reads the simulator's format (an ``[experiment]`` table), the server's (a ``[run]`` table
    of kebab-case run-config keys, :mod:`fedssl.server.run_record`: mapped to the same names,
    ``num-server-rounds`` to ``rounds``), or a bare top-level table.

    Args:
        path: the run's ``config.toml``.

    Returns:
        The settings under the simulator's snake-case names.
    """
    raw = tomllib.loads(path.read_text())
    if isinstance(raw.get("experiment"), dict):
        return dict(raw["experiment"])
    if isinstance(raw.get("run"), dict):
        table = {k.replace("-", "_"): v for k, v in raw["run"].items()}
        if "num_server_rounds" in table:
            table["rounds"] = table.pop("num_server_rounds")
        return table
    return dict(raw)



def _load_registry(res: AuditResult, run_dir: Path, given: Path | None,
                   cfg: Mapping[str, Any], needed: bool = True
                   ) -> dict[str, Ed25519PublicKey] | None:
    """The identity registry's keys (client id -> public key), or None (with a finding when
    there are ledgers whose keys it should have vouched for)."""
    candidates = [Path(given)] if given is not None else [
        RunLayout(run_dir).identities,
        *([Path(str(cfg["identity_registry"]))] if cfg.get("identity_registry") else [])]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        where = str(given) if given is not None else " or ".join(map(str, candidates))
        if not needed:
            res.notes.append(f"no identity registry ({where} not found); no ledger to check")
            return None
        res.add(Severity.WARNING, FindingKind.NO_IDENTITY_REGISTRY,
                f"no identity registry ({where} not found): each ledger's signatures were "
                "checked only against the .pub stored next to it, which whoever rewrote the "
                "ledger could replace; give --registry CERTS/identities.json")
        return None
    res.registry = str(path)
    try:
        return {cid: pub for cid, (_, pub) in load_registry(path).items()}
    except IdentityError as exc:
        res.add(Severity.ERROR, FindingKind.BAD_REGISTRY, str(exc))
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
        run_dir: the run directory (see docs/simulation.md, "Run directory").
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

    Returns:
        The result: per-client recomputations, findings (each fails the audit) and notes.
    """
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    cfg_error = ""
    if config is None:
        cfg_path = layout.config
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
    # 0.0, not RunSpec's 8.0, on purpose: no recorded target means nothing to compare with
    elif float(cfg.get("target_epsilon", 0.0) or 0.0) > 0:
        budget = float(cfg["target_epsilon"])
    if run_id is None:
        id_file = layout.run_id
        run_id = (id_file.read_text().strip() if id_file.exists()
                  else str(cfg["run_id"]) if cfg.get("run_id") else None)
    res = AuditResult(run_dir=str(run_dir), budget=budget, budget_source=source, delta=delta,
                      tolerance=tolerance, dp=dp, method=cfg.get("method"), run_id=run_id)
    if config is None:
        res.add(Severity.ERROR, FindingKind.MISSING_CONFIG, cfg_error)
    check_config(res, cfg)
    if budget is None:
        res.notes.append("no epsilon budget (target_epsilon = 0 and no --budget): budget not "
                         "checked")

    ledger_dir = layout.ledger_dir
    paths = sorted(ledger_dir.glob("*.jsonl")) if ledger_dir.is_dir() else []
    if not paths and dp:
        res.add(Severity.ERROR, FindingKind.MISSING_LEDGER,
                "dp = true but RUN/ledger holds no ledgers: no privacy claim can be verified")
    if paths and dp is False:
        res.add(Severity.WARNING, FindingKind.UNEXPECTED_LEDGER,
                "ledgers exist although dp = false")
    keys = _load_registry(res, run_dir, registry, cfg, needed=bool(paths))
    for pub in sorted(ledger_dir.glob("*.pub")) if ledger_dir.is_dir() else []:
        if not pub.with_suffix(".jsonl").exists():
            res.notes.append(f"{pub.name} has no ledger (client never trained)")

    from tqdm.auto import tqdm

    for path in tqdm(paths, desc="auditing ledgers", unit="client", disable=not progress,
                     leave=False):
        audit = ClientAudit(client=path.stem, ledger=str(path.relative_to(run_dir)))
        res.clients.append(audit)
        entries = load_ledger(res, path, audit, keys)
        if not entries:
            if audit.chain_verified:
                res.add(Severity.WARNING, FindingKind.EMPTY_LEDGER, f"{path.name} has no entries",
                        audit.client)
            continue
        check_entries(res, audit, entries)
        check_epsilons(res, audit)
    check_report(res, layout.report)
    check_client_level(res, layout.report)
    return res

