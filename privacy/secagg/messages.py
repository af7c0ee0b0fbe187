"""Explicit, validated wire messages of the SecAgg+ protocol (no pickle, no eval).

What: one frozen dataclass per message of Bonawitz et al. (2017, Figure 4) / Bell et al.
(2020), in protocol order::

    server -> all     SetupConfig      round id, node ids, degree k, threshold t, length d
    client -> server  AdvertiseKeys    c_pk, s_pk, Ed25519 signature             (round 0)
    server -> client  KeyDirectory     the signed keys of the client's neighbours
    client -> server  ShareKeys        AES-GCM ciphertexts of (b_u, s_sk_u) shares (round 1)
    server -> client  ShareBundle      the ciphertexts addressed to this client
    client -> server  MaskedInput      y_u = x_u + PRG(b_u) +- sum PRG(s_uv)     (round 2)
    server -> client  ConsistencyCheck the survivor set U3 (the same for every client)
    client -> server  ConsistencySignature  Ed25519 signature on (round, U3)     (round 3)
    server -> client  UnmaskRequest    survivors and dropped among its neighbours, and
                                       t of the consistency signatures (from U4)
    client -> server  UnmaskResponse   b-shares of survivors, s_sk-shares of dropped (round 4)

Wire format: ``b"FSA" | version u8 | type u8 | round_id[32]`` followed by the fields, with
little-endian fixed-width integers, ``u32`` element counts and fixed-size keys, signatures,
shares and ciphertexts; vectors are ``u64 length`` + raw little-endian uint32. Parsing checks
the header, every length and count against the bytes actually present (before allocating),
sortedness/uniqueness of id lists, and rejects trailing bytes. Every problem raises
:class:`~fedssl.privacy.secagg.errors.MalformedMessageError` naming the message and field.
Semantic checks that need round state (ids in the expected set, vector length ``d``) are made
by the client and server stage methods.

Why: messages cross a trust boundary (the server is untrusted, clients may be faulty), so the
parser must be total and explicit. (Flower 1.41's SecAgg+ passes loosely typed ConfigRecord
values and splits decrypted share plaintexts by an embedded length field without checking it.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from .crypto import NONCE_BYTES, PUBLIC_KEY_BYTES, SIGNATURE_BYTES, TAG_BYTES
from .errors import MalformedMessageError
from .shamir import SHARE_BYTES

MAGIC = b"FSA"
#: 2: the consistency check (types 9, 10) and the signatures in UnmaskRequest
VERSION = 2
ROUND_ID_BYTES = 32
PLAINTEXT_BYTES = 2 * SHARE_BYTES  # b_u share || s_sk share
CIPHERTEXT_BYTES = NONCE_BYTES + PLAINTEXT_BYTES + TAG_BYTES
MAX_NODES = 1 << 20
MAX_VECTOR_LENGTH = 1 << 31
MAX_NODE_ID = (1 << 64) - 1
U32 = np.dtype("<u4")

_HEADER = struct.Struct("<3sBB")
T = TypeVar("T", bound="_Message")


class _Writer:
    def __init__(self, msg_type: int, round_id: bytes) -> None:
        self.parts: list[bytes] = [_HEADER.pack(MAGIC, VERSION, msg_type), round_id]

    def u32(self, v: int) -> _Writer:
        self.parts.append(struct.pack("<I", v))
        return self

    def u64(self, v: int) -> _Writer:
        self.parts.append(struct.pack("<Q", v))
        return self

    def raw(self, b: bytes) -> _Writer:
        self.parts.append(bytes(b))
        return self

    def ids(self, ids: tuple[int, ...]) -> _Writer:
        self.u32(len(ids))
        self.parts.append(struct.pack(f"<{len(ids)}Q", *ids))
        return self

    def done(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    def __init__(self, data: bytes | bytearray | memoryview, name: str, msg_type: int) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedMessageError(f"{name}: expected bytes, got {type(data).__name__}")
        try:
            self.view = memoryview(data).cast("B")
        except TypeError:  # a strided or multi-dimensional buffer: no flat byte view
            raise MalformedMessageError(f"{name}: expected contiguous bytes") from None
        self.name = name
        self.pos = 0
        magic, version, got_type = _HEADER.unpack(self.take(_HEADER.size, "header"))
        if magic != MAGIC:
            raise MalformedMessageError(f"{name}: bad magic {magic!r}")
        if version != VERSION:
            raise MalformedMessageError(f"{name}: unsupported version {version}")
        if got_type != msg_type:
            raise MalformedMessageError(f"{name}: message type {got_type}, expected {msg_type}")
        self.round_id = bytes(self.take(ROUND_ID_BYTES, "round_id"))

    def take(self, n: int, field: str) -> memoryview:
        if n > len(self.view) - self.pos:
            raise MalformedMessageError(
                f"{self.name}: truncated at field '{field}' (need {n} bytes at offset "
                f"{self.pos}, only {len(self.view) - self.pos} left)"
            )
        out = self.view[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self, field: str) -> int:
        return int(struct.unpack("<I", self.take(4, field))[0])

    def u64(self, field: str) -> int:
        return int(struct.unpack("<Q", self.take(8, field))[0])

    def fixed(self, n: int, field: str) -> bytes:
        return bytes(self.take(n, field))

    def count(self, field: str, item_bytes: int) -> int:
        n = self.u32(f"{field} count")
        if n > MAX_NODES:
            raise MalformedMessageError(f"{self.name}: {field} count {n} exceeds {MAX_NODES}")
        if n * item_bytes > len(self.view) - self.pos:
            raise MalformedMessageError(
                f"{self.name}: truncated: {field} declares {n} entries of {item_bytes} bytes, "
                f"only {len(self.view) - self.pos} bytes left"
            )
        return n

    def ids(self, field: str) -> tuple[int, ...]:
        n = self.count(field, 8)
        return tuple(struct.unpack(f"<{n}Q", self.take(8 * n, field)))

    def done(self) -> None:
        if self.pos != len(self.view):
            raise MalformedMessageError(
                f"{self.name}: {len(self.view) - self.pos} unexpected trailing bytes"
            )


def payload_bytes(value: object, field: str) -> bytes:
    """A message's bytes as carried in a transport record (e.g. a Flower ConfigRecord value),
    checked to be bytes: ``bytes(value)`` would turn an integer into that many zero bytes
    (``bytes(2**40)``), a list of small ints into bytes, and raise TypeError on anything else.

    Args:
        value: the transport record's value.
        field: names the value in errors.

    Returns:
        The bytes.

    Raises:
        MalformedMessageError: naming ``field`` and the type found.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        try:
            return memoryview(value).cast("B").tobytes()
        except TypeError:
            pass
    raise MalformedMessageError(f"{field}: expected bytes, got {type(value).__name__}")


