"""Distributed client-level DP (Skellam shares under secure aggregation): the privacy bound, the
sensitivity it assumes, the noise it adds, and the run/audit it produces."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import skellam

from fedssl.privacy.client_level.distributed import (
    DistributedDPError,
    SkellamPlan,
    SkellamRound,
    encode_with_noise,
    skellam_epsilon,
    skellam_noise,
    skellam_rdp,
)
from fedssl.privacy.secagg.quantization import MODULUS
from fedssl.simulations.config import ConfigError, ExperimentConfig


def exact_renyi(mu: float, shift: int, order: int) -> float:
    """D_order(Sk(mu) + shift || Sk(mu)), summed over the support (tails below 1e-300 off)."""
    half = mu / 2
    k = np.arange(-int(60 * math.sqrt(mu)) - 100, int(60 * math.sqrt(mu)) + 100 + shift)
    lp = skellam.logpmf(k - shift, half, half)
    lq = skellam.logpmf(k, half, half)
    with np.errstate(invalid="ignore"):
        terms = order * lp + (1 - order) * lq
    terms = terms[np.isfinite(terms)]
    top = terms.max()
    return float((top + np.log(np.exp(terms - top).sum())) / (order - 1))


@pytest.mark.parametrize("mu,shift", [(4.0, 1), (25.0, 2), (100.0, 3), (9.0, 5)])
@pytest.mark.parametrize("order", [2, 4, 16])
def test_skellam_bound_dominates_exact_renyi_divergence(mu, shift, order) -> None:
    bound = skellam_rdp(order, l2=float(shift), l1=float(shift), mu=mu)
    exact = exact_renyi(mu, shift, order)
    assert exact <= bound * (1 + 1e-9)
    # and the bound is not vacuous: within the discretisation surcharge of the Gaussian term
    assert bound <= order * shift ** 2 / (2 * mu) + 3 * shift / (2 * mu) + 1e-12


def test_epsilon_is_at_least_the_gaussian_and_close_for_fine_grids() -> None:
    from fedssl.privacy.audit.auditor import pld_epsilons

    plan = SkellamPlan.make(1.0, 2.0, 1.2, 8, 10, 20_000)
    rounds = [plan.round_record()] * 5
    eps = skellam_epsilon(rounds, 1e-5)
    gauss = pld_epsilons([(1.2, 1.0, 5)], [1e-5])[-1]
    assert gauss <= eps <= 1.15 * gauss
    assert skellam_epsilon(rounds[:2], 1e-5) < eps  # composition grows
    assert skellam_epsilon([], 1e-5) == 0.0
    assert math.isinf(skellam_epsilon([SkellamRound(0.0, 10.0, 10.0)], 1e-5))


def _adversarial_updates(d: int, clip: float, rng: np.random.Generator) -> list[np.ndarray]:
    spike = np.zeros(d)
    spike[3] = 5.0 * clip  # one coordinate, far beyond both clips
    ups = [spike, np.full(d, 10.0), -np.full(d, 1e-3)]
    ups += [rng.normal(size=d) * s for s in (1e-4, 0.01, 1.0, 100.0)]
    ups += [rng.uniform(-1, 1, d) * clip / math.sqrt(d) * 0.999]  # just inside the ball
    return ups


@pytest.mark.parametrize("d,clip,coord_clip", [(50, 1.0, 2.0), (2000, 0.5, 0.05), (7, 3.0, 1.0)])
def test_zero_out_sensitivity_of_the_encoded_update(d, clip, coord_clip) -> None:
    """Replacing a client's update by zero moves its noise-free integer vector by at most D2
    in L2 and D1 in L1, whatever the update (norm, spikes, coordinate clipping, rounding)."""
    rng = np.random.default_rng(1)
    plan = SkellamPlan.make(clip, coord_clip, 1.0, 3, 5, d)
    quantizer = plan.quantizer()
    from fedssl.privacy.client_level.distributed import clip_l2

    worst_l2 = 0.0
    for trial, update in enumerate(_adversarial_updates(d, clip, rng)):
        for seed in range(4):
            a = quantizer.encode(clip_l2(update, clip), rng=np.random.default_rng(seed))
            b = quantizer.encode(np.zeros(d), rng=np.random.default_rng(1000 + seed + trial))
            diff = a.astype(np.int64) - b.astype(np.int64)
            l2 = float(np.linalg.norm(diff))
            assert l2 <= plan.l2_sensitivity, (trial, l2, plan.l2_sensitivity)
            assert float(np.abs(diff).sum()) <= plan.l1_sensitivity
            worst_l2 = max(worst_l2, l2)
    # the bound is tight up to rounding when coordinate clipping does not bind
    if coord_clip >= clip:
        assert worst_l2 >= plan.scale * clip * 0.99


def test_shares_sum_to_the_planned_variance_and_decode_to_the_mean() -> None:
    d, n, m = 4000, 6, 4
    plan = SkellamPlan.make(1.0, 2.0, 0.8, m, n, d)
    rng = np.random.default_rng(0)
    updates = [rng.normal(size=d) * 0.005 for _ in range(n)]
    total = np.zeros(d, np.uint64)
    for i, u in enumerate(updates):
        total = (total + encode_with_noise(u, plan, rng=np.random.default_rng(i),
                                           noise_rng=np.random.default_rng(100 + i))) % MODULUS
    mean = plan.quantizer().decode_mean(total.astype(np.uint32), n)
    noise = (mean - np.mean(updates, axis=0)) * n * plan.scale  # integer units
    expected_var = n * plan.share_variance  # n shares of mu / m each
    assert abs(noise.mean()) < 5 * math.sqrt(expected_var / d)
    assert noise.var() == pytest.approx(expected_var, rel=0.1)
    # the mean is recovered to within the noise: the quantiser did not wrap
    assert np.abs(noise).max() < 8 * math.sqrt(expected_var)


def test_skellam_noise_moments_and_os_entropy() -> None:
    x = skellam_noise(200_000, 50.0, np.random.default_rng(3))
    assert x.dtype == np.int64
    assert abs(x.mean()) < 0.1 and x.var() == pytest.approx(50.0, rel=0.03)
    assert not np.array_equal(skellam_noise(100, 9.0), skellam_noise(100, 9.0))
    assert not skellam_noise(10, 0.0).any()


def test_plan_refuses_what_it_cannot_keep() -> None:
    with pytest.raises(DistributedDPError, match="min_clients"):
        SkellamPlan.make(1.0, 2.0, 1.0, 6, 5, 100)
    with pytest.raises(DistributedDPError, match="no room"):
        SkellamPlan.make(1.0, 2.0, 1e7, 1, 1000, 10_000)
    plan = SkellamPlan.make(1.0, 2.0, 1.0, 5, 5, 100)
    with pytest.raises(DistributedDPError, match="values"):
        encode_with_noise(np.zeros(99), plan)


def test_distributed_dp_needs_secure_aggregation() -> None:
    with pytest.raises(ConfigError, match="secure aggregation"):
        ExperimentConfig(client_dp="distributed", secagg=False).validate()
    with pytest.raises(ConfigError, match="client-dp-min-clients"):
        ExperimentConfig(client_dp="distributed", num_clients=4,
                         client_dp_min_clients=5).validate()


@pytest.mark.slow
def test_simulated_run_reports_and_audits_the_skellam_epsilon(tmp_path: Path) -> None:
    from fedssl.privacy.audit.auditor import audit_run
    from tests.simulations.test_simulation import _run

    out = tmp_path / "run"
    proc = _run("simulate", "--num-clients", "3", "--rounds", "2", "--num-samples", "300",
                "--no-dp", "--client-dp", "distributed", "--client-noise-multiplier", "1.5",
                "--client-dp-min-clients", "2", "--eval-samples", "100", "--few-label", "",
                "--finetune", "",
                "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed Skellam" in proc.stdout
    level = json.loads((out / "report.json").read_text())["privacy"]["client_level"]
    released = [SkellamRound(**r) for r in level["released"]]
    assert level["rounds"] == len(released) == 2 and level["min_clients"] == 2
    assert level["epsilon"] == pytest.approx(skellam_epsilon(released, 1e-5))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[2]["client_level_epsilon"] == pytest.approx(level["epsilon"])
    assert audit_run(out).clean

    report = json.loads((out / "report.json").read_text())
    report["privacy"]["client_level"]["epsilon"] = level["epsilon"] * 0.9
    (out / "report.json").write_text(json.dumps(report))
    res = audit_run(out)
    assert [f.kind for f in res.findings] == ["understated-epsilon"]
