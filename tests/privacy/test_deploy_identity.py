"""A real federation's identity files (issue 16, items 1 and 5): the handoff lists every file
a site needs, and every missing one is found when ``fedssl server`` / ``fedssl client`` start
(exit 2, nothing started), never after a site has trained."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedssl.client.supernode import ClientOptions, ClientSetupError, check_identity
from fedssl.deploy_commands import main as deploy_main
from fedssl.privacy.identity.certs import CertPaths, create_certs
from fedssl.privacy.identity.keys import public_pem
from fedssl.server.superlink import DeploySetupError, deploy_config
from fedssl.server.superlink_control import free_port

DEPLOY = [sys.executable, "-m", "fedssl.deploy_commands"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.run([*DEPLOY, *args], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.fixture
def certs(tmp_path: Path) -> CertPaths:
    return create_certs(tmp_path / "certs", 2)


def _site_data(tmp_path: Path) -> Path:
    path = tmp_path / "site.npz"
    rng = np.random.default_rng(0)
    np.savez(path, train_images=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8),
             train_labels=np.arange(40) % 2)
    return path


def test_server_without_identity_registry_exits_2_before_anything_starts(
        certs: CertPaths, tmp_path: Path) -> None:
    certs.registry.unlink()
    run = tmp_path / "run"
    proc = _run("server", "--certs", str(certs.root), "--address", f"127.0.0.1:{free_port()}",
                "--run-dir", str(run), "--dataset", "digits", "--rounds", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{certs.registry} not found" in proc.stderr
    assert "starting the SuperLink" not in proc.stdout
    assert not (run / "flower").exists()  # no SuperLink was started, no log written


def test_server_reads_the_registry_from_the_certs_dir(certs: CertPaths) -> None:
    cfg = deploy_config(certs, {"secagg": True, "dp": True, "run-dir": "RUN",
                                "identity-registry": ""})
    assert cfg["identity-registry"] == str(certs.registry)
    certs.registry.write_text("{not json")
    with pytest.raises(DeploySetupError, match=r"identities\.json"):
        deploy_config(certs, {"secagg": True, "dp": False})


def test_server_refuses_an_authorised_node_the_registry_does_not_list(
        certs: CertPaths) -> None:
    """Issue 16 item 1: a node that authorized_nodes.txt lets connect but identities.json
    does not list would drop out of every secure setup (and its ledger copies be refused):
    refused before anything starts, naming the node (before: found per round)."""
    import json

    from fedssl.server.superlink import authorized_names

    assert authorized_names(certs.authorized) == ["node-1", "node-2"]
    # a key a site made itself (ssh-keygen's user@host comment) names no registry entry
    with certs.authorized.open("a") as fh:
        fh.write(certs.authorized.read_text().splitlines()[0].rsplit(" ", 1)[0]
                 + " alice@hospital\n")
    assert authorized_names(certs.authorized) == ["node-1", "node-2", None]
    deploy_config(certs, {"secagg": True, "dp": True})  # every named node is registered
    registry = json.loads(certs.registry.read_text())
    del registry["node-2"]
    certs.registry.write_text(json.dumps(registry))
    with pytest.raises(DeploySetupError, match=r"authorises node\(s\) node-2 that the "
                                               r"identity registry .*identities\.json"):
        deploy_config(certs, {"secagg": True, "dp": True})
    # without secure aggregation and DP the registry is not needed
    assert "identity-registry" in deploy_config(certs, {"secagg": False, "dp": False})


def test_certs_handoff_lists_every_file_and_the_client_command(tmp_path: Path,
                                                              capsys) -> None:
    out = tmp_path / "fed"
    assert deploy_main(["certs", "--out", str(out), "--nodes", "2",
                        "--host", "fl.example"]) == 0
    text = capsys.readouterr().out
    paths = CertPaths(out)
    for i in (1, 2):
        line = next(t for t in text.splitlines() if t.strip().startswith(f"site {i}:"))
        for f in (paths.ca_cert, paths.registry, paths.node_key(i), paths.identity_key(i)):
            assert str(f) in line and f.is_file()
        assert (f"fedssl client --server fl.example:9092 --certs fedssl-site/ca.crt "
                f"--node-key fedssl-site/node-{i}.key") in text
    assert "ca.key offline" in text


def _options(certs: CertPaths, tmp_path: Path, key: Path | None = None) -> ClientOptions:
    return ClientOptions(server="127.0.0.1:1", ca_cert=certs.ca_cert,
                         node_key=key or certs.node_key(1), data=_site_data(tmp_path),
                         state_dir=tmp_path / "state")


def test_client_takes_the_registered_identity_key_only(certs: CertPaths,
                                                       tmp_path: Path) -> None:
    opts = _options(certs, tmp_path)
    node_config = check_identity(opts)
    assert node_config == {"identity-registry": str(certs.registry.resolve()),
                           "identity-name": "node-1"}
    copied = opts.state_dir / "identity.pem"
    assert copied.read_bytes() == certs.identity_key(1).read_bytes()
    assert oct(copied.stat().st_mode & 0o777) == "0o600"
    # a state directory that already holds another key keeps it, and the agent refuses
    copied.unlink()
    from cryptography.hazmat.primitives import serialization

    copied.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    before = copied.read_bytes()
    with pytest.raises(ClientSetupError, match="is not the identity key"):
        check_identity(opts)
    assert copied.read_bytes() == before


@pytest.mark.parametrize("missing", ["identity", "registry"])
def test_client_without_its_identity_files_exits_2_before_joining(
        certs: CertPaths, tmp_path: Path, missing: str) -> None:
    gone = certs.identity_key(1) if missing == "identity" else certs.registry
    gone.unlink()
    opts = _options(certs, tmp_path)
    with pytest.raises(ClientSetupError, match=str(gone)):
        check_identity(opts)
    assert not (opts.state_dir / "identity.pem").exists()  # no fresh key was made
    proc = _run("client", "--server", "127.0.0.1:1", "--certs", str(certs.ca_cert),
                "--node-key", str(certs.node_key(1)), "--data", str(opts.data),
                "--state-dir", str(opts.state_dir), "--join-timeout", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(gone) in proc.stderr and "connecting to" not in proc.stdout
    assert not (opts.state_dir / "flower" / "supernode.log").exists()
    assert not (opts.state_dir / "identity.pem").exists()


def test_site_clientapp_refuses_instead_of_creating_a_ledger_key(
        certs: CertPaths, tmp_path: Path, flower_identity) -> None:
    """The ClientApp of a site (``state-dir`` node config) whose identity key is gone refuses
    the round; it never signs a ledger with a fresh, unregistered key."""
    from fedssl.client.app import train
    from fedssl.server.app import CLIENT_KEYS, DEFAULTS
    from fedssl.ssl_core.objectives import get_objective

    state = tmp_path / "state"
    cfg = {**DEFAULTS, "run-dir": str(tmp_path / "run"), "dataset": "npz"}
    config = ConfigRecord({k: cfg[k] for k in CLIENT_KEYS})
    config.update({"num-rounds": 1, "server-round": 1, "input-shape": [1, 8, 8]})
    model = get_objective("simsiam").build_model((1, 8, 8))
    msg = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config}),
                  dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={}, node_config={
        "state-dir": str(state), "client-id": "site-1", "data-path": str(_site_data(tmp_path)),
        "dataset": "npz", "identity-registry": str(certs.registry),
        "identity-name": "node-1"})
    reply = train(msg, ctx)
    status = reply.content["status"]
    assert status["status"] == "refused" and "identity.pem not found" in status["reason"]
    assert not (state / "identity.pem").exists() and not (state / "ledger.jsonl").exists()
    # with the registered key in place the same round trains and signs with that key
    state.mkdir(exist_ok=True)
    (state / "identity.pem").write_bytes(certs.identity_key(1).read_bytes())
    reply = train(msg, ctx)
    assert reply.content["status"]["status"] == "ok", reply.content["status"].get("reason")
    from fedssl.privacy.identity.keys import load_private_key

    assert (state / "ledger.pub").read_bytes() == public_pem(
        load_private_key(certs.identity_key(1)))


def test_ledger_watcher_prints_the_sites_lifetime_epsilon_against_its_budget(
        tmp_path: Path) -> None:
    """The budget bounds the lifetime epsilon (all runs), not the run's: the watcher shows the
    lifetime figure against it, labels the run's, and shows the effective noise of a
    group-clipped method (sensitivity 2)."""
    from fedssl.client.supernode import LedgerWatcher
    from fedssl.privacy.identity.ledger import Ledger, LedgerEntry

    path = tmp_path / "ledger.jsonl"
    led = Ledger(path, Ed25519PrivateKey.generate())
    led.append(LedgerEntry(round=1, client="site-1", noise_multiplier=1.5, sample_rate=0.1,
                           steps=10, max_grad_norm=1.0, delta=1e-5, accountant="prv",
                           epsilon=0.8))  # a legacy entry: its epsilon is the lifetime one
    said: list[str] = []
    watcher = LedgerWatcher(path, 10.0, said.append)
    led.append(LedgerEntry(round=1, client="site-1", noise_multiplier=3.0, sample_rate=0.1,
                           steps=10, max_grad_norm=1.0, delta=1e-5, accountant="prv",
                           epsilon=1.25, run_id="run-b", lifetime_epsilon=4.5,
                           extra={"sensitivity": 2}))
    watcher.poll()
    assert len(said) == 1
    line = said[0]
    assert "spent so far 4.500 of the site's budget 10" in line
    assert "this run 1.250" in line
    assert "noise 3, effective 1.5 at sensitivity 2" in line
    # an old entry (no lifetime_epsilon, no sensitivity): its epsilon, no run figure
    said.clear()
    watcher.seen = 0
    watcher.poll()
    assert "spent so far 0.800 of the site's budget 10" in said[0]
    assert "this run" not in said[0] and "effective" not in said[0]
