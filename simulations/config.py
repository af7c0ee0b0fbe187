"""Experiment configuration: ``fedssl simulate``'s settings, loadable from TOML, overridable
from the CLI.

:class:`ExperimentConfig` is built from :class:`fedssl.run_spec.RunSpec` (the run's settings,
declared once: type, default, help, checks) plus what only a simulation has: the number of
simulated clients, their resources, the Ray cluster they run on (``--ray-address``), their
own privacy budgets and the run directory (``--out``). Every field carries its help text,
which is what ``fedssl simulate --help`` prints, so the documentation of an option can't
drift from the option. Values are validated on load; a bad value raises
:class:`ConfigError` naming the option.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import field, fields, make_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import tomli_w

from fedssl.run_spec import (
    FIXED,
    INVOCATION,
    MAY_CHANGE,
    SCALAR_TYPES,
    ConfigError,
    RunSpec,
    check_settings,
    coerce,
    options,
)
from fedssl.simulations.ray_cluster import parse_address

__all__ = ["ConfigError", "ExperimentConfig", "SimulationSettings"]

#: the most simulated clients a run may have: checked before any per-client state is made
#: (site budgets, partitions), so a mistyped ``--num-clients 100000000000`` is an error, not a
#: machine filling its memory
MAX_SIMULATED_CLIENTS = 1_000_000


def _sim(default: Any, help: str, after: str, on_resume: str = FIXED) -> Any:
    """A simulation-only field, placed after RunSpec field ``after`` (``--help`` order);
    ``on_resume`` as a RunSpec field's (:data:`fedssl.run_spec.ON_RESUME`)."""
    return field(default=default, metadata={"help": help, "after": after,
                                            "on_resume": on_resume})


@dataclasses.dataclass
class SimulationSettings:
    """What only a simulation has (not run-config settings of the ServerApp): the simulated
    clients, their resources, the Ray cluster, the sites' own budgets and the run directory.
    Declared once here; :data:`ExperimentConfig` splices these fields among RunSpec's."""

    num_clients: int = _sim(10, "number of simulated clients (SuperNodes)", "image_size")
    site_budget_epsilon: float = _sim(0.0, "every simulated site's own epsilon budget, "
                                           "written to its local site.toml and enforced by "
                                           "the client (0 = no site budget)",
                                      "client_dp_min_clients")
    site_budgets: str = _sim("", "per-site budgets overriding the above, e.g. "
                                 "'client-003=2.0,client-007=1.5'", "site_budget_epsilon")
    out: str = _sim("", "run directory (default: runs/<method>-<dataset>-<timestamp>)",
                    "seed", INVOCATION)
    cpus_per_client: float = _sim(1.0, "CPU cores reserved per simulated client (Ray)",
                                  "out", MAY_CHANGE)
    gpus_per_client: float = _sim(0.0, "share of a GPU reserved per simulated client (Ray), "
                                       "e.g. 0.25 runs 4 clients per GPU; 0 = CPU only",
                                  "cpus_per_client", MAY_CHANGE)
    ray_address: str = _sim("", "run on the existing Ray cluster whose head listens at "
                                "HOST:PORT (what `ray start --head` prints) instead of a "
                                "local Ray; every node needs the same fedssl install, the "
                                "data path and the run directory (--out) at the same "
                                "absolute path on a shared file system (docs/simulation.md: "
                                "'Past one machine'); empty: start Ray on this machine",
                            "gpus_per_client", MAY_CHANGE)


def _experiment_fields() -> list[tuple[str, type, Any]]:
    """RunSpec's fields that ``fedssl simulate`` sets itself (at simulate's defaults), with
    the simulation's own spliced in."""
    by_name = {f.name: f for f in fields(RunSpec)}
    out: list[tuple[str, type, Any]] = []
    for opt in options(RunSpec):
        if opt.simulate is not None:  # derived by simulate (--out, --resume, ...)
            continue
        meta = by_name[opt.name].metadata
        out.append((opt.name, opt.type, field(default=opt.simulate_default, metadata=meta)))
    for spec in fields(SimulationSettings):
        at = next(i for i, (n, _, _) in enumerate(out) if n == spec.metadata["after"])
        out.insert(at + 1, (spec.name, SCALAR_TYPES[str(spec.type)],
                            field(default=spec.default, metadata=spec.metadata)))
    return out


if TYPE_CHECKING:
    class _Fields(SimulationSettings, RunSpec):  # type: ignore[misc]
        """RunSpec's settings and the simulation's, as type checkers see them (at run time
        ExperimentConfig has only the fields simulate sets, is not frozen, and does not
        have RunSpec's methods; tests/simulations/test_config_types.py checks the fields
        and their types agree)."""
else:
    _Fields = object


