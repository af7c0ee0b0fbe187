"""Key agreement, key derivation, share encryption and key signatures for SecAgg+.

What (Bonawitz et al. 2017, CCS, Section 4 / Figure 4; Bell et al. 2020, CCS):

* Each client makes two fresh X25519 key pairs per round: ``(c_sk, c_pk)`` to derive the
  symmetric key that encrypts the Shamir shares it routes through the server, and
  ``(s_sk, s_pk)`` for the pairwise mask seeds ``s_{u,v} = KA(s_sk_u, s_pk_v)``.
* Raw X25519 outputs go through HKDF-SHA256 with the round's configuration digest as salt and
  a purpose label plus the ordered pair ``(min(u,v), max(u,v))`` as info, so seeds of
  different rounds, pairs and purposes are independent 256-bit keys.
* Shares travel client -> server -> client under AES-256-GCM; the associated data binds the
  round digest, sender id and receiver id, so the server can neither replay a ciphertext in
  another round nor redirect it to a different receiver or claim a different sender.
* Each client signs ``(round digest, node id, c_pk, s_pk)`` with its long-term Ed25519 identity
  key (the "PKI" variant of Bonawitz et al. that defeats a server substituting public keys,
  i.e. the man-in-the-middle a semi-honest-only Flower SecAgg+ cannot detect).
* In the consistency check (Bonawitz et al. 2017, Figure 4, round 3 of the malicious-server
  variant) each client signs ``(round digest, node id, U3)`` with the same identity key: the
  survivor set it was shown, so no two clients can be shown different sets without it being
  detected (:func:`sign_consistency`, :func:`verify_consistency`).

Why: every primitive is from the ``cryptography`` package (OpenSSL), constant-time and
audited; nothing here is homemade except the framing.
"""

from __future__ import annotations

import hashlib
import os
import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import DecryptionError, MalformedMessageError, SecAggError, SignatureVerificationError

PUBLIC_KEY_BYTES = 32
PRIVATE_KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12
TAG_BYTES = 16
DOMAIN = b"fedssl/secagg/v1/"

PURPOSE_MASK = b"pairwise-mask"
PURPOSE_ENCRYPTION = b"share-encryption"

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw


def generate_identity_key() -> Ed25519PrivateKey:
    """A long-term Ed25519 identity key for one node (registered with the server/PKI).

    Returns:
        A new private key.
    """
    return Ed25519PrivateKey.generate()


def identity_public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """Raw 32-byte public identity key, the form kept in an identity registry.

    Args:
        key: a private or public identity key.

    Returns:
        The raw public key.
    """
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(_RAW, _RAW_PUB)


