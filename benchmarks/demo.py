"""Run ``make demo``'s simulation once and record what it printed as a results file.

What: runs ``fedssl simulate --config simulations/configs/demo.toml`` (the real CLI, Flower's
simulation engine, DP-SGD and secure aggregation as the demo has them) into a temporary run
directory, times it, and writes ``benchmarks/results/demo.json``: the command, the wall time
and the load average at the start, each client's epsilon and DP steps from the run's verified
ledgers, and three Markdown tables made from its ``report.json``: the encoders' probes
(``encoders``), the label-efficiency table (``label_efficiency``) and the federated encoder's
paired gains per label draw (``paired``).

Why: the demo's numbers in docs/results.md and label-efficiency.md are then generated from
this file (``<!-- results: demo.json`` / ``table: ...`` blocks, ``benchmarks/
results_tables.py``), not copied by hand from a terminal.

Usage::

    python benchmarks/demo.py [--config simulations/configs/demo.toml] [--keep RUN_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from results_tables import format_paired  # benchmarks/ is on sys.path (run as a script)

from fedssl.ssl_core.finetune import format_label_efficiency

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "demo.json"

#: (report key, row label) of the encoders table, in order
ENCODERS = (("random_init", "random init"), ("initial_encoder", "warm start (round 0)"),
            ("", "federated encoder"))


def encoders_table(report: dict[str, Any]) -> str:
    """The probes of the random init, the warm start and the federated encoder (Markdown).

    Args:
        report: the run's ``report.json``.

    Returns:
        The table; rows the report lacks (a run without a warm start) are left out.
    """
    lines = ["| encoder | linear probe | kNN | 5-shot linear | 5-shot kNN |",
             "|---|---|---|---|---|"]
    final = {"linear_probe_accuracy": report["linear_probe_accuracy"],
             "knn_accuracy": report["knn_accuracy"], **report.get("few_label", {})}
    for key, label in ENCODERS:
        m = report.get(key) if key else final
        if not m:
            continue
        cells = [m.get(k) for k in ("linear_probe_accuracy", "knn_accuracy",
                                    "linear_probe_5shot", "knn_5shot")]
        lines.append(f"| {label} | " + " | ".join("-" if c is None else f"{c:.3f}"
                                                  for c in cells) + " |")
    return "\n".join(lines) + "\n"


def paired_table(label_efficiency: dict[str, Any]) -> str:
    """The federated encoder's fine-tuned and frozen accuracy minus the warm start's and minus
    the from-scratch network's, per label draw, in points (Markdown).

    Args:
        label_efficiency: the report's ``label_efficiency``.

    Returns:
        The table (empty when the run had no warm start or no from-scratch row).
    """
    rows = {(r["kind"], r["encoder"]): r for r in label_efficiency["rows"]}
    fed = "federated encoder"
    pairs = [("fine-tuned", fed, ("fine-tuned", "warm start"), "fine-tuned minus warm start"),
             ("frozen", fed, ("frozen", "warm start"), "frozen minus warm start"),
             ("fine-tuned", fed, ("from-scratch", ""), "fine-tuned minus from scratch")]
    shots = [str(k) for k in label_efficiency["shots"]]
    lines = ["| federated encoder, per label draw, points | "
             + " | ".join(f"{k} labels/class" for k in shots) + " |",
             "|---" * (len(shots) + 1) + "|"]
    for kind, enc, other, label in pairs:
        a, b = rows.get((kind, enc)), rows.get(other)
        if a is None or b is None:
            continue
        cells = []
        for k in shots:
            diffs = [100 * (x - y) for x, y in zip(a["values"][k]["per_seed"],
                                                    b["values"][k]["per_seed"], strict=True)]
            cells.append(format_paired(diffs))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def summarize(report: dict[str, Any], command: str, wall: float, load: float) -> dict[str, Any]:
    """The results record of one demo run (see the module doc).

    Args:
        report: the run's ``report.json``.
        command: the command that ran.
        wall: its wall time in seconds.
        load: the 1-minute load average at its start.

    Returns:
        The record written to ``demo.json``.
    """
    clients = report["privacy"]["clients"].values() if report.get("privacy") else []
    eps = [c["epsilon"] for c in clients]
    steps = [c["steps"] for c in clients]
    le = report["label_efficiency"]
    table = format_label_efficiency(le).split("\n\n", 1)[1]
    return {
        "command": command, "date": date.today().isoformat(), "wall_seconds": round(wall, 1),
        "load_average_at_start": load, "cpus": os.cpu_count(),
        "rounds": report["rounds"], "clients": report["clients"],
        "secure_aggregation": report["secure_aggregation"],
        "epsilon_range": [min(eps), max(eps)] if eps else [],
        "dp_steps_range": [min(steps), max(steps)] if steps else [],
        "label_efficiency_seconds": le.get("seconds"),
        "encoders": encoders_table(report),
        "label_efficiency": "\n".join(line for line in table.splitlines()
                                      if line.startswith("|")) + "\n",
        "paired": paired_table(le),
        "report": report,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the demo, write ``demo.json``; an exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="simulations/configs/demo.toml")
    ap.add_argument("--out", type=Path, default=OUT, help="the results JSON")
    ap.add_argument("--keep", type=Path, help="run directory to keep (default: a temporary one)")
    args = ap.parse_args(argv)
    fedssl = Path(sys.executable).with_name("fedssl")
    run_dir = args.keep or Path(tempfile.mkdtemp(prefix="fedssl-demo-")) / "run"
    cmd = [str(fedssl), "simulate", "--config", args.config, "--out", str(run_dir)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    report = json.loads((run_dir / "report.json").read_text())
    shown = f"fedssl simulate --config {args.config} --out RUN_DIR"
    record = summarize(report, shown, wall, load)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{wall:.0f} s wall at load {load:.2f}; wrote {args.out}")
    print(record["encoders"], record["label_efficiency"], record["paired"], sep="\n")
    if args.keep is None:
        shutil.rmtree(run_dir.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
