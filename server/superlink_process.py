"""The SuperLink process of ``fedssl server``: start it, wait until it serves, stop it.

``fedssl server`` runs Flower's SuperLink as a child process,
``python -m fedssl.server.superlink_process FLOWER-SUPERLINK-ARGS...``
(:class:`SuperLinkProcess`), in the same process group as ``fedssl server`` (Ctrl-C reaches
both). In that child :func:`superlink_main` installs the local-control guard and
runs ``flower-superlink``: it serves the Fleet API (SuperNodes), the Control API (operators:
register nodes, start runs) and the Runtime API (the ServerApp process) over *one* HTTPS port
(uvicorn; ``--host``/``--port``), with ``--ssl-certfile``, ``--ssl-keyfile`` and
``--ssl-ca-certfile``. ``--enable-supernode-auth`` makes it refuse any SuperNode whose public
key was not registered beforehand, and ``--disable-runtime-dependency-installation`` stops it
from running ``uv sync`` for the app (no network here; ``fedssl`` is already installed). In
its default ``subprocess`` isolation it launches ``flower-superexec``, which starts the
ServerApp for each run.

The child exits when ``fedssl server`` is gone (:func:`exit_with_parent`), and is stopped
with SIGTERM, then SIGKILL (:func:`fedssl.processes.stop_process`). The ServerApp's log is
copied from the Control API's ``StreamLogs`` to ``RUN/flower/serverapp.log``
(:func:`stream_logs`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedssl.privacy.identity.certs import CertPaths
from fedssl.processes import start_process, stop_process
from fedssl.server.flower_superlink_adapter import prepend_middleware, run_flower_superlink
from fedssl.server.superlink_control import (
    DeployError,
    SuperLinkAccessError,
    local_control_address,
    wait_for_control_api,
)
from fedssl.server.superlink_guard import LOCAL_PEERS_ENV, LocalControlGuard, is_local_peer

#: env var with the pid of the `fedssl server` process that started the SuperLink
PARENT_PID_ENV = "FEDSSL_PARENT_PID"


class SuperLinkProcess:
    """A ``flower-superlink`` subprocess (in the process group of ``fedssl server``) with TLS
    and node authentication."""

    def __init__(self, certs: CertPaths, host: str, port: int, flower_home: Path,
                 log_path: Path) -> None:
        self.certs, self.host, self.port = certs, host, port
        self.flower_home, self.log_path = flower_home, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line (the guarded entry point; flags as for ``flower-superlink``)."""
        return [
            sys.executable, "-m", "fedssl.server.superlink_process",
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
        if self.host not in ("0.0.0.0", "::", "") and not is_local_peer(self.host,
                                                                       frozenset()):
            env[LOCAL_PEERS_ENV] = self.host  # the ServerApp connects from the bind address
        env[PARENT_PID_ENV] = str(os.getpid())
        with open(self.log_path, "ab") as log:
            # same process group as `fedssl server`: Ctrl-C reaches both; Flower's SuperExec
            # and ServerApp watch their parent's pid and exit with it
            self.proc = start_process(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                      env=env)

    def wait_ready(self, timeout: float = 60.0, verbose: bool = False) -> Any:
        """Block until the Control API answers; returns a connected Control API client
        (:func:`wait_for_control_api`: TLS and authentication problems are reported at
        once, a SuperLink that exits with its log's tail).

        Args:
            timeout: the seconds to wait.
            verbose: print Flower's output.

        Raises:
            DeployError: if the SuperLink exited or did not answer in time.
            SuperLinkAccessError: for a TLS, authentication or CA certificate problem.
        """

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


def superlink_main(argv: list[str] | None = None) -> None:
    """Run ``flower-superlink`` (same arguments) with
    :class:`~fedssl.server.superlink_guard.LocalControlGuard` outside all of Flower's
    middleware (:func:`fedssl.server.flower_superlink_adapter.prepend_middleware`: never
    undone, this process serves that SuperLink only), exiting with the ``fedssl server``
    that started it."""
    prepend_middleware(LocalControlGuard)
    exit_with_parent()
    run_flower_superlink(sys.argv[1:] if argv is None else argv)


def exit_with_parent() -> None:
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
    """The last ``lines`` lines of a text file ('' if it does not exist).

    Args:
        path: the file.
        lines: the number of lines.
    """
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def stream_logs(client_factory: Callable[[], Any], run_id: int, out: Path,
                 echo: Callable[[str], None] | None) -> None:
    """Copy the ServerApp's log to ``out`` until the run ends (a daemon thread's body).

    Args:
        client_factory: makes the Control API client.
        run_id: the run's id.
        out: the log file, appended to.
        echo: also called with each piece of log, or None.
    """
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


if __name__ == "__main__":
    superlink_main()
