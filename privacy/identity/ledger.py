"""Tamper-evident privacy ledger: one signed, hash-chained JSON line per round a client trained.

Each entry records what the client spent in a round and the cumulative epsilon::

    round, client, noise_multiplier, sample_rate, steps, max_grad_norm, delta,
    accountant, epsilon, prev_hash, hash, signature
    [run_id, lifetime_epsilon, extra]   (optional; absent in ledgers written before them)

A site may take part in several federated runs with one state directory, so one ledger spans
runs. ``run_id`` names the server run the round belonged to (the server generates one per run
and keeps it on ``--resume``). Two epsilons are recorded, both upper bounds at ``delta``:

- ``epsilon``: the *run's* cumulative epsilon, the composition of this run's entries only
  (what that run's report claims for the run's training of this site's records);
- ``lifetime_epsilon``: the composition of *every* entry of the ledger, all runs (what bounds
  the site's total privacy loss, and what the site's own budget is checked against).

An entry without ``run_id`` (a legacy ledger, or a server that sent none) belongs to the
legacy run :data:`LEGACY_RUN`; its ``epsilon`` was computed over the whole ledger, so for it
both figures are the lifetime one.

``extra`` holds further hashed fields. ``extra["sensitivity"]`` (default 1) is the L2
sensitivity of one record's clipped contribution in units of ``max_grad_norm`` (e.g. 2 for a
mechanism that clips two per-record terms separately): the Gaussian mechanism then has the
effective noise multiplier ``noise_multiplier / sensitivity``. :meth:`LedgerEntry.segment` is
the one place that rule is applied; every accountant call over a ledger (the client's plan and
record, the server's report, the audit) goes through it.

``hash`` is SHA-256 over the canonical JSON (sorted keys, no spaces) of all other fields,
``prev_hash`` included, so editing, removing or reordering any entry breaks the chain.
``signature`` is the client's Ed25519 signature over ``hash``, so only the holder of the
client's identity key can write a valid chain (a tamperer can't rebuild it). The first entry's
``prev_hash`` is 64 zeros. Appending verifies the existing chain first, so a client never
extends a tampered ledger; nothing already in the file is rewritten. Within one run, rounds
never decrease (a new run starts at round 1 again); a round repeated after a server restart
gets a second entry, and both spends count.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS = "0" * 64
FIELDS = (
    "round", "client", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "delta",
    "accountant", "epsilon", "prev_hash", "hash", "signature",
)
#: fields a ledger may lack (written only when set; older ledgers have none of them)
OPTIONAL_FIELDS = ("run_id", "lifetime_epsilon", "extra")
#: the run an entry without ``run_id`` belongs to
LEGACY_RUN = "legacy"


def effective_noise_multiplier(noise_multiplier: float, extra: dict | None = None) -> float:
    """The Gaussian mechanism's noise multiplier relative to one record's sensitivity:
    ``noise_multiplier / extra["sensitivity"]`` (sensitivity 1 when absent).

    Args:
        noise_multiplier: the recorded noise multiplier.
        extra: the entry's ``extra`` field.

    Returns:
        The noise multiplier over the sensitivity.

    Raises:
        LedgerError: if the sensitivity is not a positive finite number.
    """
    raw = (extra or {}).get("sensitivity", 1.0)
    try:
        sensitivity = float(raw)
    except (TypeError, ValueError):
        raise LedgerError(f"extra.sensitivity {raw!r} is not a number") from None
    if not (sensitivity > 0 and math.isfinite(sensitivity)):
        raise LedgerError(f"extra.sensitivity must be positive and finite, got {raw!r}")
    return float(noise_multiplier) / sensitivity


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
    #: the server run this round belonged to ("" = none given: the legacy run)
    run_id: str = ""
    #: cumulative epsilon of every entry of the ledger, all runs (None: not recorded)
    lifetime_epsilon: float | None = None

    @property
    def run(self) -> str:
        """The run this entry counts towards (:data:`LEGACY_RUN` without a ``run_id``)."""
        return self.run_id or LEGACY_RUN

    def segment(self) -> tuple[float, float, int]:
        """``(effective noise multiplier, sample rate, steps)`` for the accountants: the
        recorded noise multiplier divided by ``extra["sensitivity"]`` when present.

        Returns:
            The accountants' segment of this entry.

        Raises:
            LedgerError: the recorded sensitivity is not a positive finite number.
        """
        return (effective_noise_multiplier(self.noise_multiplier, self.extra),
                self.sample_rate, self.steps)

    @property
    def lifetime(self) -> float:
        """The recorded lifetime epsilon; a legacy entry's ``epsilon`` is the lifetime one."""
        return self.epsilon if self.lifetime_epsilon is None else self.lifetime_epsilon

    def body(self) -> dict:
        """Fields covered by the hash (everything but ``hash`` and ``signature``); optional
        fields only when set, so entries written before they existed still verify.

        Returns:
            Field name -> value, infinite epsilons as ``"inf"``.
        """
        data = asdict(self)
        data.pop("hash")
        data.pop("signature")
        for key in OPTIONAL_FIELDS:
            if data[key] in (None, "", {}):
                data.pop(key)
        # JSON has no infinity: a noise-free round is recorded as epsilon "inf"
        for key in ("epsilon", "lifetime_epsilon"):
            if key in data and math.isinf(data[key]):
                data[key] = "inf"
        return data

    def compute_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`body`: what the chain links and the
        signature signs.

        Returns:
            The hex digest.
        """
        canonical = json.dumps(self.body(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> str:
        """The entry as one ledger line (without the newline): :meth:`body` plus ``hash`` and
        ``signature``, keys sorted.

        Returns:
            The JSON text.
        """
        return json.dumps({**self.body(), "hash": self.hash, "signature": self.signature},
                          sort_keys=True)

    @classmethod
    def from_json(cls, line: str, where: str) -> LedgerEntry:
        """Parse one ledger line (its chain and signature are :func:`read_ledger`'s checks).

        Args:
            line: one line of a ledger file.
            where: names the line in errors (``path:line``).

        Returns:
            The entry, its fields of the written types.

        Raises:
            LedgerError: for anything but an entry whose fields have the written types; the
                line may come from another party (a site's copy sent to the server), so deep
                nesting, numbers too large for a float or an int, and non-finite counts are
                refused here, never raised as RecursionError/OverflowError.
        """
        try:
            raw = json.loads(line)
        except RecursionError:
            raise LedgerError(f"{where}: not a ledger entry (JSON nested too deeply)") from None
        except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
            raise LedgerError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise LedgerError(f"{where}: entry is not a JSON object")
        if _depth(raw) > MAX_DEPTH:
            raise LedgerError(f"{where}: entry nested more than {MAX_DEPTH} levels deep")
        missing = [f for f in FIELDS if f not in raw]
        if missing:
            raise LedgerError(f"{where}: missing fields {missing}")
        unknown = set(raw) - set(FIELDS) - set(OPTIONAL_FIELDS)
        if unknown:
            raise LedgerError(f"{where}: unknown fields {sorted(unknown)}")
        try:
            eps = raw["epsilon"]
            life = raw.get("lifetime_epsilon")
            if not isinstance(raw.get("extra", {}), dict):
                raise TypeError("extra is not an object")
            return cls(
                round=int(raw["round"]), client=str(raw["client"]),
                noise_multiplier=float(raw["noise_multiplier"]),
                sample_rate=float(raw["sample_rate"]), steps=int(raw["steps"]),
                max_grad_norm=float(raw["max_grad_norm"]), delta=float(raw["delta"]),
                accountant=str(raw["accountant"]),
                epsilon=math.inf if eps == "inf" else float(eps),
                prev_hash=str(raw["prev_hash"]), hash=str(raw["hash"]),
                signature=str(raw["signature"]), extra=dict(raw.get("extra") or {}),
                run_id=str(raw.get("run_id", "")),
                lifetime_epsilon=None if life is None else
                math.inf if life == "inf" else float(life),
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise LedgerError(f"{where}: a field has the wrong type ({exc})") from exc


#: how deeply a ledger entry's JSON may nest (``extra`` holds flat values; deeper nesting
#: only serves to exhaust the recursion of the hash's canonical JSON)
MAX_DEPTH = 16


def _depth(value: object) -> int:
    """Nesting depth of a decoded JSON value (1 for a flat object), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend((v, depth + 1) for v in
                             (item.values() if isinstance(item, dict) else item))
    return deepest


def read_ledger(path: str | Path, public_key: Ed25519PublicKey | None) -> list[LedgerEntry]:
    """Read and verify a ledger file: chain links, hashes, signatures, rounds non-decreasing
    within each run.

    With ``public_key=None`` only the hash chain is checked (signatures are not).

    Args:
        path: the ledger file (a missing file reads as empty).
        public_key: the client's key, or None to check the chain only.

    Returns:
        The entries, in file order.

    Raises:
        LedgerError: naming the line and what failed.
    """
    path = Path(path)
    if not path.exists():
        return []
    entries: list[LedgerEntry] = []
    prev = GENESIS
    last_round: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:  # entries are ASCII JSON: anything else is tampering
        raise LedgerError(f"{path}: not UTF-8 text ({exc})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
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
        if entry.round < last_round.get(entry.run, 0):
            raise LedgerError(f"{where}: round {entry.round} comes after round "
                              f"{last_round[entry.run]} of run {entry.run}")
        if entries and entry.client != entries[0].client:
            raise LedgerError(f"{where}: entry for client {entry.client!r} in "
                              f"{entries[0].client!r}'s ledger")
        entries.append(entry)
        prev, last_round[entry.run] = entry.hash, entry.round
    return entries


def segments(entries: Iterable[LedgerEntry], run_id: str | None = None
             ) -> list[tuple[float, float, int]]:
    """Accountant segments (:meth:`LedgerEntry.segment`) of ``entries``: all of them (the
    lifetime spend) with ``run_id=None``, else only those of that run. ``run_id=""`` (no run
    id known) means the whole ledger: without a run id runs can't be told apart, and the
    whole ledger is the conservative answer.

    Args:
        entries: a ledger's entries.
        run_id: the run to keep; None for all entries.

    Returns:
        One segment per entry kept.
    """
    if run_id:
        entries = [e for e in entries if e.run == run_id]
    return [e.segment() for e in entries]


def runs(entries: Iterable[LedgerEntry]) -> dict[str, list[LedgerEntry]]:
    """Entries grouped by run, in order of each run's first entry.

    Args:
        entries: a ledger's entries.

    Returns:
        Run id -> its entries, in ledger order.
    """
    out: dict[str, list[LedgerEntry]] = {}
    for e in entries:
        out.setdefault(e.run, []).append(e)
    return out


_INT_FIELDS = ("round", "steps")
_FLOAT_FIELDS = ("noise_multiplier", "sample_rate", "max_grad_norm", "delta", "epsilon")
_STR_FIELDS = ("client", "accountant", "run_id")


def _normalise(entry: LedgerEntry) -> None:
    """Give ``entry``'s typed fields the types :meth:`LedgerEntry.from_json` reads back
    (an int ``max_grad_norm`` is hashed as ``1`` but read back as ``1.0``: the line would fail
    its hash check on every later read), refusing values that don't convert exactly.

    Raises:
        LedgerError: naming the field, for a non-integral round/steps, a non-number, a bool,
            or an ``extra`` that is not a dict.
    """
    def bad(name: str, value: object, want: str) -> LedgerError:
        return LedgerError(f"ledger entry field {name} = {value!r} is not {want}")

    for name in _INT_FIELDS + _FLOAT_FIELDS + ("lifetime_epsilon",):
        value = getattr(entry, name)
        if name == "lifetime_epsilon" and value is None:
            continue
        if isinstance(value, bool):
            raise bad(name, value, "a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad(name, value, "a number") from None
        if name in _INT_FIELDS:
            if not number.is_integer():
                raise bad(name, value, "an integer")
            setattr(entry, name, int(number))
        else:
            setattr(entry, name, number)
    for name in _STR_FIELDS:
        setattr(entry, name, str(getattr(entry, name)))
    if not isinstance(entry.extra, dict):
        raise bad("extra", entry.extra, "a dict")


class Ledger:
    """A client's own ledger file, appended to with its identity key."""

    def __init__(self, path: str | Path, key: Ed25519PrivateKey) -> None:
        self.path = Path(path)
        self.key = key

    def entries(self) -> list[LedgerEntry]:
        """All entries, verified against this client's key.

        Returns:
            The entries, in file order.

        Raises:
            LedgerError: the file fails verification.
        """
        return read_ledger(self.path, self.key.public_key())

    def history(self, run_id: str | None = None) -> list[tuple[float, float, int]]:
        """``(effective noise multiplier, sample_rate, steps)`` of every recorded round (the
        lifetime spend), or of run ``run_id``'s rounds (see :func:`segments`).

        Args:
            run_id: the run to keep; None for the lifetime spend.

        Returns:
            One segment per entry kept.
        """
        return segments(self.entries(), run_id)

    def append(self, entry: LedgerEntry) -> LedgerEntry:
        """Verify the chain, normalise the field types (:func:`_normalise`), link, hash and
        sign ``entry``, and append it to the file; an entry that would not read back exactly
        as it was hashed is refused before anything is written.

        Args:
            entry: the new entry; its ``prev_hash``, ``hash`` and ``signature`` are set here.

        Returns:
            ``entry``, as written.

        Raises:
            LedgerError: the chain does not verify, a field does not convert exactly, the round
                is older than the run's last one, or the entry would not read back as hashed.
        """
        _normalise(entry)
        existing = self.entries()
        same_run = [e for e in existing if e.run == entry.run]
        if same_run and entry.round < same_run[-1].round:
            raise LedgerError(
                f"{self.path}: round {entry.round} is older than the last recorded round "
                f"{same_run[-1].round} of run {entry.run}; spent privacy is never rewritten"
            )
        entry.prev_hash = existing[-1].hash if existing else GENESIS
        entry.hash = entry.compute_hash()
        entry.signature = self.key.sign(entry.hash.encode()).hex()
        try:  # the line must read back as it was hashed, or every later round is blocked
            again = LedgerEntry.from_json(entry.to_json(), str(self.path))
        except (LedgerError, TypeError, ValueError) as exc:
            raise LedgerError(f"{self.path}: entry for round {entry.round} not written: it "
                              f"does not serialise ({exc})") from exc
        if again.compute_hash() != entry.hash:
            raise LedgerError(f"{self.path}: entry for round {entry.round} not written: it "
                              "would not read back as hashed (a field of an unsupported type)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(entry.to_json() + "\n")
            fh.flush()
        return entry

