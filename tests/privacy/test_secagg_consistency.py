"""SecAgg+ consistency check (Bonawitz et al. 2017, Figure 4, round 3, malicious-server variant).

After the masked inputs, the server shows every survivor the set U3; each signs it with its
Ed25519 identity key; the server relays the signatures with the unmask request, and a client
reveals shares only once t signatures from distinct registered clients of U3 verify on the very
set it signed. Protocol level only (no Flower): an honest round, a server that shows different
sets to different clients, forged/duplicate/unregistered/foreign signatures, dropouts.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from fedssl.privacy.secagg import (
    ClientStage,
    ConsistencyCheck,
    ConsistencySignature,
    Dropouts,
    InsufficientParticipantsError,
    MalformedMessageError,
    ProtocolStateError,
    SecAggClient,
    SecAggError,
    SecAggServer,
    ServerStage,
    SignatureVerificationError,
    UnmaskRequest,
    generate_identity_key,
    identity_public_bytes,
    make_identities,
    run_secagg,
)
from fedssl.privacy.secagg.crypto import sign_consistency, verify_consistency
from fedssl.privacy.secagg.shamir import Share, decode_share_value, node_x, reconstruct_bytes


def _sum(inputs: dict[int, np.ndarray], ids: tuple[int, ...]) -> np.ndarray:
    total = np.zeros(next(iter(inputs.values())).shape, dtype=np.uint64)
    for u in ids:
        total += inputs[u]
    return (total % (1 << 32)).astype(np.uint32)


class Round:
    """A round driven step by step, so a test can play a dishonest server."""

    def __init__(self, n: int, d: int = 12, seed: int = 0, registry_of=None, **kw: object):
        rng = np.random.default_rng(seed)
        self.ids = list(range(100, 100 + n))
        self.keys = make_identities(self.ids)
        self.registry = {u: identity_public_bytes(self.keys[u]) for u in self.ids}
        self.server = SecAggServer(self.ids, d, identity_registry=self.registry, **kw)  # type: ignore[arg-type]
        self.clients = {
            u: SecAggClient(u, self.keys[u], registry_of(u, self.registry, self.server.graph)
                            if registry_of else self.registry)
            for u in self.ids
        }
        self.inputs = {u: rng.integers(0, 2**32, d, dtype=np.uint32) for u in self.ids}
        cfg = self.server.setup().to_bytes()
        dirs = self.server.collect_advertisements([self.clients[u].setup(cfg) for u in self.ids])
        bundles = self.server.collect_shares([self.clients[u].share_keys(dirs[u]) for u in dirs])
        self.checks = self.server.collect_masked_inputs(
            [self.clients[u].mask_input(bundles[u], self.inputs[u]) for u in bundles]
        )

    @property
    def t(self) -> int:
        return self.server.threshold

    def sign(self, u: int, survivors: tuple[int, ...]) -> ConsistencySignature:
        """Client ``u`` is shown ``survivors`` (bytes on the wire) and signs."""
        rid = self.server.config.round_id
        return ConsistencySignature.from_bytes(
            self.clients[u].consistency_check(ConsistencyCheck(rid, u, survivors).to_bytes())
            .to_bytes()
        )

    def request(
        self, u: int, survivors: tuple[int, ...], sigs: dict[int, bytes]
    ) -> UnmaskRequest:
        """The unmask request a server consistent with ``survivors`` would send ``u``."""
        g, u3 = self.server.graph, set(survivors)
        return UnmaskRequest(
            self.server.config.round_id,
            u,
            tuple(sorted((g[u] | {u}) & u3)),
            tuple(sorted(g[u] - u3)),
            tuple(sorted(sigs.items())),
        )

    def assert_aborted(self, u: int) -> None:
        """``u`` failed, holds no secret, and cannot be asked again."""
        client = self.clients[u]
        assert client.stage is ClientStage.FAILED
        assert not hasattr(client, "_seed_shares") and not hasattr(client, "_key_shares")
        with pytest.raises(ProtocolStateError):
            client.unmask(self.request(u, tuple(self.ids), {}))


# ------------------------------------------------------------------ honest server
def test_honest_server_round_with_signed_survivor_set() -> None:
    r = Round(9, degree=4)
    u3 = tuple(r.ids)
    assert all(c.survivors == u3 and c.receiver == u for u, c in r.checks.items())
    sigs = [r.clients[u].consistency_check(r.checks[u].to_bytes()) for u in r.ids]
    for s in sigs:  # each is the registered key's signature on (round, id, U3)
        verify_consistency(r.keys[s.sender].public_key(), r.server.digest, s.sender, u3,
                           s.signature)
    requests = r.server.collect_consistency_signatures([s.to_bytes() for s in sigs])
    assert r.server.stage is ServerStage.SIGNED
    # t signatures relayed (all verified by the server): what each client needs to check
    assert all([v for v, _ in q.signatures] == r.ids[: r.t] for q in requests.values())
    result = r.server.collect_unmask_responses(
        [r.clients[u].unmask(requests[u].to_bytes()) for u in requests])
    assert np.array_equal(result.total, _sum(r.inputs, u3))
    assert all(c.stage is ClientStage.DONE for c in r.clients.values())


def test_dropout_during_consistency_is_recovered_and_threshold_holds() -> None:
    rng = np.random.default_rng(1)
    ids = list(range(20))
    inputs = {u: rng.integers(0, 2**32, 50, dtype=np.uint32) for u in ids}
    drops = Dropouts(after_masked_input=frozenset({2, 9}), after_consistency=frozenset({4}))
    result = run_secagg(inputs, dropouts=drops, round_id=bytes(range(32)))  # fixed graph
    assert result.survivors == tuple(ids) and result.dropped == ()  # inputs sent: all in
    assert np.array_equal(result.total, _sum(inputs, result.survivors))
    # too many drop at the consistency check: the round fails before any share is asked for
    r = Round(10)
    signers = r.ids[: r.t - 1]
    with pytest.raises(InsufficientParticipantsError, match="consistency check"):
        r.server.collect_consistency_signatures(
            [r.clients[u].consistency_check(r.checks[u]) for u in signers])
    assert r.server.stage is ServerStage.FAILED


def test_server_refuses_a_bad_consistency_signature() -> None:
    r = Round(7)
    sigs = [r.clients[u].consistency_check(r.checks[u]) for u in r.ids]
    bad = ConsistencySignature(sigs[0].round_id, sigs[0].sender, b"\x00" * 64)
    with pytest.raises(SignatureVerificationError):
        r.server.collect_consistency_signatures([bad, *sigs[1:]])
    assert r.server.stage is ServerStage.MASKED  # unchanged: may retry without it
    lenient = Round(7, strict=False)
    sigs = [lenient.clients[u].consistency_check(lenient.checks[u]) for u in lenient.ids]
    bad = ConsistencySignature(sigs[0].round_id, sigs[0].sender, b"\x00" * 64)
    requests = lenient.server.collect_consistency_signatures([bad, *sigs[1:]])
    assert sigs[0].sender not in requests  # dropped, like a client that did not answer
    assert [v for v, _ in next(iter(requests.values())).signatures] == (
        lenient.ids[1 : 1 + lenient.t])


# ------------------------------------------------------------------ what a client signs
def test_client_signs_once_and_only_a_plausible_set() -> None:
    r = Round(9, degree=4)
    u = r.ids[0]
    non_neighbour = next(v for v in r.ids if v != u and v not in r.server.graph[u])
    cases = [
        ((v for v in r.ids if v != u), MalformedMessageError, "not a survivor"),
        ((*r.ids, 999), MalformedMessageError, "not in this round"),
        ((u, non_neighbour), InsufficientParticipantsError, "threshold"),
    ]
    for survivors, error, match in cases:
        fresh = Round(9, degree=4)
        check = ConsistencyCheck(fresh.server.config.round_id, u, tuple(sorted(survivors)))
        with pytest.raises(error, match=match):
            fresh.clients[u].consistency_check(check)
        fresh.assert_aborted(u)
    rid = r.server.config.round_id
    with pytest.raises(MalformedMessageError, match="addressed"):
        r.clients[u].consistency_check(ConsistencyCheck(rid, r.ids[1], tuple(r.ids)))
    r = Round(9, degree=4)
    with pytest.raises(MalformedMessageError, match="round id"):
        r.clients[u].consistency_check(ConsistencyCheck(b"\x07" * 32, u, tuple(r.ids)))
    r = Round(9, degree=4)
    rid = r.server.config.round_id
    r.sign(u, tuple(r.ids))
    with pytest.raises(ProtocolStateError):  # never a second signature, on any set
        r.clients[u].consistency_check(ConsistencyCheck(rid, u, tuple(r.ids[:-1])))
    assert r.clients[u].stage is ClientStage.SIGNED  # the first one still stands


def test_client_refuses_survivor_whose_shares_never_arrived() -> None:
    """A neighbour listed in U3 must be one whose shares reached this client (U3 <= U2)."""
    n, d = 8, 6
    ids = list(range(n))
    keys = make_identities(ids)
    reg = {u: identity_public_bytes(keys[u]) for u in ids}
    server = SecAggServer(ids, d, degree=n - 1)
    clients = {u: SecAggClient(u, keys[u], reg) for u in ids}
    cfg = server.setup()
    dirs = server.collect_advertisements([clients[u].setup(cfg) for u in ids])
    shares = [clients[u].share_keys(dirs[u]) for u in ids]
    bundles = server.collect_shares(shares[1:])  # node 0 leaves after advertising (not in U2)
    for u in bundles:
        clients[u].mask_input(bundles[u], np.zeros(d, np.uint32))
    with pytest.raises(MalformedMessageError, match="never reached"):
        clients[1].consistency_check(ConsistencyCheck(cfg.round_id, 1, tuple(ids)))


# ------------------------------------------------------------------ a lying server
@pytest.mark.parametrize("relay", ["everything", "same-set only"])
def test_server_showing_two_survivor_sets_is_caught(relay: str) -> None:
    """The server claims victim v dropped to one half (to get s_sk_v shares) and survived to
    the other (to get b_v shares: with both, v's input would be exposed). With 2t > n neither
    half holds t signatures on its set, so every client aborts and no share leaves any."""
    r = Round(6, degree=5, threshold=4)  # full graph, t = 4, 2t > n = 6
    victim = r.ids[-1]
    full, without = tuple(r.ids), tuple(v for v in r.ids if v != victim)
    half_a, half_b = r.ids[:3], r.ids[3:]  # a is told the victim dropped
    shown = {**dict.fromkeys(half_a, without), **dict.fromkeys(half_b, full)}
    sigs = {u: r.sign(u, shown[u]).signature for u in r.ids}
    released = []
    for u in r.ids:
        relayed = sigs if relay == "everything" else {
            v: s for v, s in sigs.items() if shown[v] == shown[u]}
        error = SignatureVerificationError if relay == "everything" else (
            InsufficientParticipantsError)
        with pytest.raises(error):
            released.append(r.clients[u].unmask(r.request(u, shown[u], relayed).to_bytes()))
        r.assert_aborted(u)
    assert released == []


def test_lie_to_a_minority_aborts_them_and_exposes_nobody() -> None:
    """Shown to fewer than t clients, a different set never gathers t signatures: those
    clients abort, so the server gets no s_sk share of the 'dropped' victim; the honest
    majority still completes the round (with the true survivor set)."""
    r = Round(7, degree=6)  # default t = 4
    victim = r.ids[-1]
    full, without = tuple(r.ids), tuple(v for v in r.ids if v != victim)
    liars_told = r.ids[:2]
    shown = {u: without if u in liars_told else full for u in r.ids}
    sigs = {u: r.sign(u, shown[u]).signature for u in r.ids}
    key_shares = []
    for u in liars_told:
        same = {v: s for v, s in sigs.items() if shown[v] == without}
        with pytest.raises(InsufficientParticipantsError):
            key_shares.append(r.clients[u].unmask(r.request(u, without, same)))
        r.assert_aborted(u)
    assert key_shares == []
    honest = {v: s for v, s in sigs.items() if shown[v] == full}
    responses = [r.clients[u].unmask(r.request(u, full, honest)) for u in r.ids
                 if u not in liars_told]
    assert all(resp.key_shares == () for resp in responses)  # nobody revealed an s_sk share


def test_split_needs_2t_signers_the_documented_limit() -> None:
    """What the check does *not* give when 2t <= n (e.g. a low threshold): two halves of t
    clients each sign their own set and both accept. Then the victim's b and s_sk are both
    reconstructible, exactly as docs/threat-model.md states; with 2t > n (test above) it is
    impossible."""
    r = Round(8, degree=7, threshold=4)  # 2t = 8 = n: not protected
    victim = r.ids[-1]
    full, without = tuple(r.ids), tuple(v for v in r.ids if v != victim)
    shown = {u: without if u in r.ids[:4] else full for u in r.ids}
    sigs = {u: r.sign(u, shown[u]).signature for u in r.ids}
    seed, key = [], []
    for u in r.ids:
        same = {v: s for v, s in sigs.items() if shown[v] == shown[u]}
        resp = r.clients[u].unmask(r.request(u, shown[u], same))
        seed += [Share(node_x(u), decode_share_value(y)) for o, y in resp.seed_shares
                 if o == victim]
        key += [Share(node_x(u), decode_share_value(y)) for o, y in resp.key_shares
                if o == victim]
    assert len(seed) >= r.t and len(key) >= r.t
    assert len(reconstruct_bytes(key, r.t)) == 32 and len(reconstruct_bytes(seed, r.t)) == 32


# ------------------------------------------------------------------ bad relayed signatures
def _honest(r: Round) -> dict[int, bytes]:
    return {u: r.sign(u, tuple(r.ids)).signature for u in r.ids}


def test_forged_signature_refused() -> None:
    r = Round(7)
    sigs = _honest(r)
    u, target = r.ids[0], r.ids[3]
    forged = {**sigs, target: sign_consistency(generate_identity_key(), r.server.digest,
                                               target, tuple(r.ids))}
    with pytest.raises(SignatureVerificationError, match=str(target)):
        r.clients[u].unmask(r.request(u, tuple(r.ids), forged))
    r.assert_aborted(u)
    # a signature another node made on this set, relayed under the target's id
    v = r.ids[1]
    swapped = {**sigs, target: sigs[r.ids[4]]}
    with pytest.raises(SignatureVerificationError):
        r.clients[v].unmask(r.request(v, tuple(r.ids), swapped))
    r.assert_aborted(v)
    # a valid signature of the same node from another round
    other = Round(7)
    other.keys = r.keys
    w = r.ids[2]
    replay = {**sigs, target: sign_consistency(r.keys[target], other.server.digest, target,
                                               tuple(r.ids))}
    with pytest.raises(SignatureVerificationError):
        r.clients[w].unmask(r.request(w, tuple(r.ids), replay))
    r.assert_aborted(w)


def test_duplicate_signatures_refused() -> None:
    """t signatures must come from t distinct clients: a repeated signer never parses."""
    r = Round(7)
    sigs = _honest(r)
    u = r.ids[0]
    few = dict(list(sigs.items())[: r.t - 1])
    raw = bytearray(r.request(u, tuple(r.ids), {**few, r.ids[-1]: sigs[r.ids[-1]]}).to_bytes())
    struct.pack_into("<Q", raw, len(raw) - 72, max(few))  # last signer := a previous one
    with pytest.raises(MalformedMessageError, match="duplicated"):
        r.clients[u].unmask(bytes(raw))
    r.assert_aborted(u)
    with pytest.raises(MalformedMessageError):
        UnmaskRequest(r.server.config.round_id, u, (u,), (),
                      ((r.ids[1], sigs[r.ids[1]]), (r.ids[1], sigs[r.ids[1]])))


def test_unregistered_or_outside_signer_refused() -> None:
    # client u's registry does not list x (not its neighbour, so the setup still works)
    u = 100

    def without_x(w: int, registry: dict, graph: dict) -> dict:
        x = min(v for v in registry if v != u and v not in graph[u])
        return {v: k for v, k in registry.items() if w != u or v != x}

    r = Round(9, degree=4, registry_of=without_x)
    assert len(r.clients[u]._registry) == 8
    sigs = _honest(r)
    with pytest.raises(SignatureVerificationError, match="no registered identity key"):
        r.clients[u].unmask(r.request(u, tuple(r.ids), sigs))
    r.assert_aborted(u)
    # a registered node outside U3 (it sent no masked input) signing the set: refused
    n = 8
    ids = list(range(n))
    keys = make_identities(ids)
    reg = {v: identity_public_bytes(keys[v]) for v in ids}
    server = SecAggServer(ids, 4, degree=n - 1)
    clients = {v: SecAggClient(v, keys[v], reg) for v in ids}
    cfg = server.setup()
    dirs = server.collect_advertisements([clients[v].setup(cfg) for v in ids])
    bundles = server.collect_shares([clients[v].share_keys(dirs[v]) for v in ids])
    checks = server.collect_masked_inputs(
        [clients[v].mask_input(bundles[v], np.zeros(4, np.uint32)) for v in ids[1:]])
    sigs = {v: clients[v].consistency_check(checks[v]).signature for v in checks}
    outsider = sign_consistency(keys[0], server.digest, 0, checks[1].survivors)
    req = UnmaskRequest(cfg.round_id, 1, checks[1].survivors, (0,),
                        tuple(sorted({**sigs, 0: outsider}.items())))
    with pytest.raises(SignatureVerificationError, match="not in the survivor set"):
        clients[1].unmask(req)
    assert clients[1].stage is ClientStage.FAILED


def test_fewer_than_t_signatures_refused() -> None:
    r = Round(7)
    sigs = _honest(r)
    u = r.ids[0]
    few = dict(sorted(sigs.items())[: r.t - 1])
    with pytest.raises(InsufficientParticipantsError, match="consistency signatures"):
        r.clients[u].unmask(r.request(u, tuple(r.ids), few))
    r.assert_aborted(u)
    v = r.ids[1]
    exactly_t = dict(sorted(sigs.items())[: r.t])
    assert r.clients[v].unmask(r.request(v, tuple(r.ids), exactly_t)).seed_shares


def test_every_failure_is_a_secagg_error() -> None:
    """The Flower handler aborts a client on SecAggError: all of the above are ones."""
    for exc in (SignatureVerificationError, InsufficientParticipantsError,
                MalformedMessageError, ProtocolStateError):
        assert issubclass(exc, SecAggError)
