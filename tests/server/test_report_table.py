"""The final table of a run: random init, warm start and the federated encoder side by side."""

from __future__ import annotations

import json
from pathlib import Path

from fedssl.server.report_table import format_report


def _report(tmp_path: Path, initial: dict | None, privacy: dict | None = None) -> str:
    probes = {"linear_probe_accuracy": 0.8, "knn_accuracy": 0.7, "linear_probe_5shot": 0.5,
              "knn_5shot": 0.4}
    report = {"method": "simsiam", "dataset": "mnist1d", "clients": 2, "rounds": 1,
              "wall_seconds": 1.0, "secure_aggregation": True,
              "linear_probe_accuracy": 0.9, "knn_accuracy": 0.85,
              "few_label": {"linear_probe_5shot": 0.6, "knn_5shot": 0.55},
              "random_init": probes, "initial_encoder": initial, "privacy": privacy,
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


def test_privacy_table_labels_the_effective_noise_of_a_group_clipped_run(
        tmp_path: Path) -> None:
    """A group-clipped method's ledger records sigma 2 at sensitivity 2: the table shows the
    recorded sigma and, labelled, the effective sigma / 2 the epsilon is computed at."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedssl.privacy.identity.keys import public_pem
    from fedssl.privacy.identity.ledger import Ledger, LedgerEntry

    key = Ed25519PrivateKey.generate()
    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger" / "client-000.pub").write_bytes(public_pem(key))
    led = Ledger(tmp_path / "ledger" / "client-000.jsonl", key)
    led.append(LedgerEntry(round=1, client="client-000", noise_multiplier=2.0,
                           sample_rate=0.1, steps=10, max_grad_norm=1.0, delta=1e-5,
                           accountant="prv", epsilon=1.0, extra={"sensitivity": 2}))
    rows = {"client-000": {"epsilon": 1.0, "steps": 10, "noise_multiplier": 2.0,
                           "sample_rate": 0.1},
            # no ledger: the report's own figures
            "client-001": {"epsilon": 1.0, "steps": 10, "noise_multiplier": 3.0,
                           "sensitivity": 2.0, "effective_noise_multiplier": 1.5,
                           "sample_rate": 0.1},
            "client-002": {"epsilon": 1.0, "steps": 10, "noise_multiplier": 3.0,
                           "sample_rate": 0.1}}
    text = _report(tmp_path, None, privacy={"delta": 1e-5, "clients": rows})
    assert "| client-000 | 1.000 | 10 | 2.000 (effective 1.000) | 0.1000 |" in text
    assert "| client-001 | 1.000 | 10 | 3.000 (effective 1.500) | 0.1000 |" in text
    assert "| client-002 | 1.000 | 10 | 3.000 | 0.1000 |" in text
    assert "effective = sigma / clip sensitivity" in text


def test_a_site_reused_across_runs_shows_its_lifetime_epsilon(tmp_path: Path) -> None:
    """A site whose ledger spans an earlier run: the table shows this run's epsilon and the
    lifetime one its budget bounds (before: the run's only, so a site near its budget looked
    fresh)."""
    rows = {"client-000": {"epsilon": 1.0, "lifetime_epsilon": 2.5, "steps": 10,
                           "noise_multiplier": 3.0, "sample_rate": 0.1,
                           "other_runs": {"run-a": {"rounds": 2, "epsilon": 1.9}}},
            "client-001": {"epsilon": 1.0, "lifetime_epsilon": 1.0, "steps": 10,
                           "noise_multiplier": 3.0, "sample_rate": 0.1, "other_runs": {}}}
    text = _report(tmp_path, None, privacy={"delta": 1e-5, "clients": rows})
    assert "| client | epsilon (this run) | lifetime epsilon (all runs) |" in text
    assert "| client-000 | 1.000 | 2.500 | 10 | 3.000 | 0.1000 |" in text
    assert "| client-001 | 1.000 | 1.000 | 10 | 3.000 | 0.1000 |" in text


def test_the_label_efficiency_table_follows_the_probes(tmp_path: Path) -> None:
    """report.json's ``label_efficiency`` (issue 21 item 1) is printed with the gain of each
    fine-tuned encoder over the same network from scratch."""
    def v(mean: float) -> dict:
        return {"5": {"mean": mean, "std": 0.01, "per_seed": [mean - 0.01, mean + 0.01]}}

    rows = [{"name": "raw input, logistic regression", "kind": "raw-input", "encoder": "",
             "values": v(0.2)},
            {"name": "same network from scratch", "kind": "from-scratch", "encoder": "",
             "values": v(0.8)},
            {"name": "federated encoder, fine-tuned", "kind": "fine-tuned",
             "encoder": "federated encoder", "values": v(0.85)}]
    _report(tmp_path, None)
    report = json.loads((tmp_path / "report.json").read_text())
    report["label_efficiency"] = {"metric": "accuracy", "shots": [5], "seeds": [0, 1],
                                  "rows": rows}
    (tmp_path / "report.json").write_text(json.dumps(report))
    text = format_report(tmp_path)
    assert "| same network from scratch | 0.800 ± 0.010 |" in text
    assert "gain of federated encoder fine-tuned over from scratch: +0.050 at k=5" in text


def test_a_run_in_which_nobody_trained_says_so_and_fails(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """Issue 22 item 7: `--target-epsilon 0.0001` refused every round, exit 0, and the
    summary said "privacy: DP off"."""
    from fedssl.cli import main
    from fedssl.server.report_table import nobody_trained
    from fedssl.simulations import simulate as simulate_module

    text = _report(tmp_path, None, privacy={"delta": 1e-5, "clients": {}})
    assert "privacy: DP on, but no client trained" in text and "DP off" not in text
    rows = [{"round": 0, "clients": 0},
            {"round": 1, "clients": 0, "refused": {"client-000": "budget too small"}},
            {"round": 2, "clients": 0, "refused": {"client-000": "budget too small"},
             "failed": {"client-001": "timeout"}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    reason = nobody_trained(tmp_path)
    assert reason is not None and "any of the 2 round(s)" in reason
    assert "budget too small; timeout" in reason
    monkeypatch.setattr(simulate_module, "simulate", lambda cfg, **_kw: tmp_path)
    assert main(["simulate", "--out", str(tmp_path / "x")]) == 1
    assert "no client update was aggregated" in capsys.readouterr().err
    rows[2]["clients"] = 1
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert nobody_trained(tmp_path) is None


def test_no_few_label_columns_when_no_encoder_has_them(tmp_path: Path) -> None:
    """Issue 22 item 10: `--few-label ""` still printed two columns of dashes."""
    report = {"method": "simsiam", "dataset": "mnist1d", "clients": 2, "rounds": 1,
              "wall_seconds": 1.0, "linear_probe_accuracy": 0.9, "knn_accuracy": 0.85,
              "few_label": {}, "random_init": {"linear_probe_accuracy": 0.8,
                                               "knn_accuracy": 0.7},
              "privacy": None, "refusals": {}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    text = format_report(tmp_path)
    assert "| encoder | linear probe | kNN |\n|---|---|---|" in text
    assert "| federated simsiam | 0.900 | 0.850 |" in text and "5-shot" not in text