def _check_len(name: str, field: str, value: bytes, n: int) -> None:
    if not isinstance(value, bytes) or len(value) != n:
        got = len(value) if isinstance(value, bytes) else type(value).__name__
        raise MalformedMessageError(f"{name}: field '{field}' must be {n} bytes, got {got}")


def _check_id(name: str, field: str, node_id: int) -> None:
    if type(node_id) is int and 0 <= node_id <= MAX_NODE_ID:
        return
    if isinstance(node_id, bool) or not isinstance(node_id, int | np.integer):
        raise MalformedMessageError(f"{name}: {field} must be an int")
    if not 0 <= node_id <= MAX_NODE_ID:
        raise MalformedMessageError(f"{name}: {field} {node_id} is not an unsigned 64-bit id")


def _check_unique(name: str, field: str, ids: list[int] | tuple[int, ...]) -> None:
    seen: set[int] = set()
    for i in ids:
        if i in seen:
            raise MalformedMessageError(f"{name}: duplicated node id {i} in '{field}'")
        seen.add(i)


def _check_sorted_ids(name: str, field: str, ids: tuple[int, ...]) -> None:
    for i in ids:
        _check_id(name, field, i)
    _check_unique(name, field, ids)
    if list(ids) != sorted(ids):
        raise MalformedMessageError(f"{name}: '{field}' must be sorted")


def _check_signatures(name: str, items: tuple[tuple[int, bytes], ...]) -> None:
    """``(signer, signature)`` pairs: sorted by signer, each signer once, 64-byte signatures."""
    if not isinstance(items, tuple) or any(
        not isinstance(it, tuple) or len(it) != 2 for it in items
    ):
        raise MalformedMessageError(f"{name}: signatures must be (node id, signature) pairs")
    for _, sig in items:
        _check_len(name, "signature", sig, SIGNATURE_BYTES)
    _check_sorted_ids(name, "signers", tuple(signer for signer, _ in items))


