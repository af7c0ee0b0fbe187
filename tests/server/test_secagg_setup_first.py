"""Secure aggregation sets up before training: a client whose secure setup fails never trains,
so it spends no privacy on a round whose update could not be aggregated (issue 16, item 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedssl.client.app import train
from fedssl.privacy.identity.keys import load_public_key
from fedssl.privacy.identity.ledger import read_ledger
from fedssl.server.app import CLIENT_KEYS, DEFAULTS
from fedssl.ssl_core.objectives import get_objective


def test_client_refuses_to_train_before_its_secure_setup(tmp_path: Path,
                                                         flower_identity) -> None:
    """A train message under secure aggregation without a completed key setup on the node is
    refused before any gradient: no ledger entry, no privacy spent."""
    cfg = {**DEFAULTS, "num-samples": 400, "partitioner": "iid", "run-dir": str(tmp_path)}
    config = ConfigRecord({k: cfg[k] for k in CLIENT_KEYS})
    config.update({"num-rounds": 1, "server-round": 1, "input-shape": [1, 40], "secagg": True,
                   "secagg-num-clients": 3, "secagg-clip": 2.0})
    model = get_objective("simsiam").build_model((1, 40))
    msg = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config}),
                  dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                  node_config={"partition-id": 1, "num-partitions": 3})
    reply = train(msg, ctx)
    status = reply.content["status"]
    assert status["status"] == "refused"
    assert "secure aggregation is not set up for round 1" in status["reason"]
    assert not (tmp_path / "ledger").exists()  # nothing trained, nothing recorded


#: a 3-client DP + SecAgg+ round on Flower's simulation engine (the real ServerApp and
#: ClientApp), where the registry lists another key for client-001 than the one it holds
SCRIPT = r"""
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.simulation import run_simulation

from fedssl.client.app import app as client_app
from fedssl.privacy.identity.keys import load_or_create_identity, write_registry
from fedssl.server.app import make_server_app

run = Path(sys.argv[1])
keys = {f"client-{i:03d}": load_or_create_identity(run / "clients" / f"client-{i:03d}"
                                                   / "identity.pem") for i in range(3)}
keys["client-001"] = Ed25519PrivateKey.generate()  # not the key client-001 holds
write_registry(run / "identities.json", keys)
cfg = {"num-server-rounds": 1, "num-samples": 600, "partitioner": "iid", "eval-samples": 200,
       "few-label": "", "finetune": "", "run-dir": str(run), "progress": False, "dp": True,
       "target-epsilon": 8.0, "secagg": True, "round-timeout": 300.0}
run_simulation(server_app=make_server_app(cfg, print_report=True), client_app=client_app,
               num_supernodes=3,
               backend_config={"client_resources": {"num_cpus": 1},
                               "init_args": {"num_cpus": 2, "include_dashboard": False}})
"""


@pytest.mark.slow
def test_failed_secure_setup_costs_that_client_no_privacy(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(run)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    round1 = rows[1]
    assert round1["round"] == 1 and round1["clients"] == 2, round1
    assert "identity key differs from the registry" in round1["failed"]["client-001"]
    assert "secagg" not in round1["failed"], round1  # the other two were aggregated
    # client-001 never trained: no ledger entry, no epsilon spent
    assert not (run / "ledger" / "client-001.jsonl").exists()
    for cid in ("client-000", "client-002"):
        path = run / "ledger" / f"{cid}.jsonl"
        entries = read_ledger(path, load_public_key(path.with_suffix(".pub")))
        assert [e.round for e in entries] == [1] and 0 < entries[0].epsilon <= 8.0
    report = json.loads((run / "report.json").read_text())
    assert report["secure_aggregation"] is True
    assert sorted(report["privacy"]["clients"]) == ["client-000", "client-002"]
    # the ServerApp prints fedssl simulate's result table and the run directory at the end
    assert "| federated simsiam |" in proc.stdout
    assert f"run directory: {run.resolve()}" in proc.stdout


def _drops(seed: int, rnd: int, pid: int, stage: int, p: float) -> bool:
    """Whether ``fedssl.simulations.faults.maybe_fault`` drops (round, client) at ``stage``."""
    import numpy as np

    return bool(np.random.default_rng([seed, rnd, pid, stage]).random(2)[0] < p)


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "aggregated"), [("train", 2), ("consistency", 3)])
def test_dropout_after_key_setup_is_recovered(tmp_path: Path, stage: str,
                                              aggregated: int) -> None:
    """A client that shared its keys and then vanishes at training (SecAgg+ stages now run
    identify, setup, share, train, mask, consistency, unmask) is a dropout: its masks are
    recovered from its neighbours' shares and the others' sum is released. One that vanishes
    at the consistency check, after sending its masked update, is treated as one that drops
    before unmasking: its update is in the sum (its self mask rebuilt from the others')."""
    from fedssl.simulations.faults import STAGE_IDS

    p = 0.2  # 21 draws per round: one drop, 20 survivals (0.3 left no seed below 2000)
    stages = [STAGE_IDS.get("identify", 9), *(STAGE_IDS[s] for s in (
        "setup", "share", "train", "mask", "consistency", "unmask"))]
    seed = next(s for s in range(5000)  # client 1 drops at `stage`, nobody else anywhere
                if all(_drops(s, 1, pid, st, p) == (pid == 1 and st == STAGE_IDS[stage])
                       for pid in range(3) for st in stages))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedssl.cli", "simulate", "--num-clients", "3", "--rounds", "1",
         "--num-samples", "300", "--partitioner", "iid", "--no-dp", "--secagg",
         "--dropout-prob", str(p), "--seed", str(seed), "--eval-samples", "100",
         "--few-label", "", "--finetune", "", "--out", str(out)], capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1]
    assert row["clients"] == aggregated, row
    assert f"simulated dropout at stage '{stage}'" in row["failed"]["client-001"], row
    assert "secagg" not in row["failed"] and row["loss"] is not None, row
