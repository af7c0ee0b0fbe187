"""``fedssl server``: a Flower SuperLink with TLS and SuperNode authentication, and the run.

How a real federation is started on Flower 1.41 (read from the installed ``flwr`` source):

1. **SuperLink.** ``flower-superlink`` serves the Fleet API (SuperNodes), the Control API
   (operators: register nodes, start runs) and the Runtime API (the ServerApp process) over
   *one* HTTPS port (uvicorn; ``--host``/``--port``), with ``--ssl-certfile``,
   ``--ssl-keyfile`` and ``--ssl-ca-certfile``. ``--enable-supernode-auth`` makes it refuse
   any SuperNode whose public key was not registered beforehand, and
   ``--disable-runtime-dependency-installation`` stops it from running ``uv sync`` for the app
   (no network here; ``fedssl`` is already installed). In its default ``subprocess`` isolation
   it launches ``flower-superexec``, which starts the ServerApp for each run.
2. **Node registration.** Through the Control API (``RegisterNode``, what
   ``flwr supernode register KEY.pub`` sends) for every key in ``authorized_nodes.txt``.
3. **The run.** A FAB (Flower App Bundle) is built in memory holding only a generated
   ``pyproject.toml`` whose ``[tool.flwr.app.components]`` point at the installed
   ``fedssl.server.app:app`` / ``fedssl.client.app:app`` and whose ``[tool.flwr.app.config]``
   is the fully resolved run config; it is submitted with the Control API's ``StartRun``
   (what ``flwr run`` sends). Progress is followed with ``ListRuns`` and ``RUN/metrics.jsonl``;
   the ServerApp's log is streamed (``StreamLogs``) to ``RUN/flower/serverapp.log``.

Hardening beyond stock Flower: the open-source SuperLink has no authentication on the Control
and Runtime APIs, and they share the Fleet port, so anyone who can reach the port could
register a node key or submit a run (whose code the ServerApp and every ClientApp would
execute). ``fedssl server`` therefore runs the SuperLink through :func:`superlink_main`, which
adds an ASGI middleware that answers 403 to every request from a non-local peer except the
Fleet API (``/v1/fleet/``) and the health check.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedssl.privacy.certs import CertPaths, read_authorized

#: paths that remote (non-local) peers may use: the Fleet API and the health check
REMOTE_PATH_PREFIXES = ("/v1/fleet/", "/health")
#: env var with extra peer addresses (comma separated) treated as local by the guard
LOCAL_PEERS_ENV = "FEDSSL_SUPERLINK_LOCAL_PEERS"
#: env var with the pid of the `fedssl server` process that started the SuperLink
PARENT_PID_ENV = "FEDSSL_PARENT_PID"
DEFAULT_ADDRESS = "0.0.0.0:9092"
FLOWER_DIR = "flower"  # inside the run directory: Flower's home, logs


class DeployError(RuntimeError):
    """Raised when the SuperLink, node registration or the run cannot proceed."""


class DeploySetupError(DeployError, ValueError):
    """Raised for bad input found before anything is started (``fedssl server`` exits 2)."""


# --------------------------------------------------------------------------------------------
# The guarded SuperLink process (runs as `python -m fedssl.server.superlink FLOWER-ARGS...`)
# --------------------------------------------------------------------------------------------


def _is_local_peer(host: str | None, extra: frozenset[str]) -> bool:
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
            if not path.startswith(REMOTE_PATH_PREFIXES) and not _is_local_peer(client[0],
                                                                             self.extra):
                body = b'{"detail":"only the Fleet API is reachable from remote hosts"}'
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def superlink_main(argv: list[str] | None = None) -> None:
    """Run ``flower-superlink`` (same arguments) with :class:`LocalControlGuard` installed.

    Flower builds its middleware stack from ``flwr.superlink.extensions.get_middleware()``
    (outermost first); the guard is prepended there, so it runs before any Flower handler.
    """
    from flwr.superlink import extensions
    from flwr.superlink.cli.flower_superlink import flower_superlink
    from starlette.middleware import Middleware

    original = extensions.get_middleware

    def get_middleware() -> tuple[Middleware, ...]:
        return (Middleware(LocalControlGuard), *original())

    extensions.get_middleware = get_middleware  # type: ignore[assignment]
    _exit_with_parent()
    sys.argv = ["flower-superlink", *(sys.argv[1:] if argv is None else argv)]
    flower_superlink()


# --------------------------------------------------------------------------------------------
# Control API client side
# --------------------------------------------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) -> (host, port); raises DeployError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeploySetupError(f"address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def local_control_address(host: str, port: int) -> str:
    """Where this machine reaches the SuperLink it started (loopback for wildcard binds)."""
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
    "Using SuperLink: ..." line is printed only if ``verbose``."""
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection

    from fedssl.quiet import flower_cli_output

    connection = SuperLinkConnection(name="fedssl", address=address,
                                     root_certificates=str(ca_cert), insecure=False)
    with flower_cli_output(verbose):
        return init_http_client_from_connection(connection)


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
    else a message naming the problem (TLS or authentication first)."""
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
    """Register every OpenSSH public key not yet known to the SuperLink; their node ids."""
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


def build_fab(run_config: dict[str, Any]) -> bytes:
    """A FAB holding only a ``pyproject.toml`` for the installed fedssl app and ``run_config``.

    The code itself is not shipped: the ServerApp and every ClientApp import the ``fedssl``
    package installed on their machine (runtime dependency installation is off).
    """
    import tomli_w
    from flwr.cli.build import build_fab_from_files

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
    fab, _ = build_fab_from_files({"pyproject.toml": tomli_w.dumps(pyproject).encode()})
    return fab


def start_run(client: Any, run_config: dict[str, Any]) -> int:
    """Submit the fedssl app with ``run_config`` (Control API ``StartRun``); the run id."""
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    fab_bytes = build_fab(run_config)
    fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
    response = client.StartRun(StartRunRequest(
        fab=fab_to_proto(fab), override_config=user_config_to_proto({}), federation=""))
    if not response.HasField("run_id"):
        raise DeployError("the SuperLink did not start the run")
    return int(response.run_id)


def run_status(client: Any, run_id: int) -> tuple[str, str, str]:
    """(status, sub_status, details) of a run, e.g. ("finished", "completed", "")."""
    from flwr.proto.control_pb2 import ListRunsRequest

    runs = client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict
    if run_id not in runs:
        return "unknown", "", ""
    status = runs[run_id].status
    return status.status, status.sub_status, status.details


# --------------------------------------------------------------------------------------------
# `fedssl server`
# --------------------------------------------------------------------------------------------


@dataclass
class ServerOptions:
    """What ``fedssl server`` was asked to do (see ``fedssl server --help``)."""

    certs: Path
    run_config: dict[str, Any]
    address: str = DEFAULT_ADDRESS
    min_clients: int = 0  # 0: every authorised node
    wait_clients_timeout: float = 600.0
    resume: bool = False
    verbose: bool = False
    print_fn: Callable[[str], None] = field(default=print)


class SuperLinkProcess:
    """A ``flower-superlink`` subprocess (its own process group) with TLS and node auth."""

    def __init__(self, certs: CertPaths, host: str, port: int, flower_home: Path,
                 log_path: Path) -> None:
        self.certs, self.host, self.port = certs, host, port
        self.flower_home, self.log_path = flower_home, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line (the guarded entry point; flags as for ``flower-superlink``)."""
        return [
            sys.executable, "-m", "fedssl.server.superlink",
            "--ssl-certfile", str(self.certs.server_cert),
            "--ssl-keyfile", str(self.certs.server_key),
            "--ssl-ca-certfile", str(self.certs.ca_cert),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--host", self.host, "--port", str(self.port),
        ]

    def start(self) -> None:
        """Start the SuperLink; its output goes to ``log_path``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = flower_env(self.flower_home)
        if self.host not in ("0.0.0.0", "::", "") and not _is_local_peer(self.host,
                                                                        frozenset()):
            env[LOCAL_PEERS_ENV] = self.host  # the ServerApp connects from the bind address
        env[PARENT_PID_ENV] = str(os.getpid())
        with open(self.log_path, "ab") as log:
            # same process group as `fedssl server`: Ctrl-C reaches both; Flower's SuperExec
            # and ServerApp watch their parent's pid and exit with it
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         env=env)

    def wait_ready(self, timeout: float = 60.0, verbose: bool = False) -> Any:
        """Block until the Control API answers; returns a connected Control API client
        (:func:`wait_for_control_api`: TLS and authentication problems are reported at
        once, a SuperLink that exits with its log's tail)."""

        def check_alive() -> None:
            if self.proc is not None and self.proc.poll() is not None:
                raise DeployError(f"the SuperLink exited with code {self.proc.returncode}; "
                                  f"see {self.log_path}:\n{tail(self.log_path)}")

        try:
            return wait_for_control_api(local_control_address(self.host, self.port),
                                        self.certs.ca_cert, timeout, check_alive, verbose)
        except SuperLinkAccessError as exc:
            raise SuperLinkAccessError(f"{exc}; SuperLink log: {self.log_path}") from exc

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the SuperLink (its SuperExec and ServerApp follow it); kill if stuck."""
        if self.proc is not None:
            stop_process(self.proc, timeout)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM ``proc``, wait up to ``timeout`` seconds, then SIGKILL it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _exit_with_parent() -> None:
    """In the SuperLink process: exit when the `fedssl server` that started it is gone.

    Without this a SIGKILLed ``fedssl server`` would leave its SuperLink running (and the
    port taken); Flower's own children already watch the SuperLink's pid the same way.
    """
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent or not parent.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="fedssl-parent-watch", daemon=True).start()


def flower_env(flower_home: Path) -> dict[str, str]:
    """Environment for Flower processes: own ``FLWR_HOME``, no telemetry, no update check."""
    flower_home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({"FLWR_HOME": str(flower_home), "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1"})
    # the venv's flower-* scripts (flower-superexec, flwr-serverapp) must be on PATH
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _stream_logs(client_factory: Callable[[], Any], run_id: int, out: Path,
                 echo: Callable[[str], None] | None) -> None:
    """Copy the ServerApp's log to ``out`` until the run ends (a daemon thread's body)."""
    from flwr.proto.control_pb2 import StreamLogsRequest

    try:
        client = client_factory()
        with open(out, "a") as fh:
            for res in client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=0)):
                fh.write(res.log_output)
                fh.flush()
                if echo is not None:
                    echo(res.log_output.rstrip("\n"))
    except Exception as exc:  # the log copy is best effort; the run itself is unaffected
        with open(out, "a") as fh:
            fh.write(f"\n[fedssl] log stream ended: {exc}\n")


def format_round(row: dict[str, Any], rounds: int | None = None) -> str:
    """One progress line for a ``metrics.jsonl`` row (``round k/rounds`` when given)."""
    parts = [f"round {row['round']}{f'/{rounds}' if rounds else ''}"]
    if row["round"] == 0:
        parts.append("(initial encoder)")
    else:
        parts.append(f"clients {row.get('clients', 0)}")
    for key, label in (("loss", "loss"), ("linear_probe_accuracy", "linear probe"),
                       ("knn_accuracy", "kNN"), ("epsilon_max", "max epsilon")):
        if row.get(key) is not None:
            parts.append(f"{label} {row[key]:.4g}")
    for key in ("refused", "rejected", "failed"):
        if row.get(key):
            parts.append(f"{key}: {', '.join(sorted(row[key]))}")
    return "  ".join(parts)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            break
    return rows


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to start over an existing run (or to resume nothing) before anything starts."""
    metrics = run_dir / "metrics.jsonl"
    if resume:
        if not (run_dir / "checkpoints" / "state.json").exists():
            raise DeploySetupError(f"nothing to resume: {run_dir / 'checkpoints' / 'state.json'} "
                              "not found")
    elif metrics.exists() and metrics.stat().st_size > 0:
        raise DeploySetupError(f"{run_dir} already holds a run: pass --resume to continue it or "
                          "choose another --run-dir")


