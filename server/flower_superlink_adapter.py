"""Adapter for the Flower internals ``fedssl server`` uses (written for Flower 1.41.0).

Flower's public surface for running a federation is its commands (``flower-superlink``,
``flwr run``, ``flwr supernode register``); ``fedssl server`` drives the same steps from
Python and adds a guard, which needs these internals:

- ``flwr.superlink.extensions.get_middleware`` (replaced, in the SuperLink process only):
  the SuperLink builds its ASGI middleware stack from it (outermost first).
  :func:`prepend_middleware` puts fedssl's
  :class:`~fedssl.server.superlink_guard.LocalControlGuard` in front of Flower's own, so
  non-local peers reach nothing but the Fleet API. It returns an undo; the SuperLink child
  (:func:`fedssl.server.superlink_process.superlink_main`) never undoes it, since the
  process exists only to serve that SuperLink.
- ``flwr.superlink.cli.flower_superlink.flower_superlink``: the ``flower-superlink``
  command's function, run in that process with the command's arguments
  (:func:`run_flower_superlink`).
- ``flwr.cli.typing.SuperLinkConnection`` and ``flwr.cli.utils.init_http_client_from_connection``:
  how the ``flwr`` CLI connects to the Control API (HTTPS, server verified against a CA
  certificate): :func:`connect_control_api`.
- ``flwr.cli.build.build_fab_from_files``, ``flwr.supercore.fab.Fab`` and
  ``flwr.common.serde.fab_to_proto``/``user_config_to_proto``: how ``flwr run`` packs an
  app into a FAB and a ``StartRun`` request: :func:`build_fab`, :func:`start_run_request`.

The Control API's request and reply messages (``flwr.proto.control_pb2``) are Flower's wire
protocol, not internals, and are used directly (:mod:`fedssl.server.superlink_control`).

Every function here first checks that the installed Flower is the release this adapter was
written for (:func:`check`): another release raises
:class:`~fedssl.flower_version.FlowerVersionError` naming both versions, before anything is
patched or called.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fedssl.flower_version import require_flower

#: the Flower release whose internals this module was written against
FLOWER_VERSION = "1.41.0"
CONCERN = ("the SuperLink (extensions.get_middleware, the flower-superlink entry point, the "
           "flwr CLI's Control API client and FAB builder)")


def check() -> None:
    """Raise :class:`~fedssl.flower_version.FlowerVersionError` unless Flower is 1.41.0."""
    require_flower(FLOWER_VERSION, concern=CONCERN)


def prepend_middleware(middleware: type) -> Callable[[], None]:
    """Make the SuperLink run ASGI ``middleware`` (a class taking the app) outside all of
    Flower's own; returns the function that puts Flower's ``get_middleware`` back."""
    check()
    from flwr.superlink import extensions
    from starlette.middleware import Middleware

    original = extensions.get_middleware

    def get_middleware() -> tuple[Middleware, ...]:
        return (Middleware(middleware), *original())

    extensions.get_middleware = get_middleware  # type: ignore[assignment]

    def undo() -> None:
        extensions.get_middleware = original  # type: ignore[assignment]

    return undo


@contextlib.contextmanager
def middleware_prepended(middleware: type) -> Iterator[None]:
    """:func:`prepend_middleware` while the block runs."""
    undo = prepend_middleware(middleware)
    try:
        yield
    finally:
        undo()


def run_flower_superlink(argv: list[str]) -> None:
    """Run ``flower-superlink ARGV...`` in this process (returns when it stops)."""
    check()
    from flwr.superlink.cli.flower_superlink import flower_superlink

    sys.argv = ["flower-superlink", *argv]
    flower_superlink()


def connect_control_api(address: str, ca_cert: Path) -> Any:
    """A Control API client for ``address`` over HTTPS, the server verified against
    ``ca_cert`` (what the ``flwr`` CLI builds; it prints "Using SuperLink: ...").

    Args:
        address: the Control API's address.
        ca_cert: the CA certificate the server is verified against.

    Returns:
        Flower's Control API client.

    Raises:
        FlowerVersionError: if the installed Flower is not the one the adapter was written for.
    """
    check()
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection

    connection = SuperLinkConnection(name="fedssl", address=address,
                                     root_certificates=str(ca_cert), insecure=False)
    return init_http_client_from_connection(connection)


def build_fab(files: dict[str, bytes]) -> bytes:
    """A FAB (Flower App Bundle) of ``files`` (path in the bundle -> content), as
    ``flwr build`` makes it."""
    check()
    from flwr.cli.build import build_fab_from_files

    fab, _ = build_fab_from_files(files)
    return fab


def start_run_request(fab_bytes: bytes) -> Any:
    """The Control API's ``StartRunRequest`` for a FAB, with no config override (what
    ``flwr run`` sends)."""
    check()
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
    return StartRunRequest(fab=fab_to_proto(fab), override_config=user_config_to_proto({}),
                           federation="")
