"""The run's settings are declared once, in :class:`fedssl.run_spec.RunSpec` (issue 14 item 1):
the run config's defaults, the keys the clients get, ``fedssl simulate``'s options and
``fedssl server``'s are derived from it, and a Flower run config is checked with the errors
``fedssl simulate`` gives."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from fedssl import run_spec
from fedssl.cli import build_parser
from fedssl.deploy_commands import _SERVER_OPTIONS, add_deploy_parsers, server_run_config
from fedssl.run_spec import (
    CLIENT_KEYS,
    DEFAULTS,
    RUNTIME_KEYS,
    ConfigError,
    RunSpec,
    ServerRun,
    options,
    read_settings,
    round_spec,
    validate_run_config,
)
from fedssl.simulations.config import ExperimentConfig

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _simulate_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["simulate"]


def test_every_setting_has_a_simulate_option_or_says_how_simulate_sets_it() -> None:
    flags = {s for a in _simulate_parser()._actions for s in a.option_strings}
    for o in options():
        if o.simulate is None:
            assert o.flag in flags, o.name
            assert o.name in ExperimentConfig.__dataclass_fields__
        else:  # derived by simulate: from one of its flags, or said how
            assert o.name not in ExperimentConfig.__dataclass_fields__
            named = [w for w in o.simulate.split() if w.startswith("--")]
            assert all(w in flags for w in named), (o.name, o.simulate)
    # exactly the run-directory, resume and resource settings are derived
    assert {o.key for o in options() if o.simulate} == {
        "run-dir", "threads", "progress", "resume", "identity-registry"}


def test_pyproject_run_config_holds_every_setting_at_its_default() -> None:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert set(config) == {o.key for o in options()}
    for o in options():
        assert config[o.key] == o.default and type(config[o.key]) is o.type, o.key


def test_defaults_and_client_keys_are_views_of_the_spec() -> None:
    from fedssl.server.app import CLIENT_KEYS as SERVER_CLIENT_KEYS
    from fedssl.server.app import DEFAULTS as SERVER_DEFAULTS

    assert SERVER_DEFAULTS is DEFAULTS and SERVER_CLIENT_KEYS is CLIENT_KEYS
    assert RunSpec().to_run_config() == DEFAULTS
    assert all(isinstance(v, bool | int | float | str) for v in DEFAULTS.values())
    assert {"method", "batch-size", "dp", "run-dir", "threads"} <= set(CLIENT_KEYS)
    assert not {"num-server-rounds", "few-label", "init-encoder"} & set(CLIENT_KEYS)
    # simulate's fields are the spec's (same help) plus the simulation's own
    spec = {o.name: o for o in options()}
    for name, f in ExperimentConfig.__dataclass_fields__.items():
        if name in spec:
            assert f.metadata["help"] == spec[name].help
            assert f.default == spec[name].simulate_default


def test_run_config_round_trip_and_flower_types() -> None:
    spec = RunSpec.from_run_config({"num-server-rounds": 3, "lr": 1, "dp": "false",
                                    "few-label": 5, "warmup-workers": 2})
    assert (spec.rounds, spec.lr, spec.dp, spec.few_label) == (3, 1.0, False, "5")
    assert RunSpec.from_run_config(spec.to_run_config()) == spec
    with pytest.raises(ConfigError, match="unknown option 'nope'"):
        RunSpec.from_run_config({"nope": 1})
    with pytest.raises(ConfigError, match="batch-size: expected int"):
        RunSpec.from_run_config({"batch-size": "many"})


@pytest.mark.parametrize("bad, match", [
    ({"delta": 2.0}, "delta: must be in"),
    ({"method": "nope"}, "method: unknown SSL method"),
    ({"client-dp": "central"}, "client-dp: central client-level DP"),
    ({"warmup-rounds": 9}, "warmup-rounds: must be between 0 and rounds"),
    ({"dp": True, "target-epsilon": 0.0, "noise-multiplier": 0.0}, "noise-multiplier"),
])
def test_run_config_errors_are_simulates(bad: dict, match: str) -> None:
    """flwr run . (the ServerApp's validate_run_config) and fedssl simulate refuse alike."""
    with pytest.raises(ConfigError, match=match) as run_err:
        validate_run_config(bad)
    sim = {("rounds" if k == "num-server-rounds" else k): v for k, v in bad.items()}
    with pytest.raises(ConfigError, match=match) as sim_err:
        ExperimentConfig.from_dict(sim)
    assert str(run_err.value) == str(sim_err.value)


def test_validated_run_config_keeps_the_drivers_keys() -> None:
    cfg = validate_run_config({"dataset": "auto", "num-clients": 4, "warmup-workers": 2})
    assert cfg["dataset"] == "mnist1d" and cfg["num-clients"] == 4 and cfg["warmup-workers"] == 2
    assert set(cfg) - set(DEFAULTS) == {"num-clients", "warmup-workers"}


def test_simulate_run_config_passes_the_servers_checks() -> None:
    cfg = ExperimentConfig().validate().to_run_config("RUN")
    run = ServerRun.from_run_config(cfg)
    assert run.spec.to_run_config() == {k: v for k, v in {**DEFAULTS, **cfg}.items()
                                        if k in DEFAULTS}
    assert (run.num_clients, run.cpus_per_client, run.gpus_per_client) == (
        cfg["num-clients"], cfg["cpus-per-client"], cfg["gpus-per-client"])


def test_the_server_reads_a_typed_frozen_run_made_once_at_its_boundary() -> None:
    """Issue 23 item 1: Flower's run config becomes one frozen, typed object (settings plus
    the driver's runtime values) at the ServerApp's boundary; nothing past it reads keys."""
    import dataclasses

    run = ServerRun.from_run_config({"num-server-rounds": 2, "lr": 1, "num-clients": "4",
                                     "min-clients": 3, "run-id": "ignored"})
    assert run.spec.rounds == 2 and isinstance(run.spec.lr, float) and run.spec.lr == 1.0
    assert (run.num_clients, run.min_clients, run.warmup_workers) == (4, 3, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.spec.lr = 0.5  # type: ignore[misc]
    # what config.toml records: every setting, and the runtime values the driver set
    assert run.to_run_config() == {**DEFAULTS, "num-server-rounds": 2, "lr": 1.0,
                                   "num-clients": 4, "min-clients": 3}
    assert ServerRun.from_run_config(run.to_run_config()) == run
    # the runtime keys RunSpec skips are exactly ServerRun's (and the run id it assigns)
    runtime = {f.name.replace("_", "-") for f in dataclasses.fields(ServerRun)} - {"spec"}
    assert set(RUNTIME_KEYS) == runtime | {"run-id"}
    with pytest.raises(ConfigError, match="num-clients: expected int"):
        ServerRun.from_run_config({"num-clients": "many"})
    # validation resolves into a new object: dataset "auto" and a relative warm start
    assert RunSpec(dataset="auto").validate().dataset == "mnist1d"


def test_server_options_are_generated_from_the_spec() -> None:
    spec = {o.key: o for o in options()}
    assert {key for _, key, _, _ in _SERVER_OPTIONS} == {
        "num-server-rounds", "run-dir", "round-timeout", "clients-per-round", "method",
        "local-epochs", "batch-size", "lr", "target-epsilon", "noise-multiplier",
        "max-grad-norm", "delta", "accountant", "image-size", "eval-every", "eval-samples",
        "seed", "threads", "dp", "secagg", "tensorboard"}
    for flag, key, typ, _ in _SERVER_OPTIONS:
        assert typ is spec[key].type and flag == spec[key].server_flag
    assert {"--rounds", "--run-dir", "--no-dp", "--secagg", "--tensorboard"} <= set(
        _server_flags())


def _server_flags() -> set[str]:
    parser = argparse.ArgumentParser()
    add_deploy_parsers(parser.add_subparsers(dest="command"))
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {s for a in sub.choices["server"]._actions for s in a.option_strings}


def _server_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_deploy_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(["server", "--certs", "x", "--dataset", "digits", *argv])


def test_fedssl_server_refuses_what_simulate_refuses(capsys) -> None:
    with pytest.raises(ConfigError, match="delta: must be in"):
        server_run_config(_server_args("--delta", "2"))
    with pytest.raises(ConfigError, match="client-dp: central client-level DP"):
        server_run_config(_server_args("--set", "client-dp=central"))
    from fedssl.deploy_commands import _run_deploy

    assert _run_deploy("server", _server_args("--delta", "2")) == 2
    assert "fedssl server: error: delta: must be in (0, 1)" in capsys.readouterr().err


def test_a_client_reads_a_round_config_once_typed_with_its_fallbacks() -> None:
    required = {"method": "simsiam", "dataset": "mnist1d", "local-epochs": 1,
                "batch-size": 16, "lr": 1, "noise-multiplier": 0.0, "delta": 1e-5}
    spec = round_spec({**required, "threads": 2, "dp": True})
    assert (spec.batch_size, spec.lr, spec.threads, spec.dp) == (16, 1.0, 2, True)
    assert isinstance(spec.lr, float) and isinstance(spec, RunSpec)
    # what a client assumes when the server sent nothing: no DP, no secure aggregation
    bare = round_spec(required)
    assert (bare.dp, bare.secagg, bare.target_epsilon, bare.partitioner) == (
        False, False, 0.0, "iid")
    assert (bare.momentum, bare.accountant, bare.run_dir) == (0.9, "prv", "")
    # keys a round cannot do without: named, never assumed
    for key in required:
        with pytest.raises(KeyError, match=key):
            round_spec({k: v for k, v in required.items() if k != key})
    # secure aggregation's and distributed DP's settings come with them, or the round fails
    with pytest.raises(KeyError, match="secagg-clip"):
        round_spec({**required, "secagg": True})
    assert round_spec({**required, "secagg": True, "secagg-clip": 3}).secagg_clip == 3.0
    with pytest.raises(KeyError, match="client-clip"):
        round_spec({**required, "secagg": True, "secagg-clip": 3, "client-dp": "distributed"})
    with pytest.raises(ConfigError, match="batch-size: expected int"):
        round_spec({**required, "batch-size": "many"})
    # a mod that sees every message (the fault model) reads a few settings, typed
    assert read_settings({"dropout-prob": 1}, "dropout_prob", "straggler_delay") == (1.0, 0.0)
    with pytest.raises(KeyError, match="lr"):
        read_settings({}, "lr")


def test_deploy_overrides_are_declared_with_the_settings() -> None:
    assert run_spec.DEPLOY_OVERRIDES == {"progress": False, "run-dir": "runs/federation",
                                         "round-timeout": 600.0}
