"""Property-based fuzzing of every decoder of bytes that cross a trust boundary (issue 15).

Each decoder is fed random bytes, truncated, bit-flipped and spliced copies of valid
encodings, and valid encodings whose length or count fields declare huge sizes. It must end
in its own documented error (or a documented refusal value), never in an IndexError,
struct.error, MemoryError, RecursionError, OverflowError or a bare ValueError of a library,
and a huge declared size must be refused before anything of that size is allocated
(``tracemalloc`` peak).

Decoders covered:

- the ten SecAgg+ wire messages (``privacy/secagg/messages.py``, ``from_bytes``/``parse``:
  :class:`MalformedMessageError`), the Shamir share value and the raw identity key
  (``shamir.decode_share_value``, ``crypto.load_identity_public``), the payload of a Flower
  SecAgg record (``messages.payload_bytes``), and the client's and server's protocol stages
  that consume them (any :class:`SecAggError`);
- the privacy ledger (``LedgerEntry.from_json``, ``read_ledger``: :class:`LedgerError`) and
  the PEM public key sent with it (``identity.load_public_key``: :class:`IdentityError`);
- the server's ledger copies (``server/ledger_copies.store_copy``: a reason string, never an
  exception);
- the server's decoding and screening of training replies (``server/strategy.py``:
  ``decode_arrays`` returns a problem, ``FedSSLStrategy.screen`` rejects the reply).

Hypothesis runs derandomised (the same examples every run), with no example database and no
deadline (a loaded 2-core CI machine is slow, never wrong), and a bounded number of examples.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedssl.privacy.identity.keys import IdentityError, load_public_key, public_pem
from fedssl.privacy.identity.ledger import Ledger, LedgerEntry, LedgerError, read_ledger
from fedssl.privacy.secagg import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    KeyDirectory,
    MalformedMessageError,
    MaskedInput,
    SecAggClient,
    SecAggError,
    SecAggServer,
    SetupConfig,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    identity_public_bytes,
    make_identities,
)
from fedssl.privacy.secagg.crypto import load_identity_public
from fedssl.privacy.secagg.messages import MAX_NODES, ROUND_ID_BYTES, payload_bytes
from fedssl.privacy.secagg.shamir import SHARE_BYTES, decode_share_value
from fedssl.server.ledger_copies import store_copy

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: what a refused huge declared size may allocate at most (the decoders read a few fields)
MAX_PEAK_BYTES = 1 << 20
HEADER = 3 + 1 + 1 + ROUND_ID_BYTES  # magic, version, type, round id


# --------------------------------------------------------------------------- mutations
@st.composite
def mutated(draw: st.DrawFn, valid: list[bytes]) -> bytes:
    """A valid encoding, then one to three of: truncation, bit flips, a spliced-in huge or
    boundary integer, inserted or deleted bytes; or plain random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=600))
    data = bytearray(draw(st.sampled_from(valid)))
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        kind = draw(st.sampled_from(("truncate", "flip", "flip", "int", "insert", "delete")))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "int":
            fmt = draw(st.sampled_from(("<I", "<Q")))
            bits = 32 if fmt == "<I" else 64
            value = draw(st.sampled_from((0, 1, 2, MAX_NODES, MAX_NODES + 1, 1 << 31,
                                          (1 << bits) - 1, (1 << bits) - 2)))
            data[at:at + struct.calcsize(fmt)] = struct.pack(fmt, value)
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:at + draw(st.integers(1, 16))]
    return bytes(data)


