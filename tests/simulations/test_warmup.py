"""The simulator's start-up query lives on the simulation side only (issue 14 item 4): the
simulator's ClientApp answers ``query.warmup``, the production one has no such handler, and
the simulator's grid preparation sends it to the first workers before the ServerApp runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedssl.run_spec import CLIENT_KEYS, DEFAULTS, RunSpec, ServerRun
from tests.simulations.test_dispatch import _simulation_grid, register_nodes


def _warmup_message(tmp_path: Path) -> tuple[Message, Context]:
    cfg = {**DEFAULTS, "num-samples": 400, "dp": True, "run-dir": str(tmp_path)}
    msg = Message(RecordDict({"config": ConfigRecord({k: cfg[k] for k in CLIENT_KEYS})}),
                  dst_node_id=1, message_type="query.warmup")
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                  node_config={"partition-id": 0, "num-partitions": 2})
    return msg, ctx


def test_only_the_simulators_client_app_answers_the_warmup(tmp_path: Path,
                                                           flower_identity) -> None:
    from fedssl.client.app import app as production_app
    from fedssl.simulations.client_app import simulation_app

    msg, ctx = _warmup_message(tmp_path)
    with pytest.raises(ValueError, match="No query function registered"):
        production_app(msg, ctx)
    reply = simulation_app(msg, ctx)
    assert reply.content.config_records["status"]["status"] == "ok"
    assert not (tmp_path / "ledger").exists()  # no privacy spent, nothing recorded


def test_prepare_grid_sends_the_warmup_to_the_first_workers(tmp_path: Path,
                                                            flower_identity) -> None:
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedssl.simulations import warmup

    TaskIdentity.node_id = SUPERLINK_NODE_ID  # the ServerApp's messages come from the link
    grid, nodes = _simulation_grid(3)
    run = ServerRun(RunSpec(run_dir=str(tmp_path)), warmup_workers=2)
    warmup.prepare_grid(grid, run)
    sent = list(grid.state.message_ins_store.values())
    assert sorted(m.metadata.dst_node_id for m in sent) == sorted(nodes)[:2]
    assert {m.metadata.message_type for m in sent} == {"query.warmup"}
    config = sent[0].content["config"]
    assert set(CLIENT_KEYS) <= set(config.keys())
    assert config["run-dir"] == str(tmp_path)
    assert config["num-rounds"] == DEFAULTS["num-server-rounds"]

    quiet, _ = _simulation_grid(2)
    before = quiet.send_and_receive
    warmup.prepare_grid(quiet, ServerRun(run.spec, warmup_workers=0))
    assert not quiet.state.message_ins_store  # no workers to warm: nothing sent
    assert quiet.send_and_receive.__func__ is before.__func__  # no wait added


def test_prepare_grid_waits_for_the_engine_to_register_the_nodes(tmp_path: Path,
                                                                  flower_identity) -> None:
    """Flower's ``run_simulation`` starts the ServerApp thread before its engine registers
    the simulated nodes; a ServerApp that looked at the grid at once found none and sent no
    warm-up at all (CI, stop 19: the 'warm-up:' line and the warm-up itself were missing)."""
    import threading

    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedssl.simulations import warmup

    TaskIdentity.node_id = SUPERLINK_NODE_ID
    grid, none = _simulation_grid(0)
    assert none == []
    late: list[int] = []
    registrar = threading.Timer(0.3, lambda: late.extend(register_nodes(grid.state, 3)))
    registrar.start()
    try:
        warmup.prepare_grid(grid, ServerRun(RunSpec(run_dir=str(tmp_path)), num_clients=3,
                                            warmup_workers=2))
    finally:
        registrar.join()
    assert len(late) == 3
    assert sorted(grid.get_node_ids()) == sorted(late)
    sent = list(grid.state.message_ins_store.values())
    assert sorted(m.metadata.dst_node_id for m in sent) == sorted(late)[:2]
