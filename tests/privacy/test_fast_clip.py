"""The fast DP-SGD engine (privacy/dp_sgd/fast_clip.py) is exact: it equals Opacus hooks mode.

Per-record clipped gradient sums (all views of a record in one row) are compared with Opacus
hooks mode for the SSL models fedssl trains (1-D CNN and ResNet encoders with projector and
predictor heads; the ViT-MAE) and for a "zoo" of layer configurations that exercises every
per-layer path (1-D/2-D convolutions with stride, dilation, padding and bias, materialised
and ghost norms, GroupNorm, LayerNorm, Linear on token sequences, Embedding with a padding
index). Per-record norms are compared with plain autograd on each record alone. Whatever the
engine cannot attribute to records exactly must raise.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedssl.client.trainer import TrainConfig, train_local
from fedssl.privacy.dp_sgd.fast_clip import FastClipper, UnsupportedModelError, unsupported_reason
from fedssl.privacy.dp_sgd.opacus_engine import clipped_gradient_sum
from fedssl.ssl_core.augmentations import augment_for
from fedssl.ssl_core.heads import SSLModel
from fedssl.ssl_core.objectives import get_objective
from fedssl.ssl_core.objectives.base import Objective

RTOL = 1e-5


def _views(shape: tuple[int, ...], n: int, num_views: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=gen)
    aug = augment_for(shape)
    return [aug(x, gen) for _ in range(num_views)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _fast(model: nn.Module, objective: Objective, views: list[torch.Tensor], c: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
    with FastClipper(model) as clipper:
        with clipper.record():
            losses = objective.per_record_loss(model, views)
        sums, norms = clipper.clipped_sum(losses, c)
    return torch.cat([s.reshape(-1) for s in sums]), norms


def _autograd_norms(model: nn.Module, objective: Objective, views: list[torch.Tensor]
                    ) -> torch.Tensor:
    norms = []
    for i in range(len(views[0])):
        model.zero_grad(set_to_none=True)
        objective.per_record_loss(model, [v[i:i + 1] for v in views]).sum().backward()
        norms.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()
                                if p.grad is not None]).norm())
    model.zero_grad(set_to_none=True)
    return torch.stack(norms)


@pytest.mark.parametrize("name", ["simsiam", "byol", "mae"])
@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8), (1, 12, 12)],
                         ids=["signal", "image", "image-overlapping-pool"])
def test_clipped_sum_equals_opacus_hooks_mode(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    objective = get_objective(name)
    model = objective.build_model(shape)  # default widths: the shapes the benchmark times
    objective.start_round(model)
    views = _views(shape, 12, objective.num_views)
    for c in (1e-3, 0.5, 1e6):  # all clipped, mixed, none clipped
        ref = clipped_gradient_sum(model, objective, views, c, engine="hooks")
        got, _ = _fast(model, objective, views, c)
        assert got.shape == ref.shape
        assert _rel(got, ref) < RTOL, (name, shape, c)
        torch.testing.assert_close(
            got, clipped_gradient_sum(model, objective, views, c, engine="fast"))


@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8), (1, 12, 12)],
                         ids=["signal", "image", "image-overlapping-pool"])
def test_norms_equal_per_record_autograd(shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    objective = get_objective("simsiam")
    # in float64: in float32 the two summation orders differ by ~1e-5 relative on the
    # image model's ~240k parameters (rounding, not the engine: float64 agrees to ~1e-15)
    model = objective.build_model(shape).double()
    views = [v.double() for v in _views(shape, 6, 2, seed=2)]
    _, norms = _fast(model, objective, views, 1.0)
    ref = _autograd_norms(model, objective, views)
    torch.testing.assert_close(norms, ref, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------ layer zoo
class Zoo(nn.Module):
    """Every supported layer in the configurations the engine distinguishes."""

    def __init__(self, padding_idx: int | None = 0) -> None:
        super().__init__()
        # 2-D: grouped per-record conv (few channels), tap GEMMs (many channels) with a
        # non-square dilated kernel and 'valid' padding, ghost-norm convs (few positions)
        self.c2a = nn.Conv2d(2, 8, 3, padding=1)
        self.g2a = nn.GroupNorm(4, 8)
        self.c2b = nn.Conv2d(8, 512, (3, 2), padding="valid", dilation=(1, 2), bias=False)
        self.c2c = nn.Conv2d(512, 64, 3, stride=2, padding=1)
        self.c2d = nn.Conv2d(64, 64, 3, padding=1)
        # ghost norms from the shifted Gram (small padded map: strided, dilated, non-square,
        # unequal padding) and from an unfold (a larger padded map)
        self.c2e = nn.Conv2d(64, 64, (3, 2), stride=(2, 1), dilation=(1, 2), padding=(1, 2))
        self.c2f = nn.Conv2d(8, 64, 3, stride=4, padding=1, bias=False)
        # tap GEMMs of a strided conv on few positions (each tap's positions copied out)
        self.c2g = nn.Conv2d(8, 16, (3, 2), stride=(2, 3), dilation=(2, 1), padding=(2, 1))
        # 1-D: strided dilated taps with bias; a ghost-norm conv (short, wide)
        self.c1a = nn.Conv1d(4, 32, 5, stride=2, dilation=2, padding=3)
        self.c1b = nn.Conv1d(32, 128, 3, padding=1)
        self.g1 = nn.GroupNorm(1, 128)
        # tokens: Linear on (N, T, d), LayerNorm, Embedding with a padding index
        self.emb = nn.Embedding(4, 16, padding_idx=padding_idx)
        self.tok = nn.Linear(16, 16)
        self.ln = nn.LayerNorm(16)
        self.head = nn.Linear(64 + 16 + 128 + 16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        a = torch.relu(self.g2a(self.c2a(x)))
        f = self.c2f(a).mean(dim=(2, 3))
        g = torch.relu(self.c2g(a)).mean(dim=(2, 3))
        a = torch.relu(self.c2e(self.c2d(self.c2c(self.c2b(a))))).mean(dim=(2, 3)) + f
        s = torch.relu(self.g1(self.c1b(torch.relu(self.c1a(x.reshape(n, 4, 32)))))).mean(-1)
        idx = torch.bucketize(x[:, 0, 0, :6].detach().contiguous(), torch.tensor([-0.5, 0.0, 0.5]))
        t = self.ln(torch.relu(self.tok(self.emb(idx)))).mean(1)
        return self.head(torch.cat([a, g, s, t], 1))


class ZooObjective(Objective):
    """A decomposable two-view loss (record i's loss uses record i's views only)."""

    name = "zoo"
    num_views = 2
    decomposable = True

    def per_record_loss(self, model, views):
        y1, y2 = model(views[0]), model(views[1])
        return (torch.tanh(y1) * y2.detach()).sum(-1) + y2.pow(2).mean(-1)


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_layer_zoo_equals_opacus_and_autograd(padding_idx: int | None) -> None:
    torch.manual_seed(3)
    model, objective = Zoo(padding_idx), ZooObjective()
    gen = torch.Generator().manual_seed(4)
    views = [torch.randn(10, 2, 8, 8, generator=gen) for _ in range(2)]
    for c in (1e-3, 1e6):
        got, norms = _fast(model, objective, views, c)
        if padding_idx is None:  # Opacus 1.6's Embedding sampler ignores padding_idx (it
            # gives the padding row a gradient that autograd does not), so compare there only
            ref = clipped_gradient_sum(model, objective, views, c, engine="hooks")
            assert _rel(got, ref) < RTOL, c
    torch.testing.assert_close(norms, _autograd_norms(model, objective, views), rtol=RTOL,
                               atol=1e-7)


# ------------------------------------------------------------------------------ refusals
class Plain(Objective):
    name = "plain"
    num_views = 1
    decomposable = True

    def per_record_loss(self, model, views):
        return model(views[0]).pow(2).sum(-1)


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4)),
    nn.Sequential(nn.Conv1d(2, 4, 3, groups=2)),
    nn.Sequential(nn.Conv1d(1, 4, 3, padding=1, padding_mode="circular")),
    nn.Sequential(nn.Embedding(5, 3, max_norm=1.0)),
    nn.PReLU(),
], ids=["batchnorm", "grouped-conv", "circular-padding", "embedding-max-norm", "prelu"])
def test_unsupported_layers_raise(model: nn.Module) -> None:
    with pytest.raises(UnsupportedModelError):
        FastClipper(model)
    assert unsupported_reason(model) is not None


def test_tied_weights_raise() -> None:
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    with pytest.raises(UnsupportedModelError, match="tied"):
        FastClipper(nn.Sequential(a, b))


class WeightReuse(nn.Module):
    """Reads ``lin.weight`` outside ``lin``'s forward: the hooks cannot see that use."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + x @ self.lin.weight


