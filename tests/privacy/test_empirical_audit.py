"""One-run canary audit (Steinke, Nasr & Jagielski 2023) on Opacus's DPOptimizer: the bound is
computed as in the paper, the correct mechanism stays below its claim, and a deliberately
broken mechanism (noise 10x too small, or none) is caught.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedssl.privacy.audit.empirical import (
    MechanismSegment,
    epsilon_lower_bound,
    guess_counts,
    p_value,
    run_canary_audit,
)
from tests.privacy.test_audit import audit, make_run

#: claims epsilon ~2.4 at delta 1e-5; with 10k canaries the audit can certify up to ~6.7
MECHANISM = MechanismSegment(noise_multiplier=4.0, sample_rate=0.5, steps=20, max_grad_norm=1.0)


def test_bound_matches_closed_form_without_delta() -> None:
    # all r guesses right and delta = 0: p-value is q^r, so the bound solves q^r = 1 - conf
    r = 100
    q = 0.05 ** (1 / r)
    assert epsilon_lower_bound(1000, r, r, 0.0, 0.95) == pytest.approx(
        math.log(q / (1 - q)), abs=1e-6)


def test_bound_properties() -> None:
    assert epsilon_lower_bound(1000, 200, 100, 1e-5) == 0.0  # chance level: nothing shown
    assert p_value(1000, 200, 150, 1.0, 1e-3) > p_value(1000, 200, 150, 1.0, 0.0)  # delta term
    bounds = [epsilon_lower_bound(1000, 200, v, 1e-5) for v in (140, 170, 200)]
    assert bounds == sorted(bounds) and bounds[0] > 0
    # the delta term caps what m canaries can show
    assert epsilon_lower_bound(10_000, 9000, 9000, 1e-5) < math.log(9000)


def test_guesses_top_and_bottom_k() -> None:
    included = np.array([True, False, True, False, True, False])
    scores = np.array([5.0, -1.0, 4.0, 0.5, 0.0, -2.0])
    r, v = guess_counts(included, scores, 2, np.random.default_rng(0))
    assert (r, v) == (4, 4)


def test_correct_mechanism_stays_below_claim() -> None:
    res = run_canary_audit([MECHANISM], 1e-5, canaries=10_000, progress=False)
    assert not res.violation
    assert 0 < res.epsilon_lower_bound <= res.claimed_epsilon
    assert res.claimed_epsilon == pytest.approx(2.40, abs=0.03)
    assert res.max_detectable_epsilon > res.claimed_epsilon  # the audit has the power to see
    # the run's duration is recorded (never bounded here: a loaded 2-core CI machine is slow,
    # never wrong; the speed is benchmarks' business)
    assert math.isfinite(res.seconds) and res.seconds > 0


@pytest.mark.parametrize("noise_scale", [0.1, 0.0])
def test_broken_mechanism_is_caught(noise_scale: float) -> None:
    res = run_canary_audit([MECHANISM], 1e-5, canaries=10_000, noise_scale=noise_scale,
                           progress=False)
    assert res.violation
    assert res.epsilon_lower_bound > res.claimed_epsilon + 2


def test_cli_empirical_with_explicit_mechanism(capsys: pytest.CaptureFixture) -> None:
    base = ("--empirical", "--noise-multiplier", 4.0, "--sample-rate", 0.5, "--steps", 20,
            "--delta", 1e-5)
    assert audit(*base, "--mechanism-noise-scale", 0) == 1
    out = capsys.readouterr().out
    assert "VIOLATION" in out and "empirical-violation" in out
    assert audit(*base, "--canaries", 4000) == 0
    out = capsys.readouterr().out
    assert "-> NO-VIOLATION-DETECTED (power: could certify up to epsilon" in out
    assert "-> ok" not in out


def test_cli_empirical_on_run_dir(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", clients=("client-000",))
    assert audit(run, "--empirical", "--canaries", 4000) == 0
    data = json.loads((run / "audit" / "audit.json").read_text())
    (emp,) = data["empirical"]
    assert emp["client"] == "client-000" and not emp["violation"]
    assert len(emp["segments"]) == 3  # the ledger's rounds replayed
    assert emp["epsilon_lower_bound"] <= emp["claimed_by"]["recorded"]
    assert "Empirical audit" in (run / "audit" / "report.md").read_text()


# --- issue 16.3c: an audit without power says so; 16.3d: the claim shown is the recorded one
#: 16 DP-SGD steps at q = 0.05 calibrated to a target epsilon of 4 (calibrate_noise: PRV
#: 3.998, PLD 3.988: the issue's run)
SIXTEEN = MechanismSegment(noise_multiplier=0.728759765625, sample_rate=0.05, steps=16,
                  max_grad_norm=1.0)


def test_noise_free_sixteen_step_mechanism_is_never_ok(capsys: pytest.CaptureFixture) -> None:
    """The mechanism without any noise, 10k canaries: it reported "ok". Here only the
    canaries sampled at least once (56 %) are certain, so even no noise at all can certify
    only ~3.7 < the claim: inconclusive (exit 3), with the reason, never ok."""
    res = run_canary_audit([SIXTEEN], 1e-5, canaries=10_000, noise_scale=0.0, progress=False)
    assert res.claimed_epsilon == pytest.approx(3.988, abs=0.005)
    assert res.noise_free_epsilon < res.claimed_epsilon < res.max_detectable_epsilon
    assert not res.violation and res.verdict == "inconclusive"
    assert "even with no noise at all" in res.reason
    # the observed bound is what the power computation predicted for no noise
    assert res.epsilon_lower_bound == pytest.approx(res.noise_free_epsilon, abs=0.3)
    code = audit("--empirical", "--noise-multiplier", SIXTEEN.noise_multiplier,
                 "--sample-rate", SIXTEEN.sample_rate, "--steps", SIXTEEN.steps,
                 "--delta", 1e-5, "--mechanism-noise-scale", 0)
    out = capsys.readouterr().out
    assert code == 3 and "-> INCONCLUSIVE" in out and "-> ok" not in out


def test_claims_beyond_what_the_canaries_can_certify_are_inconclusive() -> None:
    res = run_canary_audit([MechanismSegment(0.7, 0.4, 16, 1.0)], 1e-5, canaries=4_000,
                           noise_scale=0.0, progress=False)
    assert res.claimed_epsilon > res.max_detectable_epsilon
    assert res.verdict == "inconclusive" and "even if every guess were right" in res.reason


def test_a_detectable_leak_is_a_violation() -> None:
    """Noise-free at q = 0.01 over 16 steps claims 0.43: only the one-sided guesses (the few
    sampled canaries are certain) see it; symmetric guesses alone stayed below the claim."""
    leak = MechanismSegment(1.0, 0.01, 16, 1.0)
    res = run_canary_audit([leak], 1e-5, canaries=10_000, noise_scale=0.0, progress=False)
    assert res.verdict == "violation" and res.epsilon_lower_bound > 2 * res.claimed_epsilon
    best = max(res.per_k, key=lambda k: k["epsilon_lower_bound"])
    assert best["one_sided"]
    honest = run_canary_audit([leak], 1e-5, canaries=10_000, progress=False)
    assert honest.verdict == "no-violation-detected"
    assert honest.epsilon_lower_bound <= honest.claimed_epsilon


def test_detection_power_matches_the_all_correct_bound() -> None:
    from fedssl.privacy.audit.empirical import detection_power, guess_sets

    sets = guess_sets(10_000, None)
    level = 1 - 0.05 / len(sets)
    best, free = detection_power([MECHANISM], 10_000, 1e-5, sets, level)
    assert best == pytest.approx(max(epsilon_lower_bound(10_000, r, r, 1e-5, level)
                                     for r in (2 * k for k, _ in sets)))
    assert free == pytest.approx(best, rel=0.02)  # q = 0.5, 20 steps: every canary is seen
    _, rare = detection_power([SIXTEEN], 10_000, 1e-5, sets, level)
    assert rare < 4.0 < best


def test_claimed_is_the_recorded_epsilon(tmp_path: Path, capsys: pytest.CaptureFixture
                                         ) -> None:
    """Issue 16.3d: "claimed" showed PLD 3.989 while the ledger recorded 3.999."""
    from tests.privacy.test_audit import _write_ledger

    run = make_run(tmp_path / "run", clients=())
    _write_ledger(run, "client-000", scale=1.003)  # recorded a little above PRV and PLD
    from fedssl.privacy.identity.keys import load_or_create_identity, write_registry

    write_registry(run / "identities.json", {"client-000": load_or_create_identity(
        run / "clients" / "client-000" / "identity.pem")})
    (run / "report.json").unlink(missing_ok=True)
    audit(run, "--empirical", "--canaries", 4000)
    data = json.loads((run / "audit" / "audit.json").read_text())
    (emp,) = data["empirical"]
    recorded = emp["claimed_by"]["recorded"]
    assert emp["claimed_epsilon"] == recorded > emp["claimed_by"]["pld"]
    assert emp["claim_source"] == "ledger"
    assert f"claimed {recorded:.3f} (ledger; recomputed PRV" in capsys.readouterr().out
