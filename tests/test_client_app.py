"""The ClientApp in-process: a DP round trains and writes a signed ledger entry; bad
configurations get a refusal reply (not a crash)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedssl.client.app import train
from fedssl.privacy.identity import load_public_key
from fedssl.privacy.ledger import read_ledger
from fedssl.server.app import CLIENT_KEYS, DEFAULTS
from fedssl.ssl_core.objectives import get_objective


def _call(tmp_path: Path, round_: int = 1, node_config: dict | None = None, **overrides):
    cfg = {**DEFAULTS, "num-samples": 400, "dp": True, "target-epsilon": 4.0,
           "run-dir": str(tmp_path), **overrides}
    config = ConfigRecord({k: cfg[k] for k in CLIENT_KEYS})
    config["num-rounds"] = 2
    config["server-round"] = round_
    config["input-shape"] = [1, 40]
    model = get_objective(cfg["method"]).build_model((1, 40))
    msg = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config}),
                  dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                  node_config=node_config or {"partition-id": 1, "num-partitions": 4})
    return train(msg, ctx)


def test_dp_round_trains_and_ledger_reaches_target(tmp_path: Path, flower_identity) -> None:
    first = _call(tmp_path, 1)
    assert first.content["status"]["status"] == "ok"
    weights = first.content["arrays"].to_torch_state_dict()
    assert all(np.isfinite(v.numpy()).all() for v in weights.values())
    second = _call(tmp_path, 2)
    m = second.content["metrics"]
    assert m["num-examples"] == 80 and m["steps"] > 0
    ledger = tmp_path / "ledger" / "client-001.jsonl"
    entries = read_ledger(ledger, load_public_key(ledger.with_suffix(".pub")))
    assert [e.round for e in entries] == [1, 2]
    assert entries[0].epsilon < entries[1].epsilon <= 4.0
    assert entries[1].epsilon == m["epsilon"]


def test_simclr_under_dp_is_refused(tmp_path: Path, flower_identity) -> None:
    reply = _call(tmp_path, method="simclr")
    assert reply.content["status"]["status"] == "refused"
    assert "not per-record decomposable" in reply.content["status"]["reason"]
    assert not (tmp_path / "ledger").exists()


def test_site_with_missing_data_path_refuses(tmp_path: Path, flower_identity) -> None:
    reply = _call(tmp_path, node_config={"state-dir": str(tmp_path / "site"),
                                         "data-path": str(tmp_path / "missing.npz")})
    assert reply.content["status"]["status"] == "refused"
    assert "not found" in reply.content["status"]["reason"]


def test_site_with_nan_data_refuses(tmp_path: Path, flower_identity) -> None:
    imgs = np.ones((20, 8, 8), np.float32)
    imgs[0, 0, 0] = np.inf
    np.savez(tmp_path / "d.npz", train_images=imgs, train_labels=np.zeros(20, np.int64))
    reply = _call(tmp_path, node_config={"state-dir": str(tmp_path / "site"),
                                         "data-path": str(tmp_path / "d.npz")})
    assert "NaN or Inf" in reply.content["status"]["reason"]


def test_site_budget_refuses_before_training(tmp_path: Path, flower_identity) -> None:
    """The site's own budget (site.toml), smaller than the run's target: round 1 fits,
    round 2 would exceed it and is refused; nothing is spent for the refused round."""
    from fedssl.client.privacy_guard import write_site_file

    write_site_file(tmp_path / "clients" / "client-001", epsilon=3.5, delta=1e-5)
    assert _call(tmp_path, 1, **{"target-epsilon": 4.0}).content["status"]["status"] == "ok"
    reply = _call(tmp_path, 2, **{"target-epsilon": 4.0})
    status = reply.content["status"]
    assert status["status"] == "refused"
    assert "privacy budget would be exceeded" in status["reason"]
    assert "budget of 3.5" in status["reason"]
    ledger = tmp_path / "ledger" / "client-001.jsonl"
    entries = read_ledger(ledger, load_public_key(ledger.with_suffix(".pub")))
    assert [e.round for e in entries] == [1] and entries[0].epsilon <= 3.5


def test_node_config_budget_takes_precedence(tmp_path: Path, flower_identity) -> None:
    reply = _call(tmp_path, node_config={"partition-id": 1, "num-partitions": 4,
                                         "budget-epsilon": 0.5})
    assert "budget of 0.5" in reply.content["status"]["reason"]


def test_fedema_keeps_local_model_between_rounds(tmp_path: Path, flower_identity) -> None:
    """The local model lives in the node's context.state; only shared parts are sent."""
    from fedssl.client.app import LOCAL_MODEL_KEY

    model = get_objective("byol").build_model((1, 40))
    shared = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    cfg = {**DEFAULTS, "num-samples": 400, "dp": False, "method": "byol",
           "algorithm": "fedema", "run-dir": str(tmp_path)}
    config = ConfigRecord({k: cfg[k] for k in CLIENT_KEYS})
    config.update({"num-rounds": 2, "input-shape": [1, 40]})
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                  node_config={"partition-id": 0, "num-partitions": 4})
    metrics = []
    for r in (1, 2):
        config["server-round"] = r
        msg = Message(RecordDict({"arrays": ArrayRecord(shared), "config": config}),
                      dst_node_id=1, message_type="train")
        reply = train(msg, ctx)
        assert set(reply.content["arrays"].keys()) == set(shared)
        metrics.append(reply.content["metrics"])
    assert LOCAL_MODEL_KEY in ctx.state.array_records
    assert metrics[0]["divergence"] == 0.0 and metrics[1]["divergence"] > 0


def test_warmup_loads_and_runs_without_touching_the_ledger(tmp_path: Path,
                                                           flower_identity) -> None:
    from fedssl.client.app import warmup

    for dp in (False, True):
        cfg = {**DEFAULTS, "num-samples": 400, "dp": dp, "run-dir": str(tmp_path)}
        config = ConfigRecord({k: cfg[k] for k in CLIENT_KEYS})
        config["input-shape"] = [1, 40]
        msg = Message(RecordDict({"config": config}), dst_node_id=1,
                      message_type="query.warmup")
        ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                      node_config={"partition-id": 0, "num-partitions": 2})
        reply = warmup(msg, ctx)
        assert reply.content.config_records["status"]["status"] == "ok"
    assert not (tmp_path / "ledger").exists()  # no privacy spent, nothing recorded
