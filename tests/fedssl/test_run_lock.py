"""One process per run directory and per site state directory (issue 22, item 3).

Before, a second ``fedssl simulate --out X --resume`` of a running run rewrote its encoder and
report, duplicated its metrics rows and added a differently noised entry to every ledger; the
same held for two ``fedssl server`` on one ``--run-dir`` and two ``fedssl client`` on one
``--state-dir``. Now each command holds :class:`fedssl.run_lock.RunLock` on its directory and a
second one exits 2 before it reads or writes anything, naming the holder (pid, host, command,
start time). The holder here is a real second process (it takes the lock and waits on its
stdin: event waits, no sleeps); the kernel releases its lock when it exits or is killed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedssl.cli import main
from fedssl.run_layout import RunLayout, SiteLayout
from fedssl.run_lock import RunInUseError, RunLock

HOLDER = """
import sys
from fedssl.run_lock import RunLock
with RunLock(sys.argv[1], sys.argv[2], command=sys.argv[3]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


class Holder:
    """A second process holding ``path``'s lock until told to go (or killed)."""

    def __init__(self, path: Path, what: str = "run directory",
                 command: str = "fedssl simulate --out X") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path), what, command],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the lock is taken
        assert line.strip() == "locked", line

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=60)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for h in started:
        if h.proc.poll() is None:
            h.kill()


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_a_second_process_is_refused_naming_the_holder(tmp_path: Path,
                                                       holders: list[Holder]) -> None:
    run = tmp_path / "run"
    lock_path = RunLayout(run).lock
    holder = Holder(lock_path, command="fedssl simulate --out run --resume")
    holders.append(holder)
    with pytest.raises(RunInUseError) as err:
        RunLock(lock_path, "run directory").acquire()
    text = str(err.value)
    assert f"run directory {run} is in use by pid {holder.pid} on host {socket.gethostname()}" \
        in text
    assert "(fedssl simulate --out run --resume, started 20" in text
    assert err.value.holder is not None and err.value.holder["pid"] == holder.pid
    holder.release()  # released on exit: the lock file goes with it
    assert not lock_path.exists()
    with RunLock(lock_path, "run directory") as lock:
        assert lock.stale is None and lock.record["pid"] == os.getpid()
    assert not lock_path.exists()