def _refused_within(decode: Callable[[], object], error: type[BaseException] | tuple,
                    max_peak: int = MAX_PEAK_BYTES) -> None:
    """``decode()`` raises ``error`` and allocates at most ``max_peak`` bytes meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(error):
            decode()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < max_peak, f"{peak} bytes allocated before the refusal"


# --------------------------------------------------------------------------- SecAgg+ messages
MESSAGES = (SetupConfig, AdvertiseKeys, KeyDirectory, ShareKeys, ShareBundle, MaskedInput,
            ConsistencyCheck, ConsistencySignature, UnmaskRequest, UnmaskResponse)
IDS = [10, 11, 12, 13, 14]
D = 16


class _Round:
    """One complete SecAgg+ round; every client's state saved before each of its stages."""

    def __init__(self) -> None:
        keys = make_identities(IDS)
        self.keys = keys
        self.registry = {u: identity_public_bytes(keys[u]) for u in IDS}
        self.server = SecAggServer(IDS, D)
        clients = {u: SecAggClient(u, keys[u], self.registry) for u in IDS}
        self.config = self.server.setup()
        self.adverts = {u: clients[u].setup(self.config) for u in IDS}
        self.before_share = {u: c.export_state() for u, c in clients.items()}
        self.dirs = self.server.collect_advertisements(list(self.adverts.values()))
        self.shares = {u: clients[u].share_keys(self.dirs[u]) for u in IDS}
        self.before_mask = {u: c.export_state() for u, c in clients.items()}
        self.bundles = self.server.collect_shares(list(self.shares.values()))
        x = np.arange(D, dtype=np.uint32)
        self.masked = {u: clients[u].mask_input(self.bundles[u], x) for u in IDS}
        self.before_consistency = {u: c.export_state() for u, c in clients.items()}
        self.checks = self.server.collect_masked_inputs(list(self.masked.values()))
        self.signatures = {u: clients[u].consistency_check(self.checks[u]) for u in IDS}
        self.before_unmask = {u: c.export_state() for u, c in clients.items()}
        self.requests = self.server.collect_consistency_signatures(
            list(self.signatures.values()))
        self.responses = {u: clients[u].unmask(self.requests[u]) for u in IDS}

    def wire(self, cls: type) -> list[bytes]:
        """Every valid encoding of message type ``cls`` in this round."""
        found = {SetupConfig: [self.config], AdvertiseKeys: self.adverts.values(),
                 KeyDirectory: self.dirs.values(), ShareKeys: self.shares.values(),
                 ShareBundle: self.bundles.values(), MaskedInput: self.masked.values(),
                 ConsistencyCheck: self.checks.values(),
                 ConsistencySignature: self.signatures.values(),
                 UnmaskRequest: self.requests.values(),
                 UnmaskResponse: self.responses.values()}[cls]
        return [m.to_bytes() for m in found]

    def client(self, u: int, state: dict[int, bytes]) -> SecAggClient:
        return SecAggClient.from_state(state[u], self.keys[u], self.registry)


ROUND = _Round()
ALL_WIRE = [data for cls in MESSAGES for data in ROUND.wire(cls)]


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_valid_encodings_round_trip(cls: type) -> None:
    for data in ROUND.wire(cls):
        assert cls.from_bytes(data).to_bytes() == data
        assert cls.parse(bytearray(data)).to_bytes() == data
        assert cls.parse(memoryview(data)).to_bytes() == data


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
@FUZZ
@given(data=st.data())
def test_message_decoders_raise_only_malformed(cls: type, data: st.DataObject) -> None:
    """Random, truncated, flipped and spliced bytes (of this type's encodings and of the
    others'): a message of the right type, or MalformedMessageError."""
    raw = data.draw(st.one_of(mutated(ROUND.wire(cls)), mutated(ALL_WIRE)))
    try:
        msg = cls.from_bytes(raw)
    except MalformedMessageError:
        return
    assert isinstance(msg, cls)
    assert msg.to_bytes() == raw  # a message that parses is exactly its encoding


def test_non_bytes_and_strided_buffers_are_malformed() -> None:
    data = ROUND.config.to_bytes()
    strided = memoryview(data + data)[::2]  # not contiguous: no flat byte view of it
    for bad in ("text", 5, None, [1, 2], strided, np.zeros((2, 3), np.uint32)[:, ::2].data):
        with pytest.raises(MalformedMessageError):
            SetupConfig.from_bytes(bad)  # type: ignore[arg-type]


