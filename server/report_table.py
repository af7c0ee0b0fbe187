"""The result table a run prints at its end (``fedssl simulate``, ``fedssl server``,
``flwr run .``): the encoders' probes side by side (random init, the warm start if any, the
federated encoder), the few-label table, and each client's privacy from its signed ledger.
Read from ``RUN/report.json`` and ``RUN/ledger``, so it is the same table wherever the run
was made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedssl.run_layout import RunLayout


def run_ledgers(run_dir: Path) -> dict[str, list[Any]]:
    """This run's verified ledger entries per client, from ``RUN/ledger`` (a ledger that
    fails verification is left out; the report's privacy block says why)."""
    from fedssl.privacy.identity.keys import load_public_key
    from fedssl.privacy.identity.ledger import LedgerError, read_ledger

    layout = RunLayout(run_dir)
    rid_file = layout.run_id
    run_id = rid_file.read_text().strip() if rid_file.exists() else None
    out: dict[str, list[Any]] = {}
    for path in layout.ledgers():
        pub = path.with_suffix(".pub")
        try:
            entries = read_ledger(path, load_public_key(pub))
        except (LedgerError, OSError, ValueError):
            continue
        if run_id is not None and entries and hasattr(entries[0], "run"):
            from fedssl.privacy.identity.ledger import LEGACY_RUN

            entries = [e for e in entries if e.run == (run_id or LEGACY_RUN)]
        if entries:
            out[entries[-1].client] = entries
    return out


def _noise_range(entries: list[Any] | None, reported: dict[str, Any]) -> str:
    """A client's noise multipliers over the run's ledger entries, ``min-max`` (one value
    if they agree); without a ledger, the value the report holds. Where the clip sensitivity
    is not 1 (group clipping), the effective one (sigma / sensitivity) follows, labelled."""
    def span(values: list[float]) -> str:
        lo, hi = (f"{v:.3f}" for v in (min(values), max(values)))
        return lo if lo == hi else f"{lo}-{hi}"

    if not entries:
        raw = [float(reported["noise_multiplier"])]
        eff = [float(reported.get("effective_noise_multiplier", raw[0]))]
    else:
        raw = [float(e.noise_multiplier) for e in entries]
        eff = [e.segment()[0] for e in entries]
    return span(raw) if eff == raw else f"{span(raw)} (effective {span(eff)})"


#: the probe columns of the encoders' table: (report key, heading)
COLUMNS = (("linear_probe_accuracy", "linear probe"), ("knn_accuracy", "kNN"),
           ("linear_probe_5shot", "5-shot linear"), ("knn_5shot", "5-shot kNN"))


def _encoder_row(name: str, m: dict, columns: tuple[tuple[str, str], ...] = COLUMNS) -> str:
    """One encoder's probes side by side ("-" where not measured, e.g. an old report)."""
    def f(key: str) -> str:
        v = m.get(key)
        return f"{v:.3f}" if isinstance(v, int | float) else "-"

    return f"| {name} | " + " | ".join(f(key) for key, _ in columns) + " |"


def nobody_trained(run_dir: Path) -> str | None:
    """Why no round of the run aggregated a single client update (every client refused,
    failed or was rejected in every round), or None if some round did; the commands exit
    non-zero with it, since such a run's encoder is its initial one."""
    from fedssl.server.report import read_metrics

    rows = [r for r in read_metrics(run_dir) if r.get("round", 0) >= 1]
    if not rows or any(r.get("clients", 0) for r in rows):
        return None
    reasons = sorted({str(reason) for r in rows for kind in ("refused", "failed", "rejected")
                      for reason in (r.get(kind) or {}).values()})
    return (f"no client update was aggregated in any of the {len(rows)} round(s): the "
            "encoder is the initial one" + (f" ({'; '.join(reasons)[:500]})" if reasons
                                             else ""))


