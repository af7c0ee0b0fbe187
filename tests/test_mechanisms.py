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