def test_a_killed_holder_leaves_a_stale_record_that_is_taken_over(
        tmp_path: Path, holders: list[Holder], capsys: pytest.CaptureFixture[str]) -> None:
    lock_path = SiteLayout(tmp_path / "site").lock
    holder = Holder(lock_path, "state directory", "fedssl client --state-dir site")
    holders.append(holder)
    holder.kill()  # kill -9: no release, the record stays, the kernel drops the lock
    assert lock_path.exists()
    with RunLock(lock_path, "state directory") as lock:
        assert lock.stale is not None and lock.stale["pid"] == holder.pid
        assert lock.record["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"was locked by pid {holder.pid}" in err and "which is gone; taken over" in err


def test_a_directory_the_lock_made_is_removed_with_it(tmp_path: Path) -> None:
    run = tmp_path / "a" / "b"
    with RunLock(RunLayout(run).lock):
        assert run.is_dir()
    assert not (tmp_path / "a").exists()  # nothing else was written: nothing is left
    run.mkdir(parents=True)
    with RunLock(RunLayout(run).lock):
        pass
    assert run.is_dir()  # it was there before


def _interrupted_run(run: Path) -> None:
    """A simulate run directory stopped after round 1 of 2 (config, checkpoint, rows)."""
    import numpy as np

    from fedssl.server.checkpoint import save_checkpoint
    from fedssl.simulations.config import ExperimentConfig

    cfg = ExperimentConfig(dataset="digits", num_clients=2, rounds=2, out=str(run)).validate()
    run.mkdir(parents=True)
    RunLayout(run).config.write_text(cfg.to_toml())
    save_checkpoint(run, 1, {"w": np.zeros(3, np.float32)}, {"seed": 0})
    RunLayout(run).metrics.write_text('{"round": 0, "clients": 0}\n{"round": 1, "clients": 2}\n')


def test_simulate_resume_of_a_run_in_use_is_refused_and_writes_nothing(
        tmp_path: Path, holders: list[Holder], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fedssl.simulations import simulate

    def reached(*_a: object, **_k: object) -> None:
        raise AssertionError("the second resume went on with the run")

    monkeypatch.setattr(simulate, "preflight", reached)
    run = tmp_path / "run"
    _interrupted_run(run)
    holder = Holder(RunLayout(run).lock, command=f"fedssl simulate --out {run}")
    holders.append(holder)
    before = _snapshot(run)
    code = main(["simulate", "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert code == 2
    assert (f"fedssl simulate: error: run directory {run} is in use by pid {holder.pid}"
            in err), err
    assert f"(fedssl simulate --out {run}, started" in err
    assert _snapshot(run) == before


def test_server_and_client_refuse_a_directory_in_use(
        tmp_path: Path, holders: list[Holder], capsys: pytest.CaptureFixture[str]) -> None:
    run, state = tmp_path / "run", tmp_path / "site"
    server = Holder(RunLayout(run).lock, command="fedssl server --run-dir run")
    holders.append(server)
    code = main(["server", "--certs", str(tmp_path / "certs"), "--run-dir", str(run),
                 "--resume"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"fedssl server: error: run directory {run} is in use by pid {server.pid}" in err
    # --set run-dir=... names the same directory
    code = main(["server", "--certs", str(tmp_path / "certs"), "--set", f"run-dir={run}"])
    assert code == 2 and f"is in use by pid {server.pid}" in capsys.readouterr().err

    client = Holder(SiteLayout(state).lock, "state directory", "fedssl client --state-dir site")
    holders.append(client)
    code = main(["client", "--server", "127.0.0.1:1", "--certs", str(tmp_path / "certs"),
                 "--node-key", str(tmp_path / "node-0.key"), "--data", str(tmp_path / "d.npz"),
                 "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == 2
    assert (f"fedssl client: error: state directory {state} is in use by pid {client.pid}"
            in err), err
    assert sorted(p.name for p in state.iterdir()) == ["fedssl.lock"]


def test_the_lock_is_not_inherited_by_child_processes(tmp_path: Path) -> None:
    """A child process (Ray's, the SuperLink, the SuperNode) does not keep the lock."""
    lock_path = RunLayout(tmp_path).lock
    with RunLock(lock_path) as lock:
        assert lock._fh is not None and not os.get_inheritable(lock._fh.fileno())


@pytest.mark.parametrize("command", ["simulate", "server", "client"])
def test_a_directory_that_cannot_be_one_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    """Issue 22 item 9: a path through a file gave FileExistsError/NotADirectoryError
    tracebacks; now exit 2 naming the file."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = {"simulate": ["simulate", "--out", str(afile / "run")],
            "server": ["server", "--certs", str(tmp_path / "certs"), "--run-dir", str(afile)],
            "client": ["client", "--server", "127.0.0.1:1", "--certs", "ca.crt",
                       "--node-key", "k", "--data", "d.npz", "--state-dir",
                       str(afile / "s")]}[command]
    assert main(argv) == 2
    assert f"{afile} is a file, not a directory" in capsys.readouterr().err
    assert afile.read_text() == "x"


def test_a_directory_that_cannot_be_created_or_written_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22 item 9: ``--out`` on a read-only location gave a PermissionError traceback
    (simulated here: the tests may run as root, who can write anywhere)."""
    from fedssl.run_lock import DirectoryError

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", refuse)
        with pytest.raises(DirectoryError, match=r"cannot be created \(Permission denied\)"):
            RunLock(tmp_path / "new" / "fedssl.lock").acquire()
    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(DirectoryError, match=r"is not writable \(Permission denied\)"):
        RunLock(tmp_path / "fedssl.lock").acquire()
