"""Tamper-evident privacy ledger: one signed, hash-chained JSON line per round a client trained.

Each entry records what the client spent in a round and the cumulative epsilon::

    round, client, noise_multiplier, sample_rate, steps, max_grad_norm, delta,
    accountant, epsilon, prev_hash, hash, signature

``hash`` is SHA-256 over the canonical JSON (sorted keys, no spaces) of all other fields,
``prev_hash`` included, so editing, removing or reordering any entry breaks the chain.
``signature`` is the client's Ed25519 signature over ``hash``, so only the holder of the
client's identity key can write a valid chain (a tamperer can't rebuild it). The first entry's
``prev_hash`` is 64 zeros. Appending verifies the existing chain first, so a client never
extends a tampered ledger; nothing already in the file is rewritten. Rounds never decrease; a
round repeated after a server restart gets a second entry, and both spends count.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS = "0" * 64
FIELDS = (
    "round", "client", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "delta",
    "accountant", "epsilon", "prev_hash", "hash", "signature",
)


class LedgerError(ValueError):
    """Raised when a ledger is malformed or its chain or signatures do not verify."""


@dataclass
class LedgerEntry:
    """One round's privacy spend of one client."""

    round: int
    client: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    accountant: str
    epsilon: float
    prev_hash: str = GENESIS
    hash: str = ""
    signature: str = ""
    extra: dict = field(default_factory=dict)

    def body(self) -> dict:
        """Fields covered by the hash (everything but ``hash`` and ``signature``)."""
        data = asdict(self)
        data.pop("hash")
        data.pop("signature")
        if not data["extra"]:
            data.pop("extra")
        # JSON has no infinity: a noise-free round is recorded as epsilon "inf"
        if math.isinf(data["epsilon"]):
            data["epsilon"] = "inf"
        return data

    def compute_hash(self) -> str:
        canonical = json.dumps(self.body(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps({**self.body(), "hash": self.hash, "signature": self.signature},
                          sort_keys=True)

    @classmethod
    def from_json(cls, line: str, where: str) -> LedgerEntry:
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LedgerError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise LedgerError(f"{where}: entry is not a JSON object")
        missing = [f for f in FIELDS if f not in raw]
        if missing:
            raise LedgerError(f"{where}: missing fields {missing}")
        unknown = set(raw) - set(FIELDS) - {"extra"}
        if unknown:
            raise LedgerError(f"{where}: unknown fields {sorted(unknown)}")
        try:
            eps = raw["epsilon"]
            return cls(
                round=int(raw["round"]), client=str(raw["client"]),
                noise_multiplier=float(raw["noise_multiplier"]),
                sample_rate=float(raw["sample_rate"]), steps=int(raw["steps"]),
                max_grad_norm=float(raw["max_grad_norm"]), delta=float(raw["delta"]),
                accountant=str(raw["accountant"]),
                epsilon=math.inf if eps == "inf" else float(eps),
                prev_hash=str(raw["prev_hash"]), hash=str(raw["hash"]),
                signature=str(raw["signature"]), extra=dict(raw.get("extra") or {}),
            )
        except (TypeError, ValueError) as exc:
            raise LedgerError(f"{where}: a field has the wrong type ({exc})") from exc


def read_ledger(path: str | Path, public_key: Ed25519PublicKey | None) -> list[LedgerEntry]:
    """Read and verify a ledger file: chain links, hashes, signatures, non-decreasing rounds.

    With ``public_key=None`` only the hash chain is checked (signatures are not).

    Raises:
        LedgerError: naming the line and what failed.
    """
    path = Path(path)
    if not path.exists():
        return []
    entries: list[LedgerEntry] = []
    prev = GENESIS
    last_round = 0
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        entry = LedgerEntry.from_json(line, where)
        if entry.prev_hash != prev:
            raise LedgerError(
                f"{where}: chain broken (prev_hash does not match the previous entry's hash; "
                "an entry was removed, reordered or inserted)"
            )
        if entry.compute_hash() != entry.hash:
            raise LedgerError(f"{where}: hash mismatch (the entry was edited)")
        if public_key is not None:
            try:
                public_key.verify(bytes.fromhex(entry.signature), entry.hash.encode())
            except (InvalidSignature, ValueError) as exc:
                raise LedgerError(
                    f"{where}: signature does not verify with the client's public key"
                ) from exc
        if entry.round < last_round:
            raise LedgerError(f"{where}: round {entry.round} comes after round {last_round}")
        if entries and entry.client != entries[0].client:
            raise LedgerError(f"{where}: entry for client {entry.client!r} in "
                              f"{entries[0].client!r}'s ledger")
        entries.append(entry)
        prev, last_round = entry.hash, entry.round
    return entries


class Ledger:
    """A client's own ledger file, appended to with its identity key."""

    def __init__(self, path: str | Path, key: Ed25519PrivateKey) -> None:
        self.path = Path(path)
        self.key = key

    def entries(self) -> list[LedgerEntry]:
        """All entries, verified against this client's key."""
        return read_ledger(self.path, self.key.public_key())

    def history(self) -> list[tuple[float, float, int]]:
        """``(noise_multiplier, sample_rate, steps)`` of every recorded round."""
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.entries()]

    def append(self, entry: LedgerEntry) -> LedgerEntry:
        """Verify the chain, link, hash and sign ``entry``, and append it to the file."""
        existing = self.entries()
        if existing and entry.round < existing[-1].round:
            raise LedgerError(
                f"{self.path}: round {entry.round} is older than the last recorded round "
                f"{existing[-1].round}; spent privacy is never rewritten"
            )
        entry.prev_hash = existing[-1].hash if existing else GENESIS
        entry.hash = entry.compute_hash()
        entry.signature = self.key.sign(entry.hash.encode()).hex()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(entry.to_json() + "\n")
            fh.flush()
        return entry

