"""Per-record sensitivity of every DP objective, measured through the real DP-SGD engine.

The Gaussian mechanism's noise is calibrated to the sensitivity C (the clip norm): removing one
record from a batch must change the noise-free sum of clipped per-record gradients by at most
C, with *all* augmented views of that record counted. The views of the other records are held
fixed (the coupling the DP proof uses). Clip norms are chosen small so every record is clipped
and the bound is tight.
"""

from __future__ import annotations

import pytest
import torch

from fedssl.privacy.dp_sgd.opacus_engine import DPSGD, DPSoundnessError, clipped_gradient_sum
from fedssl.ssl_core.augmentations import ImageAugment, SignalAugment
from fedssl.ssl_core.heads import SSLModel
from fedssl.ssl_core.objectives import OBJECTIVES, get_objective
from fedssl.ssl_core.objectives.base import Objective

DP_OBJECTIVES = sorted(name for name, cls in OBJECTIVES.items() if cls.decomposable)
C = 0.05
#: both DP-SGD engines: Opacus hooks mode and the book-keeping engine of privacy/dp_sgd/fast_clip.py
ENGINES = ["hooks", "fast"]


def _views(shape: tuple[int, ...], n: int, num_views: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=gen)
    aug = SignalAugment() if len(shape) == 2 else ImageAugment()
    return [aug(x, gen) for _ in range(num_views)]


def _drop(views: list[torch.Tensor], i: int) -> list[torch.Tensor]:
    return [torch.cat([v[:i], v[i + 1:]]) for v in views]


def max_change(objective: Objective, shape: tuple[int, ...], n: int = 12, seed: int = 0,
               engine: str = "hooks") -> tuple[float, float]:
    """Largest change of the clipped sum over all single-record removals, and the norm of
    the full sum (to show the test is not vacuous)."""
    model = objective.build_model(shape, width=8 if len(shape) == 3 else 16)
    objective.start_round(model)
    views = _views(shape, n, objective.num_views, seed)
    full = clipped_gradient_sum(model, objective, views, C, engine)
    worst = max(
        float((full - clipped_gradient_sum(model, objective, _drop(views, i), C, engine)).norm())
        for i in range(n)
    )
    return worst, float(full.norm())


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", DP_OBJECTIVES)
@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)], ids=["signal", "image"])
def test_removing_one_record_changes_clipped_sum_by_at_most_c(name: str, shape, engine) -> None:
    worst, total = max_change(get_objective(name), shape, engine=engine)
    assert worst <= C * (1 + 1e-4), f"{name}: sensitivity {worst} exceeds C={C}"
    # every record is clipped, both views together: the change is C, not less
    assert worst >= C * 0.99
    assert total > 2 * C


class ConcatenatedViews(Objective):
    """SimSiam computed on cat([v1, v2]): each view becomes its own gradient row (unsound)."""

    name = "simsiam-concat"
    decomposable = True  # claims it, wrongly: the sensitivity test must catch this
    needs_predictor = True

    def per_record_loss(self, model, views):
        n = len(views[0])
        z, p = model(torch.cat(views))
        d1 = torch.nn.functional.cosine_similarity(p[:n], z[n:].detach(), dim=-1)
        d2 = torch.nn.functional.cosine_similarity(p[n:], z[:n].detach(), dim=-1)
        return -0.5 * torch.cat([d1, d2])


@pytest.mark.parametrize("engine", ENGINES)
def test_sensitivity_test_catches_views_as_separate_privacy_units(engine: str) -> None:
    worst, _ = max_change(ConcatenatedViews(), (1, 40), engine=engine)
    assert worst > 1.2 * C  # two rows of norm C each disappear


def interaction(objective: Objective, shape: tuple[int, ...], n: int = 8,
                engine: str = "hooks") -> float:
    """|S(X) - S(X-j) - S(X-k) + S(X-j-k)| relative to C: zero iff records j and k do not
    influence each other's clipped gradient rows (what decomposability means)."""
    model = objective.build_model(shape, width=16)
    objective.start_round(model)
    views = _views(shape, n, objective.num_views, seed=1)

    def s(drop: list[int]) -> torch.Tensor:
        keep = [i for i in range(n) if i not in drop]
        return clipped_gradient_sum(model, objective, [v[keep] for v in views], C, engine)

    return float((s([]) - s([0]) - s([1]) + s([0, 1])).norm()) / C


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", DP_OBJECTIVES)
def test_dp_objectives_have_no_cross_record_interaction(name: str, engine: str) -> None:
    assert interaction(get_objective(name), (1, 40), engine=engine) < 1e-4


