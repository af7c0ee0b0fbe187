"""Regenerate the measured tables in README.md and docs/ from ``benchmarks/results/*.json``.

What: a table in README.md or a Markdown file under ``docs/`` that sits between a
``<!-- results: FILE`` comment and ``<!-- end results -->`` is generated from
``benchmarks/results/FILE``; the comment says which rows and columns, and how to label
them::

    <!-- results: quality_mnist1d_cross_silo.json
    first: what the site uses
    col: linear_probe_accuracy -> linear, all labels
    col: finetuned_5shot -> fine-tuned, 5 labels/class
    row: random init (frozen) / from scratch (fine-tuned) -> same network from scratch
    row: public warm start alone
    -->
    | what the site uses | linear, all labels | fine-tuned, 5 labels/class |
    ...
    <!-- end results -->

A ``row:`` names a row of the file by its ``setting`` (``-> label`` renames it), with
``| field=value`` qualifiers where two rows share a setting (``row: federated no DP |
partition=iid -> same, IID``); a ``col:`` names a metric of the rows' ``summary``, or
``seeds`` for the number of seeds a row averages. A cell is the mean over seeds, ``± std`` when more
than one seed differs (a deterministic row, e.g. raw-input logistic regression, shows its
value alone); ``-`` where a row lacks the metric. ``table: KEY`` instead inserts the file's
own stored Markdown table (``simulation.json``'s ``table``) as it is. ``also: FILE`` lines
add a second (third...) results file whose rows a ``row:`` may name too (``|
results_file=NAME`` picks one where two files share a setting), and a ``| seed=N``
qualifier shows one seed's values of a row that ran several.

``pair: ROW_A minus ROW_B -> label`` lines instead of ``row:`` make a paired table: each cell
lists, in points, ROW_A's metric minus ROW_B's on each seed both rows ran (same seed, same
label draws), then their mean (``+2.0, +1.1, +3.3 (mean +2.2)``).

Why: every number a reader sees in docs/ then comes from the JSON a benchmark wrote, with
the command that made it; nothing is copied by hand. ``python benchmarks/results_tables.py``
rewrites the blocks in place; ``--check`` exits 1 naming each block that differs (a test runs
it, so a results file and its docs cannot drift apart).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
#: a block: the comment opens a line, its table follows, the end comment opens a line
BLOCK = re.compile(r"(^<!-- results: (?P<spec>.*?)-->\n)(?P<body>.*?)(^<!-- end results -->)",
                   re.S | re.M)


class TableSpecError(ValueError):
    """A block's comment names a file, row or metric that does not exist, or is malformed."""


@dataclass
class TableSpec:
    """What one block shows (parsed from its comment by :func:`parse_spec`)."""

    file: str
    first: str = "setting"
    cols: list[tuple[str, str]] = field(default_factory=list)
    rows: list[tuple[str, str]] = field(default_factory=list)
    pairs: list[tuple[str, str, str]] = field(default_factory=list)
    table: str = ""
    #: further results files whose rows join the lookup (``also: FILE``)
    also: list[str] = field(default_factory=list)


def parse_spec(text: str) -> TableSpec:
    """The spec of a block from its comment's text (the file name, then one ``key: value``
    per line).

    Raises:
        TableSpecError: for an unknown key or a block without columns or a stored table.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise TableSpecError("a results block names no file")
    spec = TableSpec(lines[0])
    for line in lines[1:]:
        key, _, value = line.partition(":")
        name, _, label = value.partition("->")
        name, label = name.strip(), label.strip()
        if key == "first":
            spec.first = value.strip()
        elif key == "col":
            spec.cols.append((name, label or name))
        elif key == "row":
            spec.rows.append((name, label or name))
        elif key == "pair":
            a, sep, b = name.partition(" minus ")
            if not sep:
                raise TableSpecError(f"{spec.file}: {line!r} is not 'pair: ROW_A minus ROW_B'")
            spec.pairs.append((a.strip(), b.strip(), label or name))
        elif key == "table":
            spec.table = value.strip()
        elif key == "also":
            spec.also.append(value.strip())
        else:
            raise TableSpecError(f"{spec.file}: unknown line {line!r} "
                                 "(first, col, row, pair, table, also)")
    if spec.rows and spec.pairs:
        raise TableSpecError(f"{spec.file}: a block has row: or pair: lines, not both")
    if not spec.table and not (spec.cols and (spec.rows or spec.pairs)):
        raise TableSpecError(f"{spec.file}: a block needs col: and row: (or pair:) lines, "
                             "or table:")
    return spec


def cell(summary: dict[str, Any], key: str) -> str:
    """A metric's mean over seeds, with ``± std`` where the seeds differ; ``-`` if absent."""
    m = summary.get(key)
    if m is None:
        return "-"
    if m.get("n", 1) > 1 and round(m["std"], 3) > 0:
        return f"{m['mean']:.3f} ± {m['std']:.3f}"
    return f"{m['mean']:.3f}"


def paired_cell(a: dict[str, Any], b: dict[str, Any], key: str, where: str) -> str:
    """Row ``a``'s metric ``key`` minus row ``b``'s on each seed both ran, in points, then the
    mean; ``-`` where either row lacks the metric.

    Raises:
        TableSpecError: the two rows share no seed.
    """
    a_seeds = dict(zip(a.get("seeds", []), a.get("per_seed", []), strict=False))
    b_seeds = dict(zip(b.get("seeds", []), b.get("per_seed", []), strict=False))
    common = [s for s in a.get("seeds", []) if s in b_seeds]
    if not common:
        raise TableSpecError(f"{where}: the two rows share no seed")
    if any(a_seeds[s].get(key) is None or b_seeds[s].get(key) is None for s in common):
        return "-"
    return format_paired([100 * (a_seeds[s][key] - b_seeds[s][key]) for s in common])