def _count_offsets(cls: type) -> list[tuple[int, str]]:
    """Where each u32 count / u64 vector length of ``cls``'s first encoding lies."""
    after_header = HEADER
    return {
        SetupConfig: [(after_header, "<I")],
        KeyDirectory: [(after_header + 8, "<I")],
        ShareKeys: [(after_header + 8, "<I")],
        ShareBundle: [(after_header + 8, "<I")],
        MaskedInput: [(after_header + 8, "<Q")],
        ConsistencyCheck: [(after_header + 8, "<I")],
        UnmaskRequest: [(after_header + 8, "<I")],
        UnmaskResponse: [(after_header + 8, "<I")],
    }.get(cls, [])


@pytest.mark.parametrize("cls", [c for c in MESSAGES if _count_offsets(c)],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("huge", [MAX_NODES, MAX_NODES + 1, (1 << 31), (1 << 32) - 1,
                                  (1 << 64) - 1])
def test_huge_declared_counts_refused_before_allocation(cls: type, huge: int) -> None:
    for offset, fmt in _count_offsets(cls):
        raw = bytearray(ROUND.wire(cls)[0])
        value = huge & ((1 << (8 * struct.calcsize(fmt))) - 1)
        struct.pack_into(fmt, raw, offset, value)
        _refused_within(lambda raw=bytes(raw): cls.from_bytes(raw), MalformedMessageError)


def test_the_second_count_of_two_is_checked_too() -> None:
    """UnmaskRequest/UnmaskResponse carry two lists: the second count is bounded as well."""
    for cls, first_item in ((UnmaskRequest, 8), (UnmaskResponse, 8 + SHARE_BYTES)):
        raw = bytearray(ROUND.wire(cls)[0])
        n = struct.unpack_from("<I", raw, HEADER + 8)[0]
        second = HEADER + 8 + 4 + n * first_item
        struct.pack_into("<I", raw, second, 0xFFFFFFFF)
        _refused_within(lambda raw=bytes(raw), cls=cls: cls.from_bytes(raw),
                        MalformedMessageError)


@pytest.mark.parametrize("huge", [MAX_NODES + 1, (1 << 31), (1 << 32) - 1])
def test_the_signature_count_of_an_unmask_request_is_checked(huge: int) -> None:
    """UnmaskRequest's third list (the relayed consistency signatures) is bounded too."""
    raw = bytearray(ROUND.wire(UnmaskRequest)[0])
    at = HEADER + 8
    for _ in range(2):  # skip survivors and dropped
        at += 4 + 8 * struct.unpack_from("<I", raw, at)[0]
    assert struct.unpack_from("<I", raw, at)[0] == ROUND.config.threshold  # t relayed
    struct.pack_into("<I", raw, at, huge)
    _refused_within(lambda: UnmaskRequest.from_bytes(bytes(raw)), MalformedMessageError)


@FUZZ
@given(st.one_of(st.binary(max_size=64),
                 st.integers(0, (1 << (8 * SHARE_BYTES)) - 1).map(
                     lambda v: v.to_bytes(SHARE_BYTES, "big"))))
def test_share_value_decoder(data: bytes) -> None:
    try:
        y = decode_share_value(data)
    except MalformedMessageError:
        return
    assert len(data) == SHARE_BYTES and y >= 0


@FUZZ
@given(st.binary(max_size=64))
def test_identity_key_decoder(data: bytes) -> None:
    try:
        load_identity_public(data)
    except MalformedMessageError:
        return
    assert len(data) == 32


CONFIG_VALUES = st.one_of(
    st.binary(max_size=64), st.text(max_size=16), st.booleans(),
    st.integers(-(1 << 63), (1 << 63) - 1), st.floats(allow_nan=True),
    st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=8),
    st.lists(st.text(max_size=4), max_size=4), st.lists(st.binary(max_size=4), max_size=4))


