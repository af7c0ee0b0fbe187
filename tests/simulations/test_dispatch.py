"""The pipelined Ray backend: two message slots per actor, each message still run alone and
answered with its own reply; the ClientApp loader crosses to the actor once."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, os, threading, time
    import ray
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.supercore.task_identity import TaskIdentity

    from fedssl.simulations import dispatch, flower_engine_adapter

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    app = ClientApp()

    @app.train()
    def train(msg, context):
        start = time.monotonic()  # not time.time(): a clock step would reorder the spans
        time.sleep(0.3)
        value = int(msg.content["config"]["value"])
        return Message(RecordDict({"config": ConfigRecord({
            "value": value * 10, "start": start, "end": time.monotonic(), "pid": os.getpid(),
            "loaders": len(flower_engine_adapter._LOADERS)})}), reply_to=msg)

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    dispatch.install(pipeline_depth=2)
    from flwr.server.superlink.fleet.vce.backend import raybackend
    backend = raybackend.RayBackend({"client_resources": {"num_cpus": 1, "num_gpus": 0},
                                      "init_args": {}})
    backend.build(lambda: app)
    out = {"workers": backend.num_workers, "replies": {}}

    def send(value):
        msg = Message(RecordDict({"config": ConfigRecord({"value": value})}),
                      dst_node_id=value, message_type="train")
        ctx = Context(run_id=1, node_id=value, node_config={"partition-id": value},
                      state=RecordDict(), run_config={})
        reply, _ = backend.process_message(msg, ctx)
        out["replies"][value] = dict(reply.content["config"])

    for batch in ((1, 2), (3, 4)):
        threads = [threading.Thread(target=send, args=(v,)) for v in batch]
        [t.start() for t in threads]
        [t.join() for t in threads]
    backend.terminate()
    print(json.dumps(out))
''')


def test_two_slots_per_actor_run_one_at_a_time() -> None:
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["workers"] == 2  # one actor (1 CPU), two slots
    replies = {int(k): v for k, v in out["replies"].items()}
    assert {k: v["value"] for k, v in replies.items()} == {1: 10, 2: 20, 3: 30, 4: 40}
    assert len({v["pid"] for v in replies.values()}) == 1  # all on the one actor
    spans = sorted((v["start"], v["end"]) for v in replies.values())
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end  # queued behind, never run alongside
    assert {v["loaders"] for v in replies.values()} == {1}  # fetched once, then cached


def register_nodes(state: object, count: int) -> list[int]:
    """Register ``count`` live nodes in Flower's link ``state``, as the engine does."""
    import secrets

    from flwr.common.constant import HEARTBEAT_INTERVAL_INF, NOOP_ACCOUNT_NAME, NOOP_FLWR_AID

    nodes = []
    for _ in range(count):
        node = state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, secrets.token_bytes(32),
                                 heartbeat_interval=HEARTBEAT_INTERVAL_INF)
        state.acknowledge_node_heartbeat(node_id=node, heartbeat_interval=HEARTBEAT_INTERVAL_INF)
        nodes.append(node)
    return nodes


def _simulation_grid(num_nodes: int) -> tuple[object, list[int]]:
    """Flower's in-memory link state and grid as ``run_simulation`` builds them (a run
    registered, ``num_nodes`` nodes), the grid tuned as the simulator tunes it."""
    from flwr.proto.task_pb2 import Task
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid import InMemoryGrid

    from fedssl.simulations import dispatch

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(),
                               ObjectStoreFactory())
    state = factory.state()
    run = Run.create_empty(run_id=1)
    run.primary_task_id = 1
    run.federation_id = NOOP_FEDERATION_ID
    state.run_ids[1] = RunRecord(run=run)
    state.task_store[1] = Task(task_id=1, run_id=1)
    nodes = register_nodes(state, num_nodes)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    dispatch.tune_grid(grid)
    return grid, nodes


def test_a_stopped_engine_ends_the_servers_wait_at_once(flower_identity) -> None:
    """Ctrl-C unwinds Flower's engine (its stop event is set, the actors are terminated) while
    the ServerApp thread waits for a round's replies: the wait must end with
    SimulationStoppedError, not after the round timeout (before: 3600 s, then the round was
    recorded as done), and every later call of the grid must raise too."""
    import threading
    import time
    from queue import Queue

    import pytest
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedssl.simulations import dispatch

    TaskIdentity.node_id = SUPERLINK_NODE_ID  # the ServerApp's messages come from the link
    grid, nodes = _simulation_grid(2)
    f_stop = threading.Event()
    queue: Queue = Queue()  # the engine's workers would take messages from here; none do
    dispatcher = threading.Thread(target=dispatch.add_messages_to_queue,
                                  args=(grid.state, queue, {n: i for i, n in enumerate(nodes)},
                                        f_stop))
    dispatcher.start()
    outcome: dict[str, object] = {}

    def server() -> None:
        messages = [Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=n,
                            message_type="train") for n in nodes]
        try:
            outcome["replies"] = list(grid.send_and_receive(messages, timeout=600.0))
        except dispatch.SimulationStoppedError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while queue.qsize() < len(nodes) and time.monotonic() < deadline:
        time.sleep(0.05)  # the messages reached the engine's queue: the server now waits
    assert queue.qsize() == len(nodes)
    f_stop.set()  # what run_api's `finally` does when KeyboardInterrupt unwinds it
    thread.join(timeout=60)  # a hang detector, not a timing assertion (timeout: 600 s)
    dispatcher.join(timeout=60)
    assert not thread.is_alive() and not dispatcher.is_alive()
    assert isinstance(outcome.get("error"), dispatch.SimulationStoppedError), outcome
    with pytest.raises(dispatch.SimulationStoppedError):
        grid.push_messages([])
    with pytest.raises(dispatch.SimulationStoppedError):
        list(grid.send_and_receive([], timeout=1.0))
