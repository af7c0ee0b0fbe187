"""fedssl.processes: the one start/stop/wait helper of the SuperLink, the SuperNode and the
simulation's teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie awaiting its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def test_a_child_started_to_die_with_its_parent_dies_when_the_parent_is_killed() -> None:
    """Issue 22, item 5: ``kill -9`` of ``fedssl client`` orphaned its SuperNode, which went
    on training. A middle process starts a child with ``die_with_parent`` and is SIGKILLed
    (no handler of it runs): the kernel's parent-death signal stops the child. The wait is an
    event poll with a generous bound, not a timing claim."""
    code = ("import sys, time; from fedssl.processes import start_process; "
            f"child = start_process({SLEEP!r}, die_with_parent=True); "
            "print(child.pid, flush=True); time.sleep(120)")
    middle = start_process([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert middle.stdout is not None
    line = middle.stdout.readline().strip()
    assert line.isdigit(), f"the middle process printed {line!r}"
    child = int(line)
    try:
        assert _running(child)
        middle.kill()
        middle.wait(timeout=10)
        deadline = time.monotonic() + 60
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child), "the child outlived its SIGKILLed parent"
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_without_die_with_parent_is_left_running_as_before() -> None:
    """The default is unchanged: a child outlives a parent that is SIGKILLed (which is why
    the SuperNode asks for ``die_with_parent``)."""
    code = ("import sys, time; from fedssl.processes import start_process; "
            f"child = start_process({SLEEP!r}); print(child.pid, flush=True); time.sleep(120)")
    middle = start_process([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert middle.stdout is not None
    child = int(middle.stdout.readline().strip())
    try:
        middle.kill()
        middle.wait(timeout=10)
        assert _running(child)
    finally:
        os.kill(child, signal.SIGKILL)
