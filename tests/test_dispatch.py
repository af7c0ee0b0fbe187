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

    from fedssl.simulations import dispatch

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    app = ClientApp()

    @app.train()
    def train(msg, context):
        start = time.time()
        time.sleep(0.3)
        value = int(msg.content["config"]["value"])
        return Message(RecordDict({"config": ConfigRecord({
            "value": value * 10, "start": start, "end": time.time(), "pid": os.getpid(),
            "loaders": len(dispatch._LOADERS)})}), reply_to=msg)

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
