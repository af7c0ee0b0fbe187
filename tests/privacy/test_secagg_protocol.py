"""SecAgg+ end to end: exact sums, dropouts, thresholds, key substitution, mask uniformity."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy.stats import chisquare

from fedssl.privacy.secagg import (
    ConsistencyCheck,
    DecryptionError,
    Dropouts,
    InsufficientParticipantsError,
    KeyDirectory,
    MalformedMessageError,
    ProtocolStateError,
    Quantizer,
    SecAggClient,
    SecAggServer,
    ServerStage,
    ShareBundle,
    SignatureVerificationError,
    UnmaskRequest,
    build_graph,
    default_degree,
    default_threshold,
    generate_identity_key,
    identity_public_bytes,
    make_identities,
    run_secagg,
    run_secagg_mean,
)
from fedssl.privacy.secagg.crypto import generate_x25519, sign_advertisement
from fedssl.privacy.secagg.messages import AdvertiseKeys, EncryptedShares

ROUND_ID = bytes(range(32))
"""A fixed round id for scripted dropouts: the graph it seeds decides whether a node keeps
``t`` share holders, so with a random one the same dropouts fail in some rounds (13% for the
combined case below), which is the protocol being right, not the test."""


def _inputs(rng: np.random.Generator, ids: list[int], d: int) -> dict[int, np.ndarray]:
    return {u: rng.integers(0, 2**32, d, dtype=np.uint32) for u in ids}


def _expected(inputs: dict[int, np.ndarray], ids: tuple[int, ...]) -> np.ndarray:
    total = np.zeros(next(iter(inputs.values())).shape, dtype=np.uint64)
    for u in ids:
        total += inputs[u]
    return (total % (1 << 32)).astype(np.uint32)


class Round:
    """Step-by-step access to a round (what a Flower workflow would do)."""

    def __init__(self, n: int, d: int, seed: int = 0, **kwargs: object) -> None:
        rng = np.random.default_rng(seed)
        self.ids = sorted(int(i) for i in rng.choice(1 << 40, n, replace=False))
        self.keys = make_identities(self.ids)
        self.registry = {u: identity_public_bytes(self.keys[u]) for u in self.ids}
        self.server = SecAggServer(self.ids, d, **kwargs)  # type: ignore[arg-type]
        self.clients = {u: SecAggClient(u, self.keys[u], self.registry) for u in self.ids}
        self.inputs = _inputs(rng, self.ids, d)

    def advertise(self) -> dict[int, KeyDirectory]:
        cfg = self.server.setup().to_bytes()
        return self.server.collect_advertisements(
            [self.clients[u].setup(cfg).to_bytes() for u in self.ids]
        )

    def through_shares(self) -> dict[int, ShareBundle]:
        dirs = self.advertise()
        return self.server.collect_shares([self.clients[u].share_keys(dirs[u]) for u in dirs])

    def through_masked(self) -> dict[int, ConsistencyCheck]:
        bundles = self.through_shares()
        return self.server.collect_masked_inputs(
            [self.clients[u].mask_input(bundles[u], self.inputs[u]) for u in bundles]
        )

    def through_consistency(self) -> dict[int, UnmaskRequest]:
        checks = self.through_masked()
        return self.server.collect_consistency_signatures(
            [self.clients[u].consistency_check(checks[u]) for u in checks]
        )


@pytest.mark.parametrize("seed", range(8))
def test_exact_sum_random_sizes(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    n = int(rng.integers(3, 41))
    d = int(rng.integers(1, 3000))
    rnd = random.Random(seed)
    id_set: set[int] = {0, (1 << 64) - 1}  # extremes of the unsigned 64-bit id range
    while len(id_set) < n:
        id_set.add(rnd.getrandbits(64))
    ids = sorted(id_set)
    inputs = _inputs(rng, ids, d)
    result = run_secagg(inputs, serialize=bool(seed % 2))
    assert result.survivors == tuple(ids) and result.dropped == ()
    assert result.total.dtype == np.uint32
    assert np.array_equal(result.total, _expected(inputs, tuple(ids)))


@pytest.mark.parametrize(("n", "k"), [(3, 2), (4, 1), (5, 3), (6, 3), (9, 8), (12, 11)])
def test_graph_degrees_including_odd(n: int, k: int) -> None:
    rng = np.random.default_rng(n)
    inputs = _inputs(rng, list(range(n)), 17)
    result = run_secagg(inputs, degree=k)
    assert np.array_equal(result.total, _expected(inputs, tuple(range(n))))


def test_graph_is_k_regular_and_seeded() -> None:
    ids = list(range(50, 80))
    g = build_graph(ids, 10, b"\x01" * 32)
    assert all(len(v) == 10 and u not in v for u, v in g.items())
    assert all(u in g[v] for u, nb in g.items() for v in nb)  # symmetric
    assert g == build_graph(ids, 10, b"\x01" * 32)
    assert g != build_graph(ids, 10, b"\x02" * 32)
    odd = build_graph(list(range(10)), 3, b"\x03" * 32)
    assert all(len(v) == 3 for v in odd.values())
    assert default_degree(30) == 10 and default_threshold(10) == 6


def test_dropouts_at_every_stage() -> None:
    rng = np.random.default_rng(7)
    ids = list(range(40))
    inputs = _inputs(rng, ids, 1000)
    drops = Dropouts(
        before_advertise=frozenset({0}),
        after_advertise=frozenset({1, 2}),
        after_share_keys=frozenset({3, 4, 5}),
        after_masked_input=frozenset({6, 7}),
        after_consistency=frozenset({8}),
    )
    result = run_secagg(inputs, dropouts=drops, round_id=ROUND_ID)
    assert result.dropped == (3, 4, 5)
    assert result.survivors == tuple(u for u in ids if u > 5)  # 6, 7, 8 sent input: included
    assert np.array_equal(result.total, _expected(inputs, result.survivors))


@pytest.mark.parametrize(
    "stage",
    ["after_advertise", "after_share_keys", "after_masked_input", "after_consistency", "combined"],
)
def test_single_stage_dropouts(stage: str) -> None:
    rng = np.random.default_rng(len(stage))
    ids = list(range(100, 120))
    inputs = _inputs(rng, ids, 333)
    drop = frozenset({101, 107, 113})
    kwargs = (
        {"after_advertise": drop, "after_share_keys": frozenset({115}), "after_masked_input": {104},
         "after_consistency": frozenset({110})}
        if stage == "combined"
        else {stage: drop}
    )
    result = run_secagg(inputs, dropouts=Dropouts(**kwargs), round_id=ROUND_ID)  # type: ignore[arg-type]
    assert np.array_equal(result.total, _expected(inputs, result.survivors))


@pytest.mark.parametrize(
    "stage",
    ["before_advertise", "after_advertise", "after_share_keys", "after_masked_input",
     "after_consistency"],
)
def test_too_few_survivors_raise_cleanly(stage: str) -> None:
    rng = np.random.default_rng(3)
    ids = list(range(10))
    inputs = _inputs(rng, ids, 50)
    before = {u: v.copy() for u, v in inputs.items()}
    with pytest.raises(InsufficientParticipantsError):
        run_secagg(inputs, dropouts=Dropouts(**{stage: frozenset(range(6))}))  # type: ignore[arg-type]
    assert all(np.array_equal(inputs[u], before[u]) for u in ids)  # caller's data untouched


def test_server_marks_round_failed_and_refuses_to_continue() -> None:
    r = Round(8, 10)
    dirs = r.advertise()
    with pytest.raises(InsufficientParticipantsError):
        r.server.collect_shares([r.clients[u].share_keys(dirs[u]) for u in r.ids[:2]])
    assert r.server.stage is ServerStage.FAILED
    with pytest.raises(ProtocolStateError):
        r.server.collect_masked_inputs([])


def test_quantized_mean_via_protocol() -> None:
    rng = np.random.default_rng(5)
    vecs = {u: rng.normal(0, 0.1, 500) for u in range(12)}
    mean, result = run_secagg_mean(
        vecs, Quantizer(1.0, 12), dropouts=Dropouts(after_share_keys=frozenset({3}))
    )
    plain = np.mean([vecs[u] for u in result.survivors], axis=0)
    assert np.allclose(mean, plain, atol=1e-6)


# ------------------------------------------------------------------ active attacks
def test_server_substituted_public_key_is_detected() -> None:
    r = Round(10, 8)
    dirs = r.advertise()
    victim = r.ids[0]
    d = dirs[victim]
    target = next(e for e in d.entries if e.node_id != victim)
    # the server swaps in its own keys (MITM) and signs them with a key it controls
    _, c_pk = generate_x25519()
    _, s_pk = generate_x25519()
    forged = AdvertiseKeys(
        d.round_id,
        target.node_id,
        c_pk,
        s_pk,
        sign_advertisement(generate_identity_key(), r.server.digest, target.node_id, c_pk, s_pk),
    )
    entries = tuple(forged if e.node_id == target.node_id else e for e in d.entries)
    with pytest.raises(SignatureVerificationError, match=str(target.node_id)):
        r.clients[victim].share_keys(KeyDirectory(d.round_id, victim, entries).to_bytes())
    # the client aborted: no later stage can run
    with pytest.raises(ProtocolStateError):
        r.clients[victim].share_keys(d)


def test_unsigned_key_swap_and_cross_round_replay_detected() -> None:
    r = Round(6, 4)
    dirs = r.advertise()
    u = r.ids[1]
    entries = list(dirs[u].entries)
    i = next(i for i, e in enumerate(entries) if e.node_id != u)
    e = entries[i]  # swap c_pk and s_pk, keep the old signature
    entries[i] = AdvertiseKeys(e.round_id, e.node_id, e.s_pk, e.c_pk, e.signature)
    with pytest.raises(SignatureVerificationError):
        r.clients[u].share_keys(KeyDirectory(dirs[u].round_id, u, tuple(entries)))
    # a neighbour's correctly signed keys from an earlier round are replayed into a new round
    r2 = Round(6, 4)
    r2.clients = {v: SecAggClient(v, r.keys[v], r.registry) for v in r.ids}
    dirs2 = r2.advertise()
    w = r.ids[2]
    old = {x.node_id: x for x in dirs[w].entries}
    stale = tuple(
        AdvertiseKeys(
            x.round_id,
            x.node_id,
            old[x.node_id].c_pk,
            old[x.node_id].s_pk,
            old[x.node_id].signature,
        )
        if x.node_id != w and x.node_id in old
        else x
        for x in dirs2[w].entries
    )
    assert stale != dirs2[w].entries
    with pytest.raises(SignatureVerificationError):
        r2.clients[w].share_keys(KeyDirectory(dirs2[w].round_id, w, stale))


def test_redirected_ciphertext_fails_authentication() -> None:
    r = Round(8, 16, degree=7)
    bundles = r.through_shares()
    u = r.ids[0]
    first, second = bundles[u].shares[:2]
    # server claims the first ciphertext came from the second sender
    swapped = (
        EncryptedShares(second.sender, u, first.ciphertext),
        EncryptedShares(first.sender, u, second.ciphertext),
        *bundles[u].shares[2:],
    )
    with pytest.raises(DecryptionError):
        r.clients[u].mask_input(ShareBundle(bundles[u].round_id, u, swapped), r.inputs[u])


def test_client_refuses_inconsistent_unmask_request() -> None:
    r = Round(8, 16, degree=7)
    reqs = r.through_consistency()
    u = r.ids[0]
    req = reqs[u]
    hidden = UnmaskRequest(req.round_id, u, (u,), (), req.signatures)  # neighbours unlisted
    with pytest.raises(MalformedMessageError, match="survivors differ"):
        r.clients[u].unmask(hidden)
    # after the consistency check the server can no longer call a signed survivor dropped
    v = r.ids[1]
    others = tuple(x for x in reqs[v].survivors if x != r.ids[2])
    both = UnmaskRequest(req.round_id, v, others, (r.ids[2],), req.signatures)
    with pytest.raises(MalformedMessageError, match="survivors differ"):
        r.clients[v].unmask(both)
    w = r.ids[3]
    assert r.clients[w].unmask(reqs[w]).key_shares == ()  # the honest request: no key share


def test_stage_order_enforced() -> None:
    r = Round(5, 4)
    c = r.clients[r.ids[0]]
    with pytest.raises(ProtocolStateError):
        c.unmask(UnmaskRequest(b"\x00" * 32, r.ids[0], (), ()))
    with pytest.raises(ProtocolStateError):
        r.server.collect_shares([])


# ------------------------------------------------------------------ privacy of y_u
def _byte_chi2_pvalue(vec: np.ndarray) -> float:
    counts = np.bincount(np.frombuffer(vec.tobytes(), dtype=np.uint8), minlength=256)
    return float(chisquare(counts).pvalue)


def _top_bits_pvalue(vec: np.ndarray, bits: int = 8) -> float:
    counts = np.bincount((vec >> np.uint32(32 - bits)).astype(np.int64), minlength=1 << bits)
    return float(chisquare(counts).pvalue)


P_MIN = 1e-8
"""Smallest chi-square p-value accepted from a masked vector (a false failure has this chance)."""


def test_masked_vector_is_uniform_and_control_is_not() -> None:
    n, d = 10, 50_000
    r = Round(n, d, degree=4)
    q = Quantizer(1.0, n)
    zeros = q.encode(np.zeros(d), rng=np.random.default_rng(0))  # a real quantised zero update
    r.inputs = {u: zeros for u in r.ids}
    bundles = r.through_shares()
    masked = [r.clients[u].mask_input(bundles[u], zeros) for u in r.ids[:3]]
    # The masks come from OS entropy, so for a uniform mask each p-value is uniform on [0, 1]:
    # a cut at P_MIN fails a correct implementation with probability P_MIN per check, 6 checks
    # here (6e-4 per run at the former 1e-4). At 1e-8: 6e-8. Any real bias at d = 50k is far
    # below it (the controls below give p < 1e-12).
    for m in masked:
        assert _byte_chi2_pvalue(m.vector) > P_MIN
        assert _top_bits_pvalue(m.vector) > P_MIN
    # controls: the unmasked input, and an input masked with a weak (low-entropy) "mask"
    assert _byte_chi2_pvalue(zeros) < 1e-12
    assert _top_bits_pvalue(zeros) < 1e-12
    weak = zeros + (np.arange(d, dtype=np.uint32) % np.uint32(1 << 16))
    assert _top_bits_pvalue(weak) < 1e-12
    # two masked copies of the same input are uncorrelated (|r| ~ N(0, 1/d) for independent
    # masks: beyond 5 sigma with probability 6e-7)
    a, b = masked[0].vector.astype(np.float64), masked[1].vector.astype(np.float64)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(d)


def test_prg_is_aes256_ctr_keystream() -> None:
    """The GCM-encryptor fast path yields exactly AES-256-CTR from counter block 0^96 || 2."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from fedssl.privacy.secagg.prg import apply_masks, expand_mask

    seed = bytes(range(32))
    ctr = Cipher(algorithms.AES(seed), modes.CTR(bytes(12) + b"\x00\x00\x00\x02")).encryptor()
    d = 200_003  # several chunks plus a ragged tail
    want = np.frombuffer(ctr.update(bytes(4 * d)), dtype="<u4")
    assert np.array_equal(expand_mask(seed, d), want)
    acc = np.full(d, 5, dtype=np.uint32)
    apply_masks(acc, [seed, seed], [seed], chunk=4096)
    assert np.array_equal(acc, want + np.uint32(5))


