"""``fedssl simulate --ray-address`` without a cluster (issue 15, item 6): the option is
carried like the simulation's other options (CLI, TOML key ``ray-address``, config.toml), a
malformed or unreachable address is refused at once with exit code 2 and a message naming it
(``ray.init(address=...)`` itself retries for minutes), nothing is written, and the node
check names what a node lacks. The run on a real two-node cluster:
``tests/e2e/test_ray_cluster.py``."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from fedssl.cli import main
from fedssl.run_layout import RunLayout
from fedssl.simulations import ray_cluster
from fedssl.simulations.config import ConfigError, ExperimentConfig


def _closed_port() -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_option_is_a_toml_key_and_a_flag(tmp_path: Path) -> None:
    toml = tmp_path / "exp.toml"
    toml.write_text('[experiment]\nray-address = "10.0.0.5:6379"\nnum_clients = 3\n')
    cfg = ExperimentConfig.load(toml)
    assert cfg.ray_address == "10.0.0.5:6379"
    assert 'ray_address = "10.0.0.5:6379"' in cfg.to_toml()  # recorded in RUN/config.toml
    assert "ray-address" not in cfg.to_run_config("RUN")  # the ServerApp does not need it
    assert ExperimentConfig().ray_address == ""  # default: a local Ray


@pytest.mark.parametrize("address", ["nohost", "h:0", "h:70000", ":6379", "ray://h:10001",
                                     "10.0.0.5:port"])
def test_a_malformed_address_is_a_config_error_naming_it(address: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"ray-address {address}: ")):
        ExperimentConfig.from_dict({"ray_address": address})


def test_an_unreachable_address_fails_fast_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused, unknown and silent addresses are each a ConfigError naming the address; the
    probe's wait is bounded by passing PROBE_SECONDS to the connection (checked as an argument,
    not by timing, and the unknown host without asking a resolver)."""
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(ConfigError, match=f"ray-address {address}: no Ray cluster there"):
        ray_cluster.probe(address)

    def no_such_host(host: str, *args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(ConfigError, match=re.escape("ray-address no-such-host.invalid:6379: "
                                                    "unknown host")):
        ray_cluster.probe("no-such-host.invalid:6379")

    waited: list[float | None] = []

    def silent(addr: tuple[str, int], timeout: float | None = None) -> socket.socket:
        waited.append(timeout)
        raise TimeoutError

    monkeypatch.setattr(socket, "create_connection", silent)
    with pytest.raises(ConfigError, match=re.escape(
            f"ray-address 10.0.0.5:6379: no answer within {ray_cluster.PROBE_SECONDS:.0f} s")):
        ray_cluster.probe("10.0.0.5:6379")
    assert waited == [ray_cluster.PROBE_SECONDS]


def test_simulate_refuses_an_unreachable_cluster_before_writing_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    out = tmp_path / "run"
    code = main(["simulate", "--ray-address", address, "--num-clients", "2", "--no-dp",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"fedssl simulate: error: ray-address {address}: no Ray cluster there" in err
    assert not out.exists()


def test_node_check_names_what_a_node_lacks(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    RunLayout(run).config.write_text("[experiment]\n")
    digest = ray_cluster._digest(RunLayout(run).config)
    version = ray_cluster.node_report(str(run), "").fedssl_version

    def problems(run_dir: Path, data_path: str = "") -> list[str]:
        report = ray_cluster.node_report(str(run_dir), data_path)
        return ray_cluster.node_problems("node N", report, digest, version, run, data_path)

    assert problems(run) == []  # this machine sees its own run directory
    other = tmp_path / "elsewhere"  # a node with its own (empty) copy of the path
    other.mkdir()
    assert problems(other) == [f"node N does not see this run directory {run} (its "
                               "config.toml is missing there)"]
    (other / "config.toml").write_text("[experiment]\nrounds = 1\n")
    assert "config.toml is another file there" in problems(other)[0]
    missing = str(tmp_path / "data.npz")
    assert problems(run, missing) == [f"node N has no {missing} (--data-path)"]
    report = ray_cluster.node_report(str(run), "")
    assert ray_cluster.node_problems("node N", report, digest, "9.9", run, "") == [
        f"node N has fedssl {version}, this driver 9.9"]