@FUZZ
@given(CONFIG_VALUES | st.none() | st.builds(bytearray, st.binary(max_size=8)))
def test_payload_of_a_config_record(value: object) -> None:
    """A record's payload must be bytes; an int is not a size to allocate (bytes(2**40))."""
    try:
        out = payload_bytes(value, "payload")
    except MalformedMessageError:
        assert not isinstance(value, bytes | bytearray)
        return
    assert isinstance(out, bytes) and out == value


def test_huge_int_payload_refused_before_allocation() -> None:
    _refused_within(lambda: payload_bytes(1 << 40, "payload"), MalformedMessageError)


# --------------------------------------------------------------------------- protocol stages
@FUZZ
@given(raw=mutated(ROUND.wire(SetupConfig)))
def test_client_setup_fuzzed(raw: bytes) -> None:
    client = SecAggClient(IDS[0], ROUND.keys[IDS[0]], ROUND.registry)
    try:
        client.setup(raw)
    except SecAggError:
        return


@FUZZ
@given(raw=mutated(ROUND.wire(KeyDirectory)), who=st.sampled_from(IDS))
def test_client_share_keys_fuzzed(raw: bytes, who: int) -> None:
    try:
        ROUND.client(who, ROUND.before_share).share_keys(raw)
    except SecAggError:
        return


@FUZZ
@given(raw=mutated(ROUND.wire(ShareBundle)), who=st.sampled_from(IDS))
def test_client_mask_input_fuzzed(raw: bytes, who: int) -> None:
    try:
        ROUND.client(who, ROUND.before_mask).mask_input(raw, np.zeros(D, np.uint32))
    except SecAggError:
        return


@FUZZ
@given(raw=mutated(ROUND.wire(ConsistencyCheck)), who=st.sampled_from(IDS))
def test_client_consistency_check_fuzzed(raw: bytes, who: int) -> None:
    client = ROUND.client(who, ROUND.before_consistency)
    try:
        sig = client.consistency_check(raw)
    except SecAggError:
        return
    # signed: only a set this client may sign (itself, >= t ids of the round, no stranger)
    survivors = ConsistencyCheck.from_bytes(raw).survivors
    assert who in survivors and set(survivors) <= set(IDS)
    assert len(survivors) >= ROUND.config.threshold and sig.sender == who


@FUZZ
@given(raw=mutated(ROUND.wire(UnmaskRequest)), who=st.sampled_from(IDS))
def test_client_unmask_fuzzed(raw: bytes, who: int) -> None:
    try:
        ROUND.client(who, ROUND.before_unmask).unmask(raw)
    except SecAggError:
        return
    # it revealed shares: the request carried >= t signatures valid on the signed set
    assert len(UnmaskRequest.from_bytes(raw).signatures) >= ROUND.config.threshold


@FUZZ
@given(raw=mutated(ROUND.wire(ConsistencySignature)), slot=st.sampled_from(range(len(IDS))))
def test_server_collect_consistency_signatures_fuzzed(raw: bytes, slot: int) -> None:
    """One client's consistency signature replaced by fuzzed bytes: a SecAggError (strict)
    or, non-strict, the sender dropped; an accepted signature verifies on U3."""
    sigs = ROUND.wire(ConsistencySignature)
    sigs[slot] = raw
    for strict in (True, False):
        server = _server_at_consistency(strict)
        try:
            requests = server.collect_consistency_signatures(sigs)
        except SecAggError:
            continue
        relayed = next(iter(requests.values())).signatures
        assert all(ROUND.signatures[u].signature == sig for u, sig in relayed)


def _server_at_consistency(strict: bool) -> SecAggServer:
    """A server replaying ROUND up to (not including) the consistency signatures."""
    server = SecAggServer(IDS, D, round_id=ROUND.config.round_id,
                          identity_registry=ROUND.registry, strict=strict)
    server.setup()
    server.collect_advertisements(list(ROUND.adverts.values()))
    server.collect_shares(list(ROUND.shares.values()))
    server.collect_masked_inputs(list(ROUND.masked.values()))
    return server


