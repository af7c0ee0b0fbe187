"""Fixtures for the end-to-end tests: certificates, per-site data, and process bookkeeping.

Every process is started through :class:`Processes`, in its own session (process group), with
its output in a log file; teardown SIGTERMs and then SIGKILLs every group it started, whether
the test passed or not. Everything listens on 127.0.0.1 on ports chosen free at run time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedssl.privacy.identity.certs import CertPaths, create_certs, make_node_key
from fedssl.server.superlink_control import free_port

NUM_SITES = 3
RECORDS_PER_SITE = 150


@dataclass
class Proc:
    """A started command, its log file and its process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        """Exit code; fails the test (with the output) if it takes longer than ``timeout``."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout:.0f} s:\n"
                        f"{self.output()[-4000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (the command and all it started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)


class Processes:
    """Starts ``python -m fedssl.deploy_commands ...`` processes and always stops them."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Proc] = []

    def start(self, name: str, *args: str) -> Proc:
        """Run ``fedssl <args>`` (through the deploy commands' own entry point)."""
        log = self.logs / f"{name}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", FLWR_TELEMETRY_ENABLED="0",
                   FLWR_DISABLE_UPDATE_CHECK="1")
        with open(log, "ab") as fh:
            popen = subprocess.Popen([sys.executable, "-m", "fedssl.deploy_commands", *args],
                                     stdout=fh, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGTERM every group, give them a few seconds, SIGKILL what is left, reap."""
        for proc in self.started:
            if proc.popen.poll() is None:
                proc.kill(signal.SIGTERM)
        deadline = time.monotonic() + 6
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.started:  # the group may hold children even if the leader exited
            proc.kill(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Process manager whose teardown kills every process group it started."""
    logs = tmp_path / "logs"
    logs.mkdir()
    manager = Processes(logs)
    try:
        yield manager
    finally:
        manager.stop_all()


@pytest.fixture(scope="module")
def federation_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Certificates for the sites plus one unlisted key, and per-site data from sklearn digits.

    The unlisted key is an authentication key the server never registered, named
    ``node-1.key`` and next to a copy of node 1's (registered) identity key, so the agent's
    own checks pass and only the SuperLink's node authentication can refuse it.

    Site data are ``.npz`` files in the MedMNIST layout (``train_images`` (N, 8, 8) uint8,
    ``train_labels``); the server holds a separate labelled split for evaluation.
    """
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("federation")
    paths = create_certs(root / "certs", NUM_SITES)
    private, public = make_node_key("intruder")
    rogue = root / "rogue" / "node-1.key"
    rogue.parent.mkdir()
    rogue.write_bytes(private)
    rogue.chmod(0o600)
    rogue.with_suffix(".pub").write_bytes(public)
    rogue.with_name("node-1.identity.pem").write_bytes(paths.identity_key(1).read_bytes())

    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(images))
    files: dict[str, Path] = {"certs": paths.root, "rogue_key": rogue}
    for site in range(NUM_SITES):
        idx = order[site * RECORDS_PER_SITE:(site + 1) * RECORDS_PER_SITE]
        files[f"site{site + 1}"] = root / f"site{site + 1}.npz"
        np.savez(files[f"site{site + 1}"], train_images=images[idx], train_labels=labels[idx])
    held = order[NUM_SITES * RECORDS_PER_SITE:]
    files["server_eval"] = root / "server_eval.npz"
    np.savez(files["server_eval"], train_images=images[held[:300]],
             train_labels=labels[held[:300]], test_images=images[held[300:500]],
             test_labels=labels[held[300:500]])
    return files


@dataclass
class Federation:
    """Helpers to start a server and clients of one test federation."""

    procs: Processes
    files: dict[str, Path]
    tmp: Path
    port: int

    @property
    def address(self) -> str:
        """The SuperLink address the clients use."""
        return f"127.0.0.1:{self.port}"

    @property
    def run_dir(self) -> Path:
        """The server's run directory."""
        return self.tmp / "run"

    def server(self, *extra: str, rounds: int = 2, name: str = "server") -> Proc:
        """``fedssl server`` with TLS + node auth on ``port``, small and fast settings."""
        return self.procs.start(
            name, "server", "--certs", str(self.files["certs"]), "--address", self.address,
            "--run-dir", str(self.run_dir), "--rounds", str(rounds),
            "--data-path", str(self.files["server_eval"]), "--eval-samples", "300",
            "--batch-size", "32", "--target-epsilon", "8", "--delta", "1e-5",
            "--wait-clients-timeout", "90", "--set", "few-label=1",
            "--set", "finetune=1", "--set", "finetune-seeds=1", *extra)

    def client(self, site: int, *extra: str, key: Path | None = None,
               data: Path | None = None) -> Proc:
        """``fedssl client`` for site ``site`` (1-based) with a budget of epsilon 10."""
        certs = CertPaths(self.files["certs"])
        return self.procs.start(
            f"client{site}", "client", "--server", self.address,
            "--certs", str(certs.ca_cert), "--node-key", str(key or certs.node_key(site)),
            "--data", str(data or self.files[f"site{site}"]),
            "--state-dir", str(self.tmp / f"site{site}"), "--client-id", f"site-{site}",
            "--budget-epsilon", "10", "--budget-delta", "1e-5",
            "--runtime-port", str(free_port()), *extra)

    def metrics(self) -> list[dict]:
        """Rows of ``RUN/metrics.jsonl`` written so far (complete lines only: this polls the
        file while the server appends to it, and a read can land mid-append)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().split("\n")[:-1]  # the part after the last newline: torn
        return [json.loads(line) for line in lines if line.strip()]

    def flower_processes(self) -> list[int]:
        """Pids of the server's Flower processes still running: the SuperLink starts
        ``flower-superexec`` (and it the ServerApp) in a session of their own, so a SIGKILL
        of the server's group does not reach them; they exit once they see the SuperLink
        gone. Found by their ``FLWR_HOME`` (the run directory's ``flower``)."""
        mark = f"FLWR_HOME={self.run_dir / 'flower'}".encode()
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if (mark in (entry / "environ").read_bytes().split(b"\0")
                        and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"):
                    found.append(int(entry.name))
        return found

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str,
                 watch: list[Proc]) -> None:
        """Poll ``predicate``; fail with the processes' output on timeout or early exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for proc in watch:
                if proc.popen.poll() is not None:
                    pytest.fail(f"{proc.name} exited ({proc.popen.returncode}) while waiting "
                                f"for {what}:\n{proc.output()[-4000:]}")
            time.sleep(0.5)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n" + "\n".join(
            f"--- {p.name}\n{p.output()[-3000:]}" for p in watch))


@pytest.fixture
def federation(procs: Processes, federation_files: dict[str, Path],
               tmp_path: Path) -> Federation:
    """A fresh federation (own port and run directory) sharing the module's certs and data."""
    return Federation(procs, federation_files, tmp_path, free_port())
