"""fedssl.processes: the one start/stop/wait helper of the SuperLink, the SuperNode and the
simulation's teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from fedssl.processes import await_exit, descendants, start_process, stop_process

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]
#: ignores SIGTERM (prints once the handler is set, so the test does not race it)
STUBBORN = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
            "signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"]


def test_a_child_stays_in_this_group_unless_asked() -> None:
    same = start_process(SLEEP)
    own = start_process(SLEEP, new_group=True)
    try:
        assert os.getpgid(same.pid) == os.getpgid(0)
        assert os.getpgid(own.pid) == own.pid
    finally:
        stop_process(same, timeout=5.0)
        stop_process(own, timeout=5.0)
    assert same.returncode == own.returncode == -signal.SIGTERM


def test_stop_sends_sigterm_then_sigkill_after_the_grace_period() -> None:
    proc = start_process(STUBBORN, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    stop_process(proc, timeout=1.0)
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - start >= 1.0
    stop_process(proc, timeout=1.0)  # already gone: nothing happens


def test_descendants_include_grandchildren_and_await_exit_kills_the_rest() -> None:
    code = ("import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            "print('ready', flush=True); time.sleep(120)")
    proc = start_process([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    found = descendants(os.getpid())
    assert proc.pid in found
    grandchildren = list(descendants(proc.pid))
    assert len(grandchildren) == 1 and grandchildren[0] in found
    left = await_exit({p: found[p] for p in (proc.pid, *grandchildren)}, timeout=0.5,
                      kill_wait=20.0)
    assert left == []
    proc.wait(timeout=5)  # (await_exit already reaped it: no status left to read)
    assert grandchildren[0] not in descendants(os.getpid())
