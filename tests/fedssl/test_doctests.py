"""The library's docstring examples run as tests (objectives, encoders, privacy parts).

Collected here rather than with pytest's ``--doctest-modules`` on the source folders: those
folders are installed as ``fedssl.ssl_core``, ``fedssl.privacy``, ... (a package-dir mapping),
and collecting them by path imports every module a second time under a top-level name
(``privacy.x`` beside ``fedssl.privacy.x``): two copies of each class and registry, which
broke class checks once. Each module is imported here by its installed name only."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("ssl_core", "privacy", "client", "server", "simulations")


def _modules() -> list[str]:
    import fedssl

    # the top-level modules (fedssl.run_spec, fedssl.run_layout, fedssl.atomic, ...)
    names = [f"fedssl.{m.name}" for m in pkgutil.iter_modules(fedssl.__path__)
             if not m.ispkg]
    for pkg in PACKAGES:
        module = importlib.import_module(f"fedssl.{pkg}")
        names += [m.name for m in pkgutil.walk_packages(module.__path__, f"fedssl.{pkg}.")]
    return sorted(names)


def _with_examples() -> list[str]:
    out = []
    for name in _modules():
        module = importlib.import_module(name)  # every module imports: an error is a failure
        if any(t.examples for t in doctest.DocTestFinder().find(module)):
            out.append(name)
    return out


MODULES = _with_examples()


def test_examples_are_found() -> None:
    # the objectives and encoders document their use with examples: if none were found,
    # the collection above is broken, not the examples
    assert any(".objectives." in m for m in MODULES) and "fedssl.ssl_core.encoders" in MODULES
    assert "fedssl.run_spec" in MODULES and "fedssl.run_layout" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
