"""The privacy ledger: a valid chain verifies; every kind of tampering is detected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedssl.privacy.identity.keys import load_or_create_identity, load_public_key, public_pem
from fedssl.privacy.identity.ledger import (
    LEGACY_RUN,
    Ledger,
    LedgerEntry,
    LedgerError,
    effective_noise_multiplier,
    read_ledger,
    runs,
)


def _entry(r: int, eps: float) -> LedgerEntry:
    return LedgerEntry(round=r, client="client-001", noise_multiplier=1.1, sample_rate=0.01,
                       steps=100, max_grad_norm=1.0, delta=1e-5, accountant="prv", epsilon=eps)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    key = load_or_create_identity(tmp_path / "id.pem")
    led = Ledger(tmp_path / "ledger.jsonl", key)
    for r, eps in ((1, 0.5), (2, 0.8), (3, 1.1)):
        led.append(_entry(r, eps))
    return led


def _lines(led: Ledger) -> list[str]:
    return led.path.read_text().splitlines()


def _write(led: Ledger, lines: list[str]) -> None:
    led.path.write_text("\n".join(lines) + "\n")


def test_valid_chain_verifies_and_history(ledger: Ledger) -> None:
    entries = read_ledger(ledger.path, ledger.key.public_key())
    assert [e.round for e in entries] == [1, 2, 3]
    assert entries[1].prev_hash == entries[0].hash
    assert ledger.history() == [(1.1, 0.01, 100)] * 3


def test_key_file_is_private_and_reloads(tmp_path: Path, ledger: Ledger) -> None:
    assert (tmp_path / "id.pem").stat().st_mode & 0o077 == 0
    again = load_or_create_identity(tmp_path / "id.pem")
    assert public_pem(again) == public_pem(ledger.key)


def test_edited_value_detected(ledger: Ledger) -> None:
    lines = _lines(ledger)
    row = json.loads(lines[1])
    row["epsilon"] = 0.1
    lines[1] = json.dumps(row)
    _write(ledger, lines)
    with pytest.raises(LedgerError, match="hash mismatch"):
        ledger.entries()


def test_removed_entry_detected(ledger: Ledger) -> None:
    lines = _lines(ledger)
    _write(ledger, [lines[0], lines[2]])
    with pytest.raises(LedgerError, match="chain broken"):
        ledger.entries()


def test_removed_first_entry_detected(ledger: Ledger) -> None:
    _write(ledger, _lines(ledger)[1:])
    with pytest.raises(LedgerError, match="chain broken"):
        ledger.entries()


def test_reordered_entries_detected(ledger: Ledger) -> None:
    lines = _lines(ledger)
    _write(ledger, [lines[0], lines[2], lines[1]])
    with pytest.raises(LedgerError, match="chain broken"):
        ledger.entries()


def test_rebuilt_chain_with_wrong_key_detected(ledger: Ledger, tmp_path: Path) -> None:
    """A tamperer who recomputes every hash still can't sign as the client."""
    forged = Ledger(tmp_path / "forged.jsonl", Ed25519PrivateKey.generate())
    for r, eps in ((1, 0.1), (2, 0.2)):
        forged.append(_entry(r, eps))
    with pytest.raises(LedgerError, match="signature does not verify"):
        read_ledger(forged.path, ledger.key.public_key())
    pub = load_public_key(public_pem(ledger.key))
    assert len(read_ledger(ledger.path, pub)) == 3


def test_append_refuses_tampered_ledger_and_keeps_file(ledger: Ledger) -> None:
    lines = _lines(ledger)
    _write(ledger, [lines[0], lines[2]])
    before = ledger.path.read_text()
    with pytest.raises(LedgerError):
        ledger.append(_entry(4, 1.3))
    assert ledger.path.read_text() == before


def test_rounds_never_go_back_and_retries_add_entries(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="older than the last recorded round"):
        ledger.append(_entry(2, 0.0))
    ledger.append(_entry(3, 1.4))  # round 3 redone after a server restart: spent twice
    assert ledger.history() == [(1.1, 0.01, 100)] * 4


def test_malformed_line_named(ledger: Ledger) -> None:
    _write(ledger, [*_lines(ledger), "{not json"])
    with pytest.raises(LedgerError, match=r"ledger.jsonl:4: not valid JSON"):
        ledger.entries()


