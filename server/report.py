"""The run directory's human- and machine-readable outputs.

``metrics.jsonl`` (one JSON object per round, appended as rounds finish), ``report.json``
(the run's summary; docs/simulation.md, "Run directory") and ``plots/*.png`` (loss, accuracy and
epsilon per round). Per-client epsilons come from the clients' own signed ledgers, verified
against their public keys, never from what a reply claimed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedssl.atomic import atomic_write_text
from fedssl.privacy.identity.keys import load_public_key
from fedssl.privacy.identity.ledger import LEGACY_RUN, LedgerEntry, read_ledger, runs
from fedssl.run_layout import RunLayout


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    """Append one round's metrics as a JSON line.

    Args:
        run_dir: the run directory (``metrics.jsonl``).
        row: the round's metrics.
    """
    with RunLayout(run_dir).metrics.open("a") as fh:
        fh.write(json.dumps(row, default=_jsonable) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = RunLayout(run_dir).metrics
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return float(value) if hasattr(value, "__float__") else str(value)


def ledger_privacy(run_dir: Path, delta: float, run_id: str | None = None) -> dict[str, Any]:
    """``privacy`` block of report.json from the verified ledgers in ``RUN/ledger``.

    A site's ledger may span several server runs (:mod:`fedssl.privacy.identity.ledger`). Per
    client,
    ``epsilon``, ``steps``, ``rounds``, ``noise_multiplier`` and ``sample_rate`` are this
    run's (``run_id``; ``""`` selects the entries without a run id, ``None`` the run of the
    ledger's last entry): ``epsilon`` is the run's recorded cumulative epsilon, an upper bound
    on what this run's training spent of the site's records. ``lifetime_epsilon`` is the
    recorded composition of every entry of the ledger (all runs), the bound on the site's
    total loss; ``other_runs`` names the runs it also covers. ``noise_multiplier`` is the
    recorded sigma (noise std / clip norm); ``sensitivity`` is the last entry's clip
    sensitivity (``extra.sensitivity``: 2 for a group-clipped method) and
    ``effective_noise_multiplier`` = sigma / sensitivity, the one the accountants use.

    Args:
        run_dir: the run directory.
        delta: the run's delta.
        run_id: the run whose entries count (see above).

    Returns:
        ``{"delta", "run_id", "clients"}``, with a block per client with entries of this run.

    Raises:
        LedgerError: for a stored ledger that does not verify.
    """
    clients: dict[str, Any] = {}
    for path in RunLayout(run_dir).ledgers():
        pub = path.with_suffix(".pub")
        entries: list[LedgerEntry] = read_ledger(path, load_public_key(pub))
        if not entries:
            continue
        this_run = entries[-1].run if run_id is None else (run_id or LEGACY_RUN)
        mine = [e for e in entries if e.run == this_run]
        if not mine:
            continue
        last = mine[-1]
        clients[last.client] = {
            "epsilon": last.epsilon,
            "lifetime_epsilon": entries[-1].lifetime,
            "steps": sum(e.steps for e in mine),
            "rounds": len(mine),
            "noise_multiplier": last.noise_multiplier,
            "sensitivity": float(last.extra.get("sensitivity", 1.0)),
            "effective_noise_multiplier": last.segment()[0],
            "sample_rate": last.sample_rate,
            "max_grad_norm": last.max_grad_norm,
            "accountant": last.accountant,
            "other_runs": {rid: {"rounds": len(es), "epsilon": es[-1].epsilon}
                           for rid, es in runs(entries).items() if rid != this_run},
        }
    return {"delta": delta, "run_id": run_id, "clients": clients}


def write_report(run_dir: Path, report: dict[str, Any]) -> Path:
    """Write ``report.json`` atomically.

    Args:
        run_dir: the run directory.
        report: the run's report.

    Returns:
        The path written.
    """
    path = RunLayout(run_dir).report
    atomic_write_text(path, json.dumps(report, indent=2, default=_jsonable) + "\n")
    return path


def run_figures(run_dir: Path, rows: list[dict[str, Any]], privacy: dict[str, Any] | None,
                references: dict[str, dict[str, Any]] | None = None,
                target_epsilon: float | None = None) -> dict[str, Any]:
    """The run's figures by file stem (``loss``, ``accuracy``, ``collapse``, ``epsilon``),
    as matplotlib Figures: integer round ticks; on the accuracy plot the ``references``
    encoders' linear probe as dashed lines (e.g. random init, warm start), since a curve
    of two points means little without them; the collapse plot's axes from 0 (its rank
    axis is otherwise auto-scaled so a 0.2 change looks like collapse); the epsilon plot
    with the run's ``target_epsilon`` as a line.

    Args:
        run_dir: the run directory.
        rows: the metrics rows.
        privacy: report.json's ``privacy`` block, or None.
        references: reference encoders' evaluations by label, or None.
        target_epsilon: the run's target epsilon, or None.

    Returns:
        The figures by file stem.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figures: dict[str, Any] = {}

    def new(name: str) -> Any:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        figures[name] = fig
        return ax

    rounds = [r["round"] for r in rows]
    ax = new("loss")
    ax.plot(rounds, [r.get("loss", math.nan) for r in rows], marker="o")
    ax.set(xlabel="round", ylabel="mean local SSL loss", title="Training loss")

    curves = {label: [(r["round"], r[key]) for r in rows if key in r]
              for key, label in (("linear_probe_accuracy", "linear probe"),
                                 ("knn_accuracy", "kNN"))}
    if any(curves.values()):  # none in a training-only run (evaluation data without labels)
        ax = new("accuracy")
        for label, pts in curves.items():
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        for i, (name, probes) in enumerate((references or {}).items()):
            if isinstance(probes.get("linear_probe_accuracy"), int | float):
                ax.axhline(probes["linear_probe_accuracy"], ls="--", lw=1, color=f"C{i + 2}",
                           label=f"{name} (linear probe)")
        ax.set(xlabel="round", ylabel="accuracy", title="Global encoder quality")
        ax.legend(fontsize=7)

    pts = [(r["round"], r["feature_std_ratio"]) for r in rows if "feature_std_ratio" in r]
    if pts:  # collapse metric of the global encoder (ssl_core/collapse.py): 0 = collapsed
        ax = new("collapse")
        ax.plot(*zip(*pts), marker="o", label="feature std x sqrt(d)")
        ranks = [(r["round"], r["effective_rank"]) for r in rows if "effective_rank" in r]
        if ranks:
            ax2 = ax.twinx()
            ax2.plot(*zip(*ranks), marker="s", color="C1", label="effective rank")
            ax2.set_ylabel("effective rank (Roy & Vetterli 2007)")
            ax2.set_ylim(0, max(v for _, v in ranks) * 1.1)
            ax2.legend(loc="lower right", fontsize=7)
        ax.set(xlabel="round", ylabel="std of L2-normalised features x sqrt(d)",
               title="Feature collapse (0 = collapsed)", ylim=(0, None))
        ax.legend(loc="lower left", fontsize=7)

    if privacy and privacy.get("clients"):
        ax = new("epsilon")
        for path in RunLayout(run_dir).ledgers():
            entries = read_ledger(path, None)
            ax.plot([e.round for e in entries], [e.epsilon for e in entries], marker=".",
                    alpha=0.7, label=entries[0].client if entries else path.stem)
        if target_epsilon:
            ax.axhline(target_epsilon, ls="--", color="k", lw=1,
                       label=f"target epsilon {target_epsilon:g}")
        ax.set(xlabel="round", ylabel="cumulative epsilon", ylim=(0, None),
               title=f"Privacy spent per client (delta={privacy['delta']:g})")
        if len(privacy["clients"]) <= 10:
            ax.legend(fontsize=6)
    for fig in figures.values():
        fig.tight_layout()
    return figures


def plot_run(run_dir: Path, rows: list[dict[str, Any]], privacy: dict[str, Any] | None,
             references: dict[str, dict[str, Any]] | None = None,
             target_epsilon: float | None = None) -> None:
    """Loss, accuracy, collapse and epsilon per round as PNGs under ``RUN/plots``
    (:func:`run_figures`).

    Args:
        run_dir: the run directory.
        rows: the metrics rows.
        privacy: report.json's ``privacy`` block, or None.
        references: reference encoders' evaluations by label, or None.
        target_epsilon: the run's target epsilon, or None.
    """
    import matplotlib.pyplot as plt

    plots = RunLayout(run_dir).plots
    plots.mkdir(exist_ok=True)
    for name, fig in run_figures(run_dir, rows, privacy, references, target_epsilon).items():
        fig.savefig(plots / f"{name}.png", dpi=120)
        plt.close(fig)
