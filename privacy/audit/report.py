"""Rendering of an :class:`~fedssl.privacy.audit.findings.AuditResult`: the text table and
findings printed by ``fedssl audit``, ``report.md``, ``audit.json`` and ``epsilon.png``
(recorded vs recomputed epsilon per round), written by :func:`write_audit`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fedssl.atomic import atomic_write_text
from fedssl.privacy.accounting import REGISTRY, audit_accountants
from fedssl.privacy.audit.accounting import REFERENCE
from fedssl.privacy.audit.findings import AuditResult, ClientAudit


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return "inf" if math.isinf(x) else f"{x:.3f}"


def table_header() -> tuple[str, ...]:
    """The table's columns, read from the registry when called (so an accountant registered
    later has its column).

    Returns:
        The column names; the recomputed epsilons are headed by the audit accountants'
        registry names (:func:`~fedssl.privacy.accounting.audit_accountants`).
    """
    return ("client", "rounds", "steps", "recorded eps", *audit_accountants(),
            "lifetime eps", "runs", "key", "status")


def _key_status(c: ClientAudit) -> str:
    fp = c.key_fingerprint or "-"
    state = {True: "registered", False: "NOT REGISTERED" if c.registry_fingerprint is None
             else "MISMATCH", None: "no registry"}[c.registered]
    return f"{fp} {state}"


def table_rows(res: AuditResult) -> list[tuple[str, ...]]:
    """One row per client: this run's last cumulative epsilons (recorded, recomputed), the
    site's lifetime epsilon (recorded, all runs), its runs and its key.

    Args:
        res: the audit's result.

    Returns:
        One row of strings per client, in :func:`table_header` order.
    """
    rows = []
    for c in res.clients:
        last, life = c.last, c.lifetime
        rows.append((c.client, str(len(c.entries)), str(c.steps),
                     _fmt(last.recorded if last else None),
                     *(_fmt(last.epsilons.get(a) if last else None)
                       for a in audit_accountants()),
                     _fmt(life.recorded_lifetime if life else None), str(len(c.runs)),
                     _key_status(c), c.status))
    return rows


def format_table(res: AuditResult) -> str:
    """Plain-text table, one row per client (last entry's cumulative epsilons).

    Args:
        res: the audit's result.

    Returns:
        The table, columns aligned, one line per client under a header.
    """
    header = table_header()
    left = (0, len(header) - 2, len(header) - 1)  # client, key, status
    rows = [header, *table_rows(res)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) if i in left else v.rjust(w)
                       for i, (v, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_findings(res: AuditResult) -> str:
    """The findings, one line each (severity, kind, client and round, message), or
    ``no findings``.

    Args:
        res: the audit's result.

    Returns:
        The lines joined by newlines.
    """
    if not res.findings:
        return "no findings"
    out = []
    for f in res.findings:
        where = " ".join(x for x in (f.client or "", f"round {f.round}" if f.round else "") if x)
        out.append(f"[{f.severity}] {f.kind}{' (' + where + ')' if where else ''}: {f.message}")
    return "\n".join(out)


def plot_epsilons(res: AuditResult, path: Path) -> Path | None:
    """Recorded (solid) vs recomputed reference (dashed) cumulative epsilon per round.

    Args:
        res: the audit's result.
        path: the PNG to write.

    Returns:
        ``path``, or None when no client has an entry (nothing is written).
    """
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
    """``report.md``: the result, the clients' table, keys, multi-run sites, client-level DP,
    findings, notes, the empirical audit and the plot.

    Args:
        res: the audit's result.
        plot: the plot's file name relative to ``report.md``, or None.

    Returns:
        The Markdown text.
    """
    lines = [f"# Privacy audit of `{res.run_dir}`", "",
             f"**Result: {'CLEAN' if res.clean else f'{len(res.findings)} FINDING(S)'}**", "",
             f"- DP: {res.dp}; method: {res.method}; delta: {res.delta}; run: "
             f"{res.run_id if res.run_id is not None else 'the last run of each ledger'}",
             f"- identity registry: {res.registry or 'NONE (ledger keys not checked)'}",
             f"- budget: {res.budget} ({res.budget_source if res.budget is not None else '-'})",
             "- accountants: " + "; ".join(f"`{a}`: {REGISTRY[a].label or a}"
                                           for a in audit_accountants())
             + f". Reference = max({', '.join(REFERENCE)}); tolerance "
             f"{100 * res.tolerance:g} %.", "",
             "## Clients (cumulative epsilon after the run's last entry)", "",
             f"`recorded eps` and {', '.join(f'`{a}`' for a in audit_accountants())}: this "
             "run's epsilon; `lifetime eps`: the recorded composition of every entry of the "
             "site's ledger (all runs).", "",
             "| " + " | ".join(table_header()) + " |",
             "|" + "|".join("---" for _ in table_header()) + "|"]
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
                  f"lifetime max({', '.join(REFERENCE)}) |", "|---|---|---|---|---|"]
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
    """Write ``audit.json``, ``report.md`` and (with ``plot``) ``epsilon.png`` to ``out_dir``.

    Args:
        res: the audit's result.
        out_dir: the directory to write to (created if missing).
        plot: also draw ``epsilon.png``.

    Returns:
        The paths written, by kind: ``json``, ``markdown`` and ``plot``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "audit.json", "markdown": out_dir / "report.md"}
    png = plot_epsilons(res, out_dir / "epsilon.png") if plot else None
    if png:
        paths["plot"] = png
    atomic_write_text(paths["json"], json.dumps(res.to_dict(), indent=2) + "\n")
    atomic_write_text(paths["markdown"], format_markdown(res, png.name if png else None))
    return paths

