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

from fedssl.privacy.dp_sgd import DPSGD, DPSoundnessError, clipped_gradient_sum
from fedssl.ssl_core.augmentations import ImageAugment, SignalAugment
from fedssl.ssl_core.heads import SSLModel
from fedssl.ssl_core.objectives import OBJECTIVES, get_objective
from fedssl.ssl_core.objectives.base import Objective

DP_OBJECTIVES = sorted(name for name, cls in OBJECTIVES.items() if cls.decomposable)
C = 0.05
#: both DP-SGD engines: Opacus hooks mode and the book-keeping engine of privacy/fast_clip.py
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
