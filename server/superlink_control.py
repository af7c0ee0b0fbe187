"""The Control API client side of ``fedssl server``: wait for the SuperLink, register the
sites' node keys, submit the run and follow it.

Flower 1.41's SuperLink serves its Control API (operators: register nodes, start runs, list
and follow runs) over HTTPS on the Fleet API's port;
:class:`~fedssl.server.superlink_guard.LocalControlGuard` lets only local peers use it.

- **Wait** (:func:`wait_for_control_api`): retried while the SuperLink is not up yet
  (refused or reset connections, HTTP 502-504); a TLS or authentication problem is
  :class:`SuperLinkAccessError` at once, naming it (:func:`access_problem`).
- **Node registration** (:func:`register_nodes`): ``RegisterNode`` (what ``flwr supernode
  register KEY.pub`` sends) for every key in ``authorized_nodes.txt`` not yet known.
- **The run** (:func:`start_run`): a FAB holding only a generated ``pyproject.toml`` whose
  ``[tool.flwr.app.components]`` point at the installed ``fedssl.server.app:app`` /
  ``fedssl.client.app:app`` and whose ``[tool.flwr.app.config]`` is the fully resolved run
  config, submitted with ``StartRun`` (what ``flwr run`` sends); :func:`run_status` reads
  ``ListRuns``.

The requests are Flower's wire protocol (``flwr.proto.control_pb2``); the client itself and
the FAB come from internals of Flower's CLI, through
:mod:`fedssl.server.flower_superlink_adapter`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from fedssl.flower_version import FlowerVersionError
from fedssl.server.flower_superlink_adapter import build_fab as fab_from_files
from fedssl.server.flower_superlink_adapter import connect_control_api, start_run_request


class DeployError(RuntimeError):
    """Raised when the SuperLink, node registration or the run cannot proceed."""


class DeploySetupError(DeployError, ValueError):
    """Raised for bad input found before anything is started (``fedssl server`` exits 2)."""


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) -> (host, port); raises DeployError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeploySetupError(f"address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def local_control_address(host: str, port: int) -> str:
    """Where this machine reaches the SuperLink it started (loopback for wildcard binds).

    Args:
        host: the host the SuperLink binds.
        port: the Control API's port.
    """
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (for tests and auto-chosen ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def control_client(address: str, ca_cert: Path, verbose: bool = False) -> Any:
    """A Flower Control API client (HTTPS, server verified against ``ca_cert``). Flower's
    "Using SuperLink: ..." line is printed only if ``verbose``.

    Args:
        address: the Control API's address.
        ca_cert: the CA certificate the server is verified against.
        verbose: print Flower's output.
    """
    from fedssl.quiet import flower_cli_output

    with flower_cli_output(verbose):
        return connect_control_api(address, ca_cert)


class SuperLinkAccessError(DeployError):
    """The SuperLink (or whatever listens on its port) answers, but this side cannot use
    it: TLS fails (a certificate not signed by the CA, or not naming the address; not TLS
    at all) or the Control API refuses the request (HTTP 401/403). Waiting cannot fix it."""


#: HTTP statuses of a server that is still starting (or behind a proxy that is): retried
RETRY_STATUSES = frozenset({502, 503, 504})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (``__cause__``, else ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def access_problem(exc: BaseException, address: str, ca_cert: Path) -> str | None:
    """What a failed Control API request says about the set-up: None when the SuperLink
    is just not up (yet): connection refused, reset or closed, a time-out, HTTP 502-504;
    else a message naming the problem (TLS or authentication first).

    Args:
        exc: the exception the request raised.
        address: the Control API's address.
        ca_cert: the CA certificate used.

    Returns:
        None, or the message.
    """
    import ssl

    import httpx

    for link in _chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return (f"TLS: the certificate of the server at {address} does not verify "
                    f"against the CA certificate {ca_cert} ({link.verify_message}): it is "
                    "not signed by that CA, or does not name this address (check --certs; "
                    "`fedssl certs --host` names the server's addresses)")
        if isinstance(link, ssl.SSLError):
            return (f"TLS handshake with {address} failed ({link.reason or link}): is it a "
                    "fedssl/Flower SuperLink with TLS on that port?")
    for link in _chain(exc):
        if isinstance(link, httpx.HTTPStatusError):
            code = link.response.status_code
            if code in RETRY_STATUSES:
                return None
            body = link.response.text[:200].strip()
            if code in (401, 403):
                return (f"the server at {address} refused the Control API request (HTTP "
                        f"{code}{': ' + body if body else ''}): authentication failed or this "
                        "peer is not allowed (the Control API answers local peers only)")
            return (f"the server at {address} answered the Control API with HTTP {code}"
                    f"{': ' + body if body else ''}: is it a Flower SuperLink?")
        if isinstance(link, (httpx.TransportError, ConnectionError, TimeoutError,
                             socket.timeout)):
            return None  # not up yet, or restarting
    return (f"the Control API at {address} failed with {type(exc).__name__}: {exc} (not a "
            "connection problem, so waiting would not help)")


def wait_for_control_api(address: str, ca_cert: Path, timeout: float = 60.0,
                         check_alive: Callable[[], None] | None = None,
                         verbose: bool = False) -> Any:
    """Block until the Control API at ``address`` answers ``ListNodes`` over TLS verified
    against ``ca_cert``; returns the connected client.

    "Not up yet" (nothing listening, connection reset, HTTP 502-504) is retried every 0.5 s
    for ``timeout`` seconds, then a :class:`DeployError` says so. A TLS or authentication
    failure raises :class:`SuperLinkAccessError` at once, naming the problem
    (:func:`access_problem`); so does an unusable CA certificate file. ``check_alive`` is
    called before every try (it raises if the SuperLink process is gone).

    Args:
        address: the Control API's address.
        ca_cert: the CA certificate the server is verified against.
        timeout: the seconds to retry for.
        check_alive: called before every try, or None.
        verbose: print Flower's output.

    Raises:
        DeployError: if the Control API did not answer within ``timeout`` seconds.
        SuperLinkAccessError: for a TLS, authentication or CA certificate problem.
        FlowerVersionError: if the installed Flower is not the version fedssl supports.
    """
    from flwr.proto.control_pb2 import ListNodesRequest

    host, port = split_address(address)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        if check_alive is not None:
            check_alive()
        try:
            with socket.create_connection((host, port), timeout=1):
                pass
        except OSError as exc:  # refused / unreachable: not listening yet
            last = exc
        else:
            try:
                client = control_client(address, ca_cert, verbose)
            except FlowerVersionError:
                raise
            except Exception as exc:  # the CA file itself (unreadable, not a certificate)
                raise SuperLinkAccessError(f"cannot use the CA certificate {ca_cert}: "
                                           f"{exc}") from exc
            try:
                client.ListNodes(ListNodesRequest())
                return client
            except Exception as exc:
                problem = access_problem(exc, address, ca_cert)
                if problem is not None:
                    raise SuperLinkAccessError(problem) from exc
                last = exc
        if time.monotonic() >= deadline:
            raise DeployError(f"the SuperLink at {address} did not come up within "
                              f"{timeout:.0f} s (last: {last})")
        time.sleep(0.5)


def _openssh_to_flower(line: bytes) -> bytes:
    """OpenSSH public key line -> the PEM bytes Flower's ``RegisterNode`` expects."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_public_key(line)
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def register_nodes(client: Any, keys: Iterable[bytes]) -> list[int]:
    """Register every OpenSSH public key not yet known to the SuperLink; their node ids.

    Args:
        client: a Control API client.
        keys: OpenSSH public key lines (the comment names the node).

    Returns:
        The node ids, in the order of ``keys``.
    """
    from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest

    known = {info.public_key.encode() if isinstance(info.public_key, str) else info.public_key:
             info.node_id for info in client.ListNodes(ListNodesRequest()).nodes_info}
    ids = []
    for line in keys:
        pem = _openssh_to_flower(line)
        if pem in known:
            ids.append(known[pem])
            continue
        parts = line.split()
        name = parts[2].decode() if len(parts) > 2 else None
        response = client.RegisterNode(RegisterNodeRequest(public_key=pem, name=name))
        ids.append(int(response.node_id))
    return ids


