"""The one-way data flow of the packages, checked on their source (``ast``, nothing imported).

Data flows one way (``docs/architecture.md``, "Layout"): data source -> augmentations ->
objective (``ssl_core``) -> local trainer + DP-SGD (``client`` on ``privacy``) -> update (clip,
quantize, mask) -> secure sum (``privacy.secagg``) -> strategy (``server``) -> global encoder
-> evaluation/report; ``simulations`` and the ``fedssl`` command drive all of it. A module
never reaches back up this flow. Every ``import`` counts, at module level or inside a function
(a lazy import is still a dependency), and ``if TYPE_CHECKING:`` imports too.

Rules:

- ``ssl_core`` and ``privacy`` never import Flower (``flwr``), ``server``, ``client`` or
  ``simulations``; ``server`` and ``client`` are the only packages that speak Flower messages
  (``simulations`` drives Flower's simulation engine).
- ``ssl_core`` never imports ``privacy``: the objective comes before DP-SGD in the flow.
- ``privacy`` imports ``ssl_core`` only in its DP-SGD engine, which consumes what comes before
  it: the :class:`~fedssl.ssl_core.objectives.base.Objective` whose per-record losses it clips
  and the layers it has per-record gradient rules for (``ssl_core.ws_layers``), plus the
  audit's checks (``privacy.audit_checks``), which check the objectives' DP soundness. The
  modules after the trainer (accountant, ledger, identity, certificates, client-level and
  distributed DP, secure aggregation) never import ``ssl_core``:
  :data:`PRIVACY_SSL_CORE_USERS` lists the allowed ones, and each may import only
  ``ssl_core.objectives``, ``ssl_core.ws_layers`` and ``ssl_core.dp_soundness`` (the error
  both an objective and the engine raise, defined below both).
- ``client`` never imports ``server`` or ``simulations``; ``server`` never imports ``client``
  or ``simulations``.
- The package modules may import only the ``fedssl`` top-level modules in :data:`LEAVES`
  (small utilities that themselves import no ``fedssl`` package), never the commands;
  ``client``, ``server`` and ``simulations`` may also import the run's settings
  (:data:`RUN_SPEC`, ``fedssl/run_spec.py``), which sit above ``ssl_core`` and ``privacy``
  (whose registries name the choices) and below the apps: the settings import only
  ``ssl_core``, ``privacy`` and the leaves, never Flower, and ``ssl_core``/``privacy`` never
  import them.
- No import cycle between the modules of ``privacy`` (nor of ``ssl_core``, ``client``,
  ``server`` or ``simulations``).
- Flower internals (anything but its public app API: ``flwr.app``, ``flwr.clientapp``,
  ``flwr.serverapp`` and its strategies, ``flwr.simulation``, and the wire protocol
  ``flwr.proto``) are imported only by the adapter modules in :data:`FLOWER_ADAPTERS`, one per
  Flower concern, each of which checks the Flower version before it touches them.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: package folder -> import name (pyproject's package-dir mapping)
PACKAGES = {"fedssl": "fedssl", "ssl_core": "fedssl.ssl_core", "privacy": "fedssl.privacy",
            "client": "fedssl.client", "server": "fedssl.server",
            "simulations": "fedssl.simulations"}
#: fedssl top-level modules every package may import (they import no fedssl package)
LEAVES = {"fedssl", "fedssl.atomic", "fedssl.quiet", "fedssl.flower_version", "fedssl.run_layout",
          "fedssl.npy_header",
          "fedssl.run_lock",
          "fedssl.processes", "fedssl.round_protocol"}
#: the library API the ``fedssl`` package re-exports (``fedssl.load_encoder``), imported only
#: lazily by ``fedssl/__init__.py`` (PEP 562 ``__getattr__``), so the leaf stays light
PUBLIC_API = {"fedssl.ssl_core.encoder_file"}
#: the run's settings: imported by client, server, simulations (and the commands); imports only
#: ssl_core, privacy and the leaves
RUN_SPEC = {"fedssl.run_spec"}
#: Flower's public API (what any module that speaks Flower may import)
FLOWER_PUBLIC = ("flwr.app", "flwr.clientapp", "flwr.serverapp", "flwr.simulation",
                 "flwr.proto")
#: ... except these modules of it, which are internals
FLOWER_PRIVATE = ("flwr.serverapp.strategy.strategy_utils",)
#: the only modules that import Flower internals (one per Flower concern)
FLOWER_ADAPTERS = {"fedssl.simulations.flower_engine_adapter",
                   "fedssl.server.flower_superlink_adapter",
                   "fedssl.server.flower_strategy_adapter"}
#: the privacy modules that may import ssl_core (the DP-SGD engine and the audit)
PRIVACY_SSL_CORE_USERS = {"fedssl.privacy.dp_sgd.engine", "fedssl.privacy.dp_sgd.opacus_engine",
                          "fedssl.privacy.dp_sgd.fast_clip", "fedssl.privacy.dp_sgd.group_clip",
                          "fedssl.privacy.dp_sgd.ws_rules", "fedssl.privacy.audit.checks"}
PRIVACY_MAY_USE = ("fedssl.ssl_core.objectives", "fedssl.ssl_core.ws_layers",
                   "fedssl.ssl_core.dp_soundness")
#: privacy's sub-packages and the ones each may import: accounting (accountants, budgets,
#: mechanisms), identity (keys, ledger, certificates) and secagg stand alone; the DP-SGD
#: engines account with accounting; client-level DP adds noise under secure aggregation; the
#: audit checks everything
PRIVACY_LAYERS: dict[str, set[str]] = {
    "accounting": set(), "identity": set(), "secagg": set(),
    "dp_sgd": {"accounting"}, "client_level": {"accounting", "secagg"},
    "audit": {"accounting", "dp_sgd", "identity"},
}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, name in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            mods[".".join((name, *rel))] = path
    return mods


MODULES = _modules()


def _imports(module: str, path: Path) -> set[tuple[str, int]]:
    """``(imported name, line)`` for every import in the file; ``from a import b`` gives both
    ``a`` and ``a.b`` (``b`` may be a submodule)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {(a.name, node.lineno) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add((target, node.lineno))
            out |= {(f"{target}.{a.name}", node.lineno) for a in node.names}
    return out


def _resolve(name: str) -> str | None:
    """The fedssl module ``name`` refers to (itself or its longest module prefix)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _edges() -> list[tuple[str, str, str, int]]:
    """``(module, imported fedssl module or raw external name, file, line)``."""
    edges = []
    for mod, path in MODULES.items():
        for name, line in _imports(mod, path):
            target = _resolve(name) if name.startswith("fedssl") else name
            if target and target != mod:
                edges.append((mod, target, str(path.relative_to(ROOT)), line))
    return edges


EDGES = _edges()


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "fedssl"


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


Edge = tuple[str, str, str, int]
Rule = Callable[[str, str], bool]


def _violations(rule: Rule, edges: list[Edge] = EDGES) -> list[str]:
    return sorted({f"{file}:{line}: {mod} imports {target}"
                   for mod, target, file, line in edges if rule(mod, target)})


# The rules: each says whether the import ``module -> target`` breaks it. The tests below run
# them on the real graph; test_each_rule_catches_a_breaking_import on fake edges.

def _reaches_up_from(low: str) -> Rule:
    """``ssl_core`` or ``privacy`` importing Flower or a package above it."""
    above = ("flwr", "fedssl.server", "fedssl.client", "fedssl.simulations")
    return lambda m, t: _package(m) == low and _within(t, above)


def _ssl_core_imports_privacy(m: str, t: str) -> bool:
    return _package(m) == "ssl_core" and _within(t, ("fedssl.privacy",))


def _privacy_imports_ssl_core_outside_the_engine(m: str, t: str) -> bool:
    return (_package(m) == "privacy" and _within(t, ("fedssl.ssl_core",))
            and (m not in PRIVACY_SSL_CORE_USERS or not _within(t, PRIVACY_MAY_USE)))


def _client_imports_server_or_simulations(m: str, t: str) -> bool:
    return _package(m) == "client" and _within(t, ("fedssl.server", "fedssl.simulations"))


def _server_imports_client_or_simulations(m: str, t: str) -> bool:
    return _package(m) == "server" and _within(t, ("fedssl.client", "fedssl.simulations"))


def _package_imports_a_fedssl_non_leaf(m: str, t: str) -> bool:
    return (_package(m) != "fedssl" and _package(t) == "fedssl" and t in MODULES
            and t not in LEAVES
            and not (t in RUN_SPEC and _package(m) in ("client", "server", "simulations")))


def _leaf_imports_a_package(m: str, t: str) -> bool:
    return (m in LEAVES and t in MODULES and _package(t) != "fedssl"
            and not (m == "fedssl" and t in PUBLIC_API))


def _non_adapter_imports_flower_internals(m: str, t: str) -> bool:
    return m not in FLOWER_ADAPTERS and _flower_internal(t)


def _run_spec_imports_above_it(m: str, t: str) -> bool:
    return m in RUN_SPEC and (
        _within(t, ("flwr", "fedssl.client", "fedssl.server", "fedssl.simulations"))
        or (_package(t) == "fedssl" and t in MODULES and t not in LEAVES))


def _privacy_sub(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["fedssl", "privacy"] else None


def _privacy_sub_package_reaches_past_its_layer(m: str, t: str) -> bool:
    sm, st = _privacy_sub(m), _privacy_sub(t)
    return (sm is not None and st is not None and sm != st
            and st not in PRIVACY_LAYERS.get(sm, set()))


def test_the_graph_sees_the_known_imports() -> None:
    """The parser resolves absolute, relative and lazy imports (guards the checks below)."""
    pairs = {(m, t) for m, t, _, _ in EDGES}
    assert ("fedssl.client.trainer", "fedssl.privacy.dp_sgd.opacus_engine") in pairs
    assert ("fedssl.server.app", "flwr.serverapp") in pairs or any(
        m == "fedssl.server.app" and t.startswith("flwr") for m, t in pairs)
    assert ("fedssl.privacy.secagg.client", "fedssl.privacy.secagg.shamir") in pairs
    assert len(MODULES) > 60


@pytest.mark.parametrize("low", ["ssl_core", "privacy"])
def test_ssl_core_and_privacy_never_import_flower_or_the_packages_above(low: str) -> None:
    assert _violations(_reaches_up_from(low)) == []


def test_ssl_core_never_imports_privacy() -> None:
    assert _violations(_ssl_core_imports_privacy) == []


def test_privacy_imports_ssl_core_only_in_the_dp_sgd_engine() -> None:
    assert _violations(_privacy_imports_ssl_core_outside_the_engine) == []


def test_privacy_sub_packages_import_only_the_layers_below_them() -> None:
    """Issue 23 item 4: privacy/ is split by concept; each sub-package imports only the
    ones :data:`PRIVACY_LAYERS` allows it (and every privacy module lives in one)."""
    subs = {_privacy_sub(m) for m in MODULES if m.startswith("fedssl.privacy.")}
    assert subs == set(PRIVACY_LAYERS)
    assert _violations(_privacy_sub_package_reaches_past_its_layer) == []


def test_client_and_server_never_import_each_other_or_simulations() -> None:
    assert _violations(_client_imports_server_or_simulations) == []
    assert _violations(_server_imports_client_or_simulations) == []


def test_packages_import_only_the_leaf_utilities_of_fedssl() -> None:
    assert _violations(_package_imports_a_fedssl_non_leaf) == []
    assert _violations(_leaf_imports_a_package) == []


def test_the_package_re_exports_its_api_lazily() -> None:
    """``fedssl/__init__.py`` imports the API it re-exports only inside ``__getattr__``:
    ``import fedssl`` (which every fedssl module's import runs first) loads nothing else."""
    tree = ast.parse(MODULES["fedssl"].read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert all(not (getattr(n, "module", "") or "").startswith("fedssl") for n in top)
    lazy = {t for m, t, _, _ in EDGES if m == "fedssl" and t in MODULES}
    assert lazy <= PUBLIC_API


def _cycles(package: str, edges: list[Edge] = EDGES) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for mod, target, _, _ in edges:
        # (a package's __init__ importing its own submodules is not a cycle of concern)
        if (_package(mod) == package and target in MODULES and _package(target) == package
                and not target.startswith(mod + ".")):
            graph.setdefault(mod, set()).add(target)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


@pytest.mark.parametrize("package", ["privacy", "ssl_core", "client", "server", "simulations"])
def test_no_import_cycle_inside(package: str) -> None:
    assert _cycles(package) == []


def _flower_internal(name: str) -> bool:
    return _within(name, ("flwr",)) and (not _within(name, FLOWER_PUBLIC)
                                         or _within(name, FLOWER_PRIVATE))


def test_only_the_adapters_import_flower_internals() -> None:
    assert _flower_internal("flwr.serverapp.strategy.strategy_utils")
    assert _flower_internal("flwr.superlink.extensions")
    assert not _flower_internal("flwr.serverapp.strategy.FedAvg")
    assert _violations(_non_adapter_imports_flower_internals) == []
    assert set(MODULES) >= FLOWER_ADAPTERS


def test_the_run_settings_sit_between_the_libraries_and_the_apps() -> None:
    assert set(MODULES) >= RUN_SPEC
    assert _violations(_run_spec_imports_above_it) == []


def _fake(module: str, target: str) -> list[Edge]:
    return [(module, target, "fake.py", 1)]


@pytest.mark.parametrize(("rule", "module", "target"), [
    (_client_imports_server_or_simulations, "fedssl.client.x", "fedssl.simulations.y"),
    (_client_imports_server_or_simulations, "fedssl.client.x", "fedssl.server.y"),
    (_server_imports_client_or_simulations, "fedssl.server.x", "fedssl.client.y"),
    (_server_imports_client_or_simulations, "fedssl.server.x", "fedssl.simulations.y"),
    (_reaches_up_from("ssl_core"), "fedssl.ssl_core.x", "flwr.app"),
    (_reaches_up_from("ssl_core"), "fedssl.ssl_core.x", "fedssl.client.y"),
    (_reaches_up_from("privacy"), "fedssl.privacy.x", "flwr.serverapp"),
    (_reaches_up_from("privacy"), "fedssl.privacy.x", "fedssl.server.y"),
    (_ssl_core_imports_privacy, "fedssl.ssl_core.x", "fedssl.privacy.y"),
    (_privacy_imports_ssl_core_outside_the_engine, "fedssl.privacy.identity.ledger",
     "fedssl.ssl_core.objectives"),
    (_privacy_imports_ssl_core_outside_the_engine, "fedssl.privacy.dp_sgd.opacus_engine",
     "fedssl.ssl_core.datasets"),
    (_package_imports_a_fedssl_non_leaf, "fedssl.client.app", "fedssl.cli"),
    (_package_imports_a_fedssl_non_leaf, "fedssl.privacy.identity.ledger", "fedssl.run_spec"),
    (_leaf_imports_a_package, "fedssl.run_layout", "fedssl.ssl_core.datasets"),
    (_non_adapter_imports_flower_internals, "fedssl.server.x",
     "flwr.serverapp.strategy.strategy_utils"),
    (_non_adapter_imports_flower_internals, "fedssl.client.x", "flwr.supernode.y"),
    (_run_spec_imports_above_it, "fedssl.run_spec", "fedssl.client.app"),
    (_run_spec_imports_above_it, "fedssl.run_spec", "flwr.app"),
    (_privacy_sub_package_reaches_past_its_layer, "fedssl.privacy.accounting.budget",
     "fedssl.privacy.identity.ledger"),
    (_privacy_sub_package_reaches_past_its_layer, "fedssl.privacy.secagg.server",
     "fedssl.privacy.client_level.distributed"),
])
def test_each_rule_catches_a_breaking_import(rule: Rule, module: str, target: str) -> None:
    """The rules provably can fail: a fake edge that breaks one is reported by it."""
    assert _violations(rule, _fake(module, target)) == [f"fake.py:1: {module} imports {target}"]


@pytest.mark.parametrize(("rule", "module", "target"), [
    (_package_imports_a_fedssl_non_leaf, "fedssl.client.app", "fedssl.run_spec"),
    (_privacy_imports_ssl_core_outside_the_engine, "fedssl.privacy.dp_sgd.opacus_engine",
     "fedssl.ssl_core.objectives"),
    (_non_adapter_imports_flower_internals, "fedssl.server.flower_strategy_adapter",
     "flwr.serverapp.strategy.strategy_utils"),
    (_reaches_up_from("privacy"), "fedssl.privacy.identity.ledger", "fedssl.atomic"),
    (_privacy_sub_package_reaches_past_its_layer, "fedssl.privacy.audit.checks",
     "fedssl.privacy.identity.ledger"),
])
def test_an_allowed_import_is_not_reported(rule: Rule, module: str, target: str) -> None:
    assert _violations(rule, _fake(module, target)) == []


@pytest.mark.parametrize(("package", "a", "b"), [
    ("privacy", "fedssl.privacy.accounting.budget", "fedssl.privacy.identity.ledger"),
    ("ssl_core", "fedssl.ssl_core.datasets", "fedssl.ssl_core.objectives"),
    ("client", "fedssl.client.app", "fedssl.client.trainer"),
    ("server", "fedssl.server.superlink", "fedssl.server.superlink_process"),
    ("simulations", "fedssl.simulations.simulate", "fedssl.simulations.ray_cluster"),
])
def test_the_cycle_check_catches_a_cycle(package: str, a: str, b: str) -> None:
    """Two (real) modules importing each other through fake edges form a reported cycle."""
    assert {a, b} <= set(MODULES)
    assert [set(c) for c in _cycles(package, _fake(a, b) + _fake(b, a))] == [{a, b}]
