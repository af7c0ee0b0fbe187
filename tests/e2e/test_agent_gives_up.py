"""Issue 22, item 2, end to end: a site agent whose server goes away between runs must not go
silently dead. After a run ends and the server stops, Flower's SuperNode retries for
``--join-timeout`` seconds and logs "Giving up reconnection"; before the fix ``fedssl client``
then neither exited nor reconnected (a server started later saw none of its sites). The
documented behaviour (docs/deployment.md): the agent exits with code 3 and says why once the
server has been unreachable for ``--join-timeout`` seconds (0: it keeps retrying for ever).

A real SuperLink and a real agent on 127.0.0.1; the waits poll for an event with a generous
bound (hang detectors), nothing asserts on elapsed time.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

RUN_LIMIT = 600
#: the agent's --join-timeout: short, so that the test is
JOIN_TIMEOUT = "10"
FIXED_NOISE = ("--target-epsilon", "0", "--noise-multiplier", "1.0")


def test_an_agent_whose_server_is_gone_after_a_run_exits_3_with_a_message(federation) -> None:
    server = federation.server(*FIXED_NOISE, "--no-secagg", "--min-clients", "1", rounds=1)
    federation.wait_for(lambda: "registered" in server.output(), 180, "node registration",
                        [server])
    agent = federation.client(1, "--join-timeout", JOIN_TIMEOUT)
    assert server.wait(timeout=RUN_LIMIT) == 0, server.output()[-4000:]  # run done, link down
    code = agent.wait(timeout=RUN_LIMIT)  # before the fix: never returned
    out = agent.output()
    assert code == 3, out[-4000:]
    assert any("error: the server could not be reached" in line
               and f"(--join-timeout {JOIN_TIMEOUT} s)" in line
               for line in out.splitlines()), out[-4000:]
