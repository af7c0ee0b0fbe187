"""The DP-SGD recipe options of local training: K views, parameter EMA, learning-rate
schedule, warm start, a trained parameter subset, and the collapse metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedssl.client.trainer import ParameterEMA, TrainConfig, scheduled_lr, train_local
from fedssl.privacy.dp_sgd.opacus_engine import clipped_gradient_sum
from fedssl.ssl_core.augmentations import SignalAugment
from fedssl.ssl_core.collapse import collapse_metrics
from fedssl.ssl_core.objectives import get_objective
from fedssl.ssl_core.objectives.simsiam import SimSiam
from fedssl.ssl_core.trainable import selected_parameters, trainable_subset
from fedssl.ssl_core.warm_start import WarmStartError, load_init_encoder
from tests.privacy.test_sensitivity import C, _drop, _views, max_change


class Recording(SimSiam):
    """SimSiam that records how many views it got and the iterates after each step."""

    def __init__(self) -> None:
        self.view_counts: list[int] = []
        self.iterates: list[dict[str, torch.Tensor]] = []

    def per_record_loss(self, model, views):
        self.view_counts.append(len(views))
        return super().per_record_loss(model, views)

    def after_step(self, model) -> None:
        inner = getattr(model, "_module", model)
        self.iterates.append({k: v.detach().clone() for k, v in inner.state_dict().items()})


def _data(n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 1, 24)).astype(np.float32)


@pytest.mark.parametrize("dp", [False, True])
def test_k_views_reach_the_objective(dp: bool) -> None:
    obj = Recording()
    model = obj.build_model((1, 24), width=8)
    train_local(model, obj, _data(), SignalAugment(), TrainConfig(
        batch_size=16, views=4, dp=dp, noise_multiplier=1.0, dp_seed=1))
    assert obj.view_counts and set(obj.view_counts) == {4}


def test_k_views_are_refused_for_single_view_methods() -> None:
    obj = get_objective("mae")
    model = obj.build_model((1, 24))
    with pytest.raises(ValueError, match="views"):
        train_local(model, obj, _data(), SignalAugment(), TrainConfig(views=3))


def test_k_views_keep_the_sensitivity_at_c() -> None:
    for name in ("simsiam", "byol"):
        obj = get_objective(name)
        obj.num_views = 4  # all four views of a record in its one clipped row
        for engine in ("hooks", "fast"):
            worst, total = max_change(obj, (1, 40), engine=engine)
            assert C * 0.99 <= worst <= C * (1 + 1e-4), (name, engine, worst)
            assert total > 2 * C


def test_ema_model_is_the_average_of_the_iterates() -> None:
    obj = Recording()
    model = obj.build_model((1, 24), width=8)
    decay = 0.6
    train_local(model, obj, _data(), SignalAugment(), TrainConfig(batch_size=16, ema_decay=decay))
    assert len(obj.iterates) == 4
    key = "encoder.body.0.weight"
    want = obj.iterates[0][key].clone()
    for it in obj.iterates[1:]:
        want = decay * want + (1 - decay) * it[key]
    assert torch.allclose(model.state_dict()[key], want, atol=1e-6)
    assert not torch.allclose(model.state_dict()[key], obj.iterates[-1][key])


def test_parameter_ema_starts_at_the_first_iterate() -> None:
    m = torch.nn.Linear(2, 2)
    ema = ParameterEMA(m, 0.9)
    ema.copy_to(m)  # no update yet: unchanged
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema.update(m)
    ema.copy_to(m)
    assert torch.allclose(m.weight, torch.full((2, 2), 1.2))


def test_cosine_schedule_with_warmup() -> None:
    cfg = TrainConfig(lr=1.0, lr_schedule="cosine", total_rounds=10, warmup_rounds=2)
    cfg.round_index = 1
    assert scheduled_lr(cfg, 0, 10) == pytest.approx(0.1 / 2 * 0.5 * (1 + math.cos(
        math.pi * 0.0)))
    cfg.round_index = 6
    assert scheduled_lr(cfg, 0, 10) == pytest.approx(0.5)  # halfway: cos(pi/2)
    cfg.round_index = 10
    assert scheduled_lr(cfg, 9, 10) < 0.01
    const = TrainConfig(lr=0.3, total_rounds=10, round_index=7)
    assert scheduled_lr(const, 3, 10) == 0.3


def test_schedule_sets_the_optimizer_learning_rate() -> None:
    seen: list[float] = []

    class LrProbe(SimSiam):
        def after_step(self, model) -> None:
            seen.append(opt_lr[0])

    obj = LrProbe()
    model = obj.build_model((1, 24), width=8)
    opt_lr = [0.0]
    orig = torch.optim.SGD.step

    def step(self, *a, **k):
        opt_lr[0] = self.param_groups[0]["lr"]
        return orig(self, *a, **k)

    torch.optim.SGD.step = step
    try:
        train_local(model, obj, _data(), SignalAugment(), TrainConfig(
            batch_size=16, lr=1.0, lr_schedule="cosine", round_index=2, total_rounds=2))
    finally:
        torch.optim.SGD.step = orig
    assert seen[0] == pytest.approx(0.5) and seen[-1] < seen[0]


@pytest.mark.parametrize("bad, match", [
    ({"views": -1}, "views"), ({"ema_decay": 1.0}, "ema_decay"),
    ({"lr_schedule": "step"}, "lr_schedule"), ({"warmup_rounds": -1}, "warmup"),
    ({"round_index": 3, "total_rounds": 2}, "round_index"), ({"lr": 0.0}, "lr"),
])
def test_invalid_recipe_options_are_refused(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad).validate()


def test_warm_start_loads_an_exported_encoder_and_refuses_a_mismatch(tmp_path) -> None:
    from fedssl.ssl_core.warm_start import export_encoder

    src = get_objective("simsiam").build_model((1, 40))
    export_encoder(tmp_path / "enc.safetensors", src, {"input_shape": "1,40"})
    dst = get_objective("simsiam").build_model((1, 40))
    load_init_encoder(dst, tmp_path / "enc.safetensors")
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(dst.encoder.state_dict()[k], v)
    other = get_objective("simsiam").build_model((1, 40), width=16)
    with pytest.raises(WarmStartError, match="shape mismatch"):
        load_init_encoder(other, tmp_path / "enc.safetensors")
    with pytest.raises(WarmStartError, match="does not exist"):
        load_init_encoder(dst, tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(WarmStartError, match="readable"):
        load_init_encoder(dst, tmp_path / "junk.safetensors")


def test_collapse_metrics_tell_collapsed_from_spread_features() -> None:
    rng = np.random.default_rng(0)
    collapsed = np.tile(rng.standard_normal(32), (500, 1)) + 1e-7 * rng.standard_normal((500, 32))
    spread = rng.standard_normal((500, 32))
    c, s = collapse_metrics(collapsed), collapse_metrics(spread)
    assert c["feature_std_ratio"] < 0.01 and s["feature_std_ratio"] > 0.9
    assert s["effective_rank"] > 25 and c["effective_rank"] < s["effective_rank"]
    with pytest.raises(ValueError):
        collapse_metrics(np.zeros((1, 4)))


@pytest.mark.parametrize("bad, match", [
    ({"views": -1}, "views"), ({"views": 3, "method": "mae"}, "views"),
    ({"ema_decay": 1.0}, "ema-decay"), ({"lr_schedule": "step"}, "lr-schedule"),
    ({"warmup_rounds": 9, "rounds": 5}, "warmup-rounds"),
    ({"init_encoder": "/no/such/encoder.safetensors"}, "init-encoder"),
])
def test_experiment_config_refuses_bad_recipe_options(bad: dict, match: str) -> None:
    from fedssl.simulations.config import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match=match):
        ExperimentConfig.from_dict(bad)


def test_private_pool_may_not_use_the_public_split_seed() -> None:
    """With public data in play (infonce-public's bank, a warm start), the private MNIST-1D
    pool generated with the public split's seed would be the public data itself."""
    from fedssl.simulations.config import ConfigError, ExperimentConfig
    from fedssl.ssl_core.negative_bank import MNIST1D_PUBLIC_SEED

    with pytest.raises(ConfigError, match="seed"):
        ExperimentConfig.from_dict({"method": "infonce-public", "seed": MNIST1D_PUBLIC_SEED})
    ExperimentConfig.from_dict({"method": "infonce-public", "seed": MNIST1D_PUBLIC_SEED + 1})
    ExperimentConfig.from_dict({"method": "simsiam", "seed": MNIST1D_PUBLIC_SEED})


def test_experiment_config_passes_the_recipe_to_the_clients(tmp_path) -> None:
    from fedssl.server.app import CLIENT_KEYS
    from fedssl.simulations.config import ExperimentConfig

    enc = tmp_path / "enc.safetensors"
    enc.write_bytes(b"x")
    cfg = ExperimentConfig.from_dict({"views": 4, "ema_decay": 0.9, "lr_schedule": "cosine",
                                      "warmup_rounds": 1, "init_encoder": str(enc)})
    run = cfg.to_run_config("run")
    assert (run["views"], run["ema-decay"], run["lr-schedule"], run["warmup-rounds"]) == (
        4, 0.9, "cosine", 1)
    assert run["init-encoder"] == str(enc.resolve())
    assert {"views", "ema-decay", "lr-schedule", "warmup-rounds"} <= set(CLIENT_KEYS)


#: rule -> the largest share of the model's parameters it may train here
SUBSET_SHARE = {"norm-bias": 0.1, "norm-bias-last": 0.5}


@pytest.mark.parametrize("engine", ["hooks", "fast"])
@pytest.mark.parametrize("name", ["infonce-public", "simsiam", "byol"])
@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)], ids=["signal", "image"])
@pytest.mark.parametrize("rule", sorted(SUBSET_SHARE))
def test_training_a_parameter_subset_keeps_the_sensitivity_at_c(name: str, shape, engine,
                                                                rule: str) -> None:
    """With only a subset trainable, the clipped sum spans that subset alone (the noise's
    dimension) and removing one record still changes it by exactly C."""
    obj = get_objective(name)
    model = obj.build_model(shape, width=8 if len(shape) == 3 else 16)
    obj.start_round(model)
    views = _views(shape, 12, obj.num_views, 0)
    with trainable_subset(model, rule) as names:
        full = clipped_gradient_sum(model, obj, views, C, engine)
        worst = max(float((full - clipped_gradient_sum(model, obj, _drop(views, i), C, engine)
                           ).norm()) for i in range(12))
        sizes = dict(model.named_parameters())
        assert full.numel() == sum(sizes[n].numel() for n in names)
    assert full.numel() < sum(p.numel() for p in model.parameters()) * SUBSET_SHARE[rule]
    assert C * 0.99 <= worst <= C * (1 + 1e-4), (name, engine, worst)
    assert float(full.norm()) > 2 * C


@pytest.mark.parametrize("engine", ["hooks", "fast"])
@pytest.mark.parametrize("rule", sorted(SUBSET_SHARE))
def test_dp_training_of_a_subset_leaves_the_other_parameters_bit_identical(engine: str,
                                                                          rule: str) -> None:
    obj = get_objective("infonce-public")
    model = obj.build_model((1, 24), width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train_local(model, obj, _data(), SignalAugment(), TrainConfig(
        batch_size=16, dp=True, noise_multiplier=1.0, dp_seed=3, dp_engine=engine,
        trainable=rule))
    assert res.dp_engine == engine
    trained = set(selected_parameters(model, rule))
    after = model.state_dict()
    for key, value in before.items():
        moved = not torch.equal(value, after[key])
        assert moved == (key in trained), key
    assert all(p.requires_grad for p in model.parameters())  # restored after the call


def test_unknown_trainable_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="trainable"):
        TrainConfig(trainable="lora").validate()
