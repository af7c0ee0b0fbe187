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

Then every round: :func:`await_round_nodes` gives the nodes connected when the round starts,
once at least :func:`min_round_nodes` are (the operator's minimum, secure aggregation's
smallest group), waiting for them at most the round timeout and raising
:class:`TooFewNodesError` after it (a deployment's site that died must neither hang the run,
as Flower's own node sampler did, nor make rounds wait for it).
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
    test's fake one).

    Args:
        grid: Flower's grid (``get_node_ids``).
        expected: the number of nodes expected (<= 0: unknown).
        timeout: the most seconds to wait.
        settle: with an unknown number, the seconds the count must hold.
        clock: the time source.
        sleep: sleeps for the given seconds.

    Returns:
        The registered node ids, sorted.
    """
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


#: the fewest sites secure aggregation can run a round with (SecAgg+ needs a graph of two)
MIN_SECAGG_NODES = 2


def min_round_nodes(secagg: bool, min_clients: int = 0, dp_min: int = 0) -> int:
    """The fewest connected nodes a round starts with.

    Args:
        secagg: secure aggregation is on: its smallest group (:data:`MIN_SECAGG_NODES`).
        min_clients: the operator's floor (``fedssl server --min-clients``; 0: none).
        dp_min: with distributed DP, the noise shares every release needs.

    Returns:
        The largest of these, at least 1. (The strategy caps it at the number of nodes the
        run has seen: a federation smaller than this fails its rounds as before, it does not
        wait.)
    """
    return max(1, min_clients, dp_min, MIN_SECAGG_NODES if secagg else 0)


class TooFewNodesError(RuntimeError):
    """Fewer nodes than a round needs stayed connected for the whole wait: the run stops
    (its completed rounds are checkpointed; ``--resume`` continues it)."""


def await_round_nodes(grid: Any, minimum: int, timeout: float,
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> list[int]:
    """The ids of the nodes connected now (in the grid's order, which Flower's sampling
    draws from), as soon as at least ``minimum`` are; while fewer are, the grid is polled for
    at most ``timeout`` seconds (a site restarting reconnects in that time).

    Unlike Flower's ``sample_nodes``, which waits for its minimum without a bound (one dead
    site then hangs every later round), the wait ends: :class:`TooFewNodesError` when
    ``minimum`` nodes were not connected within ``timeout`` seconds. ``clock``/``sleep`` are
    the time source (a test's fake one).

    Args:
        grid: Flower's grid (``get_node_ids``).
        minimum: the fewest connected nodes the round needs.
        timeout: the most seconds to wait for them.
        clock: the time source.
        sleep: sleeps for the given seconds.

    Returns:
        The connected node ids, in the grid's order.

    Raises:
        TooFewNodesError: if fewer than ``minimum`` were connected within ``timeout`` seconds.
    """
    nodes = list(grid.get_node_ids())
    if len(nodes) >= minimum:
        return nodes
    log.warning("%d node(s) connected, fewer than the %d a round needs: waiting up to %.0f s "
                "for more", len(nodes), minimum, timeout)
    end = clock() + timeout
    while clock() < end:
        sleep(POLL_SECONDS * 10)
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum:
            log.warning("%d node(s) connected: the round starts", len(nodes))
            return nodes
    raise TooFewNodesError(f"only {len(nodes)} node(s) connected for {timeout:.0f} s, fewer "
                           f"than the {minimum} a round needs")
