"""Merge separate runs of :mod:`benchmarks.quality` into one results file, table and PNG.

What: each quality row can take tens of minutes on a 2-core machine, so rows and seeds are run
as separate processes (``--settings``, ``--seeds``, ``--out``). This script joins their JSON
files: rows with the same dataset, setting and partition pool their seeds (the mean ± std is
recomputed over all of them), each row keeps the commands it came from, and the Markdown
table and PNG of :func:`benchmarks.quality.report` are written for the merged file.

Why it is sound to pool: every run of ``quality.py`` with the same ``--datasets`` and
``--num-samples`` generates the same data and probe split (seeded with 0), and the same
seed draws the same few-label records (``label_subset(y, k, seed)``) and the same training
randomness, so a seed's rows from different runs pair up. A ``FILE:SUFFIX`` argument labels
a variant run (a changed flag) so its rows stay separate from the default rows, e.g.
``/tmp/q/F.json:' [K=4 views]'``. Rows whose recipes differ under the same label are
refused, not pooled.

Usage::

    python benchmarks/quality_merge.py --out benchmarks/results/quality_X.json A.json B.json \\
        'F.json: [K=4 views]'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # the benchmark module beside this file

#: rows listed first, in this order; the rest follow, non-private before private
FIRST = ("random init", "supervised 5-shot (from scratch)")


def _order(row: dict[str, Any]) -> tuple[Any, ...]:
    setting = row["setting"]
    head = FIRST.index(setting) if setting in FIRST else len(FIRST)
    private = "DP" in setting and "no DP" not in setting
    return (row["dataset"], head, "centralized" not in setting, private,
            row["partition"], setting)


#: recipe fields added after some results were recorded, with the value those runs used
RECIPE_DEFAULTS = {"server_lr": 1.0, "server_momentum": 0.0, "trainable": "all"}


def _recipe(row: dict[str, Any]) -> dict[str, Any] | None:
    recipe = row.get("recipe")
    return None if recipe is None else {**RECIPE_DEFAULTS, **recipe}


def merge(inputs: list[tuple[Path, str]]) -> dict[str, Any]:
    """Pool the rows of ``inputs`` (file, label suffix); see the module docstring."""
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    commands: list[str] = []
    for path, suffix in inputs:
        res = json.loads(path.read_text())
        note = f"  # rows labelled{suffix}" if suffix else ""
        # an already merged file carries its commands, per file and per row
        file_cmds = [c + note for c in res.get("commands") or [res["command"]]]
        commands += [c for c in file_cmds if c not in commands]
        for r in res["rows"]:
            key = (r["dataset"], r["setting"] + suffix, r["partition"])
            row_cmds = [c + note for c in r.get("commands") or file_cmds]
            if key not in merged:
                merged[key] = {**r, "setting": r["setting"] + suffix, "commands": row_cmds}
                continue
            m = merged[key]
            if _recipe(m) != _recipe(r):
                raise SystemExit(f"{path}: row {key} has a different recipe from an earlier "
                                 "file's; label one of them with FILE:SUFFIX")
            clash = set(m["seeds"]) & set(r["seeds"])
            if clash:
                raise SystemExit(f"{path}: row {key} repeats seed(s) {sorted(clash)}")
            m["seeds"] = m["seeds"] + r["seeds"]
            m["per_seed"] = m["per_seed"] + r["per_seed"]
            m["info"] = m.get("info", []) + r.get("info", [])
            m["seconds"] = m["seconds"] + r["seconds"]
            m["commands"] += [c for c in row_cmds if c not in m["commands"]]
    rows = sorted(merged.values(), key=_order)
    for m in rows:
        m["summary"] = quality._summary(m["per_seed"])
    return {"command": "merged by benchmarks/quality_merge.py from separate runs of "
                       "benchmarks/quality.py (see commands)",
            "commands": commands, "in_process": True, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="quality.py JSON files, each optionally FILE:SUFFIX")
    p.add_argument("--out", type=Path, required=True, help="the merged JSON (PNG beside it)")
    p.add_argument("--machine", default="", help="where the runs were measured, recorded")
    args = p.parse_args(argv)
    inputs = []
    for spec in args.files:
        name, _, suffix = spec.partition(":")
        inputs.append((Path(name), suffix))
    results = merge(inputs)
    if args.machine:
        results["machine"] = args.machine
    args.out.write_text(json.dumps(results, indent=2))
    quality.report(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
