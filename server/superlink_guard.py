"""The SuperLink's local-control guard: only local peers may use its Control and Runtime APIs.

The open-source SuperLink has no authentication on the Control API (register node keys,
start runs) and the Runtime API (the ServerApp's), and they share the Fleet API's port, so
anyone who can reach the port could register a node key or submit a run (whose code the
ServerApp and every ClientApp would execute). :class:`LocalControlGuard`, an ASGI
middleware, answers 403 to every request from a non-local peer except the Fleet API
(``/v1/fleet/``) and the health check. The SuperLink that ``fedssl server`` starts runs it
outermost, before any Flower handler (installed by
:func:`fedssl.server.flower_superlink_adapter.prepend_middleware`, in
:func:`fedssl.server.superlink_process.superlink_main`).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

#: paths that remote (non-local) peers may use: the Fleet API and the health check
REMOTE_PATH_PREFIXES = ("/v1/fleet/", "/health")
#: env var with extra peer addresses (comma separated) treated as local by the guard
LOCAL_PEERS_ENV = "FEDSSL_SUPERLINK_LOCAL_PEERS"


def is_local_peer(host: str | None, extra: frozenset[str]) -> bool:
    """Whether ``host`` is a loopback address or one of ``extra``.

    Args:
        host: the peer's host, or None.
        extra: further addresses counted as local.
    """
    if host is None:
        return False
    if host in extra:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LocalControlGuard:
    """ASGI middleware: only local peers may reach the Control and Runtime APIs.

    Remote peers (the sites' SuperNodes) may call the Fleet API and the health check only;
    anything else gets ``403``. "Local" is a loopback address or one listed in
    ``$FEDSSL_SUPERLINK_LOCAL_PEERS`` (the bind address, when the SuperLink is bound to one
    specific interface, since the ServerApp then connects from it).
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.extra = frozenset(
            p.strip() for p in os.environ.get(LOCAL_PEERS_ENV, "").split(",") if p.strip())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass local and Fleet traffic through; refuse the rest before it is parsed."""
        if scope.get("type") == "http":
            client = scope.get("client") or (None, None)
            path = str(scope.get("path", ""))
            if not path.startswith(REMOTE_PATH_PREFIXES) and not is_local_peer(client[0],
                                                                            self.extra):
                body = b'{"detail":"only the Fleet API is reachable from remote hosts"}'
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
