"""The federation's nodes as the ServerApp first sees them: wait until they are there.

What and why: the ServerApp counts the nodes once, at start. The count sets the clients per
round, the client-level DP sampling rate (its accounting's ``q``), the secure-aggregation
group and, under ``flwr run .``, how many simulated identities are made. But Flower's
simulation runtime (``run_simulation``, and the ``flwr-simulation`` process behind
``flwr run .``) starts the ServerApp thread before its engine registers the simulated nodes,
so a ServerApp that looks at once can see none or only some. :func:`await_nodes` waits:

- for ``expected`` nodes when the driver knows how many there are (``fedssl simulate`` sends
  ``num-clients``; ``fedssl server`` starts the run only once its sites are online);
- otherwise (``flwr run .``) for the first node and then until the count has not changed for
  ``settle`` seconds (the engine registers all its nodes in one loop).

Either wait ends after ``timeout`` seconds with the nodes there are then, and says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fedssl.server")

#: how long the node count must stay unchanged when the number of nodes is not known
SETTLE_SECONDS = 1.0
#: how often the grid is asked
POLL_SECONDS = 0.01


def await_nodes(grid: Any, expected: int, timeout: float, settle: float = SETTLE_SECONDS,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> list[int]:
    """The grid's node ids (sorted) once ``expected`` are registered (``expected`` <= 0: once
    at least one is and the count held for ``settle`` seconds), or those there are after
    ``timeout`` seconds (logged as a warning). ``clock``/``sleep`` are the time source (a
    test's fake one)."""
    end = clock() + timeout
    nodes = sorted(grid.get_node_ids())
    stable_since = clock()
    while clock() < end:
        if expected > 0 and len(nodes) >= expected:
            return nodes
        if expected <= 0 and nodes and clock() - stable_since >= settle:
            return nodes
        sleep(POLL_SECONDS)
        now = sorted(grid.get_node_ids())
        if now != nodes:
            nodes, stable_since = now, clock()
    if (expected > 0 and len(nodes) < expected) or not nodes:
        log.warning("after %.0f s, %d of %s node(s) are registered; going on with them",
                    timeout, len(nodes), expected if expected > 0 else "an unknown number of")
    return nodes
