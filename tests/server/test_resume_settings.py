"""``--resume`` continues the same experiment (issue 22, item 4).

Before, ``--resume --method simsiam --num-clients 5`` on a finished byol run rewrote its report
and encoder metadata as "simsiam, 5 clients"; on an interrupted run ``--num-clients 5``
re-partitioned the data mid-run; ``--target-epsilon 30`` was written into config.toml with
no effect (and became the audit's default budget); resuming a finished run overwrote its
``wall_seconds``. Now every setting is declared in :class:`fedssl.run_spec.RunSpec` (or
simulate's own fields) with what a resume may do with it (``on_resume``): a setting that
defines the experiment must equal the recorded one or the resume is refused (exit 2, naming
it, nothing written); the others may change and are recorded as ``[[change]]``; a complete
run is resumed only to ``--extend`` it. ``fedssl server --resume`` and the ServerApp's own
record apply the same rule.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedssl.cli import main
from fedssl.run_layout import RunLayout
from fedssl.run_spec import DEFAULTS, FIXED, ConfigError, RunSpec, options
from fedssl.server.checkpoint import save_checkpoint
from fedssl.simulations.config import ExperimentConfig


class ReachedError(Exception):
    """The resume got past its checks (to the data set's preflight)."""


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume that passes its checks stops at the preflight, before any work."""
    from fedssl.simulations import simulate

    def reached(*_a: object, **_k: object) -> None:
        raise ReachedError

    monkeypatch.setattr(simulate, "preflight", reached)


def _run_dir(run: Path, done: int, rounds: int = 2, report: bool = False,
             **settings: object) -> None:
    """A simulate run directory with ``done`` of ``rounds`` rounds complete."""
    cfg = ExperimentConfig(dataset="digits", num_clients=2, rounds=rounds, out=str(run),
                           **settings).validate()
    layout = RunLayout(run)
    run.mkdir(parents=True)
    layout.config.write_text(cfg.to_toml())
    for r in range(1, done + 1):
        save_checkpoint(run, r, {"w": np.zeros(3, np.float32)}, {"seed": 0})
    layout.metrics.write_text("".join(json.dumps({"round": r, "clients": 2 if r else 0}) + "\n"
                                      for r in range(done + 1)))
    if report:
        layout.report.write_text(json.dumps({"method": cfg.method, "clients": 2,
                                             "wall_seconds": 123.0}))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("option,value,recorded", [
    ("--method", "byol", "simsiam"),
    ("--num-clients", "5", "2"),
    ("--target-epsilon", "30", "8.0"),
    ("--seed", "3", "0"),
    ("--partitioner", "iid", "dirichlet"),
    ("--dataset", "mnist1d", "digits"),
    ("--site-budget-epsilon", "3", "0.0"),
    ("--lr", "0.1", "0.05"),
])
def test_a_resume_that_changes_the_experiment_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: None, option: str,
        value: str, recorded: str) -> None:
    run = tmp_path / "run"
    _run_dir(run, done=1)
    before = _snapshot(run)
    code = main(["simulate", "--out", str(run), "--resume", option, value])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{option} {value}" in err and f"(the run's: {recorded})" in err, err
    assert "define the experiment" in err and "nothing was changed" in err
    assert _snapshot(run) == before


def test_every_difference_is_named_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           no_run: None) -> None:
    run = tmp_path / "run"
    _run_dir(run, done=2, report=True, method="byol")
    before = _snapshot(run)
    code = main(["simulate", "--out", str(run), "--resume", "--method", "simsiam",
                 "--num-clients", "5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--method simsiam (the run's: byol)" in err and "--num-clients 5 (the run's: 2)" in err
    assert _snapshot(run) == before  # report.json still says byol, 2 clients


def test_a_complete_run_is_resumed_only_to_extend_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: None) -> None:
    run = tmp_path / "run"
    _run_dir(run, done=2, report=True)
    before = _snapshot(run)
    code = main(["simulate", "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "is complete (round 2 of 2" in err and "--extend" in err, err
    assert _snapshot(run) == before  # its wall_seconds (and everything else) kept
    with pytest.raises(ReachedError):  # an extension goes on
        main(["simulate", "--out", str(run), "--resume", "--extend", "--rounds", "3"])
    # a run whose last round is done but whose report is not written yet is finished
    RunLayout(run).report.unlink()
    with pytest.raises(ReachedError):
        main(["simulate", "--out", str(run), "--resume"])


def test_what_may_change_is_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation cadence and timeouts may change: written as [[change]] entries (the
    simulation itself is stubbed: it writes the report a run would)."""
    import flwr.simulation

    from fedssl.server import report_table
    from fedssl.simulations import simulate

    run = tmp_path / "run"
    _run_dir(run, done=1)

    def fake_run(**_kwargs: object) -> None:
        RunLayout(run).report.write_text("{}")

    monkeypatch.setattr(flwr.simulation, "run_simulation", fake_run)
    monkeypatch.setattr(simulate, "_start_ray", lambda _args: None)
    monkeypatch.setattr(report_table, "format_report", lambda _run: "")
    code = main(["simulate", "--out", str(run), "--resume", "--round-timeout", "99",
                 "--eval-every", "2", "--few-label", "1"])
    assert code == 0, capsys.readouterr().err
    raw = tomllib.loads(RunLayout(run).config.read_text())
    assert {(c["key"], c["old"], c["new"]) for c in raw["change"]} == {
        ("round_timeout", 600.0, 99.0), ("eval_every", 1, 2), ("few_label", "1,5,10", "1")}
    assert raw["experiment"]["round_timeout"] == 99.0 and raw["experiment"]["method"] == "simsiam"


def test_what_may_change_on_resume_is_declared_with_the_settings() -> None:
    """One declaration (the fields' ``on_resume``), no list kept elsewhere: these are the
    settings a resume may change (anything added later defines the experiment unless it
    says otherwise)."""
    assert {o.name: o.on_resume for o in options(ExperimentConfig) if o.on_resume != FIXED} == {
        "rounds": "extend", "eval_every": "may change", "few_label": "may change",
        "finetune": "may change", "finetune_seeds": "may change",
        "eval_samples": "may change", "eval_test_samples": "may change",
        "tensorboard": "may change", "device": "may change",
        "dropout_prob": "may change", "straggler_prob": "may change",
        "straggler_delay": "may change", "round_timeout": "may change",
        "cpus_per_client": "may change", "gpus_per_client": "may change",
        "ray_address": "may change", "out": "invocation"}
    fixed = {o.name for o in options(RunSpec) if o.on_resume == FIXED}
    assert {"dataset", "data_path", "num_samples", "partitioner", "method", "dp",
            "target_epsilon", "noise_multiplier", "delta", "accountant", "secagg",
            "seed"} <= fixed


# -- fedssl server --resume and the ServerApp's record ------------------------------------


def _server_args(*argv: str) -> argparse.Namespace:
    from fedssl.deploy_commands import add_deploy_parsers

    parser = argparse.ArgumentParser()
    add_deploy_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(["server", "--certs", "x", *argv])


def _server_run(run: Path, done: int, rounds: int = 2, report: bool = False) -> None:
    from fedssl.server.run_record import write_run_config

    run.mkdir(parents=True)
    write_run_config(run, {**DEFAULTS, "run-dir": str(run), "num-server-rounds": rounds,
                           "dataset": "digits", "method": "byol", "target-epsilon": 4.0,
                           "num-samples": 500}, "a" * 32)
    for r in range(1, done + 1):
        save_checkpoint(run, r, {"w": np.zeros(3, np.float32)}, {"seed": 0})
    RunLayout(run).metrics.write_text("".join(json.dumps({"round": r}) + "\n"
                                              for r in range(done + 1)))
    if report:
        RunLayout(run).report.write_text("{}")


def test_server_resume_takes_the_runs_settings_and_refuses_changes(tmp_path: Path) -> None:
    from fedssl.deploy_commands import server_run_config

    run = tmp_path / "run"
    _server_run(run, done=1)
    before = _snapshot(run)
    base = ("--run-dir", str(run), "--resume")
    # before: the deployment defaults (simsiam, epsilon 8, mnist1d) replaced the run's
    cfg = server_run_config(_server_args(*base, "--round-timeout", "30"))
    assert (cfg["method"], cfg["target-epsilon"], cfg["dataset"]) == ("byol", 4.0, "digits")
    assert cfg["round-timeout"] == 30.0
    with pytest.raises(ConfigError) as err:
        server_run_config(_server_args(*base, "--target-epsilon", "30", "--method",
                                       "simsiam", "--set", "num-samples=300"))
    assert "--target-epsilon 30.0 (the run's: 4.0)" in str(err.value)
    assert "--method simsiam (the run's: byol)" in str(err.value)
    assert "--set num-samples=300 (the run's: 500)" in str(err.value)
    assert _snapshot(run) == before


def test_server_resume_of_a_complete_run_needs_extend(tmp_path: Path) -> None:
    from fedssl.deploy_commands import server_run_config

    run = tmp_path / "run"
    _server_run(run, done=2, report=True)
    with pytest.raises(ValueError, match="is complete"):
        server_run_config(_server_args("--run-dir", str(run), "--resume"))
    cfg = server_run_config(_server_args("--run-dir", str(run), "--resume", "--extend",
                                         "--rounds", "3"))
    assert cfg["num-server-rounds"] == 3


def test_the_serverapp_record_refuses_a_changed_experiment(tmp_path: Path) -> None:
    """The ServerApp (any driver, ``flwr run .`` too) keeps the rule when it records."""
    from fedssl.server.run_record import record_run

    cfg = {**DEFAULTS, "run-dir": str(tmp_path), "num-server-rounds": 2}
    record_run(tmp_path, cfg)
    before = RunLayout(tmp_path).config.read_text()
    with pytest.raises(ConfigError, match="num-samples 100 \\(the run's: 4000\\)"):
        record_run(tmp_path, {**cfg, "resume": True, "num-samples": 100})
    assert RunLayout(tmp_path).config.read_text() == before
    record_run(tmp_path, {**cfg, "resume": True, "eval-every": 3})  # may change: recorded
    raw = tomllib.loads(RunLayout(tmp_path).config.read_text())
    assert [(c["key"], c["old"], c["new"]) for c in raw["change"]] == [("eval-every", 1, 3)]


def test_resume_does_not_take_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            no_run: None) -> None:
    """Before, ``--resume --config other.toml`` silently did not read the file."""
    run = tmp_path / "run"
    _run_dir(run, done=1)
    other = tmp_path / "other.toml"
    other.write_text('[experiment]\nmethod = "byol"\n')
    code = main(["simulate", "--out", str(run), "--resume", "--config", str(other)])
    assert code == 2 and "--config is not read on resume" in capsys.readouterr().err
