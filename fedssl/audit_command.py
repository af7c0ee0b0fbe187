"""``fedssl audit``: the privacy auditor's command over a run directory.

What and why: an auditor gets a run directory (docs/simulation.md, "Run directory") and
should be able to check, without trusting the server or the clients' accountant, that every
privacy claim in it holds. This command glues the two audits of :mod:`fedssl.privacy`:

- :mod:`fedssl.privacy.audit.auditor`: ledger signatures and hash chains, cumulative epsilon
  recomputed with the accountants ``prv`` (Opacus PRV, Gopi et al. 2021), ``pld`` (Google
  dp-accounting PLD, Doroshenko et al. 2022) and ``dpa-rdp`` (dp-accounting RDP, Mironov
  2017), budgets, delta, configuration soundness, report.json;
- :mod:`fedssl.privacy.audit.empirical` (``--empirical``): a one-run canary experiment on
  Opacus's DPOptimizer (Steinke, Nasr & Jagielski, NeurIPS 2023) giving an empirical lower
  bound on epsilon that must not exceed the claim. A lower bound can refute a claim, never
  confirm it: the verdict is ``violation``, ``no-violation-detected`` (with the power: the
  largest epsilon the audit could have certified) or ``inconclusive`` (the audit could not
  have certified a bound above the claim, even for a mechanism without noise).

Exit status: 0 clean, 1 findings, 2 usage errors, 3 no findings but an empirical audit was
inconclusive. The CLI registers it with::

    add_audit_parser(subparsers)          # in build_parser()
    return run_audit(args)                # when args.command == "audit"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

from fedssl.run_layout import RunLayout

EPILOG = """\
exit status: 0 = clean, 1 = at least one finding, 2 = usage error (e.g. missing run dir),
3 = no finding, but an --empirical audit was inconclusive (it had no power to refute the claim).

keys: every ledger's public key must be the one the identity registry lists for that client
(RUN/identities.json, the config's identity-registry, or --registry); without a registry the
audit says so (finding no-identity-registry), since a re-signed ledger with a replaced .pub
would otherwise verify.

empirical verdicts: a one-run canary audit gives a LOWER bound on epsilon. "violation": the
bound exceeds the recorded mechanism's upper bound (the claim is false at the stated
confidence). "no-violation-detected": below it, and the audit had the power to certify more
(printed). "inconclusive": it could not have certified above the claim, even if every guess
were right or the mechanism added no noise at all; it says nothing about the claim.

outputs (RUN_DIR mode): OUT/audit.json (findings with severity/client/round/message and
per-client, per-entry epsilons of every accountant), OUT/report.md (Markdown table, findings,
plot) and OUT/epsilon.png (recorded vs recomputed epsilon per round), OUT = RUN_DIR/audit
unless --out is given.

examples:
  fedssl audit runs/demo
  fedssl audit runs/demo --budget 6 --out /tmp/demo-audit
  fedssl audit runs/demo --empirical --client client-003
  fedssl audit runs/server-run --registry certs/identities.json
  fedssl audit --empirical --noise-multiplier 1.1 --sample-rate 0.01 --steps 1000 --delta 1e-5