def format_report(run_dir: Path) -> str:
    """The result table printed after a run."""
    report = json.loads(RunLayout(run_dir).report.read_text())
    encoders = [("random init", report["random_init"]),
                *([("public warm start (round 0)", report["initial_encoder"])]
                  if report.get("initial_encoder") else []),
                (f"federated {report['method']}", {**report, **(report.get("few_label") or {})})]
    # the few-label columns only where some encoder has them (not with --few-label "")
    columns = tuple((key, head) for key, head in COLUMNS if "shot" not in key
                    or any(isinstance(m.get(key), int | float) for _, m in encoders))
    lines = [
        f"fedssl run: {report['method']} on {report['dataset']}, {report['clients']} clients, "
        f"{report['rounds']} rounds, {report['wall_seconds']:.1f} s, secure aggregation "
        f"{'on' if report.get('secure_aggregation') else 'off'}",
        "",
        "| encoder | " + " | ".join(head for _, head in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
        *(_encoder_row(name, m, columns) for name, m in encoders),
    ]
    if report.get("labels") == "none":  # a training-only run (ssl_core.datasets.TRAINING_ONLY)
        lines += ["", "no labels in the evaluation data: no probe accuracies; the collapse "
                      "metrics per round are in metrics.jsonl and plots/collapse.png; score the "
                      "encoder on labelled data with `fedssl evaluate RUN --data LABELLED`"]
    few = report.get("few_label") or {}
    shots = sorted({int(k.split("_")[-1].removesuffix("shot")) for k in few})
    if shots:
        lines += ["", "| labels per class | " + " | ".join(map(str, shots)) + " |",
                  "|---" * (len(shots) + 1) + "|",
                  "| linear probe | " + " | ".join(f"{few[f'linear_probe_{k}shot']:.3f}"
                                                  for k in shots) + " |",
                  "| kNN | " + " | ".join(f"{few[f'knn_{k}shot']:.3f}" for k in shots) + " |"]
    if report.get("label_efficiency"):
        from fedssl.ssl_core.finetune import format_label_efficiency

        lines += ["", format_label_efficiency(report["label_efficiency"])]
    privacy = report.get("privacy")
    if privacy and privacy.get("clients"):
        lines += ["", f"privacy (delta = {privacy['delta']:g}, per client, from the signed "
                      "ledgers; noise multiplier: min-max over the client's rounds, effective = "
                      "sigma / clip sensitivity where that is not 1):", "",
                  "| client | epsilon | steps | noise multiplier | sample rate |",
                  "|---|---|---|---|---|"]
        # a site whose ledger spans earlier runs (its --state-dir reused): its lifetime
        # epsilon (all runs composed, what its own budget bounds) is shown beside the run's
        spans = any(p.get("other_runs") for p in privacy["clients"].values())
        if spans:
            lines[-2:] = ["| client | epsilon (this run) | lifetime epsilon (all runs) | "
                          "steps | noise multiplier | sample rate |", "|---|---|---|---|---|---|"]
        ledgers = run_ledgers(run_dir)
        for cid, p in sorted(privacy["clients"].items()):
            life = (f" {float(p.get('lifetime_epsilon', p['epsilon'])):.3f} |" if spans else "")
            lines.append(f"| {cid} | {float(p['epsilon']):.3f} |{life} {p['steps']} | "
                         f"{_noise_range(ledgers.get(cid), p)} | {p['sample_rate']:.4f} |")
    elif privacy is not None and not privacy.get("client_level"):
        lines += ["", "privacy: DP on, but no client trained: no epsilon was spent"]
    elif not (privacy or {}).get("client_level"):
        lines += ["", "privacy: DP off (no epsilon guarantee)"]
    level = (privacy or {}).get("client_level")
    if level:
        lines += ["", f"client-level DP ({level['mechanism']}): epsilon = "
                      f"{level['epsilon']:.3f} at delta = {level['delta']:g} (noise multiplier "
                      f"{level['noise_multiplier']:g}, clip {level['clip']:g}, client rate "
                      f"{level['sample_rate']:.3f}, {level['rounds']} rounds)"]
        if "assumes" in level:
            lines.append(f"  assumes {level['assumes']} (at least {level['min_clients']})")
    for cid, items in sorted(report.get("refusals", {}).items()):
        rounds = ", ".join(str(i["round"]) for i in items)
        lines.append(f"{cid} refused round(s) {rounds}: {items[-1]['reason']}")
    wasted = report.get("discarded") or {}
    if wasted:  # privacy spent for nothing: said loudly, not buried in metrics.jsonl
        lines += ["", "WARNING: privacy spent on discarded updates: "
                  + "; ".join(f"{cid} trained in round(s) {', '.join(map(str, rounds))}"
                              for cid, rounds in sorted(wasted.items()))
                  + " but those updates were thrown away (secure aggregation could not "
                    "complete: see 'failed' in metrics.jsonl); their ledgers count the spend"]
    lines += ["", f"run directory: {run_dir}"]
    return "\n".join(lines)
