"""``fedssl compare``: several runs side by side, as a table and a plot.

What and why: a researcher runs a grid of experiments (methods, privacy budgets, client
counts) and wants them next to each other without opening each ``report.json``. For every run
directory this reads the summary (``RUN/report.json``: method, dataset, clients, rounds, the
final linear-probe, kNN and k-shot accuracy, wall seconds, and the largest per-client epsilon
of the verified ledgers' privacy block), prints one table row per run, and plots the
linear-probe accuracy per round (``RUN/metrics.jsonl``) and the largest cumulative epsilon of
any client per round (the run's verified ledgers in ``RUN/ledger``, else the rounds'
``epsilon_max``) for every run in one PNG. A run without ``report.json`` (still running, or
stopped) is shown from its ``config.toml`` and metrics, marked unfinished; a directory with
none of these files is not a run (exit 2).

The CLI registers it with::

    add_compare_parser(subparsers)        # in build_parser()
    return run_compare(args)              # when args.command == "compare"
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedssl.run_layout import RunLayout

EPILOG = """\
exit status: 0 = compared, 2 = a directory that is not a run, or an unreadable report.

examples:
  fedssl compare runs/simsiam-eps8 runs/simsiam-eps3 runs/byol-eps8
  fedssl compare runs/* --out grid.png --shots 10
"""


class NotARunError(ValueError):
    """A path that is not a fedssl run directory, or a run file that cannot be read."""


@dataclass
class RunSummary:
    """One run's row of the table and its curves."""

    name: str
    path: Path
    values: dict[str, Any]
    accuracy: list[tuple[int, float]] = field(default_factory=list)
    epsilon: list[tuple[int, float]] = field(default_factory=list)
    finished: bool = True


def _config(layout: RunLayout) -> dict[str, Any]:
    """The run's resolved configuration (simulate's ``[experiment]``, the server's ``[run]``)
    as one flat dict with ``_`` keys; empty if there is none."""
    if not layout.config.is_file():
        return {}
    try:
        raw = tomllib.loads(layout.config.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise NotARunError(f"{layout.config}: not readable TOML: {exc}") from exc
    flat: dict[str, Any] = {}
    for table in (raw, raw.get("experiment", {}), raw.get("run", {})):
        if isinstance(table, dict):
            flat |= {k.replace("-", "_"): v for k, v in table.items()
                     if not isinstance(v, dict)}
    return flat


def _metrics(layout: RunLayout) -> list[dict[str, Any]]:
    if not layout.metrics.is_file():
        return []
    rows = []
    for line in layout.metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line of an interrupted run
        if isinstance(row, dict) and "round" in row:
            rows.append(row)
    return rows


def _epsilon_curve(run_dir: Path, rows: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """The largest cumulative epsilon of any client after each round: from the verified
    ledgers, else the rounds' ``epsilon_max`` (what the clients replied)."""
    from fedssl.server.report_table import run_ledgers

    best: dict[int, float] = {}
    for entries in run_ledgers(run_dir).values():
        for e in entries:
            if math.isfinite(float(e.epsilon)):
                best[e.round] = max(best.get(e.round, 0.0), float(e.epsilon))
    if not best:
        best = {int(r["round"]): float(r["epsilon_max"]) for r in rows
                if isinstance(r.get("epsilon_max"), int | float)}
    curve, running = [], 0.0
    for rnd in sorted(best):  # cumulative: a client that skipped a round keeps its epsilon
        running = max(running, best[rnd])
        curve.append((rnd, running))
    return curve


def _max_epsilon(report: dict[str, Any] | None, curve: list[tuple[int, float]]
                 ) -> float | None:
    privacy = (report or {}).get("privacy") or {}
    eps = [float(c["epsilon"]) for c in (privacy.get("clients") or {}).values()
           if isinstance(c, dict) and isinstance(c.get("epsilon"), int | float | str)
           and str(c["epsilon"]) != ""]
    if eps:
        return max(eps)
    if report is not None and not privacy:
        return None  # DP off
    return curve[-1][1] if curve else None


def summarize(run: str | Path, shots: int = 5) -> RunSummary:
    """Read one run directory.

    Args:
        run: the run directory.
        shots: the ``k`` of the k-shot column.

    Returns:
        The run's row of the table and its curves.

    Raises:
        NotARunError: not a directory, none of report.json/metrics.jsonl/config.toml, or an
            unreadable report.json.
    """
    path = Path(run)
    layout = RunLayout(path)
    if not path.is_dir():
        raise NotARunError(f"{path} is not a directory (give fedssl run directories)")
    if not any(p.is_file() for p in (layout.report, layout.metrics, layout.config)):
        raise NotARunError(f"{path} is not a fedssl run directory: it holds no "
                           f"{layout.report.name}, {layout.metrics.name} or "
                           f"{layout.config.name}")
    report = None
    if layout.report.is_file():
        try:
            report = json.loads(layout.report.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise NotARunError(f"{layout.report}: not readable JSON: {exc}") from exc
        if not isinstance(report, dict):
            raise NotARunError(f"{layout.report}: not a JSON object")
    cfg = _config(layout)
    rows = _metrics(layout)
    evaluated = [r for r in rows if isinstance(r.get("linear_probe_accuracy"), int | float)]
    last = evaluated[-1] if evaluated else {}
    src = report or {}
    few = src.get("few_label") or {}
    values = {
        "method": src.get("method", cfg.get("method")),
        "dataset": src.get("dataset", cfg.get("dataset")),
        "clients": src.get("clients", cfg.get("num_clients")),
        "rounds": src.get("rounds", cfg.get("rounds", cfg.get("num_server_rounds"))),
        "linear": src.get("linear_probe_accuracy", last.get("linear_probe_accuracy")),
        "knn": src.get("knn_accuracy", last.get("knn_accuracy")),
        "shot": few.get(f"linear_probe_{shots}shot"),
        "wall_seconds": src.get("wall_seconds"),
    }
    curve = _epsilon_curve(path, rows)
    values["max_epsilon"] = _max_epsilon(report, curve)
    accuracy = [(int(r["round"]), float(r["linear_probe_accuracy"])) for r in evaluated]
    return RunSummary(path.name or str(path), path, values, accuracy, curve,
                      finished=report is not None)


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "inf"
    return str(value)


def format_table(runs: list[RunSummary], shots: int = 5) -> str:
    """One row per run: method, dataset, clients, rounds, linear, kNN, k-shot, max epsilon,
    wall seconds.

    Args:
        runs: the runs' summaries.
        shots: the ``k`` of the k-shot column.
    """
    head = ["run", "method", "dataset", "clients", "rounds", "linear", "kNN",
            f"{shots}-shot", "max eps", "wall s"]
    body = []
    for r in runs:
        v = r.values
        body.append([r.name + ("" if r.finished else " (unfinished)"), _cell(v["method"]),
                     _cell(v["dataset"]), _cell(v["clients"]), _cell(v["rounds"]),
                     _cell(v["linear"]), _cell(v["knn"]), _cell(v["shot"]),
                     _cell(v["max_epsilon"], 2), _cell(v["wall_seconds"], 1)])
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def plot_runs(runs: list[RunSummary], out: Path) -> Path:
    """Linear-probe accuracy and max client epsilon per round, one line per run.

    Args:
        runs: the runs' summaries.
        out: the PNG file to write (its folder is created).

    Returns:
        ``out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, eps) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, r in enumerate(runs):
        color = f"C{i % 10}"
        if r.accuracy:
            acc.plot(*zip(*r.accuracy), marker="o", color=color, label=r.name)
        if r.epsilon:
            eps.plot(*zip(*r.epsilon), marker=".", color=color, label=r.name)
    acc.set(xlabel="round", ylabel="linear-probe accuracy", title="Global encoder quality")
    eps.set(xlabel="round", ylabel="max cumulative epsilon of a client",
            title="Privacy spent (record-level DP)")
    if not any(r.epsilon for r in runs):
        eps.text(0.5, 0.5, "no DP ledgers", ha="center", va="center", transform=eps.transAxes)
    from matplotlib.ticker import MaxNLocator

    for ax in (acc, eps):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def add_compare_parser(subparsers: Any) -> None:
    """Register ``fedssl compare`` on the subparsers of the ``fedssl`` parser."""
    p = subparsers.add_parser(
        "compare", help="compare runs: a table of their results and a plot per round",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare run directories: print a table (method, dataset, clients, "
        "rounds, linear-probe, kNN and k-shot accuracy, the largest client epsilon, wall "
        "seconds; from each RUN/report.json) and write a PNG of the linear-probe accuracy "
        "(RUN/metrics.jsonl) and the largest client epsilon (RUN/ledger) per round.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--out", default="compare.png", metavar="PNG",
                   help="the plot (default: compare.png)")
    p.add_argument("--shots", type=int, default=5, metavar="K",
                   help="labels per class of the few-label column (default: 5)")


def run_compare(args: argparse.Namespace) -> int:
    """``fedssl compare``: exit 0 when compared, 2 for a path that is not a run."""
    try:
        runs = [summarize(r, args.shots) for r in args.runs]
    except NotARunError as exc:
        print(f"fedssl compare: error: {exc}", file=sys.stderr)
        return 2
    names = [r.name for r in runs]
    for r in runs:  # two runs of the same name in different folders: use the paths
        if names.count(r.name) > 1:
            r.name = str(r.path)
    print(format_table(runs, args.shots))
    print(f"\nwritten: {plot_runs(runs, Path(args.out))}")
    return 0