"""


def add_audit_parser(subparsers: Any) -> None:
    """Register ``fedssl audit`` on the subparsers of the ``fedssl`` parser."""
    p = subparsers.add_parser(
        "audit", help="audit a run's privacy claims (ledgers, accountants, canaries)",
        description=textwrap.fill(
        "Audit the privacy claims of a run directory: verify every client's "
        "signed, hash-chained ledger (RUN/ledger/<client>.jsonl against <client>.pub), "
        "recompute each client's cumulative epsilon after every entry with two independent "
        "accountants (prv: Opacus PRV, pld: Google dp-accounting PLD) plus dpa-rdp "
        "(dp-accounting RDP) as a conservative bound, "
        "flag recorded epsilons below the recomputation, budget overruns, delta mismatches, "
        "unsound configurations (DP with a non-decomposable SSL objective, DP without noise, "
        "an accountant that is not an upper bound) and report.json values that disagree with "
        "the ledgers; check every ledger key against the identity registry. With "
        "--empirical, also run a one-run canary audit (Steinke, Nasr & Jagielski 2023) on "
        "Opacus's DP-SGD optimizer: its empirical epsilon lower bound can refute the claimed "
        "epsilon (violation) but never confirm it; when the audit has no power to refute it, "
        "it says inconclusive.", 90),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                   help="run directory written by `fedssl simulate` or the server (may be "
                   "omitted with --empirical and an explicit mechanism)")
    p.add_argument("--registry", metavar="PATH",
                   help="identity registry (identities.json) the ledger keys must match "
                   "(default: RUN/identities.json, else the config's identity-registry)")
    p.add_argument("--run-id", metavar="ID",
                   help="run whose entries are audited in ledgers that span runs (default: "
                   "RUN/run_id, else each ledger's last run)")
    p.add_argument("--budget", type=float, metavar="EPS",
                   help="epsilon budget to check every client against (default: the run's "
                   "config.toml [experiment] target_epsilon when > 0)")
    p.add_argument("--tolerance", type=float, default=0.01, metavar="REL",
                   help="relative tolerance: a recorded epsilon more than this below the "
                   "recomputed max(PRV, PLD), or a recomputed epsilon more than this above the "
                   "budget, is a finding (default: 0.01 = 1 %%)")
    p.add_argument("--out", metavar="DIR",
                   help="where to write audit.json, report.md and epsilon.png (default: "
                   "RUN_DIR/audit; without RUN_DIR nothing is written unless given)")
    p.add_argument("--no-plot", action="store_true", help="do not draw epsilon.png")
    p.add_argument("--json", action="store_true",
                   help="print audit.json to stdout instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true",
                   help="also show third-party warnings (every Python warning, once per "
                   "place it comes from); by default known banners are dropped "
                   "(fedssl.quiet)")
    emp = p.add_argument_group(
        "empirical audit", textwrap.fill(
        "One-run canary audit (Steinke, Nasr & Jagielski, NeurIPS 2023) of "
        "the DP-SGD mechanism on Opacus's DPOptimizer with white-box Dirac gradient canaries. "
        "The mechanism is a client's recorded ledger history, or the one given by "
        "--noise-multiplier/--sample-rate/--steps.", 90))
    emp.add_argument("--empirical", action="store_true",
                     help="run the canary audit (default budget: ~1 min on 2 CPU cores)")
    emp.add_argument("--client", metavar="ID",
                     help="client whose recorded mechanism is audited, or 'all' (default: "
                     "the client with the largest recorded epsilon)")
    emp.add_argument("--noise-multiplier", type=float, metavar="SIGMA",
                     help="noise multiplier of the audited mechanism (overrides the ledger)")
    emp.add_argument("--sample-rate", type=float, metavar="Q",
                     help="Poisson sampling rate of the audited mechanism")
    emp.add_argument("--steps", type=int, metavar="T", help="DP-SGD steps of the mechanism")
    emp.add_argument("--max-grad-norm", type=float, default=None, metavar="C",
                     help="per-record clip norm (default: the ledger's, else 1.0)")
    emp.add_argument("--delta", type=float, default=None, metavar="DELTA",
                     help="delta of the claim (default: the ledger's / config's, else 1e-5)")
    emp.add_argument("--canaries", type=int, default=10_000, metavar="M",
                     help="number of canaries m, each included with probability 1/2 "
                     "(default: 10000; the bound can't exceed about ln(m), and a rarely "
                     "sampled canary limits it further: see the verdicts below)")
    emp.add_argument("--guesses", type=int, default=None, metavar="R",
                     help="guesses r (top r/2 'in', bottom r/2 'out'); default: try "
                     "r/m in {1, 5, 20, 90} %%, each also one-sided (top r/2 'in' only), "
                     "with the confidence split (Bonferroni)")
    emp.add_argument("--confidence", type=float, default=0.95, metavar="P",
                     help="confidence of the empirical lower bound (default: 0.95)")
    emp.add_argument("--seed", type=int, default=0, help="seed of the canary experiment")
    emp.add_argument("--mechanism-noise-scale", type=float, default=1.0, metavar="F",
                     help="multiply the noise the optimizer actually adds by F while the "
                     "claim stays the recorded one, to see whether this audit catches a "
                     "broken mechanism at this setting (0 = no noise at all; the verdict says "
                     "violation, or inconclusive when it can't) (default: 1 = audit the real "
                     "mechanism)")


def _usage(msg: str) -> int:
    print(f"fedssl audit: error: {msg}", file=sys.stderr)
    return 2


def load_run_config(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The run's ``[experiment]`` table with ExperimentConfig's defaults for absent keys, not
    validated (an unsound configuration must reach the audit); or ``(None, error)``."""
    from fedssl.privacy.audit.auditor import read_config_table
    from fedssl.simulations.config import ExperimentConfig

    path = RunLayout(run_dir).config
    if not path.exists():
        return None, None
    try:
        table = read_config_table(path)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return None, f"config.toml unreadable: {exc}"
    merged = dataclasses.asdict(ExperimentConfig())
    merged.update({k.replace("-", "_"): v for k, v in table.items()})
    return merged, None


