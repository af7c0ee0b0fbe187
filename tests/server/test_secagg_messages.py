"""Wire messages: round trips, and rejection of truncated, resized, foreign or duplicated data."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from fedssl.privacy.secagg import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    KeyDirectory,
    MalformedMessageError,
    MaskedInput,
    SecAggClient,
    SecAggServer,
    SetupConfig,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    identity_public_bytes,
    make_identities,
)
from fedssl.privacy.secagg.messages import CIPHERTEXT_BYTES, EncryptedShares


class Round:
    def __init__(self, n: int = 7, d: int = 24, **kwargs: object) -> None:
        self.ids = list(range(10, 10 + n))
        self.d = d
        keys = make_identities(self.ids)
        reg = {u: identity_public_bytes(keys[u]) for u in self.ids}
        self.server = SecAggServer(self.ids, d, **kwargs)  # type: ignore[arg-type]
        self.clients = {u: SecAggClient(u, keys[u], reg) for u in self.ids}
        self.config = self.server.setup()
        self.adverts = {u: self.clients[u].setup(self.config) for u in self.ids}


def _all_messages() -> list[bytes]:
    r = Round()
    dirs = r.server.collect_advertisements(list(r.adverts.values()))
    shares = {u: r.clients[u].share_keys(dirs[u]) for u in r.ids}
    bundles = r.server.collect_shares(list(shares.values()))
    x = np.arange(r.d, dtype=np.uint32)
    masked = {u: r.clients[u].mask_input(bundles[u], x) for u in r.ids}
    checks = r.server.collect_masked_inputs(list(masked.values()))
    sigs = {u: r.clients[u].consistency_check(checks[u]) for u in r.ids}
    reqs = r.server.collect_consistency_signatures(list(sigs.values()))
    resps = {u: r.clients[u].unmask(reqs[u]) for u in r.ids}
    u = r.ids[0]
    return [
        r.config.to_bytes(),
        r.adverts[u].to_bytes(),
        dirs[u].to_bytes(),
        shares[u].to_bytes(),
        bundles[u].to_bytes(),
        masked[u].to_bytes(),
        checks[u].to_bytes(),
        sigs[u].to_bytes(),
        reqs[u].to_bytes(),
        resps[u].to_bytes(),
    ]


CLASSES = [
    SetupConfig,
    AdvertiseKeys,
    KeyDirectory,
    ShareKeys,
    ShareBundle,
    MaskedInput,
    ConsistencyCheck,
    ConsistencySignature,
    UnmaskRequest,
    UnmaskResponse,
]


@pytest.fixture(scope="module")
def wire() -> list[bytes]:
    return _all_messages()


def test_round_trip(wire: list[bytes]) -> None:
    for cls, data in zip(CLASSES, wire, strict=True):
        msg = cls.from_bytes(data)
        assert msg.to_bytes() == data


def test_every_truncation_is_rejected(wire: list[bytes]) -> None:
    for cls, data in zip(CLASSES, wire, strict=True):
        cuts = sorted({*range(0, min(len(data), 200)), *range(len(data) - 70, len(data))})
        for cut in cuts:
            if 0 <= cut < len(data):
                with pytest.raises(MalformedMessageError):
                    cls.from_bytes(data[:cut])


def test_trailing_bytes_wrong_type_and_magic_rejected(wire: list[bytes]) -> None:
    for i, (cls, data) in enumerate(zip(CLASSES, wire, strict=True)):
        with pytest.raises(MalformedMessageError, match="trailing"):
            cls.from_bytes(data + b"\x00")
        other = CLASSES[(i + 1) % len(CLASSES)]
        with pytest.raises(MalformedMessageError, match="type"):
            other.from_bytes(data)
        with pytest.raises(MalformedMessageError, match="magic"):
            cls.from_bytes(b"XYZ" + data[3:])
    with pytest.raises(MalformedMessageError):
        SetupConfig.from_bytes("not bytes")  # type: ignore[arg-type]


def test_wrong_vector_length_rejected() -> None:
    r = Round(d=24)
    dirs = r.server.collect_advertisements(list(r.adverts.values()))
    bundles = r.server.collect_shares([r.clients[u].share_keys(dirs[u]) for u in r.ids])
    u = r.ids[0]
    with pytest.raises(MalformedMessageError, match="length"):
        r.clients[u].mask_input(bundles[u], np.zeros(23, dtype=np.uint32))
    v = r.ids[1]
    with pytest.raises(MalformedMessageError, match="uint32"):
        r.clients[v].mask_input(bundles[v], np.zeros(24, dtype=np.int64))
    # a length field that disagrees with the payload, and a vector of the wrong length
    good = [r.clients[w].mask_input(bundles[w], np.zeros(24, np.uint32)) for w in r.ids[2:]]
    raw = bytearray(good[0].to_bytes())
    struct.pack_into("<Q", raw, 3 + 2 + 32 + 8, 25)
    with pytest.raises(MalformedMessageError, match="truncated"):
        MaskedInput.from_bytes(bytes(raw))
    short = MaskedInput(good[0].round_id, good[0].sender, np.zeros(23, dtype=np.uint32))
    with pytest.raises(MalformedMessageError, match="expected 24"):
        r.server.collect_masked_inputs([short.to_bytes(), *good[1:]])
    # server state unchanged: the same stage succeeds without the bad message
    reqs = r.server.collect_masked_inputs(good)
    assert set(reqs) == set(r.ids[2:])


def test_bad_and_duplicated_ids_rejected_by_server() -> None:
    r = Round()
    adverts = list(r.adverts.values())
    with pytest.raises(MalformedMessageError, match="duplicated"):
        r.server.collect_advertisements([*adverts, adverts[0]])
    stranger = AdvertiseKeys(
        r.config.round_id, 999, adverts[0].c_pk, adverts[0].s_pk, adverts[0].signature
    )
    with pytest.raises(MalformedMessageError, match="999"):
        r.server.collect_advertisements([*adverts[1:], stranger])
    foreign = AdvertiseKeys(
        b"\x01" * 32, *[getattr(adverts[0], f) for f in ("node_id", "c_pk", "s_pk", "signature")]
    )
    with pytest.raises(MalformedMessageError, match="round id"):
        r.server.collect_advertisements([foreign, *adverts[1:]])
    dirs = r.server.collect_advertisements(adverts)  # still in the same stage: works
    shares = [r.clients[u].share_keys(dirs[u]) for u in r.ids]
    s0 = shares[0]
    fewer = ShareKeys(s0.round_id, s0.sender, s0.shares[1:])
    with pytest.raises(MalformedMessageError, match="expected its live neighbours"):
        r.server.collect_shares([fewer, *shares[1:]])


def test_duplicated_ids_rejected_in_parsing() -> None:
    r = Round()
    rid = r.config.round_id
    req = UnmaskRequest(rid, 10, (10, 11), ())
    raw = bytearray(req.to_bytes())
    struct.pack_into("<Q", raw, 3 + 2 + 32 + 8 + 4 + 8, 10)  # survivors = (10, 10)
    with pytest.raises(MalformedMessageError, match="duplicated"):
        UnmaskRequest.from_bytes(bytes(raw))
    with pytest.raises(MalformedMessageError, match="both survivor and dropped"):
        UnmaskRequest(rid, 10, (10, 11), (11,))
    with pytest.raises(MalformedMessageError, match="sorted"):
        SetupConfig(rid, (3, 2, 1), 2, 2, 5)
    # the consistency messages: sorted, distinct survivors and signers; 64-byte signatures
    with pytest.raises(MalformedMessageError, match="sorted"):
        ConsistencyCheck(rid, 10, (11, 10))
    with pytest.raises(MalformedMessageError, match="duplicated"):
        ConsistencyCheck(rid, 10, (10, 10))
    with pytest.raises(MalformedMessageError, match="signature"):
        ConsistencySignature(rid, 10, b"\x00" * 63)
    sig = b"\x01" * 64
    with pytest.raises(MalformedMessageError, match="duplicated"):
        UnmaskRequest(rid, 10, (10,), (), ((11, sig), (11, sig)))
    with pytest.raises(MalformedMessageError, match="sorted"):
        UnmaskRequest(rid, 10, (10,), (), ((12, sig), (11, sig)))
    with pytest.raises(MalformedMessageError, match="signature"):
        UnmaskRequest(rid, 10, (10,), (), ((11, sig[:-1]),))
    with pytest.raises(MalformedMessageError, match="pairs"):
        UnmaskRequest(rid, 10, (10,), (), ((11, sig, 1),))  # type: ignore[arg-type]
    one = bytearray(UnmaskRequest(rid, 10, (10,), (), ((11, sig), (12, sig))).to_bytes())
    struct.pack_into("<Q", one, len(one) - 72, 11)  # second signer also 11
    with pytest.raises(MalformedMessageError, match="duplicated"):
        UnmaskRequest.from_bytes(bytes(one))
    with pytest.raises(MalformedMessageError, match="duplicated"):
        KeyDirectory(rid, 10, (r.adverts[10], r.adverts[10]))
    ad = r.adverts[10].to_bytes()
    body = ad[3 + 2 + 32 :]
    kd = KeyDirectory(rid, 10, (r.adverts[10],)).to_bytes()
    dup = kd[: 3 + 2 + 32 + 8] + struct.pack("<I", 2) + body + body
    with pytest.raises(MalformedMessageError, match="duplicated"):
        KeyDirectory.from_bytes(dup)


def test_client_rejects_foreign_ids_and_bad_sizes() -> None:
    r = Round(n=9, degree=4)
    dirs = r.server.collect_advertisements(list(r.adverts.values()))
    u = r.ids[0]
    non_neighbour = next(v for v in r.ids if v != u and v not in r.server.graph[u])
    bad = KeyDirectory(dirs[u].round_id, u, (*dirs[u].entries, r.adverts[non_neighbour]))
    with pytest.raises(MalformedMessageError, match="not a neighbour"):
        r.clients[u].share_keys(bad)
    empty = ShareBundle(dirs[u].round_id, u, ()).to_bytes()[:-4]
    one_short = empty + struct.pack("<IQ", 1, 11) + b"\x00" * (CIPHERTEXT_BYTES - 1)
    with pytest.raises(MalformedMessageError, match="truncated"):
        ShareBundle.from_bytes(one_short)
    with pytest.raises(MalformedMessageError, match="ciphertext"):
        EncryptedShares(11, u, b"\x00" * (CIPHERTEXT_BYTES + 1))
    with pytest.raises(MalformedMessageError, match="signature"):
        AdvertiseKeys(dirs[u].round_id, u, b"\x00" * 32, b"\x00" * 32, b"\x00" * 63)
    with pytest.raises(MalformedMessageError, match="threshold"):
        SetupConfig(dirs[u].round_id, (1, 2, 3), 2, 4, 5)
    with pytest.raises(MalformedMessageError, match="regular"):
        SetupConfig(dirs[u].round_id, (1, 2, 3), 1, 1, 5)


def test_non_strict_server_drops_bad_senders() -> None:
    r = Round(strict=False)
    adverts = list(r.adverts.values())
    garbage = adverts[0].to_bytes()[:-1]
    dirs = r.server.collect_advertisements([garbage, *adverts[1:], adverts[1]])
    assert set(dirs) == set(r.ids[1:])
    assert len(r.server.rejected) == 2