def load_identity_public(data: bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    """Parse a raw Ed25519 public key (or pass one through).

    Args:
        data: the raw 32-byte key, or a key object.

    Returns:
        The public key.

    Raises:
        MalformedMessageError: ``data`` is not 32 bytes.
    """
    if isinstance(data, Ed25519PublicKey):
        return data
    if len(data) != PUBLIC_KEY_BYTES:
        raise MalformedMessageError(f"identity key must be 32 bytes, got {len(data)}")
    return Ed25519PublicKey.from_public_bytes(bytes(data))


def generate_x25519() -> tuple[X25519PrivateKey, bytes]:
    """A fresh X25519 key pair: (private key, raw 32-byte public key).

    Returns:
        The private key and its raw public key.
    """
    sk = X25519PrivateKey.generate()
    return sk, sk.public_key().public_bytes(_RAW, _RAW_PUB)


def x25519_private_bytes(sk: X25519PrivateKey) -> bytes:
    """Raw 32-byte private key (the secret that is Shamir-shared for dropout recovery).

    Args:
        sk: the private key.

    Returns:
        The raw private key.
    """
    return sk.private_bytes(_RAW, _RAW_PRIV, serialization.NoEncryption())


def x25519_from_private_bytes(data: bytes) -> X25519PrivateKey:
    """Load a raw 32-byte X25519 private key.

    Args:
        data: the raw private key.

    Returns:
        The private key.

    Raises:
        SecAggError: ``data`` is not 32 bytes.
    """
    if len(data) != PRIVATE_KEY_BYTES:
        raise SecAggError(f"X25519 private key must be 32 bytes, got {len(data)}")
    return X25519PrivateKey.from_private_bytes(data)


def x25519_public_of(sk: X25519PrivateKey) -> bytes:
    """Raw public key of ``sk``.

    Args:
        sk: the private key.

    Returns:
        The raw 32-byte public key.
    """
    return sk.public_key().public_bytes(_RAW, _RAW_PUB)


def derive_pair_key(
    sk: X25519PrivateKey, peer_public: bytes, *, salt: bytes, purpose: bytes, u: int, v: int
) -> bytes:
    """HKDF-SHA256(X25519(sk, peer_public)) -> 32 bytes, bound to purpose and the pair {u, v}.

    Args:
        sk: this node's private key.
        peer_public: the other node's raw public key.
        salt: the HKDF salt (the round digest).
        purpose: what the key is for (masks or share encryption).
        u: one node of the pair.
        v: the other node (the order of ``u`` and ``v`` does not matter).

    Returns:
        The 32-byte pair key.

    Raises:
        MalformedMessageError: ``peer_public`` is not a valid X25519 key (e.g. a low-order
            point).
    """
    try:
        shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # low-order point / all-zero shared secret
        raise MalformedMessageError(f"invalid X25519 public key for pair ({u}, {v})") from exc
    lo, hi = (u, v) if u <= v else (v, u)
    info = DOMAIN + purpose + struct.pack("<QQ", lo, hi)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(shared)


def config_digest(config_bytes: bytes) -> bytes:
    """SHA-256 of the serialised round configuration: the session id everything binds to.

    Args:
        config_bytes: the serialised :class:`~fedssl.privacy.secagg.messages.SetupConfig`.

    Returns:
        The 32-byte digest.
    """
    return hashlib.sha256(DOMAIN + b"config" + config_bytes).digest()


def advertisement_payload(digest: bytes, node_id: int, c_pk: bytes, s_pk: bytes) -> bytes:
    """Bytes an identity key signs: the round digest, the node id and both public keys.

    Args:
        digest: the round digest (:func:`config_digest`).
        node_id: the advertising node.
        c_pk: its raw X25519 key for share encryption.
        s_pk: its raw X25519 key for pairwise masks.

    Returns:
        The payload, domain-separated.
    """
    return DOMAIN + b"advertise" + digest + struct.pack("<Q", node_id) + c_pk + s_pk


def sign_advertisement(
    identity_key: Ed25519PrivateKey, digest: bytes, node_id: int, c_pk: bytes, s_pk: bytes
) -> bytes:
    """Ed25519 signature over :func:`advertisement_payload`.

    Args:
        identity_key: the node's Ed25519 identity key.
        digest: the round digest.
        node_id: the advertising node.
        c_pk: its raw X25519 key for share encryption.
        s_pk: its raw X25519 key for pairwise masks.

    Returns:
        The 64-byte signature.
    """
    return identity_key.sign(advertisement_payload(digest, node_id, c_pk, s_pk))


def verify_advertisement(
    identity_public: Ed25519PublicKey,
    digest: bytes,
    node_id: int,
    c_pk: bytes,
    s_pk: bytes,
    signature: bytes,
) -> None:
    """Raise :class:`SignatureVerificationError` unless the keys are signed by ``node_id``.

    Args:
        identity_public: the node's registered identity key.
        digest: the round digest.
        node_id: the advertising node.
        c_pk: the advertised key for share encryption.
        s_pk: the advertised key for pairwise masks.
        signature: the signature to check.

    Raises:
        SignatureVerificationError: the signature does not verify.
    """
    try:
        identity_public.verify(signature, advertisement_payload(digest, node_id, c_pk, s_pk))
    except InvalidSignature:
        raise SignatureVerificationError(
            f"public keys advertised for node {node_id} are not signed by its registered "
            "identity key (substituted key or wrong round); aborting"
        ) from None


def consistency_payload(digest: bytes, node_id: int, survivors: tuple[int, ...]) -> bytes:
    """Bytes a client signs in the consistency check: round digest, its id and the sorted
    survivor set ``U3`` it was shown (count-prefixed, so no two sets share an encoding).

    Args:
        digest: the round digest.
        node_id: the signing node.
        survivors: the survivor set it was shown.

    Returns:
        The payload, domain-separated.
    """
    ids = tuple(int(v) for v in survivors)
    return (DOMAIN + b"consistency" + digest + struct.pack("<QI", node_id, len(ids))
            + struct.pack(f"<{len(ids)}Q", *ids))


def sign_consistency(
    identity_key: Ed25519PrivateKey, digest: bytes, node_id: int, survivors: tuple[int, ...]
) -> bytes:
    """Ed25519 signature over :func:`consistency_payload`.

    Args:
        identity_key: the node's Ed25519 identity key.
        digest: the round digest.
        node_id: the signing node.
        survivors: the survivor set it was shown.

    Returns:
        The 64-byte signature.
    """
    return identity_key.sign(consistency_payload(digest, node_id, survivors))


def verify_consistency(
    identity_public: Ed25519PublicKey,
    digest: bytes,
    node_id: int,
    survivors: tuple[int, ...],
    signature: bytes,
) -> None:
    """Raise :class:`SignatureVerificationError` unless ``node_id`` signed exactly ``survivors``
    in this round.

    Args:
        identity_public: the node's registered identity key.
        digest: the round digest.
        node_id: the signing node.
        survivors: the survivor set the signature should cover.
        signature: the signature to check.

    Raises:
        SignatureVerificationError: the signature does not verify.
    """
    try:
        identity_public.verify(signature, consistency_payload(digest, node_id, survivors))
    except InvalidSignature:
        raise SignatureVerificationError(
            f"consistency signature of node {node_id} does not verify on the survivor set this "
            "client was shown (forged, from another round, or the server showed node "
            f"{node_id} a different set); aborting"
        ) from None


def _share_ad(digest: bytes, sender: int, receiver: int) -> bytes:
    return DOMAIN + b"share" + digest + struct.pack("<QQ", sender, receiver)


def encrypt_shares(
    key: bytes, plaintext: bytes, *, digest: bytes, sender: int, receiver: int
) -> bytes:
    """AES-256-GCM; returns ``nonce || ciphertext || tag`` (AD binds round, sender, receiver).

    Args:
        key: the pair's 32-byte share-encryption key (:func:`derive_pair_key`).
        plaintext: the serialised shares.
        digest: the round digest.
        sender: the sending node.
        receiver: the receiving node.

    Returns:
        The nonce, ciphertext and tag, concatenated.
    """
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _share_ad(digest, sender, receiver))


def decrypt_shares(key: bytes, blob: bytes, *, digest: bytes, sender: int, receiver: int) -> bytes:
    """Inverse of :func:`encrypt_shares`; raises :class:`DecryptionError` on a bad tag.

    Args:
        key: the pair's 32-byte share-encryption key.
        blob: what :func:`encrypt_shares` returned.
        digest: the round digest.
        sender: the sending node.
        receiver: the receiving node.

    Returns:
        The plaintext.

    Raises:
        DecryptionError: the tag does not verify (tampered, or bound to another round or pair).
    """
    try:
        return AESGCM(key).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], _share_ad(digest, sender, receiver)
        )
    except InvalidTag:
        raise DecryptionError(
            f"encrypted shares from node {sender} to node {receiver} failed authentication"
        ) from None