class _Message:
    TYPE: ClassVar[int]
    round_id: bytes

    def to_bytes(self) -> bytes:  # pragma: no cover - overridden
        """The message on the wire: the header, then its fields (see "Wire format" above).

        Returns:
            The encoded message.
        """
        raise NotImplementedError

    @classmethod
    def from_bytes(cls: type[T], data: bytes | bytearray | memoryview
                   ) -> T:  # pragma: no cover - overridden
        """Parse and validate one message of this type.

        Args:
            data: the encoded message.

        Returns:
            The message, its fields checked.

        Raises:
            MalformedMessageError: a wrong header or type, a length or count that the bytes
                present do not hold, an invalid field, or trailing bytes.
        """
        raise NotImplementedError

    @classmethod
    def parse(cls: type[T], data: T | bytes | bytearray | memoryview) -> T:
        """Accept either an already-built message or its bytes (validated either way)."""
        if isinstance(data, cls):
            return data
        if isinstance(data, _Message):
            raise MalformedMessageError(f"expected {cls.__name__}, got {type(data).__name__}")
        return cls.from_bytes(data)  # type: ignore[attr-defined,no-any-return]


@dataclass(frozen=True)
class SetupConfig(_Message):
    """Round configuration broadcast by the server; its digest is the session id."""

    TYPE: ClassVar[int] = 1
    round_id: bytes
    node_ids: tuple[int, ...]
    degree: int
    threshold: int
    vector_length: int

    def __post_init__(self) -> None:
        name = "SetupConfig"
        _check_len(name, "round_id", self.round_id, ROUND_ID_BYTES)
        _check_sorted_ids(name, "node_ids", self.node_ids)
        n = len(self.node_ids)
        if not 2 <= n <= MAX_NODES:
            raise MalformedMessageError(f"{name}: {n} nodes, need 2..{MAX_NODES}")
        if not 1 <= self.degree <= n - 1 or (self.degree * n) % 2:
            raise MalformedMessageError(f"{name}: no {self.degree}-regular graph on {n} nodes")
        if not 1 <= self.threshold <= self.degree + 1:
            raise MalformedMessageError(
                f"{name}: threshold {self.threshold} not in [1, k + 1 = {self.degree + 1}]"
            )
        if not 1 <= self.vector_length <= MAX_VECTOR_LENGTH:
            raise MalformedMessageError(f"{name}: vector_length {self.vector_length} invalid")

    def to_bytes(self) -> bytes:
        w = _Writer(self.TYPE, self.round_id).ids(self.node_ids)
        return w.u32(self.degree).u32(self.threshold).u64(self.vector_length).done()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> SetupConfig:
        r = _Reader(data, "SetupConfig", cls.TYPE)
        ids = r.ids("node_ids")
        k, t, d = r.u32("degree"), r.u32("threshold"), r.u64("vector_length")
        r.done()
        return cls(r.round_id, ids, k, t, d)