def test_parameter_used_outside_its_layer_raises() -> None:
    model = WeightReuse()
    with FastClipper(model) as clipper:
        with clipper.record():
            loss = Plain().per_record_loss(model, [torch.randn(4, 3)])
        with pytest.raises(UnsupportedModelError, match="outside"):
            clipper.clipped_sum(loss, 1.0)


def test_views_concatenated_into_one_call_raise() -> None:
    model = nn.Linear(3, 2)
    with FastClipper(model) as clipper:
        with clipper.record():
            y = model(torch.randn(8, 3))  # two views of 4 records stacked into one call
        loss = (y[:4] * y[4:]).sum(-1)  # 4 records, but the layer saw 8 rows
        with pytest.raises(UnsupportedModelError, match="records"):
            clipper.clipped_sum(loss, 1.0)


def test_in_place_modified_output_raises() -> None:
    model = nn.Linear(3, 2)
    with FastClipper(model) as clipper:
        with clipper.record():
            y = model(torch.randn(4, 3))
            y.mul_(2.0)
        with pytest.raises(UnsupportedModelError, match="in place"):
            clipper.clipped_sum(y.sum(-1), 1.0)


def test_fast_engine_refuses_unsupported_model_in_training() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    cfg = TrainConfig(batch_size=4, dp=True, noise_multiplier=1.0, dp_engine="fast")
    with pytest.raises(UnsupportedModelError):
        train_local(model, Plain(), torch.randn(8, 4), lambda x, g: x, cfg)


