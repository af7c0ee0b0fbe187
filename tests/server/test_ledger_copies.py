"""The server's copies of the sites' ledgers: accepted only when verified and extending."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedssl.privacy.identity.keys import load_public_key, public_pem
from fedssl.privacy.identity.ledger import Ledger, LedgerEntry, read_ledger
from fedssl.server import ledger_copies
from fedssl.server.ledger_copies import NOT_REGISTERED, store_copy

CID = "client-001"


def _entry(r: int, eps: float, client: str = CID) -> LedgerEntry:
    return LedgerEntry(round=r, client=client, noise_multiplier=1.1, sample_rate=0.01,
                       steps=100, max_grad_norm=1.0, delta=1e-5, accountant="prv", epsilon=eps)


@pytest.fixture
def site(tmp_path: Path) -> tuple[Ledger, Path]:
    key = Ed25519PrivateKey.generate()
    led = Ledger(tmp_path / "site" / "ledger.jsonl", key)
    led.append(_entry(1, 0.5))
    run = tmp_path / "run"
    run.mkdir()
    return led, run


def _copy(led: Ledger) -> tuple[str, bytes]:
    return led.path.read_text(), public_pem(led.key)


def test_copies_are_stored_and_extended(site) -> None:
    led, run = site
    assert store_copy(run, CID, *_copy(led), registry_key=led.key.public_key()) is None
    led.append(_entry(2, 0.8))
    assert store_copy(run, CID, *_copy(led)) is None
    stored = read_ledger(run / "ledger" / f"{CID}.jsonl",
                         load_public_key(run / "ledger" / f"{CID}.pub"))
    assert [e.round for e in stored] == [1, 2]
    assert (run / "ledger" / f"{CID}.jsonl").read_text() == led.path.read_text()


def test_rewritten_history_is_refused_and_the_stored_copy_kept(site) -> None:
    led, run = site
    led.append(_entry(2, 0.8))
    assert store_copy(run, CID, *_copy(led)) is None
    before = (run / "ledger" / f"{CID}.jsonl").read_text()
    # the site starts a fresh chain with a smaller spend: valid signatures, other history
    fresh = Ledger(led.path.parent / "fresh.jsonl", led.key)
    fresh.append(_entry(1, 0.1))
    problem = store_copy(run, CID, fresh.path.read_text(), public_pem(led.key))
    assert problem is not None and "does not extend" in problem
    assert (run / "ledger" / f"{CID}.jsonl").read_text() == before


@pytest.mark.parametrize("case,expected", [
    ("edited", "does not verify"),
    ("registry-key", "identity registry"),
    ("other-client", "another client"),
    ("bad-name", "safe file name"),
    ("bad-pem", "unreadable"),
])
def test_bad_copies_are_refused_with_a_reason(site, case, expected) -> None:
    led, run = site
    text, pem = _copy(led)
    client, registry = CID, None
    if case == "edited":
        row = json.loads(text.splitlines()[0])
        row["epsilon"] = 0.01
        text = json.dumps(row) + "\n"
    elif case == "registry-key":
        registry = Ed25519PrivateKey.generate().public_key()
    elif case == "other-client":
        client = "client-002"
    elif case == "bad-name":
        client = "../evil"
    elif case == "bad-pem":
        pem = b"not a key"
    problem = store_copy(run, client, text, pem, registry_key=registry)
    assert problem is not None and expected in problem
    assert not list((run / "ledger").glob("*.jsonl")) if (run / "ledger").exists() else True


def test_key_change_and_oversized_copies_are_refused(site, monkeypatch) -> None:
    led, run = site
    assert store_copy(run, CID, *_copy(led)) is None
    other = Ledger(led.path.parent / "other.jsonl", Ed25519PrivateKey.generate())
    other.append(_entry(1, 0.5))
    assert "used before" in store_copy(run, CID, *_copy(other))
    monkeypatch.setattr(ledger_copies, "MAX_LEDGER_BYTES", 100)
    assert "larger than" in store_copy(run, CID, *_copy(led))
    assert not list((run / "ledger").glob("*.tmp"))


def test_ledger_key_not_in_the_registry_is_refused_and_nothing_kept(site) -> None:
    """With an identity registry (every deployment has one), a ledger signed by a key the
    registry does not list is refused, not trusted on first use (issue 16, item 5)."""
    led, run = site
    registry = {"node-1": Ed25519PrivateKey.generate().public_key(),
                "node-2": Ed25519PrivateKey.generate().public_key()}
    problem = store_copy(run, CID, *_copy(led), registry=registry)
    assert problem is not None and problem.startswith(ledger_copies.NOT_REGISTERED)
    assert not (run / "ledger").exists() or not list((run / "ledger").iterdir())
    # the registered key (listed under the site's registry name, not its client id) is kept
    registry["node-2"] = led.key.public_key()
    assert store_copy(run, CID, *_copy(led), registry=registry) is None
    assert (run / "ledger" / f"{CID}.jsonl").read_text() == led.path.read_text()
    # one registered key signs one site's ledger: another client id may not reuse it
    twin = Ledger(led.path.parent / "twin.jsonl", led.key)
    twin.append(_entry(1, 0.5, client="client-009"))
    problem = store_copy(run, "client-009", *_copy(twin), registry=registry)
    assert problem is not None and "already used by client client-001" in problem
    assert not (run / "ledger" / "client-009.jsonl").exists()


def test_reply_copy_is_checked_against_the_key_of_the_identity_it_replied_as(site) -> None:
    """A deployment's registry names sites by identity (node-1), their ledgers by client id
    (site-1): the copy must be signed with the registered key of the identity the reply
    gives, not with whichever registered key (e.g. another site's)."""
    from fedssl.server.ledger_copies import store_reply_copy

    led, run = site
    other = Ed25519PrivateKey.generate()
    registry = {"node-1": led.key.public_key(), "node-2": other.public_key()}
    # signed with node-1's key but replying as node-2: refused, nothing kept
    problem = store_reply_copy(run, CID, *_copy(led), "node-2", registry)
    assert problem is not None and "identity registry" in problem
    assert not (run / "ledger" / f"{CID}.jsonl").exists()
    # an identity the registry does not list
    problem = store_reply_copy(run, CID, *_copy(led), "node-9", registry)
    assert problem is not None and problem.startswith(NOT_REGISTERED)
    assert not (run / "ledger" / f"{CID}.jsonl").exists()
    # its own identity: stored
    assert store_reply_copy(run, CID, *_copy(led), "node-1", registry) is None
    assert (run / "ledger" / f"{CID}.jsonl").read_text() == led.path.read_text()
    # no identity in the reply: looked up by the client id, which must then be registered
    assert store_reply_copy(run, CID, *_copy(led), None, registry).startswith(NOT_REGISTERED)
    assert store_reply_copy(run, CID, *_copy(led), None, {CID: led.key.public_key()}) is None
    # no registry at all: trust on first use, as before
    assert store_reply_copy(run / "tofu", CID, *_copy(led), "node-2", None) is None


def _train_reply(client: str, identity: str, led: Ledger, fill: float):
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    text, pub = _copy(led)
    return Message(RecordDict({
        "arrays": ArrayRecord({"w": Array(np.full((2, 3), fill, np.float32))}),
        "metrics": MetricRecord({"num-examples": 10}),
        "status": ConfigRecord({"status": "ok", "client": client, "identity": identity,
                                "ledger": text, "ledger-pub": pub}),
    }), dst_node_id=1, message_type="train")


def test_an_update_whose_ledger_copy_is_refused_is_not_averaged(site, tmp_path: Path,
                                                                flower_identity) -> None:
    """Issue 16 item 5 without secure aggregation (--no-secagg --dp): a site whose ledger is
    signed with a key the identity registry does not list is rejected while its reply is
    screened, before its update is averaged (before: only its ledger copy was refused, after
    the update had gone into the new global model)."""
    import numpy as np

    from fedssl.privacy.identity.keys import write_registry
    from fedssl.server.ledger_copies import LedgerCopyKeeper
    from fedssl.server.strategy import FedSSLStrategy

    led, run = site
    rogue = Ledger(tmp_path / "rogue" / "ledger.jsonl", Ed25519PrivateKey.generate())
    rogue.append(_entry(1, 0.5, client="client-002"))
    registry = write_registry(tmp_path / "identities.json", {"node-1": led.key})
    strategy = FedSSLStrategy(reference={"w": np.zeros((2, 3), np.float32)})
    strategy.ledger_gate = LedgerCopyKeeper(run, registry)
    arrays, _ = strategy.aggregate_train(1, [_train_reply(CID, "node-1", led, 1.0),
                                             _train_reply("client-002", "node-2", rogue, 100.0)])
    out = strategy.last_outcome
    assert out.accepted == [CID]
    assert "not used" in out.rejected["client-002"]
    assert out.ledger_refused["client-002"].startswith(NOT_REGISTERED)
    np.testing.assert_array_equal(arrays["w"].numpy(), np.ones((2, 3), np.float32))
    assert (run / "ledger" / f"{CID}.jsonl").exists()  # kept while screening
    assert not (run / "ledger" / "client-002.jsonl").exists()


def test_a_copy_refused_for_a_benign_reason_keeps_its_update(tmp_path: Path,
                                                             flower_identity) -> None:
    """Only copies whose key or history cannot be trusted reject the update: a site whose
    --client-id is no safe file name (``site.a``) has its copy refused and reported (the
    server cannot store it under that name), but its update still counts, as before the
    gate."""
    import numpy as np

    from fedssl.privacy.identity.keys import write_registry
    from fedssl.server.ledger_copies import LedgerCopyKeeper, untrusted
    from fedssl.server.strategy import FedSSLStrategy

    key = Ed25519PrivateKey.generate()
    led = Ledger(tmp_path / "site" / "ledger.jsonl", key)
    led.append(_entry(1, 0.5, client="site.a"))
    run = tmp_path / "run"
    run.mkdir()
    registry = write_registry(tmp_path / "identities.json", {"node-1": key})
    strategy = FedSSLStrategy(reference={"w": np.zeros((2, 3), np.float32)})
    strategy.ledger_gate = LedgerCopyKeeper(run, registry)
    arrays, _ = strategy.aggregate_train(1, [_train_reply("site.a", "node-1", led, 1.0)])
    out = strategy.last_outcome
    assert out.accepted == ["site.a"] and not out.rejected
    assert "not a safe file name" in out.ledger_refused["site.a"]
    assert not untrusted(out.ledger_refused["site.a"])
    np.testing.assert_array_equal(arrays["w"].numpy(), np.ones((2, 3), np.float32))
    assert untrusted(f"{NOT_REGISTERED}: x") and untrusted("ledger copy does not verify: x")