@pytest.mark.parametrize("engine", ENGINES)
def test_in_batch_contrastive_has_cross_record_interaction(engine: str) -> None:
    """SimCLR: removing record j changes record k's clipped row, so clipping each row to C
    does not bound what one record can change; hence it is refused under DP."""
    assert interaction(get_objective("simclr"), (1, 40), engine=engine) > 0.05


def test_non_decomposable_objective_refused_under_dp(signals) -> None:
    model = SSLModel((1, 40), predictor=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(DPSoundnessError, match="not per-record decomposable"):
        DPSGD(model, opt, torch.as_tensor(signals), 8, 1.0, 1.0, get_objective("simclr"))


def test_mnist1d_augment_is_per_record() -> None:
    """Each record's view depends only on that record and the generator's draws for it."""
    from fedssl.ssl_core.augmentations import MNIST1DAugment

    x = torch.randn(6, 1, 40)
    a = MNIST1DAugment()(x, torch.Generator().manual_seed(3))
    x2 = x.clone()
    x2[0] = 0.0  # change another record
    b = MNIST1DAugment()(x2, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a[1:], b[1:])
    assert a.shape == x.shape and torch.isfinite(a).all()


@pytest.mark.parametrize("aug", [ImageAugment(), ImageAugment(crop_min=0.5, rotate=0.0,
                                                                translate=0.0)],
                         ids=["rotate-shift", "crop-only"])
def test_image_augment_is_per_record(aug: ImageAugment) -> None:
    """Rotations and shifts included, a record's view depends only on that record."""
    x = torch.randn(6, 3, 12, 12)
    a = aug(x, torch.Generator().manual_seed(3))
    x2 = x.clone()
    x2[0] = 5.0  # change another record
    b = aug(x2, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a[1:], b[1:])
    assert a.shape == x.shape and torch.isfinite(a).all()


# ------------------------------------------------------------------ non-private negatives
def test_public_infonce_counts_all_k_views_of_a_record() -> None:
    """Augmentation multiplicity: K = 4 views of a record, all in its one clipped row."""
    from fedssl.ssl_core.objectives.public_infonce import PublicInfoNCE

    objective = PublicInfoNCE(bank_size=64)
    objective.num_views = 4
    for engine in ENGINES:
        worst, total = max_change(objective, (1, 40), engine=engine)
        assert C * 0.99 <= worst <= C * (1 + 1e-4), (engine, worst)
        assert total > 2 * C


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bank", ["synthetic", "mnist1d-public"])
def test_public_infonce_without_momentum_encoder_is_per_record(engine, bank) -> None:
    """Keys and bank from the online model itself (no EMA copy): still one row per record."""
    from fedssl.ssl_core.objectives.public_infonce import PublicInfoNCE

    objective = PublicInfoNCE(bank=bank, bank_size=64, momentum=None)
    worst, total = max_change(objective, (1, 40), engine=engine)
    assert C * 0.99 <= worst <= C * (1 + 1e-4) and total > 2 * C
    assert interaction(objective, (1, 40), engine=engine) < 1e-4


@pytest.mark.parametrize("bank", ["synthetic", "mnist1d-public"])
def test_public_infonce_bank_takes_no_gradient_and_is_not_private(bank) -> None:
    """The bank is fixed by its source and seed (no private data), the negatives and the
    keys take no gradient, and a training step does not change the negatives."""
    from fedssl.ssl_core.objectives.public_infonce import PublicInfoNCE

    objective = PublicInfoNCE(bank=bank, bank_size=32, seed=3)
    model = objective.build_model((1, 40), width=16)
    objective.start_round(model)
    neg = objective.negatives(model)
    assert not neg.requires_grad and neg.shape[0] == 32
    assert objective.bank is not None and objective.bank.source == bank
    assert objective.target is not None
    assert not any(p.requires_grad for p in objective.target.parameters())
    views = _views((1, 40), 6, 2, seed=0)
    objective.per_record_loss(model, views).sum().backward()
    assert all(p.grad is None for p in objective.target.parameters())
    torch.testing.assert_close(objective.negatives(model), neg)
    again = PublicInfoNCE(bank=bank, bank_size=32, seed=3)
    again.start_round(model)
    torch.testing.assert_close(again.bank.records, objective.bank.records)


def test_public_infonce_auto_bank_follows_the_record_shape() -> None:
    from fedssl.ssl_core.objectives.public_infonce import PublicInfoNCE

    for shape, source in (((1, 40), "mnist1d-public"), ((1, 8, 8), "synthetic")):
        objective = PublicInfoNCE(bank_size=16)
        objective.start_round(objective.build_model(shape, width=8))
        assert objective.bank.source == source and objective.bank.records.shape[1:] == shape


def test_public_bank_from_npz_is_checked(tmp_path) -> None:
    import numpy as np

    from fedssl.ssl_core.datasets import DataError
    from fedssl.ssl_core.negative_bank import NegativeBank

    np.savez(tmp_path / "pub.npz", x=np.random.default_rng(0).normal(size=(50, 40)))
    bank = NegativeBank.from_source(str(tmp_path / "pub.npz"), (1, 40), size=20)
    assert bank.records.shape == (20, 1, 40)
    with pytest.raises(DataError, match="input shape"):
        NegativeBank.from_source(str(tmp_path / "pub.npz"), (1, 8, 8))
    with pytest.raises(DataError, match="not found"):
        NegativeBank.from_source(str(tmp_path / "none.npz"), (1, 40))


# ------------------------------------------------------------------ group-restricted negatives
def _group_change(objective, views, groups, num_groups: int, regroup=None
                  ) -> tuple[float, float]:
    """Largest change of the group-clipped sum over single-record removals, the other
    records' group ids held fixed (the proof's coupling) unless ``regroup`` recomputes the
    groups of the smaller batch (what an unsound assignment rule does)."""
    from fedssl.privacy.dp_sgd.group_clip import group_clipped_gradient_sum

    model = objective.build_model(tuple(views[0].shape[1:]),
                                  width=8 if views[0].dim() == 4 else 16)
    full = group_clipped_gradient_sum(model, objective, views, groups, num_groups, C)
    worst = 0.0
    for i in range(len(groups)):
        rest = regroup(len(groups) - 1) if regroup else torch.cat([groups[:i], groups[i + 1:]])
        s = group_clipped_gradient_sum(model, objective, _drop(views, i), rest, num_groups, C)
        worst = max(worst, float((full - s).norm()))
    return worst, float(full.norm())


def _duplicated_pairs(views: list[torch.Tensor]) -> list[torch.Tensor]:
    """Records 2k and 2k+1 identical (all views): the adversarial neighbours of the tests."""
    out = [v.clone() for v in views]
    for v in out:
        v[1::2] = v[0::2]
    return out


@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)], ids=["signal", "image"])
def test_group_infonce_removing_one_record_changes_sum_by_at_most_2c(shape) -> None:
    """Sensitivity 2C: one record changes only its own group's clipped term. The groups
    include a pair, so some removal leaves a singleton (gradient 0): the change is C there,
    so the test is not vacuous."""
    objective = get_objective("infonce-group")
    views = _views(shape, 12, 2, seed=0)
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    worst, total = _group_change(objective, views, groups, 4)
    assert C * 0.99 <= worst <= 2 * C * (1 + 1e-4), worst
    assert total > C
    # adversarial neighbours (duplicated records) and the objective's own random groups
    dup = _duplicated_pairs(_views(shape, 12, 2, seed=1))
    objective.bind(torch.Generator().manual_seed(5), 3)
    worst, _ = _group_change(objective, dup, objective.draw_groups(12), 3)
    assert worst <= 2 * C * (1 + 1e-4), worst