def format_paired(diffs: list[float]) -> str:
    """Paired differences in points as the docs print them: each signed to one decimal, then
    their mean in brackets when there are several ("+2.0, +3.7 (mean +2.9)").

    Args:
        diffs: one difference per seed or label draw, in points.

    Returns:
        The cell text.
    """
    listed = ", ".join(f"{d:+.1f}" for d in diffs)
    return listed if len(diffs) == 1 else f"{listed} (mean {sum(diffs) / len(diffs):+.1f})"


def render(spec: TableSpec, results: Path = RESULTS) -> str:
    """The Markdown table ``spec`` asks for, from its results file.

    Raises:
        TableSpecError: for a missing file, row or stored table.
    """
    data = _load(results / spec.file)
    if spec.table:
        if spec.table not in data:
            raise TableSpecError(f"{spec.file} stores no {spec.table!r}")
        return str(data[spec.table]).rstrip("\n") + "\n"
    # each row knows its file, for ``| results_file=NAME`` where two files share a setting
    rows = [{**r, "results_file": spec.file} for r in data["rows"]]
    for other in spec.also:
        rows += [{**r, "results_file": other} for r in _load(results / other)["rows"]]
    where = " + ".join([spec.file, *spec.also])
    head = f"| {spec.first} | " + " | ".join(label for _, label in spec.cols) + " |"
    lines = [head, "|" + "---|" * (len(spec.cols) + 1)]
    for selector, label in spec.rows:
        row = find_row(rows, selector, where)
        lines.append(f"| {label} | " + " | ".join(
            str(len(row.get("seeds", []))) if k == "seeds" else cell(row["summary"], k)
            for k, _ in spec.cols) + " |")
    for sel_a, sel_b, label in spec.pairs:
        a, b = (find_row(rows, sel, where) for sel in (sel_a, sel_b))
        lines.append(f"| {label} | " + " | ".join(
            paired_cell(a, b, k, f"{where}: {label}") for k, _ in spec.cols) + " |")
    return "\n".join(lines) + "\n"


def _load(path: Path) -> dict[str, Any]:
    """A results file's JSON.

    Raises:
        TableSpecError: the file does not exist.
    """
    if not path.is_file():
        raise TableSpecError(f"no results file {path}")
    return json.loads(path.read_text())


def find_row(rows: list[dict[str, Any]], selector: str, file: str) -> dict[str, Any]:
    """The one row ``selector`` names: its ``setting``, then ``| field=value`` qualifiers;
    ``| seed=N`` narrows the row to that one seed's values.

    Raises:
        TableSpecError: when no row, or more than one, matches, or the row lacks the seed.
    """
    setting, *quals = (part.strip() for part in selector.split("|"))
    wanted = {k.strip(): v.strip() for k, v in (q.partition("=")[::2] for q in quals)}
    seed = wanted.pop("seed", None)
    found = [r for r in rows if r["setting"] == setting
             and all(str(r.get(k)) == v.strip() for k, v in wanted.items())]
    if not found:
        raise TableSpecError(f"{file} has no row {selector!r}; it has "
                             f"{sorted({r['setting'] for r in rows})}")
    if len(found) > 1:
        raise TableSpecError(f"{file}: {len(found)} rows match {selector!r}; qualify it "
                             "with | field=value (e.g. | partition=iid)")
    return found[0] if seed is None else one_seed(found[0], int(seed), f"{file}: {selector!r}")


def one_seed(row: dict[str, Any], seed: int, where: str) -> dict[str, Any]:
    """``row`` narrowed to seed ``seed``: its values on that seed as a one-seed summary.

    Raises:
        TableSpecError: the row did not run that seed.
    """
    seeds = list(row.get("seeds", []))
    if seed not in seeds:
        raise TableSpecError(f"{where}: the row ran seeds {seeds}, not {seed}")
    values = row["per_seed"][seeds.index(seed)]
    summary = {k: {"mean": v, "std": 0.0, "n": 1} for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {**row, "seeds": [seed], "per_seed": [values], "summary": summary}


def regenerate(text: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """``text`` with every results block regenerated, and the files of the blocks that
    changed."""
    changed: list[str] = []

    def sub(m: re.Match[str]) -> str:
        spec = parse_spec(m["spec"])
        body = render(spec, results)
        if body != m["body"]:
            changed.append(spec.file)
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(sub, text), changed


def main(argv: list[str] | None = None) -> int:
    """Rewrite the blocks of README.md and every docs/*.md (``--check``: only report); an
    exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 if a block differs from its results file")
    ap.add_argument("files", nargs="*", type=Path,
                    help="Markdown files (default README.md and docs/*.md)")
    args = ap.parse_args(argv)
    stale = []
    for path in args.files or [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = path.read_text()
        new, changed = regenerate(text)
        if not changed:
            continue
        stale += [f"{path}: the table from {name} differs" for name in changed]
        if not args.check:
            path.write_text(new)
    for line in stale:
        print(line if args.check else f"rewrote {line.split(':')[0]}"
              f" ({line.split(': ', 1)[1]})")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
