"""Event-driven message dispatch for Flower's simulation engine (Flower 1.41, in-memory state).

What and why: on Flower's simulation engine a message waits twice on fixed 0.1 s polls: the
engine's dispatcher (``vce_api.add_messages_to_queue``) looks for new messages every 0.1 s,
asking the link state once *per node* (each ask scans every stored message, so a poll costs
O(nodes x messages in flight): 100k checks at 1000 nodes and 100 messages), and
``InMemoryGrid.send_and_receive`` sleeps 0.1 s between pulls of the replies. A federated round
is one exchange (five with secure aggregation), so the polls add 0.1-0.2 s per exchange, and at
1000 nodes the dispatcher's scans compete with the clients for the CPU.

Here both waits become events: the link state's ``store_message_ins``/``store_message_res``
are wrapped to set a :class:`threading.Event`; the dispatcher wakes on it, scans the stored
messages once for the nodes that have undelivered ones, and hands those out through the
state's own ``get_message_ins`` (which keeps Flower's TTL checks and delivery marks); the
grid wakes on a reply instead of sleeping. Message contents, ordering per node, timeouts and
error replies are Flower's. Anything that is not Flower's in-memory link state or grid is left
untouched (the original functions run).

Pipelining: Flower's Ray backend runs one engine worker thread per actor, and each thread
submits a message only once its actor's previous reply is back, so every actor idles for a
full round trip per message (reply serialised, fetched by the driver, the next message and
the ClientApp loader pickled and shipped: measured 14-15 ms median per message at 100
clients on 2 cores, about 0.7 s of each actor's 8 s round). :class:`PipelinedRayBackend`
gives each actor ``depth`` slots, so the next message already waits in the actor's own
queue when it finishes one (measured at 100 clients: the median idle gap between two
messages fell from 14.6 to 9 ms; what is left is the actor's own Ray task handling). Ray
runs an actor's tasks one at a time in submission order, so a client still runs alone on its
actor; the cost is balance at a round's end (a queued message cannot move to an actor that
fell idle; at most ``depth - 1`` messages per actor). Flower's engine runs its workers in a
default ``ThreadPoolExecutor`` (``min(32, cores + 4)`` threads); slots beyond that get no
thread, which only means fewer messages in flight.
Simulated stragglers sleep inside their actor, so a message queued behind one would be late
through no fault of its own: with stragglers on, the depth is 1 (Flower's behaviour).

Stopping: Flower runs the ServerApp in its own (non-daemon) thread and the engine in the main
thread. When the engine stops early (Ctrl-C or SIGTERM in the driver, or an engine crash), it
sets its stop event and terminates the actors, but nothing tells the ServerApp thread, which
waits out the round timeout and then records the round as done with no updates (and the
interpreter waits for that thread before it exits). Here the dispatcher marks its link state
stopped when the engine's stop event ends it (and :func:`stop_all` marks every tuned grid's
state stopped, for a stop that comes before the dispatcher ran): every call of a tuned grid
then raises :class:`SimulationStoppedError` at once, which ends the ServerApp in the middle of the
round, before the round's checkpoint and metrics row are written, so the round is not counted.

The ClientApp loader: Flower passes its loader (a closure) with every message, and Ray
pickles a closure by value, module lookups included: 42 % of the driver's busy time at 100
clients. Here it is stored once in Ray's object store and each actor process loads it once
(:class:`SharedAppLoader`).

The Flower internals all this needs (the engine's dispatcher and Ray backend, replaced
process-wide while a simulation runs; the link state's and the grid's methods, wrapped per
instance) are patched in one place, :mod:`fedssl.simulations.flower_engine_adapter`, which
refuses to patch any Flower release but the one it was written for.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from queue import Queue
from typing import Any

from flwr.app import Message

from fedssl.simulations import flower_engine_adapter as engine
from fedssl.simulations.flower_engine_adapter import (
    KILL_WAIT_SECONDS,
    PipelinedRayBackend,
    SharedAppLoader,
)

__all__ = ["KILL_WAIT_SECONDS", "PipelinedRayBackend", "SharedAppLoader",
           "SimulationStoppedError", "add_messages_to_queue", "install", "installed",
           "mark_stopped", "send_and_receive", "stop_all", "tune_grid",
           "uninstall"]

#: longest sleep without an event (a safety net; events normally wake the loops at once)
_MAX_WAIT = 0.1
_LOCK = threading.Lock()
#: link states of tuned grids (the simulations in this process), for :func:`stop_all`
_STATES: weakref.WeakSet[Any] = weakref.WeakSet()


class SimulationStoppedError(RuntimeError):
    """The simulation engine stopped while the server still used it (interrupt or crash):
    the round in progress is abandoned and must not be recorded as done."""


def _stopped(state: Any) -> bool:
    return bool(getattr(state, "_fedssl_stopped", False))


def mark_stopped(state: Any) -> None:
    """Mark ``state``'s engine stopped: its grid's calls raise, its waits wake at once."""
    state._fedssl_stopped = True
    for event in _events(state):
        event.set()


def stop_all() -> None:
    """Mark the link state of every tuned grid of this process stopped."""
    for state in list(_STATES):
        mark_stopped(state)


def _check(grid: Any) -> None:
    if _stopped(grid.state):
        raise SimulationStoppedError("the simulation engine stopped (interrupted or crashed); "
                                "the round in progress is abandoned")


def _events(state: Any) -> tuple[threading.Event, threading.Event]:
    """(message stored, reply stored) events of ``state``; wraps its store methods once."""
    with _LOCK:
        events = getattr(state, "_fedssl_events", None)
        if events is None:
            events = (threading.Event(), threading.Event())
            engine.notify_on_store(state, *events)
            state._fedssl_events = events
    return events


def add_messages_to_queue(state: Any, queue: Queue[Message], nodes_mapping: Any,
                          f_stop: threading.Event) -> None:
    """Drop-in for ``vce_api.add_messages_to_queue`` that waits on an event, not a 0.1 s poll.

    Args:
        state: the engine's link state.
        queue: the engine's queue of messages for its workers.
        nodes_mapping: the simulated nodes (node id -> partition).
        f_stop: set when the engine stops.
    """
    if not engine.is_in_memory_state(state):
        engine.FLOWER_DISPATCHER(state, queue, nodes_mapping, f_stop)
        return
    try:
        _dispatch(state, queue, set(nodes_mapping.keys()), f_stop)
    finally:  # the engine is stopping: the server must not wait for replies any more
        mark_stopped(state)


def _dispatch(state: Any, queue: Queue[Message], nodes: set[int],
              f_stop: threading.Event) -> None:
    stored, _ = _events(state)
    while not f_stop.is_set():
        stored.clear()  # before the scan: a message stored during it wakes the next one
        pending = engine.undelivered_per_node(state, nodes)
        for node_id in pending:
            for msg in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(msg)
        if any(count > 1 for count in pending.values()):
            continue  # one message per node per pass, as Flower does; go again at once
        stored.wait(_MAX_WAIT)


def send_and_receive(grid: Any, messages: Iterable[Message], *,
                     timeout: float | None = None) -> Iterator[Message]:
    """``InMemoryGrid.send_and_receive`` that streams: push ``messages`` now; the returned
    iterator yields each reply as it is stored (woken by the store, not a poll) until all are
    in or ``timeout`` passes. Flower's ``Grid.send_and_receive`` promises an iterable of
    replies, and the server's strategy screens and averages them in one pass, so on the
    simulator that work happens while the clients still train, not in the pause between
    rounds (a deployment's grid returns them all at once).

    Args:
        grid: the in-memory grid.
        messages: the messages to push.
        timeout: the most seconds to wait for the replies (None: until all are in).

    Returns:
        An iterator over the replies, as they are stored.

    Raises:
        SimulationStoppedError: if the simulation engine has stopped (also while iterating).
    """
    _, replied = _events(grid.state)
    _check(grid)
    msg_ids = set(grid.push_messages(messages))
    del messages
    end = time.time() + (timeout if timeout is not None else 0.0)

    def replies() -> Iterator[Message]:
        while msg_ids:
            replied.clear()
            _check(grid)
            got = list(grid.pull_messages(msg_ids))
            msg_ids.difference_update(m.metadata.reply_to_message_id for m in got)
            yield from got
            remaining = end - time.time()
            if not msg_ids or (timeout is not None and remaining <= 0):
                _check(grid)  # replies cut short by a stop (errors of killed actors) don't count
                return
            if not got:
                replied.wait(_MAX_WAIT if timeout is None else min(remaining, _MAX_WAIT))

    return replies()


def install(pipeline_depth: int = 2) -> None:
    """Use event-driven dispatch in this process's simulation engine, with ``pipeline_depth``
    messages in flight per actor (1 = Flower's one at a time), until :func:`uninstall`.
    Idempotent."""
    engine.install(add_messages_to_queue, pipeline_depth)


def uninstall() -> None:
    """Give this process's simulation engine Flower's own dispatcher and Ray backend back."""
    engine.uninstall()


@contextlib.contextmanager
def installed(pipeline_depth: int = 2) -> Iterator[None]:
    """:func:`install` while the block runs (one simulation), then :func:`uninstall`."""
    with engine.installed(add_messages_to_queue, pipeline_depth):
        yield


def tune_grid(grid: Any) -> None:
    """Give an in-memory grid an event-driven, streaming ``send_and_receive``
    (:func:`send_and_receive`); all of its calls raise :class:`SimulationStoppedError` once
    the engine stopped (other grids unchanged)."""
    state = engine.grid_state(grid)
    if state is not None:
        _STATES.add(state)
        engine.patch_grid(grid, lambda: _check(grid), send_and_receive)
