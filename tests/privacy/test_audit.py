"""``fedssl audit`` over a run directory: a clean run passes (exit 0); every kind of false or
unverifiable privacy claim is a finding (exit 1); usage errors exit 2; the accountants agree.

Run directories are built without Flower: ledgers written with the clients' own identity keys
(:class:`~fedssl.privacy.identity.ledger.Ledger`), ``config.toml`` from ``ExperimentConfig``, and
``report.json`` shaped like the server's.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedssl.audit_command import add_audit_parser, run_audit
from fedssl.privacy.accounting.budget import epsilon_of
from fedssl.privacy.audit.auditor import audit_run, format_findings, recompute
from fedssl.privacy.identity.keys import load_or_create_identity, public_pem, write_registry
from fedssl.privacy.identity.ledger import Ledger, LedgerEntry, read_ledger
from fedssl.simulations.config import ExperimentConfig

SIGMA, RATE, STEPS, DELTA = 1.0, 0.1, 10, 1e-5
ROUNDS = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedssl")
    add_audit_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def audit(*argv: str) -> int:
    args = _parser().parse_args(["audit", *map(str, argv), "--quiet"])
    return run_audit(args)


def _write_ledger(run: Path, client: str, rounds: int = ROUNDS, sigma: float = SIGMA,
                  delta: float = DELTA, accountant: str = "prv", scale: float = 1.0,
                  field_client: str | None = None, sensitivity: int | None = None,
                  epsilon_sensitivity: int | None = None) -> Ledger:
    """``sensitivity``: recorded as ``extra.sensitivity`` when set; ``epsilon_sensitivity``:
    the one the recorded epsilons are computed at (default: the recorded one, else 1)."""
    key = load_or_create_identity(run / "clients" / client / "identity.pem")
    (run / "ledger").mkdir(parents=True, exist_ok=True)
    (run / "ledger" / f"{client}.pub").write_bytes(public_pem(key))
    led = Ledger(run / "ledger" / f"{client}.jsonl", key)
    history = []
    extra = {} if sensitivity is None else {"sensitivity": sensitivity}
    sens = epsilon_sensitivity or sensitivity or 1
    for r in range(1, rounds + 1):
        history.append((sigma / sens, RATE, STEPS))
        eps = epsilon_of(history, delta) * scale
        led.append(LedgerEntry(round=r, client=field_client or client, noise_multiplier=sigma,
                               sample_rate=RATE, steps=STEPS, max_grad_norm=1.0, delta=delta,
                               accountant=accountant, epsilon=eps, extra=dict(extra)))
    return led


def _write_report(run: Path) -> None:
    clients = {}
    for path in sorted((run / "ledger").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        last = rows[-1]
        clients[last["client"]] = {
            "epsilon": last["epsilon"], "steps": sum(r["steps"] for r in rows),
            "rounds": len(rows), "noise_multiplier": last["noise_multiplier"],
            "sample_rate": last["sample_rate"], "max_grad_norm": 1.0, "accountant": "prv"}
    (run / "report.json").write_text(json.dumps({
        "method": "simsiam", "dataset": "mnist1d", "clients": len(clients), "rounds": ROUNDS,
        "linear_probe_accuracy": 0.8, "knn_accuracy": 0.6, "wall_seconds": 1.0,
        "privacy": {"delta": DELTA, "clients": clients}}, indent=2))


def make_run(run: Path, clients: tuple[str, ...] = ("client-000", "client-001"),
             report: bool = True, **config: object) -> Path:
    cfg = {"num_clients": len(clients), "rounds": ROUNDS, "dp": True, "target_epsilon": 8.0,
           "delta": DELTA, "method": "simsiam", "out": str(run), **config}
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.toml").write_text(ExperimentConfig(**cfg).to_toml())
    for c in clients:
        _write_ledger(run, c)
    # the public identity registry, as `fedssl simulate` writes it (the keys' trust anchor)
    write_registry(run / "identities.json", {
        c: load_or_create_identity(run / "clients" / c / "identity.pem") for c in clients})
    if report:
        _write_report(run)
    return run


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("audit") / "run")


@pytest.fixture
def run(clean_run: Path, tmp_path: Path) -> Path:
    """A fresh copy of the clean run to tamper with."""
    dest = tmp_path / "run"
    shutil.copytree(clean_run, dest, ignore=shutil.ignore_patterns("audit"))
    return dest


def kinds(run: Path, **kwargs: object) -> set[str]:
    res = audit_run(run, **kwargs)  # type: ignore[arg-type]
    return {f.kind for f in res.findings}


# --- clean run -----------------------------------------------------------------------------
def test_clean_run_exits_0_and_writes_outputs(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert audit(run) == 0
    out = capsys.readouterr().out
    assert "client-000" in out and "no findings" in out
    for header in ("recorded eps", "prv", "pld", "dpa-rdp", "status"):
        assert header in out
    data = json.loads((run / "audit" / "audit.json").read_text())
    assert data["clean"] and data["findings"] == []
    eps = data["clients"]["client-000"]["epsilon"]
    # the audit's columns are the registry's names: dp-accounting's RDP is "dpa-rdp", never
    # "rdp" (Opacus's, which a client may record with)
    assert set(eps) == {"recorded", "prv", "pld", "dpa-rdp", "reference"}
    assert eps["pld"] <= eps["prv"] <= eps["dpa-rdp"]
    assert set(data["accountants"]) == {"reference", "prv", "pld", "dpa-rdp"}
    entry = data["clients"]["client-001"]["entries"][-1]
    assert set(entry["epsilons"]) == set(entry["lifetime_epsilons"]) == {"prv", "pld", "dpa-rdp"}
    assert len(data["clients"]["client-001"]["entries"]) == ROUNDS
    assert (run / "audit" / "epsilon.png").stat().st_size > 1000
    md = (run / "audit" / "report.md").read_text()
    assert "| client-000 |" in md and "epsilon.png" in md and "CLEAN" in md


def test_out_dir_and_json_output(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
                                 ) -> None:
    assert audit(run, "--out", tmp_path / "elsewhere", "--json", "--no-plot") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["clean"] is True
    assert (tmp_path / "elsewhere" / "audit.json").exists()
    assert not (tmp_path / "elsewhere" / "epsilon.png").exists()


# --- tampering -----------------------------------------------------------------------------
def _tamper(path: Path, how: str) -> None:
    lines = path.read_text().splitlines()
    if how == "edited value":
        row = json.loads(lines[1])
        row["epsilon"] = row["epsilon"] / 2
        lines[1] = json.dumps(row, sort_keys=True)
    elif how == "removed entry":
        del lines[1]
    elif how == "reordered entries":
        lines[1], lines[2] = lines[2], lines[1]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("how", ["edited value", "removed entry", "reordered entries",
                                 "wrong key"])
def test_tampered_ledger_is_a_finding(run: Path, how: str,
                                      capsys: pytest.CaptureFixture) -> None:
    ledger = run / "ledger" / "client-001.jsonl"
    if how == "wrong key":  # a forger's chain, or a substituted public key
        other = load_or_create_identity(run / "forger.pem")
        (run / "ledger" / "client-001.pub").write_bytes(public_pem(other))
    else:
        _tamper(ledger, how)
    assert audit(run) == 1
    data = json.loads((run / "audit" / "audit.json").read_text())
    found = [f for f in data["findings"] if f["kind"] == "ledger-invalid"]
    assert found and all(f["client"] == "client-001" for f in found)
    assert all(f["severity"] == "error" for f in found)
    assert data["clients"]["client-001"]["status"] != "ok"
    assert data["clients"]["client-000"]["status"] == "ok"
    assert "ledger-invalid" in capsys.readouterr().out


def test_missing_public_key(run: Path) -> None:
    (run / "ledger" / "client-000.pub").unlink()
    res = audit_run(run)
    assert [f.kind for f in res.findings] == ["missing-public-key"]
    # the registry's key still verifies the signatures
    assert res.clients[0].signature_verified and res.clients[0].registered
    (run / "identities.json").unlink()
    res = audit_run(run)
    assert [f.kind for f in res.findings] == ["no-identity-registry", "missing-public-key"]
    # the chain still verifies, so the numbers are still recomputed and shown
    assert res.clients[0].chain_verified and not res.clients[0].signature_verified
    assert res.clients[0].last is not None and res.clients[0].last.epsilons["prv"] > 0


def test_client_field_must_match_file_name(run: Path) -> None:
    (run / "ledger" / "client-001.jsonl").unlink()
    _write_ledger(run, "client-001", field_client="client-000")
    assert "client-mismatch" in kinds(run)


# --- recomputation, budget, delta ------------------------------------------------------------
def test_understated_epsilon_flagged_beyond_tolerance(run: Path) -> None:
    (run / "ledger" / "client-001.jsonl").unlink()
    _write_ledger(run, "client-001", scale=0.9)  # validly signed, but 10 % too low
    _write_report(run)
    res = audit_run(run)
    under = [f for f in res.findings if f.kind == "epsilon-understated"]
    assert {f.round for f in under} == set(range(1, ROUNDS + 1))
    assert all(f.client == "client-001" for f in under)


def test_understatement_within_tolerance_is_clean(run: Path) -> None:
    (run / "ledger" / "client-001.jsonl").unlink()
    _write_ledger(run, "client-001", scale=0.995)
    _write_report(run)
    assert kinds(run) == set()


def test_budget_overrun_from_config_and_override(run: Path) -> None:
    final = audit_run(run).clients[0].last
    assert final is not None
    assert "budget-overrun" in kinds(run, budget=final.recorded * 0.9)
    # the config's own target
    cfg = run / "config.toml"
    cfg.write_text(cfg.read_text().replace("target_epsilon = 8.0",
                                           f"target_epsilon = {final.recorded * 0.9}"))
    assert audit(run) == 1
    data = json.loads((run / "audit" / "audit.json").read_text())
    assert {f["kind"] for f in data["findings"]} == {"budget-overrun"}
    assert audit(run, "--budget", 100) == 0


def test_delta_mismatch_with_config(run: Path) -> None:
    cfg = run / "config.toml"
    cfg.write_text(cfg.read_text().replace("delta = 1e-05", "delta = 1e-06"))
    found = kinds(run)
    assert "delta-mismatch" in found


# --- unsound configurations ------------------------------------------------------------------
def test_non_decomposable_objective_under_dp(run: Path) -> None:
    cfg = run / "config.toml"
    cfg.write_text(cfg.read_text().replace('method = "simsiam"', 'method = "simclr"'))
    res = audit_run(run)
    assert any(f.kind == "unsound-config" and "simclr" in f.message for f in res.findings)


def _group_run(run: Path, sensitivity: int | None,
               epsilon_sensitivity: int | None = None) -> Path:
    """A run of the group-clipped method (clip sensitivity 2) whose ledger records
    ``sensitivity`` and whose epsilons are computed at ``epsilon_sensitivity``."""
    make_run(run, clients=("client-000",), report=False, method="infonce-group",
             target_epsilon=50.0)
    (run / "ledger" / "client-000.jsonl").unlink()
    _write_ledger(run, "client-000", sigma=2.0, sensitivity=sensitivity,
                  epsilon_sensitivity=epsilon_sensitivity)
    return run


def test_group_clipped_run_recording_sensitivity_2_is_clean(tmp_path: Path) -> None:
    """infonce-group is DP-sound at sensitivity 2: not an unsound configuration (it was one
    when the audit checked per-record decomposability instead of the clip sensitivity)."""
    res = audit_run(_group_run(tmp_path / "run", sensitivity=2))
    assert res.clean, format_findings(res)


@pytest.mark.parametrize("recorded", [None, 1])
def test_group_ledger_understating_sensitivity_is_an_error(tmp_path: Path,
                                                           recorded: int | None) -> None:
    """A group-clipped ledger recording sensitivity 1 (or none) with epsilons consistent with
    that record would pass the recomputation; the method's sensitivity 2 shows the
    understatement."""
    res = audit_run(_group_run(tmp_path / "run", sensitivity=recorded, epsilon_sensitivity=1))
    found = [f for f in res.findings if f.kind == "sensitivity-understated"]
    assert [f.round for f in found] == list(range(1, ROUNDS + 1))
    assert all(f.severity == "error" and f.client == "client-000" for f in found)
    assert "infonce-group" in found[0].message and "2" in found[0].message
    assert not res.clean


def test_per_record_ledger_with_sensitivity_1_is_not_understated(run: Path) -> None:
    assert "sensitivity-understated" not in kinds(run)


def test_dp_without_noise(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", clients=("client-000",), report=False)
    cfg = run / "config.toml"
    cfg.write_text(cfg.read_text().replace("target_epsilon = 8.0", "target_epsilon = 0.0"))
    _write_ledger(run, "client-009", rounds=1, sigma=0.0)
    found = kinds(run)
    assert {"unsound-config", "zero-noise"} <= found


def test_accountant_that_is_not_an_upper_bound(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", clients=(), report=False)
    _write_ledger(run, "client-000", accountant="gdp")
    assert "unsound-accountant" in kinds(run)


def test_missing_config_and_missing_ledgers(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", clients=(), report=False)
    assert "missing-ledger" in kinds(run)
    (run / "config.toml").unlink()
    assert "missing-config" in kinds(run)


# --- report.json ----------------------------------------------------------------------------
def test_report_epsilon_must_match_ledgers(run: Path) -> None:
    report = json.loads((run / "report.json").read_text())
    report["privacy"]["clients"]["client-000"]["epsilon"] = 1.0
    del report["privacy"]["clients"]["client-001"]
    (run / "report.json").write_text(json.dumps(report))
    res = audit_run(run)
    mism = [f for f in res.findings if f.kind == "report-mismatch"]
    assert {f.client for f in mism} == {"client-000", "client-001"}


# --- usage ----------------------------------------------------------------------------------
def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert audit(tmp_path / "nope") == 2
    assert "not found" in capsys.readouterr().err
    assert run_audit(_parser().parse_args(["audit"])) == 2
    assert audit("--empirical") == 2  # no run dir and no mechanism


def test_help_documents_every_option() -> None:
    parser = _parser()
    sub = parser._subparsers._group_actions[0].choices["audit"]  # type: ignore[union-attr]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 15, action.dest


# --- accountants ----------------------------------------------------------------------------
GRID = [(q, s, n) for q in (0.01, 0.1) for s in (0.8, 1.0, 2.0) for n in (100, 1000)]


@pytest.mark.parametrize(("q", "sigma", "steps"), GRID)
def test_accountants_agree_and_rdp_is_conservative(q: float, sigma: float, steps: int) -> None:
    eps = recompute(((sigma, q, steps),), (1e-5,))
    prv, pld, rdp = eps["prv"][0], eps["pld"][0], eps["dpa-rdp"][0]
    # Opacus reports the upper end of its absolute 0.01 error band: PRV sits ~0.01 above PLD
    assert pld <= prv <= pld * 1.03 + 0.011
    assert rdp >= prv and rdp >= pld


def test_design_numbers() -> None:
    """docs/results.md, "Accountants": q=0.01, sigma=1, 10k steps, delta=1e-5: RDP 6.71,
    PLD 6.19."""
    eps = recompute(((1.0, 0.01, 10_000),), (1e-5,))
    assert eps["dpa-rdp"][0] == pytest.approx(6.71, abs=0.01)
    assert eps["pld"][0] == pytest.approx(6.19, abs=0.01)
    assert eps["prv"][0] == pytest.approx(eps["pld"][0], rel=0.01)


def test_cumulative_epsilons_per_entry_are_monotone() -> None:
    history = ((1.0, 0.05, 20), (1.0, 0.05, 20), (0.8, 0.1, 10))
    eps = recompute(history, (1e-5,) * 3, accountants=("pld", "dpa-rdp"))
    for name, values in eps.items():
        assert values == sorted(values), name
        assert values[1] > values[0]
    # the composed PLD equals the one of the merged first two segments
    merged = recompute(((1.0, 0.05, 40),), (1e-5,), accountants=("pld",))
    assert eps["pld"][1] == pytest.approx(merged["pld"][0], rel=2e-3)


def test_audit_accountants_come_from_the_registry() -> None:
    """Issue 23.3: the audit's accountants are the registry's classes marked ``audit``, under
    their registry names; a new one gets its recomputation and its table column without a
    second name list."""
    from fedssl.privacy.accounting import REGISTRY, audit_accountants, register_accountant
    from fedssl.privacy.accounting.dpa import DpaRDPAccountant
    from fedssl.privacy.audit.auditor import table_header

    assert audit_accountants() == ("prv", "pld", "dpa-rdp")
    assert "rdp" not in table_header()  # Opacus's RDP: a budget accountant, not the audit's

    @register_accountant
    class ToyAuditAccountant(DpaRDPAccountant):
        name = "toy-audit"
        audit = True
        label = "a toy"

    try:
        assert audit_accountants()[-1] == "toy-audit" and "toy-audit" in table_header()
        eps = recompute(((1.0, 0.05, 20),), (1e-5,))
        assert list(eps) == ["prv", "pld", "dpa-rdp", "toy-audit"]
        assert eps["toy-audit"] == eps["dpa-rdp"]
    finally:
        REGISTRY.pop("toy-audit", None)
    assert "toy-audit" not in recompute(((1.0, 0.05, 20),), (1e-5,))


def test_an_accountant_that_fails_is_nan_and_a_warning(run: Path) -> None:
    """An audit accountant that cannot evaluate an entry gives ``nan`` for that entry, never a
    number or a pass, and the audit says so (a warning while prv/pld still check it)."""
    from fedssl.privacy.accounting import REGISTRY, register_accountant
    from fedssl.privacy.accounting.dpa import DpaRDPAccountant
    from fedssl.privacy.audit.accounting import epsilons_or_nan

    @register_accountant
    class FailsPastOneSegment(DpaRDPAccountant):
        name = "toy-failing"
        audit = True
        label = "fails on a history of two segments or more"

        def epsilons(self, history: Any, deltas: Any) -> list[float]:
            if len(list(history)) > 1:
                raise OverflowError("toy: cannot compose")
            return super().epsilons(history, deltas)

    history = ((1.0, 0.05, 20), (1.2, 0.05, 20))
    try:
        eps = epsilons_or_nan("toy-failing", history, (1e-5, 1e-5))
        assert eps[0] == recompute(history[:1], (1e-5,), ("dpa-rdp",))["dpa-rdp"][0]
        assert math.isnan(eps[1])
        res = audit_run(run)
        failures = [f for f in res.findings if f.kind == "accountant-failure"]
        assert failures and {f.severity for f in failures} == {"warning"}
        assert all("toy-failing" in f.message for f in failures)
        assert {f.round for f in failures} == set(range(2, ROUNDS + 1))  # not the first entry
    finally:
        REGISTRY.pop("toy-failing", None)


# --- keys against the identity registry (issue 16.3b) -----------------------------------------
def _resign(run: Path, client: str) -> None:
    """A forger rebuilds the client's ledger, same numbers, signed with a fresh key, and
    replaces its .pub: chain and signatures verify against that .pub."""
    path = run / "ledger" / f"{client}.jsonl"
    entries = read_ledger(path, None)
    forger = Ed25519PrivateKey.generate()
    path.unlink()
    led = Ledger(path, forger)
    for e in entries:
        e.hash = e.signature = ""
        led.append(e)
    (run / "ledger" / f"{client}.pub").write_bytes(public_pem(forger))


def test_resigned_ledger_with_replaced_key_is_a_finding(run: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """Issue 16.3b: this passed with "no findings"."""
    _resign(run, "client-001")
    assert audit(run) == 1
    out = capsys.readouterr().out
    assert "ledger-key-mismatch" in out and "ledger-invalid" not in out
    data = json.loads((run / "audit" / "audit.json").read_text())
    (f,) = data["findings"]
    assert (f["kind"], f["client"], f["severity"]) == ("ledger-key-mismatch", "client-001",
                                                       "error")
    row = data["clients"]["client-001"]
    assert row["registered"] is False and row["key_fingerprint"] != row["registry_fingerprint"]
    assert data["clients"]["client-000"]["registered"] is True
    md = (run / "audit" / "report.md").read_text()
    assert row["key_fingerprint"] in md and row["registry_fingerprint"] in md
    assert row["key_fingerprint"] in f["message"] and "MISMATCH" in md


def test_unregistered_client_and_missing_registry(run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    registry = json.loads((run / "identities.json").read_text())
    del registry["client-001"]
    (tmp_path / "ids.json").write_text(json.dumps(registry))
    (run / "identities.json").unlink()
    assert audit(run) == 1  # no registry at all: said so, not a silent pass
    out = capsys.readouterr().out
    assert "no-identity-registry" in out and "no registry" in out
    assert audit(run, "--registry", tmp_path / "ids.json") == 1
    data = json.loads((run / "audit" / "audit.json").read_text())
    assert [(f["kind"], f["client"]) for f in data["findings"]] == [
        ("ledger-key-not-registered", "client-001")]
    assert audit(run, "--registry", tmp_path / "nope.json") == 2


# --- server run directories (issue 16.3a) and ledgers spanning runs (16.2) --------------------
def _server_run(run: Path, target: float = 8.0) -> Path:
    """A run directory as `fedssl server` writes it: RUN/config.toml in the server format
    (fedssl.server.run_record), RUN/run_id, ledger copies, the registry."""
    from fedssl.server.app import DEFAULTS
    from fedssl.server.run_record import record_run

    run.mkdir(parents=True)
    rid = record_run(run, {**DEFAULTS, "run-dir": str(run), "dp": True, "delta": DELTA,
                           "target-epsilon": target, "method": "simsiam"})
    key = load_or_create_identity(run / "site-a.pem")
    write_registry(run / "identities.json", {"site-a": key})
    (run / "ledger").mkdir()
    (run / "ledger" / "site-a.pub").write_bytes(public_pem(key))
    led = Ledger(run / "ledger" / "site-a.jsonl", key)
    history: list[tuple[float, float, int]] = []
    # an earlier run of the same site (its state dir reused), then this one
    for run_id, rounds in (("e" * 32, 2), (rid, ROUNDS)):
        for r in range(1, rounds + 1):
            history.append((SIGMA, RATE, STEPS))
            led.append(LedgerEntry(
                round=r, client="site-a", noise_multiplier=SIGMA, sample_rate=RATE,
                steps=STEPS, max_grad_norm=1.0, delta=DELTA, accountant="prv",
                epsilon=epsilon_of([(SIGMA, RATE, STEPS)] * r, DELTA), run_id=run_id,
                lifetime_epsilon=epsilon_of(history, DELTA)))
    from fedssl.server.report import ledger_privacy

    (run / "report.json").write_text(json.dumps({
        "method": "simsiam", "privacy": ledger_privacy(run, DELTA, rid)}))
    return run


def test_server_run_dir_is_auditable(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 16.3a: `missing-config: config.toml missing` on every server run directory;
    16.2: a ledger spanning two runs is audited per run, the lifetime shown beside."""
    run = _server_run(tmp_path / "run")
    res = audit_run(run)
    assert "missing-config" not in {f.kind for f in res.findings}
    assert res.clean, format_findings(res)
    assert res.budget == 8.0 and res.delta == DELTA and res.dp is True
    (site,) = res.clients
    assert site.run_id == (run / "run_id").read_text().strip() == res.run_id
    assert len(site.entries) == ROUNDS and site.runs == {"e" * 32: 2, res.run_id: ROUNDS}
    this_run = epsilon_of([(SIGMA, RATE, STEPS)] * ROUNDS, DELTA)
    lifetime = epsilon_of([(SIGMA, RATE, STEPS)] * (ROUNDS + 2), DELTA)
    assert site.last.recorded == pytest.approx(this_run)
    assert site.lifetime.recorded_lifetime == pytest.approx(lifetime)
    assert site.lifetime.lifetime_reference == pytest.approx(lifetime, rel=0.01)
    assert audit(run) == 0  # the CLI reads the server-format config too
    out = capsys.readouterr().out
    assert f"{this_run:.3f}" in out and f"{lifetime:.3f}" in out
    assert "spans 2 runs" in out
    md = (run / "audit" / "report.md").read_text()
    assert "Sites whose ledger spans runs" in md


