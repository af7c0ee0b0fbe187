"""DP-sound contrastive learning end to end: the client's accounting of group clipping
(sensitivity 2C: ledger ``extra.sensitivity`` and epsilon at half the noise multiplier), and
in-batch SimCLR allowed under client-level DP only (refused under sample-level DP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedssl.privacy.accounting.budget import epsilon_of
from fedssl.privacy.dp_sgd.opacus_engine import DPSoundnessError, clip_sensitivity
from fedssl.privacy.identity.keys import load_public_key
from fedssl.privacy.identity.ledger import read_ledger
from fedssl.run_spec import ConfigError, RunSpec
from fedssl.ssl_core.objectives import get_objective
from tests.client.test_client_app import _call


def _entries(run_dir: Path):
    ledger = run_dir / "ledger" / "client-001.jsonl"
    return read_ledger(ledger, load_public_key(ledger.with_suffix(".pub")))


def test_clip_sensitivity_of_each_objective() -> None:
    assert clip_sensitivity(get_objective("infonce-public")) == 1
    assert clip_sensitivity(get_objective("simsiam")) == 1
    assert clip_sensitivity(get_objective("infonce-group")) == 2
    with pytest.raises(DPSoundnessError, match="not per-record decomposable"):
        clip_sensitivity(get_objective("simclr"))


def test_group_round_records_sensitivity_2_and_accounts_at_half_the_noise(
        tmp_path: Path, flower_identity) -> None:
    """Same data and target: the group objective's noise multiplier is twice the per-record
    one's (noise std 2 sigma_eff C for sensitivity 2C), the ledger says so in a hashed
    ``extra`` field, and the recorded epsilon is the accountant's at sigma / 2."""
    group = _call(tmp_path / "g", method="infonce-group", **{"batch-size": 16})
    public = _call(tmp_path / "p", method="infonce-public", **{"batch-size": 16})
    assert group.content["status"]["status"] == "ok", group.content["status"]
    assert public.content["status"]["status"] == "ok", public.content["status"]
    (g,), (p,) = _entries(tmp_path / "g"), _entries(tmp_path / "p")
    assert g.extra == {"sensitivity": 2} and p.extra == {}
    assert g.noise_multiplier == pytest.approx(2 * p.noise_multiplier)
    assert g.epsilon == pytest.approx(
        epsilon_of([(g.noise_multiplier / 2, g.sample_rate, g.steps)], g.delta, g.accountant))
    assert g.epsilon == pytest.approx(p.epsilon)
    # an epsilon computed at the un-halved multiplier would understate the spend
    assert epsilon_of([(g.noise_multiplier, g.sample_rate, g.steps)], g.delta) < g.epsilon / 2
    # the hash covers the sensitivity: editing it breaks the chain
    path = tmp_path / "g" / "ledger" / "client-001.jsonl"
    path.write_text(path.read_text().replace('"sensitivity": 2', '"sensitivity": 1'))
    from fedssl.privacy.identity.ledger import LedgerError

    with pytest.raises(LedgerError, match="hash mismatch"):
        read_ledger(path, None)


def test_simclr_allowed_under_client_level_dp_only(tmp_path: Path, flower_identity) -> None:
    """The privacy unit of client-level DP is the whole client: in-batch negatives are
    fine there (local training non-private), so config, preflight and the client accept it;
    with sample-level DP it stays refused everywhere with the same clear reason."""
    from fedssl.simulations.config import ExperimentConfig
    from fedssl.simulations.simulate import preflight

    for mode, secagg in (("central", False), ("distributed", True)):
        cfg = ExperimentConfig(method="simclr", dp=False, client_dp=mode, secagg=secagg,
                               num_samples=200, num_clients=2).validate()
        preflight(cfg)
    # refused by the settings themselves (simulate, the ServerApp, `fedssl server`), before
    # any run starts, with the client's own reason
    with pytest.raises(ConfigError, match="not per-record decomposable"):
        ExperimentConfig(method="simclr", dp=True, num_samples=200).validate()
    with pytest.raises(ConfigError, match="method: method 'simclr' is not per-record"):
        RunSpec(method="simclr", dp=True).validate()
    ok = _call(tmp_path, method="simclr", dp=False, **{"client-dp": "central"})
    assert ok.content["status"]["status"] == "ok", ok.content["status"]
    assert not list(tmp_path.glob("ledger/*.jsonl"))  # no sample-level spend to record
    refused = _call(tmp_path / "dp", method="simclr", dp=True, **{"client-dp": "central"})
    assert refused.content["status"]["status"] == "refused"
    assert "client-level DP" in refused.content["status"]["reason"]


@pytest.mark.slow
def test_simulated_simclr_under_central_client_dp(tmp_path: Path) -> None:
    from tests.simulations.test_simulation import _run

    out = tmp_path / "run"
    proc = _run("simulate", "--method", "simclr", "--num-clients", "3", "--rounds", "2",
                "--num-samples", "300", "--no-dp", "--client-dp", "central", "--no-secagg",
                "--eval-samples", "100", "--few-label", "", "--finetune", "", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "simclr"
    assert report["privacy"]["client_level"]["epsilon"] > 0
