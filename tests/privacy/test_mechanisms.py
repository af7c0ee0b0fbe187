"""Every privacy mechanism implements :class:`fedssl.privacy.accounting.mechanisms.Mechanism` and
states its
guarantee: what it protects, its sensitivity, which accountant applies, its assumptions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedssl.privacy.accounting import REGISTRY
from fedssl.privacy.accounting.mechanisms import Mechanism
from fedssl.privacy.client_level.central import ClientLevelGaussian
from fedssl.privacy.client_level.distributed import SkellamPlan
from fedssl.privacy.dp_sgd.engine import PoissonEngine
from fedssl.ssl_core.objectives import OBJECTIVES


def _check_contract(m: Mechanism) -> None:
    g = m.guarantee()
    assert g["privacy_unit"] and g["neighbouring"] in ("add/remove", "zero-out")
    assert g["accountants"] and set(g["accountants"]) <= set(REGISTRY)
    assert all(REGISTRY[a].upper_bound for a in g["accountants"])
    assert g["assumptions"] and g["sensitivity"] > 0
    assert g["effective_noise_multiplier"] == pytest.approx(m.noise_multiplier / m.sensitivity)
    for cls in type(m).__mro__:
        if cls is Mechanism:
            break
        assert "Guarantee" not in (cls.__doc__ or "") or "Assumptions" in cls.__doc__


class _GroupEngine(PoissonEngine):
    clip_unit = "group"  # as GroupDPSGD, without its Opacus optimizer


@pytest.mark.parametrize("method,units", [("simsiam", 1), ("infonce-group", 2)])
def test_dp_sgd_engine_sensitivity_comes_from_the_objective(method: str, units: int) -> None:
    cls = _GroupEngine if units == 2 else PoissonEngine
    engine = cls(torch.randn(40, 1, 16), 8, 1.5, 0.7, OBJECTIVES[method]())
    assert isinstance(engine, Mechanism)
    assert engine.sensitivity == units and engine.max_grad_norm == 0.7
    assert engine.effective_noise_multiplier == pytest.approx(1.5 / units)
    assert "record" in engine.privacy_unit and engine.accountants[0] == "prv"
    _check_contract(engine)


def test_client_level_gaussian_and_skellam_state_their_guarantee() -> None:
    central = ClientLevelGaussian(1.0, 1.1, 5.0, np.random.default_rng(0))
    plan = SkellamPlan.make(1.0, 2.0, 1.2, 8, 10, 20_000)
    for m in (central, plan):
        assert isinstance(m, Mechanism)
        assert "client" in m.privacy_unit
        _check_contract(m)
    assert plan.neighbouring == "zero-out" and plan.accountants == ("skellam",)
    assert central.effective_noise_multiplier == 1.1
    assert "sensitivity" not in plan.to_dict()  # a class attribute, not a plan field


def test_each_mechanism_clips_and_noises_itself() -> None:
    """Issue 23 item 2: a mechanism does what it states: ``constrain_sensitivity`` bounds one
    unit's contribution by the stated sensitivity, ``add_noise`` adds the stated noise."""
    rng = np.random.default_rng(0)
    central = ClientLevelGaussian(1.0, 2.0, 4.0, np.random.default_rng(1))
    update = {"w": rng.normal(size=(50,)) * 10, "b": rng.normal(size=(3,))}
    clipped = central.constrain_sensitivity(update)
    assert np.sqrt(sum(np.sum(v ** 2) for v in clipped.values())) == pytest.approx(1.0)
    zero = {"w": np.zeros(200_000)}
    assert np.std(central.add_noise(zero)["w"]) == pytest.approx(2.0 * 1.0, rel=0.01)

    plan = SkellamPlan.make(1.0, 2.0, 1.2, 2, 2, 1_000)
    big = rng.normal(size=1_000) * 5
    assert np.linalg.norm(plan.constrain_sensitivity(big)) == pytest.approx(1.0)
    q = np.zeros(200_000, np.uint32) + np.uint32(2**20)
    raw = plan.add_noise(q, np.random.default_rng(2)).astype(np.int64) - 2**20
    shares = (raw + 2**31) % 2**32 - 2**31  # modulo 2^32, as signed values
    assert np.var(shares) == pytest.approx(plan.share_variance, rel=0.02)

    engine = PoissonEngine(torch.randn(40, 1, 16), 8, 1.5, 0.7, OBJECTIVES["simsiam"](),
                           generator=torch.Generator().manual_seed(3))
    norms = torch.tensor([0.1, 0.7, 7.0])
    assert torch.allclose(engine.constrain_sensitivity(norms) * norms,
                          torch.tensor([0.1, 0.7, 0.7]), atol=1e-5)
    noisy = engine.add_noise([torch.zeros(100_000)])[0]
    assert float(noisy.std()) == pytest.approx(1.5 * 0.7, rel=0.02)


def test_dp_sgd_engines_apply_the_mechanisms_formulas() -> None:
    """The fast engine calls its mechanism's two operations in every step (a subclass that
    changes them changes the step), and they are the formulas the Opacus engines' optimizer
    runs: the same clip factors as ``DPOptimizer.clip_and_accumulate``, the same noise draws
    as its ``add_noise`` from the same generator."""
    from opacus.optimizers.optimizer import _generate_noise

    from fedssl.privacy.dp_sgd.fast_clip import FastDPSGD
    from fedssl.ssl_core.augmentations import augment_for

    objective = OBJECTIVES["simsiam"]()
    data = torch.randn(64, 1, 40)

    def step(cls: type[FastDPSGD]) -> torch.Tensor:
        torch.manual_seed(0)
        model = objective.build_model((1, 40))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with cls(model, opt, data, 32, 1.0, 0.5, objective,
                 generator=torch.Generator().manual_seed(4)) as dp:
            views = [augment_for((1, 40), "mnist1d")(data[:32]) for _ in range(2)]
            with dp.record():
                losses = objective.per_record_loss(dp.module, views)
            dp.step(losses)
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    class Silent(FastDPSGD):
        def add_noise(self, aggregate: list[torch.Tensor]) -> list[torch.Tensor]:
            return aggregate

    class Unclipped(Silent):
        def constrain_sensitivity(self, contribution: torch.Tensor) -> torch.Tensor:
            return torch.ones_like(contribution)

    torch.manual_seed(5)
    noisy, silent, unclipped = step(FastDPSGD), step(Silent), step(Unclipped)
    assert not torch.allclose(noisy, silent) and not torch.allclose(silent, unclipped)

    engine = PoissonEngine(data, 8, 1.5, 0.7, objective,
                           generator=torch.Generator().manual_seed(6))
    norms = torch.rand(50) * 3
    opacus_factor = (0.7 / (norms + 1e-6)).clamp(max=1.0)  # DPOptimizer.clip_and_accumulate
    assert torch.equal(engine.constrain_sensitivity(norms), opacus_factor)
    ref = torch.zeros(7)
    want = ref + _generate_noise(std=1.5 * 0.7, reference=ref,
                                 generator=torch.Generator().manual_seed(6))
    assert torch.equal(engine.add_noise([ref])[0], want)
