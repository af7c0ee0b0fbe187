"""Issue 22, item 5, end to end: a real SuperLink (``fedssl server``) and a real site agent
(``fedssl client``) on 127.0.0.1. ``kill -9`` of a site's agent alone stops its SuperNode (and
Flower's SuperExec and ClientApps under it): before the fix the SuperNode went on, connected
and training, and restarting the site failed with Flower's "address already in use".

The waits poll for an event with a generous bound (hang detectors for a loaded CI machine),
never a fixed sleep, and nothing asserts on elapsed time.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import pytest

from fedssl.processes import descendants
from fedssl.server.superlink_control import free_port

pytestmark = pytest.mark.slow

#: hang detectors: a whole run, and one event (generous: CI has 2 shared cores)
RUN_LIMIT, EVENT_LIMIT = 600, 180
CONNECTED = "connected and authenticated"


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def _site_processes(state: Path) -> list[int]:
    """Live processes whose Flower home is this site's (the SuperNode, its SuperExec and
    ClientApps inherit ``FLWR_HOME``)."""
    mark = f"FLWR_HOME={state / 'flower'}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if (mark in (entry / "environ").read_bytes().split(b"\0")
                    and stat[stat.rindex(")") + 2:].split()[0] != "Z"):
                found.append(int(entry.name))
    return found


def _poll(predicate, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_kill_9_of_a_site_agent_stops_its_supernode_and_the_site_can_restart(
        federation) -> None:
    # a SuperLink that waits for its 3 sites: no run starts, the SuperNode just stays joined
    server = federation.server("--no-dp", rounds=1)
    federation.wait_for(lambda: "registered" in server.output(), EVENT_LIMIT,
                        "node registration", [server])
    port = str(free_port())  # the same runtime port for both agents
    agent = federation.client(1, "--runtime-port", port)
    federation.wait_for(lambda: CONNECTED in agent.output(), EVENT_LIMIT, "site 1 joining",
                        [server, agent])
    supernodes = [p for p in descendants(agent.popen.pid)
                  if "flower-supernode" in _cmdline(p)]
    assert len(supernodes) == 1, [(p, _cmdline(p)) for p in descendants(agent.popen.pid)]
    state = federation.tmp / "site1"
    assert supernodes[0] in _site_processes(state)

    agent.popen.send_signal(signal.SIGKILL)  # the agent alone: no handler of it runs
    agent.popen.wait(timeout=30)
    assert _poll(lambda: not _site_processes(state), EVENT_LIMIT), (
        "the site's SuperNode (or its SuperExec/ClientApps) outlived its killed agent: "
        f"{[(p, _cmdline(p)) for p in _site_processes(state)]}")

    joined = agent.output().count(CONNECTED)
    again = federation.client(1, "--runtime-port", port)  # same site, port and state dir
    federation.wait_for(lambda: again.output().count(CONNECTED) > joined, EVENT_LIMIT,
                        "site 1 joining again", [server, again])
    assert "address already in use" not in again.output().lower()
