"""Adapter for the Flower internals of the simulation engine (written for Flower 1.41.0).

:mod:`fedssl.simulations.dispatch` makes Flower's simulation engine event-driven and
pipelined (what and why: its docstring). Flower has no public hook for either, so this
module patches its internals, and nothing else does:

Process-wide, between :func:`install` and :func:`uninstall` (or inside :func:`installed`):

- ``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue`` (the engine's
  dispatcher thread, which polls the link state every 0.1 s, once per node) is replaced by a
  function that runs fedssl's dispatcher for Flower's in-memory link state and Flower's own
  for any other state.
- ``flwr.server.superlink.fleet.vce.backend.raybackend.RayBackend`` is replaced by
  :class:`PipelinedRayBackend` (``vce_api.start_vce`` imports the class from that module
  when it builds the backend). The subclass reads and rewrites private state of Flower's
  backend and actor pool: ``backend.pool``, ``pool.pool`` (the idle actors),
  ``pool._future_to_actor`` (the busy ones) and ``backend.app_fn`` (the ClientApp loader).

Per instance (these objects live as long as one simulation):

- ``InMemoryLinkState.store_message_ins`` / ``store_message_res`` are wrapped to set an
  event after Flower stores a message or a reply (:func:`notify_on_store`), and the link
  state's private ``lock``, ``message_ins_store`` and message metadata (``delivered_at``,
  ``dst_node_id``) are read to find the nodes with undelivered messages
  (:func:`undelivered_per_node`); messages are still handed out by Flower's own
  ``get_message_ins``.
- ``InMemoryGrid.push_messages`` / ``pull_messages`` / ``get_node_ids`` are wrapped with a
  check, and ``send_and_receive`` replaced (:func:`patch_grid`);
  ``grid.state`` (the grid's link state) is read.

Each entry point first checks that the installed Flower is the release this adapter was
written for (:func:`check`): another release raises
:class:`~fedssl.flower_version.FlowerVersionError` naming both versions, before anything is
patched.
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import suppress
from queue import Queue
from typing import Any

from flwr.app import Message

from fedssl.flower_version import flower_internals, require_flower

#: the Flower release whose internals this module was written against
FLOWER_VERSION = "1.41.0"
CONCERN = ("the simulation engine (vce_api.add_messages_to_queue, raybackend.RayBackend, "
           "InMemoryLinkState and InMemoryGrid methods)")

with flower_internals(FLOWER_VERSION, concern=CONCERN):  # moved in another release: clear error
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid
#: Flower's own, as imported (put back by :func:`uninstall`)
FLOWER_DISPATCHER = vce_api.add_messages_to_queue
FLOWER_RAY_BACKEND = raybackend.RayBackend
#: seconds a stop waits for the replies of the busy actors it killed to turn into errors
KILL_WAIT_SECONDS = 10.0
#: signature of the engine's dispatcher: (link state, queue, nodes mapping, stop event)
Dispatcher = Callable[[Any, "Queue[Message]", Any, threading.Event], None]


def check() -> None:
    """Raise :class:`~fedssl.flower_version.FlowerVersionError` unless Flower is 1.41.0."""
    require_flower(FLOWER_VERSION, concern=CONCERN)


# --- the link state -------------------------------------------------------------------------


def is_in_memory_state(state: Any) -> bool:
    """Whether ``state`` is Flower's in-memory link state (the one this adapter knows)."""
    return isinstance(state, InMemoryLinkState)


def notify_on_store(state: InMemoryLinkState, stored: threading.Event,
                    replied: threading.Event) -> None:
    """Wrap ``state``'s ``store_message_ins`` / ``store_message_res`` to set ``stored`` /
    ``replied`` after each call (once per state: the caller keeps the events on it).

    Args:
        state: Flower's in-memory link state.
        stored: set after each stored message.
        replied: set after each stored reply.

    Raises:
        FlowerVersionError: if the installed Flower is not the one the adapter was written for.
    """
    check()
    for name, event in (("store_message_ins", stored), ("store_message_res", replied)):
        original = getattr(state, name)

        def store(message: Message, _original=original, _event=event) -> Any:
            result = _original(message)
            _event.set()
            return result

        setattr(state, name, store)


def undelivered_per_node(state: InMemoryLinkState, nodes: set[int]) -> dict[int, int]:
    """``node id -> number of stored, undelivered messages`` for the nodes in ``nodes``
    (one scan of ``state``'s messages, under its lock).

    Args:
        state: Flower's in-memory link state.
        nodes: the node ids counted.
    """
    pending: dict[int, int] = {}
    with state.lock:
        for msg in state.message_ins_store.values():
            if msg.metadata.delivered_at == "" and msg.metadata.dst_node_id in nodes:
                pending[msg.metadata.dst_node_id] = pending.get(msg.metadata.dst_node_id, 0) + 1
    return pending


# --- the grid -------------------------------------------------------------------------------


def grid_state(grid: Any) -> InMemoryLinkState | None:
    """The in-memory link state of Flower's in-memory grid ``grid`` (None for other grids)."""
    if isinstance(grid, InMemoryGrid) and isinstance(grid.state, InMemoryLinkState):
        return grid.state
    return None