def test_understated_lifetime_epsilon_is_a_finding(tmp_path: Path) -> None:
    run = _server_run(tmp_path / "run")
    key = load_or_create_identity(run / "site-a.pem")
    path = run / "ledger" / "site-a.jsonl"
    entries = read_ledger(path, None)
    path.unlink()
    led = Ledger(path, key)
    for e in entries:
        e.hash = e.signature = ""
        if e.run_id != "e" * 32:  # claims the run's epsilon as the lifetime one
            e.lifetime_epsilon = e.epsilon
        led.append(e)
    found = [f for f in audit_run(run).findings if f.kind == "epsilon-understated"]
    assert found and all("lifetime" in f.message for f in found)


def test_registry_by_node_name_and_shared_keys(run: Path) -> None:
    """A deployment's registry names sites by node (node-1, ...), their ledgers by client id
    (site-1, ...): a key the registry lists is registered, under whichever name; one key may
    sign only one site's ledger."""
    registry = json.loads((run / "identities.json").read_text())
    (run / "identities.json").write_text(json.dumps(
        {f"node-{i}": entry for i, entry in enumerate(registry.values())}))
    res = audit_run(run)
    assert res.clean, format_findings(res)
    assert [c.registry_name for c in res.clients] == ["node-0", "node-1"]
    # client-001's ledger rebuilt and signed with client-000's (registered) key
    key = load_or_create_identity(run / "clients" / "client-000" / "identity.pem")
    path = run / "ledger" / "client-001.jsonl"
    entries = read_ledger(path, None)
    path.unlink()
    led = Ledger(path, key)
    for e in entries:
        e.hash = e.signature = ""
        led.append(e)
    (run / "ledger" / "client-001.pub").write_bytes(public_pem(key))
    assert [(f.kind, f.client) for f in audit_run(run).findings] == [
        ("ledger-key-shared", "client-001")]


def test_report_rows_give_sensitivity_and_effective_noise(tmp_path: Path) -> None:
    """report.json's per-client noise_multiplier is the raw sigma; a group-clipped run's row
    also says its sensitivity 2 and the effective sigma / 2 the accountants use, and the
    audit checks both against the ledger."""
    from fedssl.server.report import ledger_privacy

    run = _group_run(tmp_path / "run", sensitivity=2)
    privacy = ledger_privacy(run, DELTA)
    row = privacy["clients"]["client-000"]
    assert (row["noise_multiplier"], row["sensitivity"],
            row["effective_noise_multiplier"]) == (2.0, 2.0, 1.0)
    report = {"method": "infonce-group", "privacy": privacy}
    (run / "report.json").write_text(json.dumps(report))
    res = audit_run(run)
    assert res.clean, format_findings(res)
    row["effective_noise_multiplier"] = 2.0  # the raw sigma passed off as the effective one
    (run / "report.json").write_text(json.dumps(report))
    res = audit_run(run)
    assert any(f.kind == "report-mismatch" and "effective_noise_multiplier" in f.message
               for f in res.findings)
