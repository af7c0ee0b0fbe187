"""The final table of a run: random init, warm start and the federated encoder side by side."""

from __future__ import annotations

import json
from pathlib import Path

from fedssl.simulations.simulate import format_report


def _report(tmp_path: Path, initial: dict | None) -> str:
    probes = {"linear_probe_accuracy": 0.8, "knn_accuracy": 0.7, "linear_probe_5shot": 0.5,
              "knn_5shot": 0.4}
    report = {"method": "simsiam", "dataset": "mnist1d", "clients": 2, "rounds": 1,
              "wall_seconds": 1.0, "secure_aggregation": True,
              "linear_probe_accuracy": 0.9, "knn_accuracy": 0.85,
              "few_label": {"linear_probe_5shot": 0.6, "knn_5shot": 0.55},
              "random_init": probes, "initial_encoder": initial, "privacy": None,
              "refusals": {}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    return format_report(tmp_path)


def test_random_init_and_federated_few_label_numbers_are_side_by_side(tmp_path: Path) -> None:
    text = _report(tmp_path, None)
    assert "| random init | 0.800 | 0.700 | 0.500 | 0.400 |" in text
    assert "| federated simsiam | 0.900 | 0.850 | 0.600 | 0.550 |" in text
    assert "warm start" not in text


def test_warm_start_row_is_shown_when_the_run_had_one(tmp_path: Path) -> None:
    text = _report(tmp_path, {"linear_probe_accuracy": 0.88, "knn_accuracy": 0.8})
    assert "| public warm start (round 0) | 0.880 | 0.800 | - | - |" in text
