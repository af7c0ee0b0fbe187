"""``fedssl client`` refuses to start beside a SuperNode an earlier agent of the site left
running (issue 22, item 5): that SuperNode would go on training on the site's data, and the
new one failed with Flower's "address already in use" traceback."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fedssl.client.supernode import (
    ClientOptions,
    ClientSetupError,
    check_not_running,
    leftover_supernodes,
)
from fedssl.run_layout import SiteLayout


def _opts(tmp_path: Path, port: int) -> ClientOptions:
    return ClientOptions(server="127.0.0.1:1", ca_cert=tmp_path / "ca.crt",
                         node_key=tmp_path / "node-1.key", data=tmp_path / "d.npz",
                         state_dir=tmp_path / "state", runtime_port=port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_supernode_left_running_for_this_site_is_found_and_reported(tmp_path: Path) -> None:
    """A stand-in for the orphan: a process whose command line is a ``flower-supernode``
    started with this state directory's node config (what ``fedssl client`` starts)."""
    node_config = SiteLayout(tmp_path / "state").node_config
    node_config.parent.mkdir(parents=True)
    node_config.write_text("")
    other = tmp_path / "other-site" / "node-config.toml"
    script = tmp_path / "bin" / "flower-supernode"
    script.parent.mkdir()
    script.write_text("import sys, time\nprint('ready', flush=True)\ntime.sleep(120)\n")
    orphan = subprocess.Popen([sys.executable, str(script), "--node-config",
                               str(node_config.resolve())], stdout=subprocess.PIPE, text=True)
    unrelated = subprocess.Popen([sys.executable, str(script), "--node-config", str(other)],
                                 stdout=subprocess.PIPE, text=True)
    try:
        for proc in (orphan, unrelated):
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert leftover_supernodes(node_config) == [orphan.pid]
        with pytest.raises(ClientSetupError) as err:
            check_not_running(_opts(tmp_path, _free_port()), node_config, grace=0.0)
        text = str(err.value)
        assert f"still running (pid {orphan.pid}" in text and f"kill {orphan.pid}" in text
        assert str(tmp_path / "state") in text
    finally:
        for proc in (orphan, unrelated):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    assert leftover_supernodes(node_config) == []
    check_not_running(_opts(tmp_path, _free_port()), node_config, grace=0.0)  # starts


def test_a_busy_runtime_port_is_reported_before_flower_starts(tmp_path: Path) -> None:
    node_config = SiteLayout(tmp_path / "state").node_config
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(ClientSetupError, match=f"--runtime-port {port} on 127.0.0.1 is "
                                                   "in use"):
            check_not_running(_opts(tmp_path, port), node_config, grace=0.0)


def test_a_supernode_that_gave_up_reconnecting_but_stays_is_stopped(tmp_path: Path) -> None:
    """Issue 22, item 2: Flower 1.41's SuperNode logs "Giving up reconnection" when the server
    stayed away for --max-wait-time, and may then stay alive doing nothing; the agent stops
    it (and then exits 3 or starts another, run_client decides). A stand-in prints that line
    and sleeps."""
    from fedssl.client.supernode import SuperNodeRunner

    script = tmp_path / "flower-supernode"
    script.write_text("import time\n"
                      "print('WARNING :   Giving up reconnection after 12.50 seconds and 7 "
                      "tries.', flush=True)\ntime.sleep(120)\n")
    lines: list[str] = []
    runner = SuperNodeRunner([sys.executable, str(script)], {}, tmp_path / "log", False,
                             lines.append)
    runner.give_up_grace = 0.0
    code = runner.run()  # before the fix: waited for the process, i.e. for ever
    assert code == -signal.SIGTERM
    assert runner.gave_up_after == 12.5
    assert any("Giving up reconnection" in line for line in lines)