class _Experiment(_Fields):
    """The methods of :class:`ExperimentConfig` (its fields: :func:`_experiment_fields`)."""

    def validate(self) -> Self:
        """Check ranges and names (the run's: :func:`fedssl.run_spec.check_settings`, and the
        simulation's own); returns self."""
        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{name.replace('_', '-')}: {msg}")

        need(1 <= self.num_clients <= MAX_SIMULATED_CLIENTS, "num_clients",
             f"must be between 1 and {MAX_SIMULATED_CLIENTS:,}")
        need(self.gpus_per_client >= 0, "gpus_per_client", "must be >= 0")
        need(self.cpus_per_client > 0, "cpus_per_client", "must be positive")
        if self.ray_address:
            parse_address(self.ray_address)  # its syntax; reachability when the run starts
        resolved = check_settings(self, num_clients=self.num_clients)
        # not frozen at run time (RunSpec, which type checkers see, is)
        self.dataset = resolved.dataset  # type: ignore[misc]
        self.init_encoder = resolved.init_encoder  # type: ignore[misc]
        if resolved.inferred_dataset:  # not an option: the simulator prints that it was
            self.inferred_dataset = True
        need(self.site_budget_epsilon >= 0, "site_budget_epsilon", "must be non-negative")
        self.parsed_site_budgets()
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a mapping (TOML table or overrides); keys may use - or _."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown option {key!r}")
            typ = known[name].type
            kwargs[name] = coerce(value, typ if isinstance(typ, type) else SCALAR_TYPES[typ], key)
        return cls(**kwargs).validate()

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict[str, Any] | None = None,
             paths_from_file: bool = False) -> Self:
        """Load a TOML file (keys at top level or under ``[experiment]``) plus overrides.
        ``paths_from_file`` (a user's ``--config``): a relative ``init_encoder`` or
        ``data_path`` in the file is taken from the file's directory, so the file works
        from any working directory (a run's own config.toml records absolute paths).

        Args:
            path: the TOML file, or None for the overrides alone.
            overrides: settings that replace the file's (keys may use - or _).
            paths_from_file: resolve the file's relative paths against its directory.

        Returns:
            The validated settings.

        Raises:
            ConfigError: for a missing or invalid file, an unknown option or an invalid value.
        """
        data: dict[str, Any] = {}
        if path:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            try:
                raw = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: invalid TOML ({exc})") from exc
            data.update(raw.get("experiment", raw))
            if paths_from_file:
                for key in ("init_encoder", "data_path", "init-encoder", "data-path"):
                    value = data.get(key)
                    if isinstance(value, str) and value and not Path(value).is_absolute():
                        data[key] = str((path.parent / value).resolve())
        data.update(overrides or {})
        return cls.from_dict(data)

    def shared_parts(self) -> str:
        """The shared parts (every part of the model unless set)."""
        return self.shared or "all"

    def parsed_site_budgets(self) -> dict[str, float]:
        """Per-site epsilon budgets, ``{"client-003": 2.0, ...}``, for every simulated site."""
        budgets = {f"client-{i:03d}": self.site_budget_epsilon for i in range(self.num_clients)}
        for item in filter(None, (p.strip() for p in self.site_budgets.split(","))):
            name, _, value = item.partition("=")
            try:
                eps = float(value)
            except ValueError:
                raise ConfigError(f"site-budgets: {item!r} is not NAME=EPSILON") from None
            if name.strip() not in budgets or eps <= 0:
                raise ConfigError(f"site-budgets: {item!r} names no simulated client or has a "
                                  "non-positive epsilon")
            budgets[name.strip()] = eps
        return {k: v for k, v in budgets.items() if v > 0}

    def to_run_config(self, run_dir: str) -> dict[str, Any]:  # type: ignore[override]
        """Flower run config (kebab-case keys) for the ServerApp: every RunSpec setting
        simulate sets, the run directory, the clients' torch threads (from
        ``cpus_per_client``), and the simulation's clients and resources
        (:data:`fedssl.run_spec.RUNTIME_KEYS`); the sites' own budgets go to their
        site.toml, not to the server."""
        cfg = {o.key: getattr(self, o.name) for o in options(RunSpec) if o.simulate is None}
        cfg["run-dir"] = run_dir
        cfg["threads"] = max(1, int(self.cpus_per_client))
        cfg["shared"] = self.shared_parts()
        cfg.update({"num-clients": self.num_clients, "cpus-per-client": self.cpus_per_client,
                    "gpus-per-client": self.gpus_per_client})
        return cfg

    def to_toml(self) -> str:
        return tomli_w.dumps({"experiment": dataclasses.asdict(self)})

    def help_of(self, name: str) -> str:
        return {f.name: f.metadata["help"] for f in fields(self)}[name]


if TYPE_CHECKING:
    class ExperimentConfig(_Experiment):
        """What type checkers see: RunSpec's settings plus the simulation's, with their types
        (at run time the class is made below, with simulate's defaults and ``--help``
        order; a test checks the two agree)."""
else:
    #: ``fedssl simulate``'s experiment: RunSpec's settings plus the simulation's own
    ExperimentConfig = make_dataclass("ExperimentConfig", _experiment_fields(),
                                      bases=(_Experiment,))
    ExperimentConfig.__module__ = __name__
    ExperimentConfig.__doc__ = "A federated SSL experiment (what ``fedssl simulate`` runs)."
