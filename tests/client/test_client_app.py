"""The ClientApp in-process: a DP round trains and writes a signed ledger entry; bad
configurations get a refusal reply (not a crash)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedssl.client.app import train
from fedssl.privacy.identity.keys import load_public_key
from fedssl.privacy.identity.ledger import read_ledger
from fedssl.server.app import CLIENT_KEYS, DEFAULTS
from fedssl.ssl_core.objectives import get_objective


def _call(tmp_path: Path, round_: int = 1, node_config: dict | None = None,
          run_id: str | None = None, **overrides):
    cfg = {**DEFAULTS, "num-samples": 400, "dp": True, "target-epsilon": 4.0,
           "partitioner": "iid", "run-dir": str(tmp_path), **overrides}
    config = ConfigRecord({k: cfg[k] for k in CLIENT_KEYS})
    config["num-rounds"] = 2
    config["server-round"] = round_
    if run_id is not None:
        config["run-id"] = run_id
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


def test_site_budget_refuses_a_round_without_dp(tmp_path: Path, flower_identity) -> None:
    """A server that sends dp = false cannot bypass the site's own budget: such a round
    would spend an unbounded, unrecorded amount, so the site refuses it before training."""
    from fedssl.client.privacy_guard import write_site_file

    write_site_file(tmp_path / "clients" / "client-001", epsilon=0.5, delta=1e-5)
    reply = _call(tmp_path, 1, dp=False)
    status = reply.content["status"]
    assert status["status"] == "refused"
    assert "without record-level DP" in status["reason"]
    assert "arrays" not in reply.content
    assert not (tmp_path / "ledger" / "client-001.jsonl").exists()


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
    from fedssl.simulations.warmup import warmup

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


def _ledger(tmp_path: Path):
    path = tmp_path / "ledger" / "client-001.jsonl"
    return read_ledger(path, load_public_key(path.with_suffix(".pub")))


def test_second_run_on_a_reused_state_dir_plans_like_a_fresh_site(tmp_path: Path,
                                                                   flower_identity) -> None:
    """Issue 16.2: a site's ledger spans runs. Run B's round 1 trains (it was refused as
    "older than the last recorded round 2"), at the noise a fresh site gets (not the 6.25 a
    target measured against the lifetime spend gave); the run's epsilon is B's own, the
    lifetime epsilon composes both runs."""
    from fedssl.privacy.accounting.budget import epsilon_of

    fresh = _call(tmp_path / "fresh", 1, run_id="f" * 32).content["metrics"]
    for r in (1, 2):
        assert _call(tmp_path, r, run_id="a" * 32).content["status"]["status"] == "ok"
    reply = _call(tmp_path, 1, run_id="b" * 32)
    assert reply.content["status"]["status"] == "ok", reply.content["status"]
    m = reply.content["metrics"]
    assert m["noise-multiplier"] == fresh["noise-multiplier"]
    assert m["epsilon"] == pytest.approx(fresh["epsilon"], rel=1e-9)
    entries = _ledger(tmp_path)
    assert [(e.run_id[0], e.round) for e in entries] == [("a", 1), ("a", 2), ("b", 1)]
    everything = [(e.noise_multiplier, e.sample_rate, e.steps) for e in entries]
    assert m["lifetime-epsilon"] == pytest.approx(epsilon_of(everything, 1e-5), rel=1e-9)
    assert m["lifetime-epsilon"] > entries[1].epsilon > m["epsilon"]
    assert entries[2].epsilon == m["epsilon"]
    assert entries[2].lifetime_epsilon == m["lifetime-epsilon"]
    # rounds stay monotone within a run
    again = _call(tmp_path, 1, run_id="a" * 32).content["status"]
    assert again["status"] == "refused" and "older than the last recorded round 2" in (
        again["reason"])


def test_lifetime_budget_refusal_names_the_previous_run(tmp_path: Path,
                                                        flower_identity) -> None:
    """The site's own budget bounds all runs composed; a refusal says what the earlier run
    spent of it."""
    from fedssl.client.privacy_guard import write_site_file

    for r in (1, 2):
        assert _call(tmp_path, r, run_id="a" * 32).content["status"]["status"] == "ok"
    spent = _ledger(tmp_path)[-1].epsilon
    budget = round(spent + 0.3, 1)  # run B's first round (about half its target) won't fit
    write_site_file(tmp_path / "clients" / "client-001", epsilon=budget, delta=1e-5)
    status = _call(tmp_path, 1, run_id="b" * 32).content["status"]
    assert status["status"] == "refused"
    assert f"a previous run (id {'a' * 32}: epsilon {spent:.3f}) spent {spent:.3f} of the " \
           f"site budget {budget:g}" in status["reason"]
    assert "this round would take the site's lifetime epsilon from" in status["reason"]
    assert len(_ledger(tmp_path)) == 2  # nothing spent for the refused round


def test_round_without_run_id_plans_against_the_whole_ledger(tmp_path: Path,
                                                             flower_identity) -> None:
    """A server that sends no run id: runs can't be told apart, so the target is planned
    against every recorded round (conservative), as before run ids."""
    for r in (1, 2):
        assert _call(tmp_path, r, run_id="a" * 32).content["status"]["status"] == "ok"
    m = _call(tmp_path, 2).content["metrics"]
    entries = _ledger(tmp_path)
    assert entries[-1].run_id == "" and m["epsilon"] == m["lifetime-epsilon"] <= 4.0


@pytest.mark.parametrize("rid", ["legacy", "LEGACY"])
def test_run_id_reserved_for_legacy_entries_is_refused(tmp_path: Path, flower_identity,
                                                       rid: str) -> None:
    """``legacy`` names the run of ledger entries without a run id: a run called that would
    have its spend mixed with theirs, so the round is refused before anything is spent."""
    reply = _call(tmp_path, run_id=rid)
    assert reply.content["status"]["status"] == "refused"
    assert "reserved" in reply.content["status"]["reason"]
    assert not (tmp_path / "ledger" / "client-001.jsonl").exists()


def test_round_without_dp_writes_no_ledger_files(tmp_path: Path, flower_identity) -> None:
    """A round without DP writes no ledger entry, so no ledger key (.pub) either; a DP
    round writes both."""
    reply = _call(tmp_path, dp=False)
    assert reply.content["status"]["status"] == "ok"
    assert reply.content["metrics"]["epsilon"] == 0.0
    assert not (tmp_path / "ledger").exists()
    _call(tmp_path)
    assert sorted(p.name for p in (tmp_path / "ledger").iterdir()) == [
        "client-001.jsonl", "client-001.pub"]