@dataclass(frozen=True)
class AdvertiseKeys(_Message):
    """A client's two X25519 public keys, signed by its Ed25519 identity key."""

    TYPE: ClassVar[int] = 2
    BODY_BYTES: ClassVar[int] = 8 + 2 * PUBLIC_KEY_BYTES + SIGNATURE_BYTES
    round_id: bytes
    node_id: int
    c_pk: bytes
    s_pk: bytes
    signature: bytes

    def __post_init__(self) -> None:
        name = "AdvertiseKeys"
        _check_len(name, "round_id", self.round_id, ROUND_ID_BYTES)
        _check_id(name, "node_id", self.node_id)
        _check_len(name, "c_pk", self.c_pk, PUBLIC_KEY_BYTES)
        _check_len(name, "s_pk", self.s_pk, PUBLIC_KEY_BYTES)
        _check_len(name, "signature", self.signature, SIGNATURE_BYTES)

    def body(self) -> bytes:
        """The fields after the header: node id, both public keys and the signature (a
        :class:`KeyDirectory` relays them as they are).

        Returns:
            ``BODY_BYTES`` bytes.
        """
        return struct.pack("<Q", self.node_id) + self.c_pk + self.s_pk + self.signature

    def to_bytes(self) -> bytes:
        return _Writer(self.TYPE, self.round_id).raw(self.body()).done()

    @classmethod
    def _read_body(cls, r: _Reader, round_id: bytes) -> AdvertiseKeys:
        return cls(
            round_id,
            r.u64("node_id"),
            r.fixed(PUBLIC_KEY_BYTES, "c_pk"),
            r.fixed(PUBLIC_KEY_BYTES, "s_pk"),
            r.fixed(SIGNATURE_BYTES, "signature"),
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> AdvertiseKeys:
        r = _Reader(data, "AdvertiseKeys", cls.TYPE)
        msg = cls._read_body(r, r.round_id)
        r.done()
        return msg


@dataclass(frozen=True)
class KeyDirectory(_Message):
    """The advertised keys of ``receiver``'s live neighbours (and its own), as relayed."""

    TYPE: ClassVar[int] = 3
    round_id: bytes
    receiver: int
    entries: tuple[AdvertiseKeys, ...]

    def __post_init__(self) -> None:
        name = "KeyDirectory"
        _check_len(name, "round_id", self.round_id, ROUND_ID_BYTES)
        _check_id(name, "receiver", self.receiver)
        if any(not isinstance(e, AdvertiseKeys) for e in self.entries):
            raise MalformedMessageError(f"{name}: entries must be AdvertiseKeys")
        _check_unique(name, "entries", [e.node_id for e in self.entries])
        if any(e.round_id != self.round_id for e in self.entries):
            raise MalformedMessageError(f"{name}: entry from a different round")

    def to_bytes(self) -> bytes:
        w = _Writer(self.TYPE, self.round_id).u64(self.receiver).u32(len(self.entries))
        for e in self.entries:
            w.raw(e.body())
        return w.done()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> KeyDirectory:
        r = _Reader(data, "KeyDirectory", cls.TYPE)
        receiver = r.u64("receiver")
        n = r.count("entries", AdvertiseKeys.BODY_BYTES)
        entries = tuple(AdvertiseKeys._read_body(r, r.round_id) for _ in range(n))
        r.done()
        return cls(r.round_id, receiver, entries)


@dataclass(frozen=True)
class EncryptedShares:
    """AES-GCM ciphertext of ``(b_u share, s_sk_u share)`` from ``sender`` to ``receiver``."""

    sender: int
    receiver: int
    ciphertext: bytes

    def __post_init__(self) -> None:
        _check_id("EncryptedShares", "sender", self.sender)
        _check_id("EncryptedShares", "receiver", self.receiver)
        _check_len("EncryptedShares", "ciphertext", self.ciphertext, CIPHERTEXT_BYTES)


@dataclass(frozen=True)
class ShareKeys(_Message):
    """Client ``sender``'s encrypted shares, one per neighbour, for the server to route."""

    TYPE: ClassVar[int] = 4
    round_id: bytes
    sender: int
    shares: tuple[EncryptedShares, ...]

    def __post_init__(self) -> None:
        name = "ShareKeys"
        _check_len(name, "round_id", self.round_id, ROUND_ID_BYTES)
        _check_id(name, "sender", self.sender)
        if any(not isinstance(s, EncryptedShares) or s.sender != self.sender for s in self.shares):
            raise MalformedMessageError(f"{name}: every share must come from {self.sender}")
        _check_unique(name, "receivers", [s.receiver for s in self.shares])

    def to_bytes(self) -> bytes:
        w = _Writer(self.TYPE, self.round_id).u64(self.sender).u32(len(self.shares))
        for s in self.shares:
            w.u64(s.receiver).raw(s.ciphertext)
        return w.done()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> ShareKeys:
        r = _Reader(data, "ShareKeys", cls.TYPE)
        sender = r.u64("sender")
        n = r.count("shares", 8 + CIPHERTEXT_BYTES)
        shares = tuple(
            EncryptedShares(sender, r.u64("receiver"), r.fixed(CIPHERTEXT_BYTES, "ciphertext"))
            for _ in range(n)
        )
        r.done()
        return cls(r.round_id, sender, shares)


@dataclass(frozen=True)
class ShareBundle(_Message):
    """The encrypted shares addressed to ``receiver``; their senders form its U2 neighbours."""

    TYPE: ClassVar[int] = 5
    round_id: bytes
    receiver: int
    shares: tuple[EncryptedShares, ...]

    def __post_init__(self) -> None:
        name = "ShareBundle"
        _check_len(name, "round_id", self.round_id, ROUND_ID_BYTES)
        _check_id(name, "receiver", self.receiver)
        if any(
            not isinstance(s, EncryptedShares) or s.receiver != self.receiver for s in self.shares
        ):
            raise MalformedMessageError(f"{name}: every share must be addressed to receiver")
        _check_unique(name, "senders", [s.sender for s in self.shares])

    def to_bytes(self) -> bytes:
        w = _Writer(self.TYPE, self.round_id).u64(self.receiver).u32(len(self.shares))
        for s in self.shares:
            w.u64(s.sender).raw(s.ciphertext)
        return w.done()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> ShareBundle:
        r = _Reader(data, "ShareBundle", cls.TYPE)
        receiver = r.u64("receiver")
        n = r.count("shares", 8 + CIPHERTEXT_BYTES)
        shares = tuple(
            EncryptedShares(r.u64("sender"), receiver, r.fixed(CIPHERTEXT_BYTES, "ciphertext"))
            for _ in range(n)
        )
        r.done()
        return cls(r.round_id, receiver, shares)


@dataclass(frozen=True, eq=False)
class MaskedInput(_Message):
    """``y_u``: the client's masked uint32 vector (uniformly random to anyone but the sum)."""

    TYPE: ClassVar[int] = 6
    round_id: bytes
    sender: int
    vector: NDArray[np.uint32]

    def __post_init__(self) -> None:
        name = "MaskedInput"
        _check_len(name, "round_id", self.round_id, ROUND_ID_BYTES)
        _check_id(name, "sender", self.sender)
        v = self.vector
        if not isinstance(v, np.ndarray) or v.dtype != U32 or v.ndim != 1:
            raise MalformedMessageError(f"{name}: vector must be a 1-D little-endian uint32 array")
        if not 1 <= v.shape[0] <= MAX_VECTOR_LENGTH:
            raise MalformedMessageError(f"{name}: vector length {v.shape[0]} invalid")

    def to_bytes(self) -> bytes:
        head = _Writer(self.TYPE, self.round_id).u64(self.sender).u64(self.vector.shape[0])
        payload = memoryview(np.ascontiguousarray(self.vector)).cast("B")
        return head.done() + payload  # one copy of the (large) vector

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> MaskedInput:
        r = _Reader(data, "MaskedInput", cls.TYPE)
        sender, d = r.u64("sender"), r.u64("vector length")
        if not 1 <= d <= MAX_VECTOR_LENGTH:
            raise MalformedMessageError(f"MaskedInput: vector length {d} invalid")
        vec = np.frombuffer(r.take(4 * d, "vector"), dtype=U32)  # zero-copy, read-only
        r.done()
        return cls(r.round_id, sender, vec)


@dataclass(frozen=True)
class ConsistencyCheck(_Message):
    """The survivor set ``U3`` (every client whose masked input the server received).

    Bonawitz et al. 2017, Figure 4, round 3 (ConsistencyCheck, malicious-server variant): the
    server sends the same ``U3`` to every client in it; each signs what it was shown.
    """

    TYPE: ClassVar[int] = 9
    round_id: bytes
    receiver: int
    survivors: tuple[int, ...]

    def __post_init__(self) -> None:
        name = "ConsistencyCheck"
        _check_len(name, "round_id", self.round_id, ROUND_ID_BYTES)
        _check_id(name, "receiver", self.receiver)
        _check_sorted_ids(name, "survivors", self.survivors)

    def to_bytes(self) -> bytes:
        return _Writer(self.TYPE, self.round_id).u64(self.receiver).ids(self.survivors).done()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> ConsistencyCheck:
        r = _Reader(data, "ConsistencyCheck", cls.TYPE)
        receiver = r.u64("receiver")
        survivors = r.ids("survivors")
        r.done()
        return cls(r.round_id, receiver, survivors)


@dataclass(frozen=True)
class ConsistencySignature(_Message):
    """``sender``'s Ed25519 signature on (round digest, its id, the ``U3`` it was shown)."""

    TYPE: ClassVar[int] = 10
    round_id: bytes
    sender: int
    signature: bytes

    def __post_init__(self) -> None:
        name = "ConsistencySignature"
        _check_len(name, "round_id", self.round_id, ROUND_ID_BYTES)
        _check_id(name, "sender", self.sender)
        _check_len(name, "signature", self.signature, SIGNATURE_BYTES)

    def to_bytes(self) -> bytes:
        return _Writer(self.TYPE, self.round_id).u64(self.sender).raw(self.signature).done()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> ConsistencySignature:
        r = _Reader(data, "ConsistencySignature", cls.TYPE)
        sender = r.u64("sender")
        signature = r.fixed(SIGNATURE_BYTES, "signature")
        r.done()
        return cls(r.round_id, sender, signature)


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Survivors (sent masked input) and dropped (shared keys, then left) among ``receiver``'s
    neighbours, with the consistency signatures the server relays (t of them), by signer."""

    TYPE: ClassVar[int] = 7
    round_id: bytes
    receiver: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        name = "UnmaskRequest"
        _check_len(name, "round_id", self.round_id, ROUND_ID_BYTES)
        _check_id(name, "receiver", self.receiver)
        _check_sorted_ids(name, "survivors", self.survivors)
        _check_sorted_ids(name, "dropped", self.dropped)
        both = set(self.survivors) & set(self.dropped)
        if both:
            raise MalformedMessageError(
                f"{name}: node {min(both)} listed as both survivor and dropped"
            )
        _check_signatures(name, self.signatures)

    def to_bytes(self) -> bytes:
        w = _Writer(self.TYPE, self.round_id).u64(self.receiver)
        w.ids(self.survivors).ids(self.dropped).u32(len(self.signatures))
        for signer, sig in self.signatures:
            w.u64(signer).raw(sig)
        return w.done()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> UnmaskRequest:
        r = _Reader(data, "UnmaskRequest", cls.TYPE)
        receiver = r.u64("receiver")
        survivors, dropped = r.ids("survivors"), r.ids("dropped")
        n = r.count("signatures", 8 + SIGNATURE_BYTES)
        sigs = tuple(
            (r.u64("signer"), r.fixed(SIGNATURE_BYTES, "signature")) for _ in range(n)
        )
        r.done()
        return cls(r.round_id, receiver, survivors, dropped, sigs)


@dataclass(frozen=True)
class UnmaskResponse(_Message):
    """Shares ``(owner, y)``: of ``b_owner`` for surviving owners, of ``s_sk_owner`` for dropped."""

    TYPE: ClassVar[int] = 8
    round_id: bytes
    sender: int
    seed_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        name = "UnmaskResponse"
        _check_len(name, "round_id", self.round_id, ROUND_ID_BYTES)
        _check_id(name, "sender", self.sender)
        for field, items in (("seed_shares", self.seed_shares), ("key_shares", self.key_shares)):
            for owner, share in items:
                _check_id(name, f"{field} owner", owner)
                _check_len(name, field, share, SHARE_BYTES)
            _check_unique(name, field, [o for o, _ in items])
        both = {o for o, _ in self.seed_shares} & {o for o, _ in self.key_shares}
        if both:
            raise MalformedMessageError(
                f"{name}: both a seed share and a key share for node {min(both)}"
            )

    def to_bytes(self) -> bytes:
        w = _Writer(self.TYPE, self.round_id).u64(self.sender)
        for items in (self.seed_shares, self.key_shares):
            w.u32(len(items))
            for owner, share in items:
                w.u64(owner).raw(share)
        return w.done()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> UnmaskResponse:
        r = _Reader(data, "UnmaskResponse", cls.TYPE)
        sender = r.u64("sender")
        lists = []
        for field in ("seed_shares", "key_shares"):
            n = r.count(field, 8 + SHARE_BYTES)
            lists.append(
                tuple((r.u64(f"{field} owner"), r.fixed(SHARE_BYTES, field)) for _ in range(n))
            )
        r.done()
        return cls(r.round_id, sender, lists[0], lists[1])
