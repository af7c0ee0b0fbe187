"""The one Flower version check every Flower adapter makes before it touches Flower internals.

fedssl patches or calls a few parts of Flower that are not its public API (listed in each
adapter's docstring: ``fedssl.simulations.flower_engine_adapter``,
``fedssl.server.flower_superlink_adapter``, ``fedssl.server.flower_strategy_adapter``).
Such internals change between releases without notice, so an adapter written for one
Flower release refuses to run on another: :func:`require_flower` raises
:class:`FlowerVersionError` naming the installed version and the one the adapter was
written for, instead of letting a patch misbehave silently after an upgrade.

A leaf module: it imports nothing of fedssl (and not Flower itself: the version comes from
the installed distribution's metadata), so every package may use it (``docs/architecture.md``).

>>> require_flower(installed_flower_version(), concern="doctest")
>>> try:
...     require_flower("0.1.0", concern="the doctest's patch")
... except FlowerVersionError as exc:
...     print(str(exc).split(":")[0])
fedssl's adapter for the doctest's patch was written for Flower 0.1.0

An adapter imports the internals it patches inside :func:`flower_internals`, so a release
that moved or removed one fails at import with the same error, not a bare
``ModuleNotFoundError``:

>>> try:
...     with flower_internals("1.41.0", concern="the doctest's patch"):
...         import flwr.no_such_internal_module
... except FlowerVersionError as exc:
...     print("cannot import" in str(exc))
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import metadata


class FlowerVersionError(RuntimeError):
    """The installed Flower is not the release an adapter of its internals was written for."""


def installed_flower_version() -> str:
    """The installed ``flwr`` distribution's version ("not installed" if there is none)."""
    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return "not installed"


def require_flower(expected: str, *, concern: str) -> None:
    """Raise :class:`FlowerVersionError` unless the installed Flower is exactly ``expected``.

    ``concern`` names what the adapter patches or calls (it goes into the message).

    Args:
        expected: the Flower version the adapter was written for.
        concern: what the adapter patches or calls.

    Raises:
        FlowerVersionError: if another Flower version (or none) is installed.
    """
    installed = installed_flower_version()
    if installed != expected:
        raise FlowerVersionError(
            f"fedssl's adapter for {concern} was written for Flower {expected}: it uses Flower "
            f"internals that are not part of its public API, but Flower {installed} is "
            f"installed. Install flwr=={expected} (pyproject.toml pins it), or port the "
            "adapter to the new release and update its version")


@contextlib.contextmanager
def flower_internals(expected: str, *, concern: str) -> Iterator[None]:
    """Import Flower internals in this block: an ``ImportError`` (a module or name that the
    installed release moved or removed) becomes a :class:`FlowerVersionError` naming the
    installed version, the one the adapter was written for and what could not be imported.

    Args:
        expected: the Flower version the adapter was written for.
        concern: what the adapter patches or calls.

    Raises:
        FlowerVersionError: if the block raises ``ImportError``.
    """
    try:
        yield
    except ImportError as exc:
        raise FlowerVersionError(
            f"fedssl's adapter for {concern} was written for Flower {expected} and cannot "
            f"import the Flower internals it uses from Flower {installed_flower_version()} "
            f"({exc}). Install flwr=={expected} (pyproject.toml pins it), or port the adapter "
            "to the new release and update its version") from exc