def test_client_state_survives_export_between_stages() -> None:
    """A runtime that rebuilds the client per message (Flower ClientApp) gets the same sum."""
    r = Round(9, 40, degree=4)

    def hop(u: int) -> None:
        c = r.clients[u]
        r.clients[u] = SecAggClient.from_state(c.export_state(), r.keys[u], r.registry)

    cfg = r.server.setup().to_bytes()
    adverts = [r.clients[u].setup(cfg) for u in r.ids]
    for u in r.ids:
        hop(u)
    dirs = r.server.collect_advertisements(adverts)
    shares = [r.clients[u].share_keys(dirs[u]) for u in r.ids]
    for u in r.ids:
        hop(u)
    bundles = r.server.collect_shares(shares[1:])  # r.ids[0] drops out after advertising
    masked = [r.clients[u].mask_input(bundles[u], r.inputs[u]) for u in bundles]
    for u in bundles:
        hop(u)
    checks = r.server.collect_masked_inputs(masked)
    sigs = [r.clients[u].consistency_check(checks[u]) for u in checks]
    for u in checks:
        hop(u)
    reqs = r.server.collect_consistency_signatures(sigs)
    result = r.server.collect_unmask_responses([r.clients[u].unmask(reqs[u]) for u in reqs])
    assert np.array_equal(result.total, _expected(r.inputs, result.survivors))
    with pytest.raises(MalformedMessageError):
        SecAggClient.from_state(b"{not json", r.keys[r.ids[0]], r.registry)
