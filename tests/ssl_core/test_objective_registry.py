"""Issue 23, "done means" (a): a new SSL objective is one class plus one entry in
``OBJECTIVES`` (``ssl_core/objectives/__init__.py``). A toy one added there alone is picked
up by the run settings' checks (the ServerApp's and ``fedssl simulate``'s preflight),
``get_objective``, the DP-SGD contract (``clip_sensitivity``, which every client checks
before its first gradient), the audit's soundness check and the sensitivity harness; a toy
without a per-record bound is refused under DP by all of them (the settings already, before
any run starts)."""

from __future__ import annotations

import pytest

from fedssl.privacy.audit.checks import check_config
from fedssl.privacy.audit.findings import AuditResult
from fedssl.privacy.dp_sgd.engine import DPSoundnessError, clip_sensitivity
from fedssl.run_spec import ConfigError, RunSpec
from fedssl.simulations.config import ExperimentConfig
from fedssl.simulations.simulate import preflight
from fedssl.ssl_core.objectives import OBJECTIVES, get_objective
from fedssl.ssl_core.objectives.masked_ae import MaskedAE
from fedssl.ssl_core.objectives.simclr import SimCLR
from tests.privacy.test_sensitivity import C, max_change


class ToyMasked(MaskedAE):
    """A new per-record objective (masked autoencoding under another name)."""

    name = "toy-masked"


class ToyInBatch(SimCLR):
    """A new in-batch contrastive objective: no per-record bound, never under DP."""

    name = "toy-in-batch"


@pytest.fixture
def toys(monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in (ToyMasked, ToyInBatch):
        monkeypatch.setitem(OBJECTIVES, cls.name, cls)


def _audit_findings(method: str) -> list[str]:
    res = AuditResult(run_dir="RUN", budget=None, budget_source="", delta=1e-5,
                      tolerance=0.01, dp=True, method=method)
    check_config(res, {"method": method, "target_epsilon": 8.0, "max_grad_norm": 1.0,
                       "delta": 1e-5})
    return [f.message for f in res.findings]


@pytest.mark.usefixtures("toys")
def test_a_registered_objective_is_picked_up_everywhere() -> None:
    assert type(get_objective("toy-masked")) is ToyMasked
    RunSpec(method="toy-masked", dp=True).validate()  # the ServerApp's settings
    cfg = ExperimentConfig.load(None, {"method": "toy-masked", "dp": True, "num_samples": 200})
    preflight(cfg, say=lambda _: None)  # fedssl simulate's checks before anything runs
    assert clip_sensitivity(get_objective("toy-masked")) == 1
    assert _audit_findings("toy-masked") == []
    worst, total = max_change(get_objective("toy-masked"), (1, 40))  # the harness
    assert C * 0.99 <= worst <= C * (1 + 1e-4) and total > 2 * C


@pytest.mark.usefixtures("toys")
def test_a_registered_objective_without_a_bound_is_refused_under_dp() -> None:
    preflight(ExperimentConfig.load(None, {"method": "toy-in-batch", "dp": False,
                                           "num_samples": 200}), say=lambda _: None)
    with pytest.raises(ConfigError, match="not per-record decomposable"):  # simulate's
        ExperimentConfig.load(None, {"method": "toy-in-batch", "dp": True})
    with pytest.raises(ConfigError, match="toy-in-batch"):  # the ServerApp's
        RunSpec(method="toy-in-batch", dp=True).validate()
    with pytest.raises(DPSoundnessError):  # what a client checks before its first gradient
        clip_sensitivity(get_objective("toy-in-batch"))
    (finding,) = _audit_findings("toy-in-batch")
    assert "not per-record decomposable" in finding


def test_an_unregistered_objective_is_unknown() -> None:
    with pytest.raises(ConfigError, match="unknown SSL method 'toy-masked'"):
        RunSpec(method="toy-masked").validate()
    assert "dp = true with unknown method 'toy-masked'" in _audit_findings("toy-masked")[0]