@FUZZ
@given(raw=mutated(ROUND.wire(AdvertiseKeys)), slot=st.sampled_from(range(len(IDS))))
def test_server_collect_advertisements_fuzzed(raw: bytes, slot: int) -> None:
    """One client's advertisement replaced by fuzzed bytes: the server raises a SecAggError
    (strict) or, non-strict, drops exactly what does not validate."""
    adverts = ROUND.wire(AdvertiseKeys)
    adverts[slot] = raw
    for strict in (True, False):
        server = SecAggServer(IDS, D, round_id=ROUND.config.round_id,
                              identity_registry=ROUND.registry, strict=strict)
        assert server.setup() == ROUND.config  # the round whose messages these are
        try:
            server.collect_advertisements(adverts)
        except SecAggError:
            continue


# --------------------------------------------------------------------------- ledger
KEY = Ed25519PrivateKey.generate()
PEM = public_pem(KEY)
CID = "client-001"


def _valid_ledger() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        led = Ledger(Path(tmp) / "ledger.jsonl", KEY)
        for r, eps in ((1, 0.5), (2, 0.8), (3, math.inf)):
            led.append(LedgerEntry(round=r, client=CID, noise_multiplier=1.1,
                                   sample_rate=0.01, steps=100, max_grad_norm=1.0, delta=1e-5,
                                   accountant="prv", epsilon=eps, run_id="r1",
                                   extra={"sensitivity": 1}))
        return led.path.read_text()


LEDGER = _valid_ledger()
LINES = LEDGER.splitlines()
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8)
#: JSON texts a parser trips on: deep nesting, huge numbers, non-finite, escapes
HOSTILE_JSON = st.sampled_from([
    "[" * 100_000, "{\"a\":" * 50_000, "1" * 5000, "1e999", "-Infinity", "NaN",
    "\"\\ud800\"", "{\"round\": 1e999}", "\x00", "\ufeff{}",
])


@st.composite
def ledger_lines(draw: st.DrawFn) -> str:
    """A valid entry with a field replaced, removed or added, or its text mutated; or
    hostile JSON."""
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return draw(HOSTILE_JSON)
    line = draw(st.sampled_from(LINES))
    if choice == 1:
        return draw(mutated([line.encode()])).decode("utf-8", errors="replace")
    row = json.loads(line)
    field = draw(st.sampled_from([*sorted(row), "extra", "unknown"]))
    if choice == 2:
        row.pop(field, None)
    elif choice == 3:
        row[field] = draw(JSON_VALUES | HOSTILE_JSON.map(_loads_or_str))
    else:
        depth = draw(st.integers(1, 3000))
        row[field] = _nested(depth)
    return _dumps(row)


def _loads_or_str(text: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _nested(depth: int) -> object:
    out: object = {}
    for _ in range(depth):
        out = {"a": out}
    return out


def _dumps(row: dict) -> str:
    try:
        return json.dumps(row, sort_keys=True)
    except (ValueError, RecursionError):  # too deep for json.dumps itself: write it out
        return json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)})[:-1] + \
            ", \"extra\": " + "{\"a\": " * 3000 + "{}" + "}" * 3001


@FUZZ
@given(ledger_lines())
def test_ledger_entry_parser(line: str) -> None:
    try:
        entry = LedgerEntry.from_json(line, "fuzz:1")
    except LedgerError:
        return
    entry.compute_hash()  # a parsed entry can be hashed (as read_ledger does)
    with contextlib.suppress(LedgerError):  # and made an accountant segment, or refused
        entry.segment()


