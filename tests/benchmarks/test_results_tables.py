"""docs/ tables are generated from benchmarks/results (issue 23 item 6): every results block
in docs/*.md equals what ``benchmarks/results_tables.py`` makes from its JSON, and a changed
number in the JSON is caught."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import results_tables  # benchmarks/ is not a package


def test_every_generated_table_in_docs_matches_its_results_file(capsys) -> None:
    assert results_tables.main(["--check"]) == 0, capsys.readouterr().out
    blocks = [m for p in results_tables.DOCS.glob("*.md")
              for m in results_tables.BLOCK.finditer(p.read_text())]
    assert len(blocks) >= 2  # the blocks exist (a check of nothing cannot fail)


def test_a_changed_number_is_caught_and_rewritten(tmp_path: Path) -> None:
    name = "quality_mnist5k_synthetic_dp.json"
    for path in results_tables.RESULTS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    doc = (results_tables.DOCS / "results.md").read_text()
    same, changed = results_tables.regenerate(doc, tmp_path)
    assert changed == [] and same == doc
    data = json.loads((tmp_path / name).read_text())
    row = next(r for r in data["rows"] if r["setting"] == "synthetic warm start alone")
    row["summary"]["finetuned_5shot"]["mean"] = 0.5
    (tmp_path / name).write_text(json.dumps(data))
    new, changed = results_tables.regenerate(doc, tmp_path)
    assert changed == [name]
    assert "| synthetic warm start alone (no data) | 0.967 | 0.909 | 0.765 ± 0.011 | 0.500 ± "\
        in new


def test_cells_and_bad_specs() -> None:
    assert results_tables.cell({"a": {"mean": 0.5, "std": 0.0, "n": 3}}, "a") == "0.500"
    assert results_tables.cell({"a": {"mean": 0.5, "std": 0.01, "n": 3}}, "a") == \
        "0.500 ± 0.010"
    assert results_tables.cell({}, "a") == "-"
    with pytest.raises(results_tables.TableSpecError, match="unknown line"):
        results_tables.parse_spec("x.json\nwhat: y")
    with pytest.raises(results_tables.TableSpecError, match="needs col"):
        results_tables.parse_spec("x.json\nfirst: y")
    spec = results_tables.parse_spec("quality_digits.json\ncol: knn_accuracy\nrow: nope")
    with pytest.raises(results_tables.TableSpecError, match="has no row 'nope'"):
        results_tables.render(spec)


def test_rows_sharing_a_setting_are_told_apart_by_a_qualifier() -> None:
    rows = [{"setting": "fed", "partition": "iid", "seeds": [0], "summary": {}},
            {"setting": "fed", "partition": "dirichlet", "seeds": [0, 1, 2],
             "summary": {"a": {"mean": 0.25, "std": 0.0, "n": 3}}}]
    assert results_tables.find_row(rows, "fed | partition=dirichlet", "f.json") is rows[1]
    with pytest.raises(results_tables.TableSpecError, match="2 rows match 'fed'"):
        results_tables.find_row(rows, "fed", "f.json")
    with pytest.raises(results_tables.TableSpecError, match="has no row"):
        results_tables.find_row(rows, "fed | partition=shard", "f.json")
    spec = results_tables.parse_spec(
        "quality_mnist1d_issue13.json\ncol: seeds\ncol: linear_probe_accuracy\n"
        "row: federated infonce-public DP eps=8 | partition=dirichlet -> x")
    assert results_tables.render(spec).splitlines()[-1] == "| x | 3 | 0.883 ± 0.002 |"


def test_a_paired_table_lists_per_seed_differences_in_points(tmp_path: Path) -> None:
    rows = [{"setting": "fed", "seeds": [0, 1, 2],
             "per_seed": [{"a": 0.90, "b": 0.5}, {"a": 0.80}, {"a": 0.85}]},
            {"setting": "warm", "seeds": [2, 1, 0],  # same seeds, another order
             "per_seed": [{"a": 0.80}, {"a": 0.81}, {"a": 0.88}]},
            {"setting": "other", "seeds": [5], "per_seed": [{"a": 0.1}]}]
    (tmp_path / "p.json").write_text(json.dumps({"rows": rows}))
    spec = results_tables.parse_spec("p.json\ncol: a -> acc\ncol: b\n"
                                     "pair: fed minus warm -> fed - warm")
    assert results_tables.render(spec, tmp_path).splitlines()[-1] == \
        "| fed - warm | +2.0, -1.0, +5.0 (mean +2.0) | - |"
    with pytest.raises(results_tables.TableSpecError, match="share no seed"):
        results_tables.render(results_tables.parse_spec(
            "p.json\ncol: a\npair: fed minus other"), tmp_path)
    with pytest.raises(results_tables.TableSpecError, match="not 'pair: ROW_A minus ROW_B'"):
        results_tables.parse_spec("p.json\ncol: a\npair: fed - warm")
    with pytest.raises(results_tables.TableSpecError, match="not both"):
        results_tables.parse_spec("p.json\ncol: a\nrow: fed\npair: fed minus warm")


def test_rows_from_a_second_file_and_one_seed_of_a_row(tmp_path: Path) -> None:
    """``also: FILE`` lets a table put rows of two results files side by side; ``| seed=N``
    shows one seed's values of a several-seed row."""
    (tmp_path / "a.json").write_text(json.dumps({"rows": [
        {"setting": "warm", "seeds": [0, 1], "per_seed": [{"acc": 0.8}, {"acc": 0.9}],
         "summary": {"acc": {"mean": 0.85, "std": 0.07, "n": 2}}}]}))
    (tmp_path / "b.json").write_text(json.dumps({"rows": [
        {"setting": "synthetic", "seeds": [0], "per_seed": [{"acc": 0.7, "note": None}],
         "summary": {"acc": {"mean": 0.7, "std": 0.0, "n": 1}}}]}))
    spec = results_tables.parse_spec("a.json\nalso: b.json\ncol: acc\ncol: note\n"
                                     "row: warm | seed=1 -> warm, seed 1\nrow: warm\n"
                                     "row: synthetic")
    assert results_tables.render(spec, tmp_path).splitlines()[2:] == [
        "| warm, seed 1 | 0.900 | - |", "| warm | 0.850 ± 0.070 | - |",
        "| synthetic | 0.700 | - |"]
    spec = results_tables.parse_spec("a.json\ncol: acc\nrow: warm | seed=3")
    with pytest.raises(results_tables.TableSpecError, match=r"ran seeds \[0, 1\], not 3"):
        results_tables.render(spec, tmp_path)
    spec = results_tables.parse_spec("a.json\ncol: acc\nrow: synthetic")  # not without also:
    with pytest.raises(results_tables.TableSpecError, match="has no row 'synthetic'"):
        results_tables.render(spec, tmp_path)
    spec = results_tables.parse_spec("a.json\nalso: a.json\ncol: acc\nrow: warm")
    with pytest.raises(results_tables.TableSpecError, match="2 rows match 'warm'"):
        results_tables.render(spec, tmp_path)
    spec = results_tables.parse_spec("b.json\nalso: a.json\ncol: acc\n"
                                     "row: warm | results_file=a.json -> warm")
    assert results_tables.render(spec, tmp_path).splitlines()[-1] == "| warm | 0.850 ± 0.070 |"
