"""A node's long-term Ed25519 identity key (signs its ledger and, later, its SecAgg keys).

The private key is stored as unencrypted PKCS#8 PEM with file mode 0600 in the node's own state
directory; the public key as SubjectPublicKeyInfo PEM, which is what auditors and the server
are given. Ed25519: Bernstein et al., "High-speed high-security signatures", 2012 (RFC 8032).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedssl.atomic import atomic_write_private, atomic_write_text


class IdentityError(ValueError):
    """Raised when a key file is missing, unreadable or of the wrong type."""


def load_or_create_identity(path: str | Path) -> Ed25519PrivateKey:
    """Load the Ed25519 private key at ``path``, creating it (mode 0600) if absent.

    Args:
        path: the PEM file.

    Returns:
        The private key.
    """
    path = Path(path)
    if path.exists():
        return load_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write_private(path, pem, exclusive=True)
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key from PEM.

    Args:
        path: the PEM file.

    Returns:
        The private key.

    Raises:
        IdentityError: the file is unreadable or not an Ed25519 private key.
    """
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise IdentityError(f"cannot read private key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} is not an Ed25519 private key")
    return key


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of a key's public half.

    Args:
        key: a private or public key.

    Returns:
        The PEM bytes.
    """
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(data: bytes | str | Path) -> Ed25519PublicKey:
    """Parse an Ed25519 public key from PEM bytes or a PEM file path.

    Args:
        data: PEM bytes, or the path of a PEM file.

    Returns:
        The public key.

    Raises:
        IdentityError: not a PEM public key, or not Ed25519.
    """
    raw = Path(data).read_bytes() if isinstance(data, (str, Path)) else data
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IdentityError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityError("public key is not Ed25519")
    return key


def write_registry(path: str | Path, keys: dict[str, Ed25519PrivateKey | Ed25519PublicKey]
                   ) -> Path:
    """Write the identity registry: client id -> (secure-aggregation index, public key).

    The registry is the out-of-band trust anchor of secure aggregation: each client checks the
    signatures on its neighbours' round keys against it, so a server that substitutes a key is
    caught. It is public (no secrets) and distributed with the certificates.

    Args:
        path: the registry file (``identities.json``).
        keys: client id -> its private or public key; indices follow the sorted ids.

    Returns:
        ``path``.
    """
    import json

    path = Path(path)
    entries = {cid: {"index": i, "public_key": public_pem(k).decode()}
               for i, (cid, k) in enumerate(sorted(keys.items()))}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(entries, indent=2) + "\n")
    return path


def load_registry(path: str | Path) -> dict[str, tuple[int, Ed25519PublicKey]]:
    """Read an identity registry written by :func:`write_registry`.

    Args:
        path: the registry file.

    Returns:
        Client id -> (secure-aggregation index, public key).

    Raises:
        IdentityError: the file is unreadable or malformed, or two clients share an index.
    """
    import json

    try:
        raw = json.loads(Path(path).read_text())
        out = {str(cid): (int(e["index"]), load_public_key(e["public_key"].encode()))
               for cid, e in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IdentityError(f"cannot read identity registry {path}: {exc}") from exc
    if len({i for i, _ in out.values()}) != len(out):
        raise IdentityError(f"identity registry {path}: duplicate indices")
    return out