def require_registry(certs: CertPaths) -> dict[str, Any]:
    """The identity registry ``CERTS/identities.json`` (site name -> Ed25519 key), or a
    :class:`DeploySetupError` naming the file: secure aggregation checks every site's round
    keys against it and the server keeps only ledgers signed by a key it lists."""
    from fedssl.privacy.identity import IdentityError, load_registry

    if not certs.registry.is_file():
        raise DeploySetupError(
            f"{certs.registry} not found: secure aggregation and the sites' ledger keys need "
            "the identity registry `fedssl certs` writes next to ca.crt (copy it there; "
            "--no-secagg --no-dp runs without it)")
    try:
        registry = load_registry(certs.registry)
    except IdentityError as exc:
        raise DeploySetupError(str(exc)) from None
    if not registry:
        raise DeploySetupError(f"{certs.registry} lists no site: no client could take part")
    return registry


def deploy_config(certs: CertPaths, run_config: dict[str, Any]) -> dict[str, Any]:
    """``run_config`` with the identity registry of ``certs`` (``CERTS/identities.json``).

    Read from the certificate directory, never the run directory, and checked here, before
    anything starts: with secure aggregation or DP on (the defaults) a missing or unreadable
    registry is a :class:`DeploySetupError` naming the file (``fedssl server`` exits 2).
    """
    cfg = dict(run_config)
    if cfg.get("secagg") or cfg.get("dp"):
        require_registry(certs)
    if certs.registry.is_file():
        cfg["identity-registry"] = str(certs.registry)
    return cfg