# ------------------------------------------------------------------------------ training
def test_train_local_fast_engine_equals_hooks_engine() -> None:
    """Same seed: same Poisson batches, same noise draws, same clipped sums -> same model."""
    objective = get_objective("simsiam")
    x = torch.randn(40, 1, 40, generator=torch.Generator().manual_seed(5))
    results, states = {}, {}
    for engine in ("hooks", "fast"):
        torch.manual_seed(6)
        model = SSLModel((1, 40), width=16)
        cfg = TrainConfig(batch_size=8, seed=7, dp=True, noise_multiplier=1.0,
                          max_grad_norm=0.5, dp_engine=engine, dp_seed=11)
        results[engine] = train_local(model, objective, x, augment_for((1, 40)), cfg)
        states[engine] = [p.detach().clone() for p in model.parameters()]
    assert results["fast"].dp_engine == "fast" and results["hooks"].dp_engine == "hooks"
    assert results["fast"].steps == results["hooks"].steps == 5
    assert abs(results["fast"].loss - results["hooks"].loss) < 1e-4
    for a, b in zip(states["fast"], states["hooks"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_auto_engine_is_fast_for_fedssl_models_and_hooks_otherwise() -> None:
    from fedssl.client.trainer import select_dp_engine

    for shape in ((1, 40), (1, 8, 8)):
        model = SSLModel(shape)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        assert select_dp_engine("auto", model, opt) == "fast"
    model = get_objective("mae").build_model((1, 8, 8))
    assert select_dp_engine("auto", model, torch.optim.SGD(model.parameters(), lr=0.1)) == "fast"
    odd = nn.Sequential(nn.Linear(4, 4), nn.PReLU())
    assert select_dp_engine("auto", odd, torch.optim.SGD(odd.parameters(), lr=0.1)) == "hooks"
    with pytest.raises(ValueError):
        select_dp_engine("ghost", odd, torch.optim.SGD(odd.parameters(), lr=0.1))


def test_dp_randomness_is_not_derivable_from_the_run_seed() -> None:
    """The server knows ``TrainConfig.seed`` (it comes from the run config): DP-SGD's
    sampling and noise must not follow from it, else the noise could be regenerated."""
    objective = get_objective("simsiam")
    x = torch.randn(32, 1, 40, generator=torch.Generator().manual_seed(5))
    runs = []
    for _ in range(2):
        torch.manual_seed(6)
        model = SSLModel((1, 40), width=16)
        cfg = TrainConfig(batch_size=8, seed=7, dp=True, noise_multiplier=1.0)
        train_local(model, objective, x, augment_for((1, 40)), cfg)
        runs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert not torch.equal(runs[0], runs[1])


def test_mixed_precision_is_refused_under_dp() -> None:
    from fedssl.privacy.dp_sgd.opacus_engine import DPSoundnessError

    model = SSLModel((1, 40), width=16)
    cfg = TrainConfig(dp=True, noise_multiplier=1.0, amp=True)
    with pytest.raises(DPSoundnessError, match="mixed precision"):
        train_local(model, get_objective("simsiam"), torch.randn(16, 1, 40),
                    augment_for((1, 40)), cfg)
