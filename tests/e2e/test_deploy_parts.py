"""Fast checks of the deployment parts (no processes): keys in Flower's formats, the
certificate's names, the Control API guard, run-config parsing and the client's data check."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fedssl.client.supernode import ClientOptions, check_site, infer_dataset
from fedssl.deploy_commands import add_deploy_parsers, server_run_config
from fedssl.privacy.identity.certs import CertError, CertPaths, create_certs, read_authorized
from fedssl.server.superlink import DeploySetupError, check_run_dir
from fedssl.server.superlink_guard import LocalControlGuard
from fedssl.ssl_core.datasets import DataError


def test_certs_match_what_flower_expects(tmp_path: Path) -> None:
    paths = create_certs(tmp_path / "c", 2, ["fl.hospital.example", "10.1.2.3"])
    # the SuperNode loads its key with load_ssh_private_key; the SuperLink registers the
    # OpenSSH public key after checking it is EC on a NIST curve (flwr supernode register)
    from flwr.cli.supernode.register import try_load_public_key

    key = load_ssh_private_key(paths.node_key(1).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert try_load_public_key(paths.node_key(1).with_suffix(".pub")).startswith(b"-----BEGIN")
    assert len(read_authorized(paths.authorized)) == 2
    assert oct(paths.node_key(2).stat().st_mode & 0o777) == "0o600"
    cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"fl.hospital.example", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("127.0.0.1")}
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    with pytest.raises(CertError, match="already exists"):
        create_certs(tmp_path / "c", 1)


def test_authorized_list_rejects_non_keys(tmp_path: Path) -> None:
    bad = tmp_path / "authorized_nodes.txt"
    bad.write_text("# comment\nnot-a-key AAAA\n")
    with pytest.raises(CertError, match=":2: not an OpenSSH public key"):
        read_authorized(bad)
    with pytest.raises(CertError, match="not found"):
        CertPaths(tmp_path / "missing").require_server()


def _call(path: str, peer: str) -> int:
    async def app(scope, receive, send):  # stands in for Flower's app: 200
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "client": (peer, 40000)}
    asyncio.run(LocalControlGuard(app)(scope, None, send))
    return int(sent[0]["status"])


def test_control_and_runtime_apis_answer_local_peers_only() -> None:
    assert _call("/v1/fleet/pull-messages", "10.0.0.7") == 200
    assert _call("/health", "10.0.0.7") == 200
    assert _call("/v1/control/start-run", "10.0.0.7") == 403
    assert _call("/v1/control/register-node", "10.0.0.7") == 403
    assert _call("/v1/runtime/acquire-task", "10.0.0.7") == 403
    assert _call("/docs", "10.0.0.7") == 403
    assert _call("/v1/control/start-run", "127.0.0.1") == 200
    assert _call("/v1/runtime/acquire-task", "::1") == 200


def _server_args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    add_deploy_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(["server", "--certs", "x", *argv])


def test_server_run_config_overrides_and_resume() -> None:
    cfg = server_run_config(_server_args(
        "--rounds", "4", "--round-timeout", "30", "--resume", "--no-dp", "--dataset", "digits",
        "--set", "algorithm=fedema", "--set", "eval-every=2"))
    assert cfg["num-server-rounds"] == 4 and cfg["round-timeout"] == 30.0
    assert cfg["resume"] is True and cfg["dp"] is False and cfg["dataset"] == "digits"
    assert cfg["algorithm"] == "fedema" and cfg["eval-every"] == 2
    with pytest.raises(ValueError, match="unknown run-config key"):
        server_run_config(_server_args("--dataset", "digits", "--set", "nope=1"))


def test_run_dir_checks(tmp_path: Path) -> None:
    check_run_dir(tmp_path, resume=False)
    (tmp_path / "metrics.jsonl").write_text('{"round": 0}\n')
    with pytest.raises(DeploySetupError, match="--resume"):
        check_run_dir(tmp_path, resume=False)
    with pytest.raises(DeploySetupError, match="nothing to resume"):
        check_run_dir(tmp_path, resume=True)


def test_client_checks_its_data_before_joining(tmp_path: Path) -> None:
    paths = create_certs(tmp_path / "c", 1)
    good = tmp_path / "site.npz"
    np.savez(good, train_images=np.random.default_rng(0).integers(0, 255, (20, 8, 8),
                                                                    dtype=np.uint8),
             train_labels=np.arange(20) % 2)
    opts = ClientOptions(server="127.0.0.1:1", ca_cert=paths.ca_cert,
                         node_key=paths.node_key(1), data=good, state_dir=tmp_path / "s",
                         budget_epsilon=5.0)
    node_config, _, data = check_site(opts)
    assert node_config["dataset"] == "npz" and node_config["budget-delta"] == 1e-5
    # a site only trains: all 20 records, nothing held out (issue 16: it held out 4)
    assert len(data.x_train) == 20 and node_config["client-id"] == "node-1"
    assert infer_dataset(tmp_path) == "imagefolder"
    (tmp_path / "empty").mkdir()
    for bad, match in ((tmp_path / "empty", "is empty"), (tmp_path / "none.npz", "not found")):
        opts.data = bad
        with pytest.raises(DataError, match=match):
            check_site(opts)
    bad_sizes = tmp_path / "sizes.npz"
    np.savez(bad_sizes, train_images=np.zeros((4, 8), dtype=np.uint8),
             train_labels=np.zeros(4, dtype=np.int64))
    opts.data = bad_sizes
    with pytest.raises(DataError):
        check_site(opts)


def test_server_resume_keeps_the_runs_rounds_unless_extended(tmp_path: Path) -> None:
    """`fedssl server --resume` takes the run's own round count; a different --rounds is
    refused unless --extend asks for it (issue 16 item 8, deployment side)."""
    from fedssl.server.run_record import write_run_config

    run = tmp_path / "run"
    run.mkdir()
    # the run's data is recorded too: a resume may not change it (issue 22 item 4)
    write_run_config(run, {"num-server-rounds": 3, "run-dir": str(run), "dataset": "digits"},
                     "abc")
    base = ("--dataset", "digits", "--run-dir", str(run), "--resume")
    assert server_run_config(_server_args(*base))["num-server-rounds"] == 3
    with pytest.raises(ValueError, match="--extend"):
        server_run_config(_server_args(*base, "--rounds", "5"))
    assert server_run_config(_server_args(*base, "--rounds", "5", "--extend"))[
        "num-server-rounds"] == 5
    with pytest.raises(ValueError, match="only adds rounds"):
        server_run_config(_server_args(*base, "--rounds", "2", "--extend"))
    with pytest.raises(ValueError, match="needs --resume"):
        server_run_config(_server_args("--dataset", "digits", "--extend"))
