"""benchmarks/demo.py turns a demo run's report into the tables docs/ shows: the encoders'
probes, the label-efficiency table and the paired gains per label draw."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import demo  # benchmarks/ is not a package


def _row(name: str, kind: str, encoder: str, per_seed: list[float]) -> dict:
    mean = sum(per_seed) / len(per_seed)
    return {"name": name, "kind": kind, "encoder": encoder,
            "values": {"5": {"mean": mean, "std": 0.01, "per_seed": per_seed}}}


def _report() -> dict:
    probes = {"linear_probe_accuracy": 0.9, "knn_accuracy": 0.8, "linear_probe_5shot": 0.7,
              "knn_5shot": 0.6}
    return {
        "rounds": 3, "clients": 2, "secure_aggregation": True,
        "linear_probe_accuracy": 0.95, "knn_accuracy": 0.85,
        "few_label": {"linear_probe_5shot": 0.75, "knn_5shot": 0.65},
        "random_init": probes, "initial_encoder": {**probes, "linear_probe_accuracy": 0.93},
        "privacy": {"clients": {"a": {"epsilon": 7.99, "steps": 5},
                                "b": {"epsilon": 7.5, "steps": 9}}},
        "label_efficiency": {
            "metric": "accuracy", "shots": [5], "seeds": [0, 1], "seconds": 2.0,
            "rows": [_row("raw input, logistic regression", "raw-input", "", [0.2, 0.2]),
                     _row("same network from scratch", "from-scratch", "", [0.80, 0.70]),
                     _row("federated encoder, frozen", "frozen", "federated encoder",
                          [0.75, 0.70]),
                     _row("federated encoder, fine-tuned", "fine-tuned", "federated encoder",
                          [0.86, 0.80]),
                     _row("warm start, frozen", "frozen", "warm start", [0.74, 0.72]),
                     _row("warm start, fine-tuned", "fine-tuned", "warm start",
                          [0.85, 0.81])]},
    }


def test_the_demo_record_holds_the_tables_and_the_privacy_ranges() -> None:
    rec = demo.summarize(_report(), "fedssl simulate ...", 12.345, 0.5)
    assert rec["wall_seconds"] == 12.3 and rec["load_average_at_start"] == 0.5
    assert rec["epsilon_range"] == [7.5, 7.99] and rec["dp_steps_range"] == [5, 9]
    assert rec["encoders"].splitlines()[2:] == [
        "| random init | 0.900 | 0.800 | 0.700 | 0.600 |",
        "| warm start (round 0) | 0.930 | 0.800 | 0.700 | 0.600 |",
        "| federated encoder | 0.950 | 0.850 | 0.750 | 0.650 |"]
    assert rec["label_efficiency"].splitlines()[0] == "| labels per class | 5 |"
    assert "| federated encoder, fine-tuned | 0.830 ± 0.010 |" in rec["label_efficiency"]
    assert rec["paired"].splitlines()[2:] == [
        "| fine-tuned minus warm start | +1.0, -1.0 (mean +0.0) |",
        "| frozen minus warm start | +1.0, -2.0 (mean -0.5) |",
        "| fine-tuned minus from scratch | +6.0, +10.0 (mean +8.0) |"]


def test_a_run_without_a_warm_start_leaves_its_rows_out() -> None:
    report = _report()
    del report["initial_encoder"]
    report["label_efficiency"]["rows"] = [
        r for r in report["label_efficiency"]["rows"] if r["encoder"] != "warm start"]
    rec = demo.summarize(report, "x", 1.0, 0.0)
    assert "warm start" not in rec["encoders"]
    assert rec["paired"].splitlines()[2:] == [
        "| fine-tuned minus from scratch | +6.0, +10.0 (mean +8.0) |"]