# --------------------------------------------------------------------------------------------
# ledgers that span runs (issue 16.2) and the hashed extra fields
# --------------------------------------------------------------------------------------------
def _run_entry(r: int, eps: float, run_id: str, lifetime: float | None = None,
               **extra: float) -> LedgerEntry:
    entry = _entry(r, eps)
    entry.run_id, entry.lifetime_epsilon, entry.extra = run_id, lifetime, dict(extra)
    return entry


def test_a_new_run_starts_at_round_1_and_rounds_are_monotone_per_run(ledger: Ledger) -> None:
    """The fixture's legacy entries (no run id) are run "legacy"; a new run may start at
    round 1 after them, but may not go back within itself."""
    ledger.append(_run_entry(1, 0.5, "b" * 32, 1.3))
    ledger.append(_run_entry(2, 0.8, "b" * 32, 1.5))
    with pytest.raises(LedgerError, match=f"last recorded round 2 of run {'b' * 32}"):
        ledger.append(_run_entry(1, 0.9, "b" * 32, 1.6))
    entries = ledger.entries()
    assert [e.run for e in entries] == [LEGACY_RUN] * 3 + ["b" * 32] * 2
    assert ledger.history("b" * 32) == [(1.1, 0.01, 100)] * 2
    assert ledger.history() == ledger.history("") == [(1.1, 0.01, 100)] * 5
    assert list(runs(entries)) == [LEGACY_RUN, "b" * 32]
    assert entries[0].lifetime == 0.5 and entries[-1].lifetime == 1.5


def test_legacy_lines_are_unchanged_and_run_fields_are_hashed(ledger: Ledger) -> None:
    """An entry without the optional fields serialises as before (old ledgers verify); the
    run id and lifetime epsilon, once written, are covered by the hash and signature."""
    legacy = json.loads(_lines(ledger)[0])
    assert not {"run_id", "lifetime_epsilon", "extra"} & set(legacy)
    ledger.append(_run_entry(1, 0.5, "b" * 32, 1.3, sensitivity=2.0))
    for key, value in (("run_id", "c" * 32), ("lifetime_epsilon", 0.1),
                       ("extra", {"sensitivity": 1.0})):
        lines = _lines(ledger)
        row = json.loads(lines[-1])
        assert key in row
        row[key] = value
        _write(ledger, [*lines[:-1], json.dumps(row)])
        with pytest.raises(LedgerError, match="hash mismatch"):
            ledger.entries()
        _write(ledger, lines)


def test_sensitivity_scales_the_effective_noise_multiplier(ledger: Ledger) -> None:
    ledger.append(_run_entry(1, 0.5, "b" * 32, 1.3, sensitivity=2.0))
    assert ledger.entries()[-1].segment() == (0.55, 0.01, 100)
    assert effective_noise_multiplier(3.0, {}) == 3.0
    for bad in (0, -1, "x", float("inf")):
        with pytest.raises(LedgerError, match="sensitivity"):
            effective_noise_multiplier(1.0, {"sensitivity": bad})


def test_int_and_numpy_fields_are_normalised_so_the_line_reads_back(tmp_path: Path) -> None:
    """An entry built with an int clip norm / noise (or numpy scalars) was hashed as ``1`` but
    read back as ``1.0``: a hash mismatch that blocked every later round."""
    import numpy as np

    ledger = Ledger(tmp_path / "fresh.jsonl", Ed25519PrivateKey.generate())
    ledger.append(LedgerEntry(round=np.int64(1), client="client-001", noise_multiplier=2,
                              sample_rate=np.float32(0.5), steps=np.int64(10),
                              max_grad_norm=1, delta=1e-5, accountant="prv", epsilon=1,
                              lifetime_epsilon=1))
    ledger.append(_entry(2, 2.0))
    entries = ledger.entries()
    assert [e.round for e in entries] == [1, 2]
    first = entries[0]
    assert (first.max_grad_norm, first.noise_multiplier, first.steps) == (1.0, 2.0, 10)
    assert type(first.max_grad_norm) is float and type(first.steps) is int


@pytest.mark.parametrize(("field", "value"), [("steps", 2.5), ("round", "x"),
                                              ("max_grad_norm", None), ("epsilon", True)])
def test_entry_with_an_unconvertible_field_is_refused_before_writing(
        ledger: Ledger, field: str, value: object) -> None:
    before = ledger.path.read_text()
    bad = _entry(4, 2.0)
    setattr(bad, field, value)
    with pytest.raises(LedgerError, match=field):
        ledger.append(bad)
    assert ledger.path.read_text() == before
    ledger.append(_entry(4, 2.0))  # the ledger is still usable
    assert [e.round for e in ledger.entries()] == [1, 2, 3, 4]