def patch_grid(grid: InMemoryGrid, guard: Callable[[], None],
               send_and_receive: Callable[..., Any]) -> None:
    """Make ``grid``'s ``push_messages``, ``pull_messages`` and ``get_node_ids`` call
    ``guard()`` first, and bind ``send_and_receive`` (a function taking the grid first) as
    its method of that name.

    Args:
        grid: Flower's in-memory grid.
        guard: called before each of those calls (it may raise).
        send_and_receive: the grid's new ``send_and_receive``.

    Raises:
        FlowerVersionError: if the installed Flower is not the one the adapter was written for.
    """
    check()
    for name in ("push_messages", "pull_messages", "get_node_ids"):
        original = getattr(grid, name)

        def call(*args: Any, _original=original, **kwargs: Any) -> Any:
            guard()
            return _original(*args, **kwargs)

        setattr(grid, name, call)
    grid.send_and_receive = types.MethodType(send_and_receive, grid)  # type: ignore[method-assign]


# --- the Ray backend ------------------------------------------------------------------------

#: loaders already fetched by this (actor) process, by object id
_LOADERS: dict[str, Any] = {}


class SharedAppLoader:
    """A ClientApp loader that crosses to the actors as an object id, not as pickled code.

    Calling it fetches the loader from Ray's object store the first time in a process (then
    from ``_LOADERS``) and calls it, so it is a drop-in for the loader Flower passes.
    """

    def __init__(self, loader: Any) -> None:
        import ray

        self.ref = ray.put(loader)

    def __call__(self) -> Any:
        key = self.ref.hex()
        loader = _LOADERS.get(key)
        if loader is None:
            import ray

            loader = _LOADERS[key] = ray.get(self.ref)
        return loader()


class PipelinedRayBackend(FLOWER_RAY_BACKEND):  # type: ignore[misc,valid-type]
    """Flower's Ray backend with ``depth`` message slots per actor (see
    :mod:`fedssl.simulations.dispatch`).

    The engine starts one worker thread per slot (``num_workers``); the pool hands out a slot
    per message and takes it back with the reply, so an actor never holds more than ``depth``
    messages. With ``depth = 1`` each actor runs one message at a time, as in Flower's.
    """

    depth: int = 1

    def build(self, app_fn: Any) -> None:
        super().build(app_fn)
        assert self.pool is not None  # built by the parent or it raised
        self.app_fn = SharedAppLoader(app_fn)
        self._actors = list(self.pool.pool)
        # actor order repeated: the first submits spread over all actors, later ones queue
        self.pool.pool = self._actors * self.depth
        self._slots = len(self.pool.pool)

    @property
    def num_workers(self) -> int:
        """Engine worker threads: one per slot."""
        return getattr(self, "_slots", 0) if self.pool else 0

    def terminate(self) -> None:
        """Terminate each actor once (the pool holds it once per free slot).

        An actor still busy with a message (the engine was stopped mid-round: a signal, a
        crash) is killed first and its reply awaited as the error it now is: an engine
        worker thread blocked in ``ray.get`` on that reply would otherwise stay blocked past
        ``ray.shutdown`` (Flower's terminate only queues ``terminate.remote()`` behind the
        busy work), and the process could not stop until the actor's message was done."""
        import ray

        if self.pool is not None:
            busy = dict(self.pool._future_to_actor)
            if busy and ray.is_initialized():
                for actor in {id(a): a for a in busy.values()}.values():
                    with suppress(Exception):  # already dead, or Ray half-way down
                        ray.kill(actor, no_restart=True)
                with suppress(Exception):
                    ray.wait(list(busy), num_returns=len(busy), timeout=KILL_WAIT_SECONDS)
        if self.pool is not None and hasattr(self, "_actors"):
            self.pool.pool = list(self._actors)
        super().terminate()


# --- process-wide patches -------------------------------------------------------------------


def install(dispatcher: Dispatcher, pipeline_depth: int) -> None:
    """Run ``dispatcher(state, queue, nodes_mapping, f_stop)`` as the engine's dispatcher for
    Flower's in-memory link state (Flower's own for any other), and :class:`PipelinedRayBackend`
    with ``pipeline_depth`` slots per actor as its Ray backend, in this whole process until
    :func:`uninstall`. Idempotent (a second call replaces the dispatcher and the depth).

    Args:
        dispatcher: the dispatcher for the in-memory link state.
        pipeline_depth: the messages each Ray actor holds at once (at least 1).

    Raises:
        FlowerVersionError: if the installed Flower is not the one the adapter was written for.
    """
    check()

    def add_messages_to_queue(state: Any, queue: Queue[Message], nodes_mapping: Any,
                              f_stop: threading.Event) -> None:
        if is_in_memory_state(state):
            dispatcher(state, queue, nodes_mapping, f_stop)
        else:
            FLOWER_DISPATCHER(state, queue, nodes_mapping, f_stop)

    add_messages_to_queue.fedssl_dispatcher = dispatcher  # type: ignore[attr-defined]
    vce_api.add_messages_to_queue = add_messages_to_queue
    PipelinedRayBackend.depth = max(1, int(pipeline_depth))
    raybackend.RayBackend = PipelinedRayBackend


def uninstall() -> None:
    """Put Flower's own dispatcher and Ray backend back (a no-op if not installed)."""
    vce_api.add_messages_to_queue = FLOWER_DISPATCHER
    raybackend.RayBackend = FLOWER_RAY_BACKEND


def is_installed() -> bool:
    """Whether the process-wide patches are in place."""
    return raybackend.RayBackend is PipelinedRayBackend and hasattr(
        vce_api.add_messages_to_queue, "fedssl_dispatcher")


@contextlib.contextmanager
def installed(dispatcher: Dispatcher, pipeline_depth: int) -> Iterator[None]:
    """:func:`install` while the block runs, then :func:`uninstall`.

    Args:
        dispatcher: the dispatcher for the in-memory link state.
        pipeline_depth: the messages each Ray actor holds at once.
    """
    install(dispatcher, pipeline_depth)
    try:
        yield
    finally:
        uninstall()
