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

from fedssl.privacy.empirical_audit import (
    Segment,
    epsilon_lower_bound,
    guess_counts,
    p_value,
    run_canary_audit,
)
from tests.test_audit import audit, make_run

#: claims epsilon ~2.4 at delta 1e-5; with 10k canaries the audit can certify up to ~6.7
MECHANISM = Segment(noise_multiplier=4.0, sample_rate=0.5, steps=20, max_grad_norm=1.0)


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
    assert res.seconds < 30


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
    assert "-> ok" in capsys.readouterr().out


def test_cli_empirical_on_run_dir(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", clients=("client-000",))
    assert audit(run, "--empirical", "--canaries", 4000) == 0
    data = json.loads((run / "audit" / "audit.json").read_text())
    (emp,) = data["empirical"]
    assert emp["client"] == "client-000" and not emp["violation"]
    assert len(emp["segments"]) == 3  # the ledger's rounds replayed
    assert emp["epsilon_lower_bound"] <= emp["claimed_by"]["recorded"]
    assert "Empirical audit" in (run / "audit" / "report.md").read_text()