def _empirical_targets(args: argparse.Namespace, result: Any) -> list[dict[str, Any]]:
    """The mechanisms to audit: from the CLI, or from the chosen clients' ledgers."""
    from fedssl.privacy.audit.empirical import MechanismSegment
    from fedssl.run_spec import DEFAULTS

    explicit = (args.noise_multiplier, args.sample_rate, args.steps)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("--noise-multiplier, --sample-rate and --steps go together")
        seg = MechanismSegment(args.noise_multiplier, args.sample_rate, args.steps,
                      args.max_grad_norm if args.max_grad_norm is not None else 1.0)
        delta = args.delta or (result.delta if result is not None and result.delta
                              else DEFAULTS["delta"])
        return [{"client": args.client if args.client not in (None, "all") else None,
                 "segments": [seg], "delta": delta, "recorded": None}]
    if result is None:
        raise ValueError("--empirical without RUN_DIR needs --noise-multiplier, --sample-rate "
                         "and --steps")
    clients = [c for c in result.clients if c.entries]
    if not clients:
        raise ValueError("no readable ledger entries to take the mechanism from; give "
                         "--noise-multiplier, --sample-rate and --steps")
    if args.client == "all":
        chosen = clients
    elif args.client:
        chosen = [c for c in clients if c.client == args.client]
        if not chosen:
            raise ValueError(f"no readable ledger for client {args.client!r}")
    else:
        chosen = [max(clients, key=lambda c: c.last.recorded)]
    targets = []
    for c in chosen:
        segs = [MechanismSegment(e.effective_noise, e.sample_rate, e.steps,
                        args.max_grad_norm if args.max_grad_norm is not None
                        else e.max_grad_norm)
                for e in c.entries]
        targets.append({"client": c.client, "segments": segs,
                        "delta": args.delta or c.last.delta, "recorded": c.last.recorded})
    return targets


def run_audit(args: argparse.Namespace) -> int:
    """Run ``fedssl audit`` with parsed ``args``; returns the exit status. Known third-party
    banners are dropped unless ``--verbose``, which shows every warning instead."""
    import warnings

    from fedssl.quiet import quiet_output

    verbose = bool(getattr(args, "verbose", False))
    with warnings.catch_warnings(), quiet_output(verbose):
        if verbose:
            warnings.simplefilter("default")
        return _run_audit(args)


