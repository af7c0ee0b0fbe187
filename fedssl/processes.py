"""Child processes: start, stop (SIGTERM, then SIGKILL after a grace period), wait for exit,
list descendants. One implementation for ``fedssl server`` (the SuperLink), ``fedssl client``
(the SuperNode) and ``fedssl simulate`` (Ray's processes after a stop).

- :func:`start_process` starts a child, in this process's group (the default: Ctrl-C at the
  terminal reaches both) or in a group of its own (``new_group=True``: a signal to this
  process's group does not reach it).
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

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any


def start_process(cmd: Sequence[str], *, new_group: bool = False,
                  **popen: Any) -> subprocess.Popen[Any]:
    """Start ``cmd`` (``subprocess.Popen`` keyword arguments in ``popen``): in this process's
    group unless ``new_group``, where it leads a process group of its own."""
    return subprocess.Popen(list(cmd), process_group=0 if new_group else None, **popen)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM ``proc``, wait up to ``timeout`` seconds, then SIGKILL it (and wait up to
    ``timeout`` seconds again). Nothing happens to a process that has already exited."""
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
    children. Returns the pids still running when it gave up (empty when all exited)."""
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
