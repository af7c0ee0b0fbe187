"""Certificates and keys for a real federation (``fedssl certs``).

What Flower 1.41 expects, and therefore what is written here (all with ``cryptography``):

- **TLS**: the SuperLink serves its Fleet, Control and Runtime APIs over one HTTPS port
  (uvicorn). It needs a server certificate + key (``--ssl-certfile``/``--ssl-keyfile``) and the
  CA certificate (``--ssl-ca-certfile``); SuperNodes verify the server with the CA certificate
  (``--root-certificates``). The server certificate carries SANs for every host name / IP the
  clients (and the SuperLink's own local ServerApp process, which connects to ``127.0.0.1``)
  use, so ``127.0.0.1`` and ``localhost`` are always included.
- **SuperNode authentication**: each node signs every Fleet request with an elliptic-curve key
  on a NIST curve. The SuperNode loads the private key with
  ``load_ssh_private_key`` (OpenSSH private key format), and the SuperLink operator registers
  the node's public key, an OpenSSH ``ecdsa-sha2-nistp384 ...`` line, through the Control API
  (``flwr supernode register KEY.pub``); the SuperLink, started with
  ``--enable-supernode-auth``, refuses any node whose key was not registered. We use SECP384R1.

Layout of ``--out DIR``::

    ca.crt ca.key                  certificate authority (keep ca.key offline)
    server.crt server.key          SuperLink TLS certificate (signed by the CA) and key
    nodes/node-<i>.key             node i's private key (OpenSSH format, mode 0600)
    nodes/node-<i>.pub             node i's public key (OpenSSH line)
    nodes/node-<i>.identity.pem    node i's Ed25519 identity key (signs its SecAgg round keys and
                                   its privacy ledger; mode 0600)
    identities.json                public identity registry: site name -> Ed25519 public key
    authorized_nodes.txt           the public keys the server will register, one per line

Site ``i`` receives exactly :meth:`CertPaths.site_files` (``ca.crt``, ``identities.json``, its
own ``node-<i>.key`` and ``node-<i>.identity.pem``); :func:`handoff` is the list and the
``fedssl client`` command ``fedssl certs`` prints for each site. The identity key must be the
registered one: the server keeps no ledger signed by a key the registry does not list, and
secure aggregation refuses unregistered round keys.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedssl.atomic import atomic_write_bytes, atomic_write_private
from fedssl.privacy.identity.keys import load_or_create_identity, write_registry
from fedssl.run_layout import IDENTITIES_FILE

#: file names inside a certificate directory
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
NODES_DIR = "nodes"
AUTHORIZED = "authorized_nodes.txt"
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
VALID_DAYS = 365


class CertError(ValueError):
    """Raised when a certificate directory or key file is missing or malformed."""


@dataclass(frozen=True)
class CertPaths:
    """Paths of the files in a certificate directory (see the module docstring)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        """CA certificate, given to every client (``--root-certificates``)."""
        return self.root / CA_CERT

    @property
    def registry(self) -> Path:
        """Public identity registry (client id -> Ed25519 key), given to every client and the
        server: the trust anchor of secure aggregation's key signatures."""
        return self.root / IDENTITIES_FILE

    def identity_key(self, index: int) -> Path:
        """Node ``index``'s Ed25519 identity key (signs its SecAgg keys and its ledger).

        Args:
            index: the node's 1-based index.

        Returns:
            ``nodes/node-<index>.identity.pem``.
        """
        return self.node_key(index).with_name(f"node-{index}.identity.pem")

    @property
    def ca_key(self) -> Path:
        """CA private key: only needed to sign new server certificates."""
        return self.root / CA_KEY

    @property
    def server_cert(self) -> Path:
        """SuperLink TLS certificate."""
        return self.root / SERVER_CERT

    @property
    def server_key(self) -> Path:
        """SuperLink TLS private key."""
        return self.root / SERVER_KEY

    @property
    def authorized(self) -> Path:
        """OpenSSH public keys of the nodes allowed to join, one per line."""
        return self.root / AUTHORIZED

    def node_key(self, index: int) -> Path:
        """Private authentication key of node ``index`` (1-based).

        Args:
            index: the node's 1-based index.

        Returns:
            ``nodes/node-<index>.key``.
        """
        return self.root / NODES_DIR / f"node-{index}.key"

    def site_files(self, index: int) -> tuple[Path, ...]:
        """Every file site ``index`` needs, in the layout ``fedssl client`` reads: the CA
        certificate and the registry side by side, the node key and the identity key side
        by side.

        Args:
            index: the site's 1-based index.

        Returns:
            The CA certificate, the registry, the node key and the identity key.
        """
        return (self.ca_cert, self.registry, self.node_key(index), self.identity_key(index))

    def require_server(self) -> None:
        """Raise :class:`CertError` naming the first file the server needs that is missing.

        Raises:
            CertError: the CA certificate, server certificate, server key or authorised-keys file
                is missing.
        """
        for path in (self.ca_cert, self.server_cert, self.server_key, self.authorized):
            if not path.is_file():
                raise CertError(f"{path} not found: create the directory with "
                                f"`fedssl certs --out {self.root}`")


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write ``data`` atomically; private keys get mode 0600 before any byte is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        atomic_write_private(path, data)
    else:
        atomic_write_bytes(path, data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # keep order, drop duplicates
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_ca(common_name: str = "fedssl federation CA"
            ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA certificate (P-384, ECDSA-SHA384) and its key.

    Args:
        common_name: the CA's subject name.

    Returns:
        The CA's private key and certificate.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     hosts: list[str]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for ``hosts`` (DNS names or IPs), signed by the CA.

    Args:
        ca_key: the CA's private key.
        ca_cert: the CA's certificate.
        hosts: the names the certificate is valid for; the first is its common name.

    Returns:
        The server's private key and certificate.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def make_node_key(comment: str = "") -> tuple[bytes, bytes]:
    """A SuperNode authentication key pair: (OpenSSH private key, OpenSSH public key line).

    Flower 1.41's SuperNode reads the private key with ``load_ssh_private_key`` and the
    Control API's ``RegisterNode`` takes the OpenSSH public key; both must be EC on a NIST curve.

    Args:
        comment: appended to the public key line (e.g. ``node-1``).

    Returns:
        The private key (OpenSSH PEM) and the public key line.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    if comment:
        public += b" " + comment.encode()
    return private, public + b"\n"


def node_public_key(private_key_path: Path) -> bytes:
    """The OpenSSH public key line of a node's private key file (checks the format).

    Args:
        private_key_path: the node's private key file.

    Returns:
        The public key line (OpenSSH format).

    Raises:
        CertError: the file is missing, not an unencrypted OpenSSH key, or not ECDSA.
    """
    try:
        key = serialization.load_ssh_private_key(Path(private_key_path).read_bytes(), None)
    except FileNotFoundError as exc:
        raise CertError(f"node key not found: {private_key_path}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertError(f"{private_key_path}: not an unencrypted OpenSSH private key "
                        f"({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{private_key_path}: node keys must be ECDSA (NIST curve), got "
                        f"{type(key).__name__}")
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH)


def read_authorized(path: Path) -> list[bytes]:
    """The OpenSSH public key lines listed in ``path`` (blank lines and ``#`` ignored).

    Args:
        path: the authorised-keys file.

    Returns:
        The key lines, as bytes.

    Raises:
        CertError: a line is not an ECDSA OpenSSH public key (naming the line).
    """
    keys = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            pub = serialization.load_ssh_public_key(line.encode())
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CertError(f"{path}:{number}: not an OpenSSH public key ({exc})") from exc
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise CertError(f"{path}:{number}: node keys must be ECDSA (NIST curve)")
        keys.append(line.encode())
    return keys


def create_certs(out: Path, nodes: int, hosts: list[str] | None = None,
                 overwrite: bool = False) -> CertPaths:
    """Write a CA, a server certificate for ``hosts`` and ``nodes`` node key pairs to ``out``.

    ``127.0.0.1`` and ``localhost`` are always among the server certificate's names, because
    the SuperLink's ServerApp process connects to it over the loopback address.

    Args:
        out: the directory to write.
        nodes: how many node key pairs (at least 1).
        hosts: the server's further DNS names or IP addresses.
        overwrite: replace an existing CA.

    Returns:
        The paths of what was written.

    Raises:
        CertError: ``nodes`` is below 1, or ``out`` holds a CA and ``overwrite`` is off.
    """
    if nodes < 1:
        raise CertError(f"--nodes must be at least 1, got {nodes}")
    paths = CertPaths(Path(out))
    if paths.ca_key.exists() and not overwrite:
        raise CertError(f"{paths.ca_key} already exists: refusing to replace a CA "
                        "(use another --out, or --force)")
    all_hosts = [*(hosts or []), *DEFAULT_HOSTS]
    ca_key, ca_cert = make_ca()
    server_key, server_cert = make_server_cert(ca_key, ca_cert, all_hosts)
    _write(paths.ca_key, _pem_key(ca_key), private=True)
    _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(paths.server_key, _pem_key(server_key), private=True)
    _write(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    lines = []
    for i in range(1, nodes + 1):
        private, public = make_node_key(f"node-{i}")
        _write(paths.node_key(i), private, private=True)
        _write(paths.node_key(i).with_suffix(".pub"), public)
        lines.append(public.decode())
    _write(paths.authorized, "".join(lines).encode())
    # Ed25519 identity keys for secure aggregation and the ledger, and their public registry
    identities = {f"node-{i}": load_or_create_identity(paths.identity_key(i))
                  for i in range(1, nodes + 1)}
    write_registry(paths.registry, identities)
    return paths


def handoff(paths: CertPaths, nodes: int, server: str = "SERVER:9092") -> str:
    """What to give each site and the exact command it runs (printed by ``fedssl certs``).

    The four files go into one folder at the site (``fedssl-site/`` below): ``fedssl client``
    reads ``identities.json`` next to ``ca.crt`` and ``node-<i>.identity.pem`` next to
    ``node-<i>.key``, and refuses to start without them.

    Args:
        paths: what :func:`create_certs` wrote.
        nodes: how many sites.
        server: the SuperLink's address, as the sites reach it.

    Returns:
        The text, one block per site.
    """
    lines = [f"wrote {paths.root}: ca.crt ca.key server.crt server.key identities.json "
             f"authorized_nodes.txt nodes/node-1..{nodes}.key/.pub/.identity.pem",
             "keep ca.key offline; server.crt, server.key, authorized_nodes.txt and "
             "identities.json stay with the server",
             "give each site, over a secure channel, these 4 files (into one folder, "
             "fedssl-site/ below), then it runs:"]
    for i in range(1, nodes + 1):
        files = "  ".join(str(f) for f in paths.site_files(i))
        lines += [f"  site {i}: {files}",
                  f"    fedssl client --server {server} --certs fedssl-site/{CA_CERT} "
                  f"--node-key fedssl-site/node-{i}.key --data DATA --state-dir STATE-DIR"]
    return "\n".join(lines)