def run_server(opts: ServerOptions) -> int:
    """Start the SuperLink, register the nodes, run the federation, stop; an exit code.

    0: the run completed; 1: it failed or was stopped; raises DeployError for setup problems.
    """

    def say(text: str) -> None:  # progress lines carry the local time
        stamp = time.strftime("%H:%M:%S")
        opts.print_fn(text.replace("[fedssl server]", f"[fedssl server {stamp}]", 1))

    certs = CertPaths(Path(opts.certs).resolve())
    certs.require_server()
    keys = read_authorized(certs.authorized)
    if not keys:
        raise DeploySetupError(f"{certs.authorized} lists no node keys: no client could join")
    cfg = deploy_config(certs, opts.run_config)
    run_dir = Path(str(cfg["run-dir"])).resolve()
    cfg["run-dir"] = str(run_dir)
    cfg["resume"] = bool(opts.resume or cfg.get("resume", False))
    check_run_dir(run_dir, cfg["resume"])
    host, port = split_address(opts.address)
    flower_home = run_dir / FLOWER_DIR
    superlink_log = flower_home / "superlink.log"
    need = opts.min_clients or len(keys)

    env = flower_env(flower_home)
    os.environ.update({k: env[k] for k in ("FLWR_HOME", "FLWR_TELEMETRY_ENABLED",
                                           "FLWR_DISABLE_UPDATE_CHECK")})
    link = SuperLinkProcess(certs, host, port, flower_home, superlink_log)
    say(f"[fedssl server] starting the SuperLink on {host}:{port} (TLS, node authentication); "
        f"log: {superlink_log}")
    link.start()
    try:
        client = link.wait_ready(verbose=opts.verbose)
        ids = register_nodes(client, keys)
        say(f"[fedssl server] {len(ids)} authorised node key(s) registered; waiting for "
            f"{need} client(s) to connect (up to {opts.wait_clients_timeout:.0f} s)")
        deadline = time.monotonic() + opts.wait_clients_timeout
        seen = -1
        while (n := online_nodes(client)) < need:
            if n != seen:
                say(f"[fedssl server] {n}/{need} clients connected")
                seen = n
            if time.monotonic() > deadline:
                raise DeployError(f"only {n} of {need} clients connected within "
                                  f"{opts.wait_clients_timeout:.0f} s")
            if link.proc is not None and link.proc.poll() is not None:
                raise DeployError(f"the SuperLink exited; see {superlink_log}")
            time.sleep(1.0)
        say(f"[fedssl server] {online_nodes(client)} client(s) connected; starting "
            f"{'the resumed ' if cfg['resume'] else ''}run of {cfg['num-server-rounds']} "
            f"rounds -> {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        run_id = start_run(client, cfg)
        say(f"[fedssl server] run {run_id} started; start-up: the ServerApp loads its "
            "evaluation data and evaluates the initial encoder (round 0) while the clients "
            "warm up")
        # made here, not in the thread: making one prints (unless verbose, swallowed here)
        log_client = control_client(local_control_address(host, port), certs.ca_cert,
                                    opts.verbose)
        log_thread = threading.Thread(
            target=_stream_logs, daemon=True,
            args=(lambda: log_client, run_id,
                  flower_home / "serverapp.log", say if opts.verbose else None))
        log_thread.start()
        printed = len(_read_rows(run_dir / "metrics.jsonl")) if cfg["resume"] else 0
        while True:
            rows = _read_rows(run_dir / "metrics.jsonl")
            for row in rows[printed:]:
                say(f"[fedssl server] {format_round(row, cfg['num-server-rounds'])}")
            printed = max(printed, len(rows))
            status, sub_status, details = run_status(client, run_id)
            if status == "finished":
                break
            if link.proc is not None and link.proc.poll() is not None:
                raise DeployError(f"the SuperLink exited during the run; see {superlink_log}")
            time.sleep(1.0)
        log_thread.join(timeout=5)
        for row in _read_rows(run_dir / "metrics.jsonl")[printed:]:
            say(f"[fedssl server] {format_round(row, cfg['num-server-rounds'])}")
        if sub_status == "completed":
            say(f"[fedssl server] run {run_id} completed: {run_dir / 'report.json'}")
            from fedssl.server.report_table import format_report

            opts.print_fn(format_report(run_dir))  # the table `fedssl simulate` prints
            return 0
        say(f"[fedssl server] run {run_id} {sub_status}{': ' + details if details else ''}; "
            f"ServerApp log: {flower_home / 'serverapp.log'}\n"
            f"{tail(flower_home / 'serverapp.log')}")
        return 1
    finally:
        link.stop()


if __name__ == "__main__":
    superlink_main()
