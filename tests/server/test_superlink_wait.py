"""The wait for the SuperLink tells "not up yet" from TLS and authentication problems.

Every server here is real and listens on 127.0.0.1 (or 127.0.0.2): an HTTPS server the test
starts (``http.server`` behind ``ssl``) with certificates from ``fedssl certs``, and, in the
slow test, a real ``fedssl`` SuperLink. A misconfiguration must raise
:class:`SuperLinkAccessError` at once: every wait below is given a long timeout, so a wait
that kept retrying would end in the time-out :class:`DeployError` instead and fail the test.
"""

from __future__ import annotations

import contextlib
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedssl.privacy.identity.certs import CertPaths, create_certs
from fedssl.server.superlink_control import (
    DeployError,
    SuperLinkAccessError,
    free_port,
    wait_for_control_api,
)
from fedssl.server.superlink_process import SuperLinkProcess

#: long enough that a wait retrying a misconfiguration would fail by its other error
PATIENT = 60.0


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every request with the status of its server (``server.status``)."""

    def do_POST(self) -> None:
        body = b'{"detail":"test server"}'
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@contextlib.contextmanager
def https_server(certs: CertPaths | None, status: int = 200,
                 host: str = "127.0.0.1") -> Iterator[str]:
    """A threaded HTTP server on ``host`` answering ``status``, with TLS from ``certs``'s
    server certificate (plain HTTP for None); yields its ``HOST:PORT``."""
    server = http.server.ThreadingHTTPServer((host, 0), _Answer)
    server.status = status  # type: ignore[attr-defined]
    if certs is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs.server_cert, certs.server_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def two_cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertPaths, CertPaths]:
    """Two independent federations' certificates (CA, server certificate, one node)."""
    root = tmp_path_factory.mktemp("certs")
    return create_certs(root / "a", 1), create_certs(root / "b", 1)


def test_nothing_listening_is_a_time_out_not_an_access_error() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(DeployError, match="did not come up within 1 s") as info:
        wait_for_control_api(address, Path("unused-ca.crt"), timeout=1.0)
    assert not isinstance(info.value, SuperLinkAccessError)


def test_server_busy_starting_is_retried(two_cas) -> None:
    ours, _ = two_cas
    with (https_server(ours, status=503) as address,
          pytest.raises(DeployError, match="did not come up within") as info):
        wait_for_control_api(address, ours.ca_cert, timeout=1.5)
    assert not isinstance(info.value, SuperLinkAccessError)
    assert "503" in str(info.value)


def test_certificate_of_another_ca_is_reported_at_once(two_cas) -> None:
    ours, theirs = two_cas
    with https_server(theirs) as address, pytest.raises(SuperLinkAccessError) as info:
        wait_for_control_api(address, ours.ca_cert, timeout=PATIENT)
    text = str(info.value)
    assert "TLS" in text and "does not verify against the CA certificate" in text
    assert str(ours.ca_cert) in text and address in text


def test_certificate_not_naming_the_address_is_reported_at_once(two_cas) -> None:
    ours, _ = two_cas  # its server certificate names 127.0.0.1 and localhost only
    try:
        server = https_server(ours, host="127.0.0.2")
        address = server.__enter__()
    except OSError as exc:
        pytest.skip(f"cannot listen on 127.0.0.2 here: {exc}")
    try:
        with pytest.raises(SuperLinkAccessError, match="does not verify") as info:
            wait_for_control_api(address, ours.ca_cert, timeout=PATIENT)
        assert "mismatch" in str(info.value)
    finally:
        server.__exit__(None, None, None)


def test_plain_http_on_the_port_is_a_tls_error(two_cas) -> None:
    ours, _ = two_cas
    with (https_server(None) as address,
          pytest.raises(SuperLinkAccessError, match=r"TLS handshake with .* failed")):
        wait_for_control_api(address, ours.ca_cert, timeout=PATIENT)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_request_is_an_authentication_error(two_cas, status: int) -> None:
    ours, _ = two_cas
    with (https_server(ours, status=status) as address,
          pytest.raises(SuperLinkAccessError,
                        match=rf"refused the Control API request \(HTTP {status}")):
        wait_for_control_api(address, ours.ca_cert, timeout=PATIENT)


def test_unusable_ca_file_is_reported_at_once(two_cas, tmp_path: Path) -> None:
    ours, _ = two_cas
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate\n")
    with (https_server(ours) as address,
          pytest.raises(SuperLinkAccessError, match="cannot use the CA certificate")):
        wait_for_control_api(address, bad, timeout=PATIENT)


@pytest.mark.slow
def test_real_superlink_wrong_ca_is_reported_at_once_right_ca_connects(
        two_cas, tmp_path: Path) -> None:
    ours, theirs = two_cas
    port = free_port()
    link = SuperLinkProcess(ours, "127.0.0.1", port, tmp_path / "flower",
                            tmp_path / "flower" / "superlink.log")
    link.start()
    try:
        # the right CA connects (the wait retries while the SuperLink starts) ...
        client = link.wait_ready(timeout=PATIENT)
        assert client is not None
        # ... and another federation's CA is refused at once, by TLS, not by a time-out
        with pytest.raises(SuperLinkAccessError, match="does not verify against the CA"):
            wait_for_control_api(f"127.0.0.1:{port}", theirs.ca_cert, timeout=PATIENT)
    finally:
        link.stop()
