"""``fedssl simulate --ray-address`` on a two-node Ray cluster (issue 15, item 6).

The test starts a head node (``ray start --head``) and one worker node (``ray start
--address``) on 127.0.0.1, one CPU each, both with this venv's ``ray`` (so the worker node's
Python imports the same fedssl), runs a tiny two-client simulation on the cluster and checks
that it completes with a report, that the driver saw both nodes (its start-up line), and that
a ClientApp actor really ran under each node's raylet (the actors' process ancestry, read from
``/proc`` while the run goes on).

Both nodes run with ``--block`` in sessions of their own, with their own ``--temp-dir``: Ray
writes ``ray_current_cluster`` there instead of ``/tmp/ray``, where a plain ``ray.init()``
of any other process on this machine would find it and try to join this cluster. Teardown
signals the two process groups (never ``ray stop``, which stops every Ray of the machine's
user) and checks that nothing of the cluster is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedssl.server.superlink_control import free_port

RAY = Path(sys.executable).with_name("ray")
FEDSSL = [sys.executable, "-m", "fedssl.cli", "simulate"]
TINY = ["--num-clients", "2", "--num-samples", "300", "--eval-samples", "100", "--no-dp",
        "--few-label", "", "--finetune", "", "--partitioner", "iid", "--rounds", "2",
        "--batch-size", "32"]
#: hang detectors on a loaded 2-core machine, not timings
START_SECONDS, RUN_SECONDS = 120, 600


def _proc(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, process group, command line) of ``pid``; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[2]), cmdline


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _group_members(pgid: int) -> list[str]:
    """Live processes of process group ``pgid`` (``"pid command"``)."""
    out = []
    for pid in _pids():
        info = _proc(pid)
        if info is not None and info[1] == pgid and not Path(f"/proc/{pid}/stat").read_text(
        ).split(") ")[1].startswith("Z"):
            out.append(f"{pid} {info[2][:80]}")
    return out


@dataclass
class Cluster:
    address: str
    nodes: dict[str, subprocess.Popen]  # "head"/"worker" -> its `ray start --block`
    logs: Path

    def node_of(self, pid: int) -> str | None:
        """Which node's `ray start` process ``pid`` descends from."""
        by_pid = {p.pid: name for name, p in self.nodes.items()}
        seen = set()
        while pid > 1 and pid not in seen:
            seen.add(pid)
            if pid in by_pid:
                return by_pid[pid]
            info = _proc(pid)
            if info is None:
                return None
            pid = info[0]
        return None

    def actors(self) -> dict[int, str | None]:
        """``pid -> node`` of the live ClientApp actors (Ray titles them ``ray::<Class>``)."""
        found = {}
        for pid in _pids():
            info = _proc(pid)
            if info is not None and info[2].startswith("ray::ClientAppActor"):
                found[pid] = self.node_of(pid)
        return found

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.logs.glob("*.log")))


def _wait_file(path: Path, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"ray start did not come up ({path}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A head and a worker node, one CPU each, on 127.0.0.1; both stopped at teardown."""
    temp = Path(tempfile.mkdtemp(prefix="fr", dir="/tmp"))  # Ray's socket paths stay short
    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_port()
    nodes: dict[str, subprocess.Popen] = {}

    def start(name: str, *args: str) -> subprocess.Popen:
        with open(logs / f"{name}.log", "wb") as fh:
            nodes[name] = subprocess.Popen(
                [str(RAY), "start", "--block", "--disable-usage-stats", "--num-cpus", "1",
                 "--object-store-memory", str(100 * 2**20), "--temp-dir", str(temp / name),
                 *args], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        return nodes[name]

    try:
        head = start("head", "--head", "--port", str(port), "--include-dashboard", "false",
                     # as docs/simulation.md advises for a cluster (4 MiB direct calls)
                     "--system-config", json.dumps({"max_direct_call_object_size": 4 * 2**20}))
        _wait_file(temp / "head" / "ray_current_cluster", head, logs / "head.log")
        worker = start("worker", "--address", f"127.0.0.1:{port}")
        _wait_file(temp / "worker" / "ray_current_cluster", worker, logs / "worker.log")
        yield Cluster(f"127.0.0.1:{port}", nodes, logs)
    finally:
        for proc in nodes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30  # the raylets stop their workers, then exit
        left = {name: _group_members(proc.pid) for name, proc in nodes.items()}
        while any(left.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
            for proc in nodes.values():
                proc.poll()  # reap the leader
            left = {name: _group_members(proc.pid) for name, proc in nodes.items()}
        # what SIGTERM left (a loaded machine may need longer than 30 s) is killed; the
        # check is that nothing of the cluster outlives the teardown, not how fast it went
        for proc in nodes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        deadline = time.monotonic() + 60
        left = {name: _group_members(proc.pid) for name, proc in nodes.items()}
        while any(left.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
            left = {name: _group_members(proc.pid) for name, proc in nodes.items()}
        shutil.rmtree(temp, ignore_errors=True)
        assert not any(left.values()), f"processes of the cluster outlived SIGKILL: {left}"


@pytest.mark.slow
def test_simulate_runs_on_a_two_node_ray_cluster(tmp_path: Path, cluster: Cluster) -> None:
    out = tmp_path / "run"
    log = tmp_path / "simulate.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*FEDSSL, *TINY, "--ray-address", cluster.address,
                                 "--out", str(out)], stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    placed: dict[int, str | None] = {}
    deadline = time.monotonic() + RUN_SECONDS
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"fedssl simulate did not finish within {RUN_SECONDS} s:\n"
                            f"{log.read_text()[-4000:]}\n{cluster.output()}")
            placed.update(cluster.actors())
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, f"{text[-4000:]}\n{cluster.output()}"
    report = json.loads((out / "report.json").read_text())
    assert report["rounds"] == 2 and report["clients"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == 2 and not r["failed"] for r in rows[1:])
    assert f"joining the Ray cluster at {cluster.address}" in text
    assert "2 node(s) for clients" in text and "(2 worker(s))" in text
    # one client actor per node: the worker node ran clients, not only the head
    assert sorted(n for n in placed.values() if n) == ["head", "worker"], placed