def online_nodes(client: Any) -> int:
    """How many registered SuperNodes are connected now."""
    from flwr.proto.control_pb2 import ListNodesRequest

    return sum(1 for info in client.ListNodes(ListNodesRequest()).nodes_info
               if info.status == "online")


def node_states(client: Any) -> dict[int, tuple[str, str]]:
    """Every registered SuperNode as ``node id -> (name, status)``: the name it was
    registered under (the key's comment, ``node-<i>`` for ``fedssl certs`` keys; may be
    empty) and Flower's status ("online", "offline", "registered", "unregistered")."""
    from flwr.proto.control_pb2 import ListNodesRequest

    return {int(info.node_id): (str(info.name), str(info.status))
            for info in client.ListNodes(ListNodesRequest()).nodes_info}


def build_fab(run_config: dict[str, Any]) -> bytes:
    """A FAB holding only a ``pyproject.toml`` for the installed fedssl app and ``run_config``.

    The code itself is not shipped: the ServerApp and every ClientApp import the ``fedssl``
    package installed on their machine (runtime dependency installation is off).
    """
    import tomli_w

    from fedssl import __version__ as version

    pyproject = {
        "build-system": {"requires": ["setuptools>=68"], "build-backend":
                         "setuptools.build_meta"},
        "project": {"name": "fedssl-federation", "version": str(version), "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": "fedssl",
            "components": {"serverapp": "fedssl.server.app:app",
                           "clientapp": "fedssl.client.app:app"},
            "config": run_config,
        }}},
    }
    return fab_from_files({"pyproject.toml": tomli_w.dumps(pyproject).encode()})


def start_run(client: Any, run_config: dict[str, Any]) -> int:
    """Submit the fedssl app with ``run_config`` (Control API ``StartRun``); the run id.

    Args:
        client: a Control API client.
        run_config: the run config.

    Raises:
        DeployError: if the SuperLink did not start the run.
    """
    response = client.StartRun(start_run_request(build_fab(run_config)))
    if not response.HasField("run_id"):
        raise DeployError("the SuperLink did not start the run")
    return int(response.run_id)


def run_status(client: Any, run_id: int) -> tuple[str, str, str]:
    """(status, sub_status, details) of a run, e.g. ("finished", "completed", "").

    Args:
        client: a Control API client.
        run_id: the run's id.

    Returns:
        ``("unknown", "", "")`` for a run the SuperLink does not know.
    """
    from flwr.proto.control_pb2 import ListRunsRequest

    runs = client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict
    if run_id not in runs:
        return "unknown", "", ""
    status = runs[run_id].status
    return status.status, status.sub_status, status.details
