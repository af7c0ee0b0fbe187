"""ExperimentConfig's run-time fields agree with what type checkers see (RunSpec's settings
plus :class:`SimulationSettings`): same names, same types."""

from __future__ import annotations

from dataclasses import fields

from fedssl.run_spec import SCALAR_TYPES, RunSpec
from fedssl.simulations.config import ExperimentConfig, SimulationSettings


def _types(cls: type) -> dict[str, type]:
    return {f.name: f.type if isinstance(f.type, type) else SCALAR_TYPES[str(f.type)]
            for f in fields(cls)}


def test_every_runtime_field_has_the_type_checkers_type() -> None:
    declared = {**_types(RunSpec), **_types(SimulationSettings)}
    runtime = _types(ExperimentConfig)
    assert set(runtime) <= set(declared)
    assert {name: declared[name] for name in runtime} == runtime


def test_simulation_settings_are_all_experiment_fields_with_their_defaults() -> None:
    exp = ExperimentConfig()
    for f in fields(SimulationSettings):
        assert getattr(exp, f.name) == f.default
        assert ExperimentConfig.__dataclass_fields__[f.name].metadata["help"] == f.metadata["help"]
