"""The server run's id and resolved configuration in its run directory (issue 16.2, 16.3a),
and report.json's privacy block over a ledger that spans runs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedssl.privacy.accounting.budget import epsilon_of
from fedssl.privacy.identity.keys import load_or_create_identity, public_pem
from fedssl.privacy.identity.ledger import Ledger, LedgerEntry
from fedssl.server.app import DEFAULTS
from fedssl.server.report import ledger_privacy
from fedssl.server.run_record import record_run, resolve_run_id

SEG = (1.0, 0.1, 10)


def test_run_id_is_new_per_run_and_kept_on_resume(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    rid = resolve_run_id(a, resume=False)
    assert len(rid) == 32 and rid.isalnum()
    assert resolve_run_id(a, resume=True) == rid == (a / "run_id").read_text().strip()
    assert resolve_run_id(b, resume=False) != rid
    # a run directory resumed from before run ids: no id, the sites use the whole ledger
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    (tmp_path / "old" / "checkpoints" / "state.json").write_text("{}")
    assert resolve_run_id(tmp_path / "old", resume=True) == ""


def test_server_writes_config_toml_and_records_changes_on_resume(tmp_path: Path) -> None:
    cfg = {**DEFAULTS, "run-dir": str(tmp_path), "dp": True, "target-epsilon": 4.0,
           "num-server-rounds": 2}
    rid = record_run(tmp_path, cfg)
    table = tomllib.loads((tmp_path / "config.toml").read_text())["run"]
    assert table["run-id"] == rid and table["target-epsilon"] == 4.0 and table["dp"] is True
    assert "resume" not in table
    before = (tmp_path / "config.toml").read_text()
    assert record_run(tmp_path, {**cfg, "resume": True}) == rid  # same settings: untouched
    assert (tmp_path / "config.toml").read_text() == before
    record_run(tmp_path, {**cfg, "resume": True, "num-server-rounds": 5})
    raw = tomllib.loads((tmp_path / "config.toml").read_text())
    assert raw["run"]["num-server-rounds"] == 5
    (change,) = raw["change"]
    assert (change["key"], change["old"], change["new"]) == ("num-server-rounds", 2, 5)


def test_simulate_config_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[experiment]\nrounds = 2\n")
    record_run(tmp_path, {**DEFAULTS, "resume": True, "num-server-rounds": 9})
    assert (tmp_path / "config.toml").read_text() == "[experiment]\nrounds = 2\n"


def test_report_privacy_of_a_ledger_spanning_two_runs(tmp_path: Path) -> None:
    """report.json's epsilon is the run's, lifetime_epsilon all runs composed."""
    key = load_or_create_identity(tmp_path / "id.pem")
    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger" / "site-a.pub").write_bytes(public_pem(key))
    led = Ledger(tmp_path / "ledger" / "site-a.jsonl", key)
    history: list[tuple[float, float, int]] = []
    for rid, rounds in (("a" * 32, 2), ("b" * 32, 1)):
        for r in range(1, rounds + 1):
            history.append(SEG)
            led.append(LedgerEntry(
                round=r, client="site-a", noise_multiplier=SEG[0], sample_rate=SEG[1],
                steps=SEG[2], max_grad_norm=1.0, delta=1e-5, accountant="prv",
                epsilon=epsilon_of([SEG] * r, 1e-5), run_id=rid,
                lifetime_epsilon=epsilon_of(history, 1e-5)))
    row = ledger_privacy(tmp_path, 1e-5, "b" * 32)["clients"]["site-a"]
    assert row["rounds"] == 1 and row["steps"] == 10
    assert row["epsilon"] == pytest.approx(epsilon_of([SEG], 1e-5))
    assert row["lifetime_epsilon"] == pytest.approx(epsilon_of([SEG] * 3, 1e-5))
    assert row["other_runs"] == {"a" * 32: {"rounds": 2,
                                            "epsilon": epsilon_of([SEG] * 2, 1e-5)}}
    assert ledger_privacy(tmp_path, 1e-5, "a" * 32)["clients"]["site-a"]["rounds"] == 2