def test_sensitivity_test_catches_groups_from_a_chunked_permutation() -> None:
    """Groups as consecutive chunks of the batch order: removing a record shifts every later
    record into another group, so many clipped terms change (far above 2C)."""
    objective = get_objective("infonce-group")
    views = _duplicated_pairs(_views((1, 40), 24, 2, seed=0))
    chunked = lambda m: torch.arange(m) // 2  # noqa: E731
    worst, _ = _group_change(objective, views, chunked(24), 12, regroup=chunked)
    assert worst > 2.5 * C, worst
    # the same records with independently drawn groups held fixed stay within 2C
    sound, _ = _group_change(objective, views, chunked(24), 12)
    assert sound <= 2 * C * (1 + 1e-4)


class PerRecordGroupInfoNCE(Objective):
    """The group loss clipped per record (claims sensitivity C, wrongly: a record's
    removal also changes the rows of the other records of its group)."""

    name = "infonce-group-per-record"
    decomposable = True

    def __init__(self, groups: torch.Tensor) -> None:
        from fedssl.ssl_core.objectives.group_infonce import GroupInfoNCE

        self.inner, self.groups = GroupInfoNCE(), groups

    def build_model(self, input_shape, width=None):
        return self.inner.build_model(input_shape, width)

    def per_record_loss(self, model, views):
        return self.inner.group_loss(model, views, self.groups)