@FUZZ
@given(st.lists(ledger_lines(), min_size=1, max_size=4), st.binary(max_size=16))
def test_read_ledger_raises_only_ledger_error(lines: list[str], tail: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.jsonl"
        path.write_bytes(("\n".join([*LINES[:1], *lines]) + "\n").encode(
            "utf-8", errors="surrogatepass") + tail)
        try:
            entries = read_ledger(path, KEY.public_key())
        except LedgerError:
            return
        assert all(e.client == CID for e in entries)


def test_read_ledger_refuses_undecodable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(LEDGER.encode() + b"\xff\xfe\n")
    with pytest.raises(LedgerError, match="UTF-8"):
        read_ledger(path, KEY.public_key())


@pytest.mark.parametrize("line", [
    "[" * 100_000, "{\"a\": " * 900 + "1" + "}" * 900, "1" * 5000,
    LINES[0].replace("\"round\": 1", "\"round\": 1e999"),
    LINES[0].replace("\"round\": 1", "\"round\": Infinity"),
    LINES[0].replace("\"steps\": 100", "\"steps\": NaN"),
    LINES[0].replace("\"round\": 1", "\"round\": " + "9" * 5000),
    LINES[0].replace("\"delta\": 1e-05", "\"delta\": " + "9" * 400),
    LINES[0].replace("\"extra\": {", "\"extra\": {\"deep\": " + "[" * 800 + "]" * 800 + ", "),
])
def test_ledger_parser_found_bugs(line: str) -> None:
    """What fuzzing found, and its neighbours: deep nesting (RecursionError, in json.loads
    or later in the hash's canonical JSON), numbers beyond a float or an int (OverflowError,
    Python's 4300-digit ValueError) leaked instead of a LedgerError; through the server's
    ledger copies (store_copy) a site could crash the ServerApp with its copy."""
    with pytest.raises(LedgerError):
        LedgerEntry.from_json(line, "fuzz:1")


# --------------------------------------------------------------------------- PEM key
PEM_VARIANTS = [PEM, PEM.replace(b"\n", b"\r\n"),
                b"-----BEGIN PUBLIC KEY-----\nMA==\n-----END PUBLIC KEY-----\n",
                b"-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"]


@FUZZ
@given(mutated(PEM_VARIANTS))
def test_public_key_decoder(data: bytes) -> None:
    try:
        key = load_public_key(data)
    except IdentityError:
        return
    assert isinstance(key, Ed25519PublicKey)  # a flipped bit of the key is another key


def test_public_key_of_other_algorithms_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, x25519

    for key in (ec.generate_private_key(ec.SECP256R1()), x25519.X25519PrivateKey.generate()):
        pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        with pytest.raises(IdentityError, match="not Ed25519"):
            load_public_key(pem)


# --------------------------------------------------------------------------- ledger copies
@FUZZ
@given(st.one_of(ledger_lines().map(lambda line: f"{LINES[0]}\n{line}\n"),
                 mutated([LEDGER.encode()]).map(lambda b: b.decode("utf-8", "replace")),
                 st.text(max_size=200),
                 st.just("[" * 1_000_000)),
       st.one_of(st.just(PEM), mutated(PEM_VARIANTS)))
def test_store_copy_returns_a_reason_never_raises(text: str, pem: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        problem = store_copy(run, CID, text, pem, registry_key=KEY.public_key())
        if problem is None:  # stored: it verifies (an empty copy is an empty ledger)
            read_ledger(run / "ledger" / f"{CID}.jsonl", KEY.public_key())
        else:
            assert isinstance(problem, str) and problem
            assert not (run / "ledger" / f"{CID}.jsonl").exists()


def test_store_copy_refuses_unencodable_text(tmp_path: Path) -> None:
    problem = store_copy(tmp_path, CID, LEDGER + "\ud800", PEM, registry_key=KEY.public_key())
    assert problem is not None and "UTF-8" in problem


# --------------------------------------------------------------------------- server replies
REF = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def _npy(array: np.ndarray) -> bytes:
    from flwr.app import Array

    return Array(array).data


NPY = [_npy(REF["w"] + 1), _npy(REF["b"]), _npy(np.asfortranarray(np.ones((2, 3), np.float32))),
       _npy(np.ones((2, 3), np.float64)), _npy(np.ones(3, np.int32))]


def _array(data: bytes):
    from flwr.app import Array

    return Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=data)


@FUZZ
@given(mutated(NPY))
def test_decode_arrays_returns_a_problem_never_raises(data: bytes) -> None:
    from flwr.app import Array, ArrayRecord

    from fedssl.server.replies import decode_arrays

    values, problem = decode_arrays(ArrayRecord({"w": _array(data), "b": Array(REF["b"])}),
                                    REF)
    if problem is None:
        assert values["w"].shape == (2, 3) and values["w"].dtype == np.float32
        assert np.isfinite(values["w"]).all()
    else:
        assert values is None


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


@pytest.mark.parametrize("shape", [(1 << 28,), (1 << 40,), (2, 1 << 30), (1 << 62, 4)])
def test_huge_declared_array_refused_before_allocation(shape: tuple[int, ...]) -> None:
    """numpy.load allocates the declared shape before it reads a byte: refused first."""
    from flwr.app import Array, ArrayRecord

    from fedssl.server.replies import decode_arrays

    data = _npy_header("<f4", shape) + b"\x00" * 64
    record = ArrayRecord({"w": _array(data), "b": Array(REF["b"])})
    tracemalloc.start()
    try:
        values, problem = decode_arrays(record, REF)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert values is None and problem is not None and "w" in problem
    assert peak < MAX_PEAK_BYTES, f"{peak} bytes allocated before the refusal"


def _reply(status: dict, metrics: dict):
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    content = RecordDict({
        "arrays": ArrayRecord({k: Array(np.ones_like(v)) for k, v in REF.items()}),
        "metrics": MetricRecord(metrics),
        "status": ConfigRecord(status),
    })
    return Message(content, dst_node_id=1, message_type="train")


METRIC_VALUES = st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.floats(),
                          st.lists(st.floats(), max_size=3))


