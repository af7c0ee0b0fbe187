"""Resuming a run (issue 16, items 4 and 8): which rounds count as done, and extending a run.

A round is complete once its checkpoint and then its metrics row are written; a resume
continues after the last complete round. Changing the round count on resume needs
``--extend``, which is recorded in config.toml and says what the extra rounds cost each
client's privacy (from its signed ledger and the project's accountant). The result table
shows each client's noise multipliers over the run (min-max), not the last one.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedssl.cli import main
from fedssl.privacy.accounting.budget import calibrate_noise, epsilon_of
from fedssl.privacy.identity.keys import load_or_create_identity, public_pem
from fedssl.privacy.identity.ledger import Ledger, LedgerEntry
from fedssl.server.checkpoint import CheckpointError, resume_point, save_checkpoint
from fedssl.server.extension import USELESS_NOISE_RATIO
from fedssl.server.report_table import format_report
from fedssl.simulations.config import ExperimentConfig
from fedssl.simulations.simulate import extension_notes

DELTA, RATE, STEPS = 1e-5, 0.1, 20


def _rows(run_dir: Path, rounds: range) -> None:
    with (run_dir / "metrics.jsonl").open("a") as fh:
        for r in rounds:
            fh.write(json.dumps({"round": r, "clients": 2}) + "\n")


def _checkpoints(run_dir: Path, rounds: range) -> None:
    for r in rounds:
        save_checkpoint(run_dir, r, {"w": np.full(3, float(r), np.float32)}, {"seed": 0})


def test_a_checkpointed_round_without_its_metrics_row_is_not_complete(tmp_path: Path) -> None:
    # killed after round 3's checkpoint, before its metrics row (e.g. during its evaluation):
    # the old rule took state.json's round 3 as done, and round 3 was never trained again
    _checkpoints(tmp_path, range(1, 4))
    _rows(tmp_path, range(0, 3))
    point = resume_point(tmp_path)
    assert point is not None and (point.round, point.checkpointed) == (2, 3)
    assert point.weights is not None and float(point.weights["w"][0]) == 2.0
    assert [r["round"] for r in point.rows] == [0, 1, 2]


def test_rows_after_the_last_checkpoint_are_dropped_and_a_torn_line_too(tmp_path: Path) -> None:
    _checkpoints(tmp_path, range(1, 3))
    _rows(tmp_path, range(0, 4))  # rows of rounds 3 (no checkpoint file)
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"round": 4, "clie')  # a crash while appending
    point = resume_point(tmp_path)
    assert point is not None and point.round == 2
    assert [r["round"] for r in point.rows] == [0, 1, 2]
    (tmp_path / "metrics.jsonl").write_text('{"round": 0}\nnot json\n{"round": 1}\n')
    with pytest.raises(CheckpointError, match="line 2 is not JSON"):
        resume_point(tmp_path)


def test_a_run_stopped_in_round_one_resumes_at_round_one(tmp_path: Path) -> None:
    assert resume_point(tmp_path) is None  # nothing to resume
    _rows(tmp_path, range(0, 1))  # the random-init evaluation only
    point = resume_point(tmp_path)
    assert point is not None and point.round == 0 and point.weights is None
    assert [r["round"] for r in point.rows] == [0]


def _finished_run(run_dir: Path, rounds: int, target: float, planned_rounds: int | None = None,
                  noise: list[float] | None = None) -> ExperimentConfig:
    """A finished simulate run directory of two DP clients (config.toml, checkpoints, metrics,
    signed ledgers) whose noise was calibrated as a client calibrates it: ``target`` epsilon
    over ``planned_rounds`` (default ``rounds``) rounds of ``STEPS`` steps."""
    cfg = ExperimentConfig(num_clients=2, rounds=rounds, dp=True, target_epsilon=target,
                           delta=DELTA, out=str(run_dir)).validate()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(cfg.to_toml())
    _checkpoints(run_dir, range(1, rounds + 1))
    _rows(run_dir, range(0, rounds + 1))
    sigma = calibrate_noise(target, DELTA, RATE, STEPS * (planned_rounds or rounds))
    for cid in ("client-000", "client-001"):
        key = load_or_create_identity(run_dir / "clients" / cid / "identity.pem")
        (run_dir / "ledger").mkdir(exist_ok=True)
        ledger = Ledger(run_dir / "ledger" / f"{cid}.jsonl", key)
        (run_dir / "ledger" / f"{cid}.pub").write_bytes(public_pem(key))
        history = []
        for r in range(1, rounds + 1):
            s = noise[r - 1] if noise else sigma
            history.append((s, RATE, STEPS))
            ledger.append(LedgerEntry(round=r, client=cid, noise_multiplier=s, sample_rate=RATE,
                                      steps=STEPS, max_grad_norm=1.0, delta=DELTA,
                                      accountant="prv", epsilon=epsilon_of(history, DELTA)))
    return cfg


def _simulate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["simulate", *args])
    return code, capsys.readouterr().err


def test_resume_refuses_to_change_the_rounds_without_extend(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # before: `--resume --rounds 3` on a finished 2-round run silently trained a third round
    # (config.toml kept saying 2)
    run = tmp_path / "run"
    _finished_run(run, rounds=2, target=1.0)
    before = (run / "config.toml").read_text()
    code, err = _simulate(capsys, "--out", str(run), "--resume", "--rounds", "3")
    assert code == 2
    assert "configured for 2 rounds" in err and "Pass --extend" in err
    assert (run / "config.toml").read_text() == before  # nothing changed
    assert sorted(p.name for p in (run / "checkpoints").glob("round-*")) == [
        "round-0001.safetensors", "round-0002.safetensors"]

    code, err = _simulate(capsys, "--out", str(run), "--resume", "--rounds", "1", "--extend")
    assert code == 2 and "only adds rounds" in err
    code, err = _simulate(capsys, "--out", str(run), "--resume", "--extend")
    assert code == 2 and "already has 2 rounds" in err
    code, err = _simulate(capsys, "--out", str(tmp_path / "new"), "--rounds", "3", "--extend")
    assert code == 2 and "needs --resume" in err
    assert (run / "config.toml").read_text() == before


def test_extension_warns_when_the_budget_left_forces_useless_noise(tmp_path: Path) -> None:
    # the run's noise was calibrated to spend the whole target in its 2 rounds: whatever is
    # left (calibration tolerance) forces a far larger noise on the extra rounds
    cfg = _finished_run(tmp_path, rounds=2, target=1.0)
    cfg.rounds = 4
    notes = extension_notes(tmp_path, cfg, done=2)
    assert [cid.split(":")[0] for _, cid in notes] == ["client-000", "client-001"]
    for warn, text in notes:
        assert warn, text
        assert "2 more round(s)" in text
        assert ("noise, not learning" in text or "cannot train" in text), text


def test_extension_within_the_budget_is_not_warned_about(tmp_path: Path) -> None:
    # planned for 10 rounds, stopped after 2, extended to 11: the noise barely changes
    cfg = _finished_run(tmp_path, rounds=2, target=2.0, planned_rounds=10)
    cfg.rounds = 11
    notes = extension_notes(tmp_path, cfg, done=2)
    assert len(notes) == 2 and not any(warn for warn, _ in notes)
    ratio = float(notes[0][1].split("x the run's earlier")[0].rsplit(" ", 1)[-1])
    assert 1.0 <= ratio < USELESS_NOISE_RATIO


def test_extending_a_fixed_noise_run_says_how_far_epsilon_grows(tmp_path: Path) -> None:
    cfg = _finished_run(tmp_path, rounds=2, target=1.0)
    cfg.rounds, cfg.target_epsilon, cfg.noise_multiplier = 3, 0.0, 1.5
    notes = extension_notes(tmp_path, cfg, done=2)
    assert len(notes) == 2 and not any(warn for warn, _ in notes)
    assert "take its epsilon from" in notes[0][1]


def test_the_result_table_shows_each_clients_noise_range(tmp_path: Path) -> None:
    # before: the table showed the last round's noise (9.5 after an extension) as the
    # client's noise multiplier
    _finished_run(tmp_path, rounds=3, target=1.0, noise=[1.2, 1.2, 9.5])
    client = {"epsilon": 0.9, "steps": 3 * STEPS, "noise_multiplier": 9.5, "sample_rate": RATE}
    report = {"method": "simsiam", "dataset": "mnist1d", "clients": 2, "rounds": 3,
              "wall_seconds": 1.0, "linear_probe_accuracy": 0.5, "knn_accuracy": 0.5,
              "random_init": {"linear_probe_accuracy": 0.1, "knn_accuracy": 0.1},
              "privacy": {"delta": DELTA, "clients": {"client-000": client,
                                                      "client-001": client}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    table = format_report(tmp_path)
    assert "| client-000 | 0.900 | 60 | 1.200-9.500 | 0.1000 |" in table
    assert "min-max over the client's rounds" in table


def test_an_extension_is_recorded_in_config_toml(tmp_path: Path) -> None:
    from fedssl.simulations.simulate import _record_changes, _saved_experiment

    cfg = _finished_run(tmp_path, rounds=2, target=1.0)
    saved = _saved_experiment(tmp_path)
    cfg.rounds = 4
    changes = _record_changes(tmp_path, saved, cfg, {"rounds": "extended with --extend"})
    assert [(c["key"], c["old"], c["new"]) for c in changes] == [("rounds", 2, 4)]
    raw = tomllib.loads((tmp_path / "config.toml").read_text())
    assert raw["experiment"]["rounds"] == 4
    assert raw["change"][0]["note"] == "extended with --extend"
    assert ExperimentConfig.load(tmp_path / "config.toml").rounds == 4


def test_server_extension_warns_like_simulate(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # before: `fedssl server --resume --extend` extended a run whose sites had spent their
    # target without a word about the useless noise the extra rounds would carry
    from fedssl.deploy_commands import _resume_rounds

    _finished_run(tmp_path, rounds=2, target=1.0)
    (tmp_path / "config.toml").write_text('[run]\nnum-server-rounds = 2\n')  # server format
    cfg = {"dp": True, "target-epsilon": 1.0, "delta": DELTA, "accountant": "prv"}
    _resume_rounds(cfg, tmp_path, 4, True)
    out = capsys.readouterr().out
    assert "extending" in out and "from 2 to 4 rounds (2 more after round 2)" in out
    warnings = [line for line in out.splitlines() if "WARNING" in line]
    assert len(warnings) == 2, out
    assert all("noise, not learning" in w or "cannot train" in w for w in warnings)