@pytest.mark.parametrize("engine", ENGINES)
def test_sensitivity_test_catches_in_group_negatives_with_per_record_clipping(engine) -> None:
    views = _duplicated_pairs(_views((1, 40), 8, 2, seed=0))
    groups = torch.arange(8) // 2  # each record with its duplicate
    objective = PerRecordGroupInfoNCE(groups)
    model = objective.build_model((1, 40), width=16)
    full = clipped_gradient_sum(model, objective, views, C, engine)
    objective.groups = groups[1:]
    smaller = clipped_gradient_sum(model, objective, _drop(views, 0), C, engine)
    # record 0's row (C) goes and record 1's row (C, same direction) drops to 0: 2C
    assert float((full - smaller).norm()) > 1.5 * C


def test_group_objective_is_refused_by_the_per_record_engines(signals) -> None:
    """Both per-record engines refuse a group objective; train_local routes it to the group
    engine under 'auto'/'hooks' and refuses 'fast' clearly."""
    import numpy as np

    from fedssl.client.trainer import TrainConfig, train_local
    from fedssl.privacy.dp_sgd.fast_clip import FastDPSGD
    from fedssl.ssl_core.augmentations import SignalAugment

    objective = get_objective("infonce-group")
    model = objective.build_model((1, 40), width=16)
    data = torch.as_tensor(signals)
    for cls in (DPSGD, FastDPSGD):
        with pytest.raises(DPSoundnessError, match="clipped per group"):
            cls(model, torch.optim.SGD(model.parameters(), lr=0.1), data, 8, 1.0, 1.0,
                objective)
    for engine in ENGINES:
        with pytest.raises(DPSoundnessError, match="clipped per group"):
            clipped_gradient_sum(model, objective, _views((1, 40), 4, 2, 0), C, engine)
    x = np.asarray(signals)
    cfg = TrainConfig(batch_size=16, dp=True, noise_multiplier=1.0, dp_engine="fast")
    with pytest.raises(DPSoundnessError, match="dp_engine='fast' clips per record"):
        train_local(model, objective, x, SignalAugment(), cfg)
    cfg.dp_engine = "auto"
    result = train_local(model, objective, x, SignalAugment(), cfg)
    assert result.dp_engine == "hooks" and result.steps == 4
    assert objective._generator is None  # the engine's secret generator is unbound after


def test_group_training_step_equals_the_tested_group_clipped_sum(signals) -> None:
    """GroupDPSGD (the training path) applies exactly the group-clipped sum the sensitivity
    tests measure, for the groups it drew, divided by the expected batch size."""
    from fedssl.privacy.dp_sgd.group_clip import GroupDPSGD, group_clipped_gradient_sum

    objective = get_objective("infonce-group")
    model = objective.build_model((1, 40), width=16)
    data = torch.as_tensor(signals)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with GroupDPSGD(model, opt, data, 16, 0.0, C, objective,
                    generator=torch.Generator().manual_seed(1)) as dp:
        assert dp.num_groups == 2  # expected batch 16 / group size 8
        (batch,) = next(iter(dp.loader))
        views = _views((1, 40), len(batch), 2, seed=2)
        dp.optimizer.zero_grad(set_to_none=True)
        objective.per_record_loss(dp.module, views).mean().backward()
        groups = objective.last_groups
        dp.optimizer.step()
        applied = torch.cat([p.grad.reshape(-1) for p in dp.optimizer.params])
    expected = group_clipped_gradient_sum(model, objective, views, groups, 2, C) / 16
    torch.testing.assert_close(applied, expected, rtol=1e-4, atol=1e-7)


def test_group_loss_evaluated_twice_in_one_step_is_refused(signals) -> None:
    """Group ids are drawn per evaluation of the loss: a second evaluation before the step
    would redraw them, so the rows of the first would be summed into the wrong groups and the
    2C bound would not hold. The engine refuses the step instead."""
    from fedssl.privacy.dp_sgd.group_clip import GroupDPSGD

    objective = get_objective("infonce-group")
    model = objective.build_model((1, 40), width=16)
    data = torch.as_tensor(signals)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with GroupDPSGD(model, opt, data, 16, 1.0, C, objective,
                    generator=torch.Generator().manual_seed(1)) as dp:
        (batch,) = next(iter(dp.loader))
        views = _views((1, 40), len(batch), 2, seed=2)
        dp.optimizer.zero_grad(set_to_none=True)
        loss = objective.per_record_loss(dp.module, views).mean()
        loss = loss + objective.per_record_loss(dp.module, views).mean()
        loss.backward()
        with pytest.raises(DPSoundnessError, match="evaluated 2 times"):
            dp.optimizer.step()
