"""Masked autoencoding (MAE) for images and signals: shapes, masks, learning, DP soundness."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from fedssl.client.trainer import TrainConfig, train_local
from fedssl.ssl_core.augmentations import augment_for
from fedssl.ssl_core.model_parts import PARTS
from fedssl.ssl_core.objectives import get_objective
from fedssl.ssl_core.objectives.mae import MAE, per_record_masks
from fedssl.ssl_core.vit import ViTEncoder, choose_patch_size

SHAPES = [(1, 40), (1, 8, 8), (3, 28, 28)]
IDS = ["signal", "digits", "rgb28"]


@pytest.mark.parametrize(
    ("shape", "patch", "tokens"),
    [((1, 40), (2,), 20), ((1, 8, 8), (2, 2), 16), ((1, 28, 28), (4, 4), 49),
     ((3, 32, 32), (4, 4), 64), ((2, 41), (3,), 14)],
)
def test_patch_size_follows_record_size(shape, patch, tokens) -> None:
    enc = ViTEncoder(shape, dim=16, depth=1)
    assert enc.patchify.patch_size == patch
    assert enc.num_patches == tokens
    assert enc.patchify(torch.zeros(2, *shape)).shape == (2, tokens, enc.patchify.patch_dim)


def test_choose_patch_size() -> None:
    assert [choose_patch_size(s, 8) for s in (8, 28, 32, 224)] == [2, 4, 4, 28]
    assert choose_patch_size(40, 20) == 2


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_loss_and_feature_shapes(shape) -> None:
    mae = MAE()
    model = mae.build_model(shape, width=16)
    x = torch.randn(5, *shape)
    loss = mae.per_record_loss(model, [x])
    assert loss.shape == (5,) and torch.isfinite(loss).all() and (loss > 0).all()
    assert model.encoder.feature_dim == 16
    assert model.encoder(x).shape == (5, 16)
    assert get_objective("mae").build_model(shape).encoder.feature_dim == 64


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_masking_ratio_and_partition(ratio: float) -> None:
    model = MAE(mask_ratio=ratio).build_model((1, 28, 28), width=16)
    keep, masked = model.masks(torch.randn(6, 1, 28, 28), salt=1)
    t = model.encoder.num_patches
    assert masked.shape == (6, round(ratio * t)) and keep.shape == (6, t - round(ratio * t))
    for k, m in zip(keep, masked, strict=True):  # visible and masked partition the patches
        assert sorted(torch.cat([k, m]).tolist()) == list(range(t))


def test_masks_depend_only_on_the_record_and_the_salt() -> None:
    x = torch.randn(8, 1, 40)
    keep, masked = per_record_masks(x, 20, 15, salt=7)
    # the same record alone, or in another batch at another position: the same mask
    k2, m2 = per_record_masks(torch.cat([torch.randn(3, 1, 40), x[5:6]]), 20, 15, salt=7)
    assert torch.equal(m2[3], masked[5]) and torch.equal(k2[3], keep[5])
    # masks differ between records and between salts (fresh masks every step)
    assert len({tuple(sorted(m.tolist())) for m in masked}) > 1
    assert not torch.equal(per_record_masks(x, 20, 15, salt=8)[1], masked)
    mae = MAE()
    salt = mae.salt
    mae.after_step(torch.nn.Identity())
    assert mae.salt != salt


def test_masks_are_uniform_over_patches() -> None:
    _, masked = per_record_masks(torch.randn(2000, 1, 40), 20, 15, salt=3)
    freq = torch.bincount(masked.reshape(-1), minlength=20).float() / 2000
    assert torch.allclose(freq, torch.full((20,), 0.75), atol=0.05)


def _smooth(n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Random-phase sinusoids (signals) or products of them (images), unit scale."""
    gen = torch.Generator().manual_seed(0)
    phase = 6.28 * torch.rand(n, 2, 1, generator=gen)
    t = torch.linspace(0, 6.28, shape[-1])[None, None, :]
    waves = torch.sin(t + phase)  # (n, 2, size)
    if len(shape) == 2:
        return 1.4 * waves[:, :1]
    return 2.0 * (waves[:, 0, :, None] * waves[:, 1, None, :])[:, None]


@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)], ids=["signal", "digits"])
def test_loss_decreases_on_a_tiny_batch(shape) -> None:
    mae = MAE()
    model = mae.build_model(shape, width=32)
    x = _smooth(16, shape)  # masked patches are predictable from visible ones
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = mae.per_record_loss(model, [x]).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)], ids=["signal", "digits"])
def test_changing_one_record_leaves_other_losses_unchanged(shape) -> None:
    mae = MAE()
    model = mae.build_model(shape, width=16)
    x = torch.randn(6, *shape)
    y = x.clone()
    y[2] = torch.randn(shape)
    with torch.no_grad():
        a, b = mae.per_record_loss(model, [x]), mae.per_record_loss(model, [y])
        alone = mae.per_record_loss(model, [x[4:5]])
    others = [i for i in range(6) if i != 2]
    torch.testing.assert_close(a[others], b[others], rtol=1e-5, atol=1e-6)
    assert not torch.isclose(a[2], b[2])
    torch.testing.assert_close(alone[0], a[4], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)], ids=["signal", "digits"])
def test_opacus_per_sample_gradients_are_exact(shape) -> None:
    mae = MAE()
    model = mae.build_model(shape, width=16)
    assert ModuleValidator.validate(model, strict=True) == []
    x = torch.randn(3, *shape)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "full backward hook ... no inputs require grad"
            mae.per_record_loss(gsm, [x]).sum().backward()
        rows = {n: p.grad_sample.clone() for n, p in model.named_parameters()}
    finally:
        gsm._close()
    assert set(rows) == {n for n, _ in model.named_parameters()}  # every parameter, mask token too
    for i in range(3):
        model.zero_grad()
        mae.per_record_loss(model, [x[i:i + 1]]).sum().backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(rows[n][i], p.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)], ids=["signal", "digits"])
def test_dp_training_through_the_trainer(shape) -> None:
    obj = get_objective("mae")
    model = obj.build_model(shape, width=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((48, *shape)).astype(np.float32)
    res = train_local(model, obj, x, augment_for(shape),
                      TrainConfig(dp=True, noise_multiplier=1.0, batch_size=16))
    assert np.isfinite(res.loss) and res.steps == 3
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert model.encoder(torch.as_tensor(x[:4])).shape == (4, 16)


def test_state_dict_has_only_shareable_parts_and_no_buffers() -> None:
    model = get_objective("mae").build_model((1, 8, 8))
    assert {k.split(".", 1)[0] for k in model.state_dict()} <= set(PARTS)
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}


def test_registry() -> None:
    obj = get_objective("mae")
    assert isinstance(obj, MAE) and obj.decomposable and obj.num_views == 1
    with pytest.raises(ValueError, match="C, L"):
        obj.build_model((40,))