@pytest.fixture(scope="module")
def _flower_task() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id = TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0


@FUZZ
@given(ledger=CONFIG_VALUES, pub=CONFIG_VALUES, identity=CONFIG_VALUES, client=CONFIG_VALUES,
       n=METRIC_VALUES)
def test_screen_rejects_malformed_replies_never_raises(
        _flower_task: None, ledger: object, pub: object, identity: object, client: object,
        n: object) -> None:
    """A reply's status and metrics are whatever a client sends: a ledger copy of the wrong
    type is refused (not ``bytes(huge int)``), a non-finite example count is rejected (it
    would turn the average into NaN), and the round's average stays finite."""
    from fedssl.server.strategy import FedSSLStrategy

    good = _reply({"status": "ok", "client": "good"}, {"num-examples": 10})
    bad = _reply({"status": "ok", "client": client, "ledger": ledger, "ledger-pub": pub,
                  "identity": identity}, {"num-examples": n})
    strategy = FedSSLStrategy(reference=REF)
    arrays, _ = strategy.aggregate_train(1, [good, bad])
    out = strategy.last_outcome
    assert "good" in out.accepted
    assert all(np.isfinite(a.numpy()).all() for a in arrays.values())
    for cid, (text, key) in out.ledgers.items():
        assert isinstance(text, str) and isinstance(key, bytes), cid


def test_screen_huge_int_ledger_key_refused_before_allocation(_flower_task: None) -> None:
    from fedssl.server.strategy import FedSSLStrategy

    bad = _reply({"status": "ok", "client": "bad", "ledger": LEDGER, "ledger-pub": 1 << 40},
                 {"num-examples": 10})
    strategy = FedSSLStrategy(reference=REF)
    tracemalloc.start()
    try:
        strategy.aggregate_train(1, [bad])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MAX_PEAK_BYTES
    assert "bad" in strategy.last_outcome.ledger_refused
    assert "bad" not in strategy.last_outcome.ledgers
