"""Child processes: start, stop (SIGTERM, then SIGKILL after a grace period), wait for exit,
list descendants. One implementation for ``fedssl server`` (the SuperLink), ``fedssl client``
(the SuperNode) and ``fedssl simulate`` (Ray's processes after a stop).

- :func:`start_process` starts a child, in this process's group (the default: Ctrl-C at the
  terminal reaches both) or in a group of its own (``new_group=True``: a signal to this
  process's group does not reach it); with ``die_with_parent=True`` (Linux) the kernel sends
  the child SIGTERM when this process dies, even by SIGKILL, which no handler of ours sees
  (``prctl(PR_SET_PDEATHSIG)``, set in the child before it runs the command).
- :func:`stop_process` sends SIGTERM, waits ``timeout`` seconds, then SIGKILL and waits again.
- :func:`descendants` lists the live descendants of a process (Linux ``/proc``), with their
  start times so a reused pid is not mistaken for one of them; :func:`await_exit` waits until
  a set of them has exited, SIGKILLing those left after a time-out.

A leaf module: it imports nothing of fedssl, so every package may use it
(``docs/architecture.md``).

>>> import sys
>>> proc = start_process([sys.executable, "-c", "import time; time.sleep(60)"])
>>> proc.pid in descendants(os.getpid())
True
>>> stop_process(proc, timeout=5.0)
>>> proc.returncode == -signal.SIGTERM
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

#: ``prctl`` option: the signal the calling process gets when its parent dies (linux/prctl.h)
PR_SET_PDEATHSIG = 1


def _parent_death_signal(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` that asks the kernel for ``sig`` when the parent dies.

    Linux sends it when the *thread* that forked the child exits (not only the process):
    start such children from a thread that lives as long as they should (the main thread).
    libc is looked up here, in the parent: the function the child runs between fork and exec
    only calls it (no import, no allocation that could meet a lock another thread held).
    The parent may die between the fork and the ``prctl``: then the child is already
    re-parented and no signal would come, so it checks and kills itself."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            os._exit(126)  # no guarantee: never run the command without it
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def start_process(cmd: Sequence[str], *, new_group: bool = False,
                  die_with_parent: bool = False, **popen: Any) -> subprocess.Popen[Any]:
    """Start ``cmd`` (``subprocess.Popen`` keyword arguments in ``popen``): in this process's
    group unless ``new_group``, where it leads a process group of its own. With
    ``die_with_parent`` (Linux only; elsewhere a :class:`RuntimeError`) the child gets SIGTERM
    when this process dies, however it dies (see :func:`_parent_death_signal` for the thread
    caveat).

    Args:
        cmd: the command line.
        new_group: the child leads a process group of its own.
        die_with_parent: the child gets SIGTERM when this process dies.
        **popen: further ``subprocess.Popen`` keyword arguments.

    Returns:
        The started process.

    Raises:
        RuntimeError: for ``die_with_parent`` on a system other than Linux.
    """
    if die_with_parent:
        if not sys.platform.startswith("linux"):
            raise RuntimeError("die_with_parent needs Linux's prctl(PR_SET_PDEATHSIG)")
        popen["preexec_fn"] = _parent_death_signal(signal.SIGTERM)
    return subprocess.Popen(list(cmd), process_group=0 if new_group else None, **popen)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM ``proc``, wait up to ``timeout`` seconds, then SIGKILL it (and wait up to
    ``timeout`` seconds again). Nothing happens to a process that has already exited.

    Args:
        proc: the process.
        timeout: the seconds to wait after each signal.
    """
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def proc_table() -> dict[int, tuple[int, str, int]]:
    """``pid -> (parent pid, state, start time)`` of every process (Linux ``/proc``; empty
    where there is none)."""
    table: dict[int, tuple[int, str, int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        table[int(entry.name)] = (int(fields[1]), fields[0], int(fields[19]))
    return table


def descendants(pid: int) -> dict[int, int]:
    """Live descendants of ``pid`` as ``pid -> start time`` (to tell a reused pid apart)."""
    table = proc_table()
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, state, start) in table.items():
            if ppid == parent and child not in found and state != "Z":
                found[child] = start
                todo.append(child)
    return found


def await_exit(processes: dict[int, int], timeout: float, kill_wait: float) -> list[int]:
    """Wait until ``processes`` (``pid -> start time``, as :func:`descendants` gives) and this
    process's other descendants have exited; SIGKILL those left after ``timeout`` seconds,
    give up ``kill_wait`` seconds later, and reap the ones that ended as this process's
    children. Returns the pids still running when it gave up (empty when all exited).

    Args:
        processes: ``pid -> start time`` of the processes to wait for.
        timeout: the seconds before SIGKILL.
        kill_wait: the seconds to wait after SIGKILL.
    """
    deadline = time.monotonic() + timeout
    seen = dict(processes)
    left: list[int] = []
    while True:
        seen.update(descendants(os.getpid()))
        table = proc_table()
        left = [p for p, start in seen.items()
                if p in table and table[p][2] == start and table[p][1] != "Z"]
        if not left:
            break
        if time.monotonic() > deadline + kill_wait:
            break
        if time.monotonic() > deadline:
            for p in left:
                with suppress(OSError):
                    os.kill(p, signal.SIGKILL)
        time.sleep(0.1)
    for p in seen:  # zombies reparented to this process
        with suppress(OSError):
            os.waitpid(p, os.WNOHANG)
    return left