def _run_audit(args: argparse.Namespace) -> int:
    """:func:`run_audit` without the output filtering."""
    from fedssl.privacy.audit.auditor import (
        AuditResult,
        FindingKind,
        Severity,
        audit_run,
        format_findings,
        format_table,
        write_audit,
    )

    if args.run_dir is None and not args.empirical:
        return _usage("give RUN_DIR (or --empirical with --noise-multiplier, --sample-rate "
                      "and --steps)")
    if args.run_dir is not None and not Path(args.run_dir).is_dir():
        return _usage(f"run directory not found: {args.run_dir}")
    if args.budget is not None and not args.budget > 0:
        return _usage("--budget must be positive")
    if not 0 <= args.tolerance < 1:
        return _usage("--tolerance must be in [0, 1)")
    if not 0 < args.confidence < 1:
        return _usage("--confidence must be in (0, 1)")
    if args.canaries < 4 or (args.guesses is not None and not 2 <= args.guesses
                             <= args.canaries):
        return _usage("need --canaries >= 4 and 2 <= --guesses <= --canaries")
    if args.delta is not None and not 0 < args.delta < 1:
        return _usage("--delta must be in (0, 1)")
    if args.registry is not None and not Path(args.registry).is_file():
        return _usage(f"identity registry not found: {args.registry}")

    result: AuditResult | None = None
    if args.run_dir is not None:
        run_dir = Path(args.run_dir)
        config, _ = load_run_config(run_dir)  # None: audit_run reports why
        result = audit_run(run_dir, config=config, budget=args.budget,
                           tolerance=args.tolerance, progress=not args.quiet,
                           registry=Path(args.registry) if args.registry else None,
                           run_id=args.run_id)

    empirical: list[Any] = []
    if args.empirical:
        from fedssl.privacy.audit.empirical import run_canary_audit

        try:
            targets = _empirical_targets(args, result)
        except ValueError as exc:
            return _usage(str(exc))
        for t in targets:
            try:
                er = run_canary_audit(
                    t["segments"], t["delta"], canaries=args.canaries, guesses=args.guesses,
                    confidence=args.confidence, noise_scale=args.mechanism_noise_scale,
                    recorded_epsilon=t["recorded"], seed=args.seed, progress=not args.quiet,
                    client=t["client"])
            except ValueError as exc:
                return _usage(str(exc))
            empirical.append(er)
        if result is None:
            result = AuditResult(run_dir="", budget=args.budget, budget_source="--budget",
                                 delta=targets[0]["delta"], tolerance=args.tolerance,
                                 dp=True, method=None)
        for er in empirical:
            result.empirical.append(er.to_dict())
            who = f"empirical audit{' of ' + er.client if er.client else ''}"
            if er.violation:
                result.add(Severity.ERROR, FindingKind.EMPIRICAL_VIOLATION,
                           f"empirical epsilon lower bound {er.epsilon_lower_bound:.3f} "
                           f"({100 * er.confidence:g} % confidence, {er.correct}/{er.guesses} "
                           f"canary guesses right) exceeds {er.tightest_bound:.3f}, the "
                           f"smallest upper bound of the recorded mechanism (claimed "
                           f"{er.claimed_epsilon:.3f}): the mechanism leaks more than "
                           "recorded", er.client)
            elif er.verdict == "inconclusive":
                result.notes.append(f"{who} INCONCLUSIVE: {er.reason}; it neither supports "
                                    "nor refutes the claim")
            else:
                result.notes.append(f"{who}: no violation detected ({er.reason})")

    out_dir = Path(args.out) if args.out else (
        Path(args.run_dir) / "audit" if args.run_dir is not None else None)
    paths = write_audit(result, out_dir, plot=not args.no_plot) if out_dir else {}

    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        if result.clients or args.run_dir is not None:
            print(format_table(result))
            print()
        if result.client_level:
            cl = result.client_level
            print(f"client-level DP ({cl['mechanism']}, {cl['rounds']} rounds): recorded "
                  f"epsilon {cl['recorded']:.3f}, recomputed {cl['recomputed']:.3f} "
                  f"({cl['accountant']}), Gaussian floor {cl['gaussian_floor']:.3f}")
            print()
        for er in empirical:
            segs = er.segments
            mech = (f"sigma={segs[0].noise_multiplier:g}, q={segs[0].sample_rate:.4g}, "
                    f"C={segs[0].max_grad_norm:g}, steps={sum(s.steps for s in segs)}"
                    + (f" over {len(segs)} segments" if len(segs) > 1 else ""))
            print(f"empirical audit{' of ' + er.client if er.client else ''} ({mech}, "
                  f"noise scale {er.noise_scale:g}): {er.canaries} canaries, "
                  f"{er.correct}/{er.guesses} guesses right -> epsilon >= "
                  f"{er.epsilon_lower_bound:.3f} at {100 * er.confidence:g} % confidence; "
                  f"claimed {er.claimed_epsilon:.3f} ({er.claim_source}; recomputed PRV "
                  f"{er.claimed_by.get('prv', math.nan):.3f}, PLD "
                  f"{er.claimed_by.get('pld', math.nan):.3f}); could certify at most "
                  f"{er.max_detectable_epsilon:.2f} (all guesses right), "
                  f"{er.noise_free_epsilon:.2f} (no noise at all); {er.seconds:.1f} s -> "
                  f"{er.verdict.upper()} ({er.reason})")
        if empirical:
            print()
        print(format_findings(result))
        for note in result.notes:
            print(f"note: {note}")
        for kind, path in paths.items():
            print(f"{kind}: {path}")
    if not result.clean:
        return 1
    return 3 if any(er.verdict == "inconclusive" for er in empirical) else 0
