"""One set of defaults everywhere (issue 16, items 1 and 7; issue 14 item 1): the settings are
declared once, in ``fedssl.run_spec.RunSpec``, and ``fedssl.server.app.DEFAULTS`` is its view;
``flwr run .`` (pyproject's ``[tool.flwr.app.config]``), ``fedssl simulate``
(ExperimentConfig) and ``fedssl server`` (DEPLOY_OVERRIDES) must agree with it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from fedssl.deploy_commands import DEPLOY_OVERRIDES, _config_defaults
from fedssl.server.app import DEFAULTS
from fedssl.simulations.config import ExperimentConfig

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
#: run-config keys only a simulation has (resources and the number of simulated sites)
SIMULATION_ONLY = {"num-clients", "cpus-per-client", "gpus-per-client"}
#: the only settings a real federation changes (fedssl server --help documents each)
DEPLOYMENT_ONLY = {"progress", "run-dir", "round-timeout"}


def _pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def test_flwr_run_config_holds_every_default_with_the_same_value() -> None:
    config = _pyproject()["tool"]["flwr"]["app"]["config"]
    assert set(config) == set(DEFAULTS), (set(DEFAULTS) ^ set(config))
    for key, value in DEFAULTS.items():
        assert config[key] == value and type(config[key]) is type(value), key


def test_simulate_defaults_map_onto_the_server_defaults() -> None:
    run_config = ExperimentConfig().validate().to_run_config("RUN")
    assert set(run_config) - set(DEFAULTS) <= SIMULATION_ONLY
    for key in set(run_config) & set(DEFAULTS) - {"run-dir"}:
        assert run_config[key] == DEFAULTS[key], (key, run_config[key], DEFAULTS[key])
    # the choices issue 16 named: privacy on by default, label-skewed partitions
    assert DEFAULTS["secagg"] is True and DEFAULTS["dp"] is True
    assert DEFAULTS["target-epsilon"] == 8.0 and DEFAULTS["partitioner"] == "dirichlet"


def test_deployment_default_run_config_has_secure_aggregation_on() -> None:
    deploy = _config_defaults()
    assert deploy["secagg"] is True and deploy["dp"] is True
    assert set(DEPLOY_OVERRIDES) <= DEPLOYMENT_ONLY
    assert {k: v for k, v in deploy.items() if k not in DEPLOYMENT_ONLY} == {
        k: v for k, v in DEFAULTS.items() if k not in DEPLOYMENT_ONLY}


def test_flower_runtime_env_takes_cpu_torch() -> None:
    """``flwr run .`` builds its runtime environment with ``uv sync`` on pyproject.toml: torch
    must come from PyTorch's CPU index (no CUDA wheels), at the version the project pins."""
    data = _pyproject()
    sources = data["tool"]["uv"]["sources"]["torch"]
    index = {i["name"]: i for i in data["tool"]["uv"]["index"]}
    names = [s["index"] for s in (sources if isinstance(sources, list) else [sources])]
    assert names and all(index[n]["url"] == "https://download.pytorch.org/whl/cpu"
                         and index[n].get("explicit") for n in names)
    assert "torch==2.13.0" in data["project"]["dependencies"]


def test_every_package_of_the_source_tree_is_installed() -> None:
    """pyproject lists its packages by hand (the folders map onto the ``fedssl`` namespace):
    a sub-package missing from the list works in the editable install of ``make`` but not in
    ``pip install fedssl`` (privacy/accountants was missing: the wheel could not import)."""
    tool = _pyproject()["tool"]["setuptools"]
    listed = set(tool["packages"])
    root = PYPROJECT.parent
    for package, folder in tool["package-dir"].items():
        for init in (root / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(root / folder).parts
            assert ".".join((package, *rel)) in listed, f"{init.parent} is not installed"
