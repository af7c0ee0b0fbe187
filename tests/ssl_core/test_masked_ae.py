"""Masked autoencoding on the CNN encoders (masked-ae): shapes, masks, DP contract, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedssl.client.trainer import TrainConfig, train_local
from fedssl.privacy.dp_sgd.opacus_engine import clipped_gradient_sum
from fedssl.ssl_core.augmentations import augment_for
from fedssl.ssl_core.dp_soundness import DPSoundnessError
from fedssl.ssl_core.encoders import build_encoder
from fedssl.ssl_core.heads import SSLModel
from fedssl.ssl_core.model_parts import PARTS
from fedssl.ssl_core.objectives import OBJECTIVES, get_objective
from fedssl.ssl_core.objectives.masked_ae import MaskedAE, MaskedAENet
from fedssl.ssl_core.warm_start import export_encoder, load_init_encoder
from tests.privacy.test_sensitivity import ENGINES, C, interaction, max_change

SHAPES = [(1, 40), (1, 8, 8), (1, 28, 28), (2, 41)]
IDS = ["signal", "digits", "mnist28", "odd-length"]


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_shapes_and_the_encoder_is_the_contrastive_methods_cnn(shape) -> None:
    objective = MaskedAE()
    model = objective.build_model(shape, width=8)
    x = torch.randn(5, *shape)
    loss = objective.per_record_loss(model, [x])
    assert loss.shape == (5,) and torch.isfinite(loss).all() and (loss > 0).all()
    reference = build_encoder(shape, 8)
    assert type(model.encoder) is type(reference)
    assert model.encoder.feature_dim == reference.feature_dim
    assert model.encoder(x).shape == (5, reference.feature_dim)
    assert {k: v.shape for k, v in model.encoder.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}


@pytest.mark.parametrize(("shape", "ratio"), [((1, 40), 0.75), ((1, 8, 8), 0.5),
                                               ((1, 28, 28), 0.9)])
def test_mask_hides_the_requested_fraction_of_patches(shape, ratio: float) -> None:
    model = MaskedAENet(shape, width=8, mask_ratio=ratio)
    m = model.pixel_mask(torch.randn(7, *shape), salt=3)
    assert m.shape == (7, 1, *shape[1:])
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    per_record = m.reshape(7, -1).mean(dim=1)
    expected = model.num_masked / model.num_patches
    torch.testing.assert_close(per_record, torch.full((7,), expected), atol=0.0, rtol=1e-6)
    assert model.num_masked == round(ratio * model.num_patches)


def test_mask_depends_only_on_the_record_and_the_salt() -> None:
    model = MaskedAENet((1, 40), width=8)
    x = torch.randn(6, 1, 40)
    m = model.pixel_mask(x, salt=11)
    other = torch.cat([torch.randn(4, 1, 40), x[2:3]])  # same record, other batch, position 4
    torch.testing.assert_close(model.pixel_mask(other, salt=11)[4], m[2])
    assert len({tuple(r.flatten().tolist()) for r in m}) > 1  # records get different masks
    assert not torch.equal(model.pixel_mask(x, salt=12), m)  # a new salt, new masks
    objective = MaskedAE()
    salt = objective.salt
    objective.after_step(model)
    assert objective.salt != salt


def test_loss_reads_only_the_masked_entries_and_one_record() -> None:
    objective = MaskedAE()
    model = objective.build_model((1, 8, 8), width=8)
    torch.nn.init.normal_(model.decoder[-1].weight)  # a non-trivial prediction
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        base = objective.per_record_loss(model, [x])
        y = x.clone()
        y[3] = torch.randn(1, 8, 8)
        changed = objective.per_record_loss(model, [y])
        alone = objective.per_record_loss(model, [x[1:2]])
    others = [i for i in range(6) if i != 3]
    torch.testing.assert_close(changed[others], base[others])
    assert not torch.isclose(changed[3], base[3])
    torch.testing.assert_close(alone[0], base[1])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)], ids=["signal", "image"])
def test_sensitivity_with_three_views_per_record(shape, engine: str) -> None:
    """K = 3 views (each with its own mask) enter one clipped row: removing a record changes
    the clipped sum by exactly C, and records do not interact."""
    objective = MaskedAE()
    objective.num_views = 3
    worst, total = max_change(objective, shape, engine=engine)
    assert C * 0.99 <= worst <= C * (1 + 1e-4), worst
    assert total > 2 * C
    assert interaction(MaskedAE(), (1, 40), engine=engine) < 1e-4


class PositionSeededMasks(MaskedAE):
    """Unsound variant: masks drawn from one generator in batch order (record i's mask
    depends on its position, so removing another record changes it)."""

    name = "masked-ae-by-position"

    def per_record_loss(self, model, views):
        x = views[0]
        gen = torch.Generator().manual_seed(self.salt % 2**31)
        net = getattr(model, "_module", model)
        masked = torch.stack([torch.randperm(net.num_patches, generator=gen)[:net.num_masked]
                              for _ in range(len(x))])
        m = torch.zeros(len(x), net.num_patches).scatter_(1, masked, 1.0).reshape(
            len(x), 1, net.num_patches).repeat_interleave(2, dim=2)
        pred = model.decoder(model.encoder(x * (1 - m))).reshape(x.shape)
        return ((pred - x).pow(2) * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2))


def test_harness_catches_masks_seeded_by_batch_position() -> None:
    assert interaction(PositionSeededMasks(), (1, 40), engine="hooks") > 1e-3


def test_views_of_different_records_are_refused() -> None:
    objective = MaskedAE()
    model = objective.build_model((1, 40), width=8)
    with pytest.raises(DPSoundnessError, match="same records"):
        objective.per_record_loss(model, [torch.randn(4, 1, 40), torch.randn(3, 1, 40)])
    with pytest.raises(ValueError, match="signals or"):
        objective.build_model((40,))
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedAE(mask_ratio=1.0).build_model((1, 40))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)], ids=["signal", "digits"])
def test_dp_training_through_the_trainer(shape, engine: str) -> None:
    objective = get_objective("masked-ae")
    model = objective.build_model(shape, width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((48, *shape)).astype(np.float32)
    res = train_local(model, objective, x, augment_for(shape),
                      TrainConfig(dp=True, noise_multiplier=1.0, batch_size=16, views=2,
                                  dp_engine=engine, dp_seed=0))
    assert np.isfinite(res.loss) and res.steps == 3 and res.dp_engine == engine
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_warm_start_from_a_contrastive_encoder_loads(tmp_path) -> None:
    """A SimCLR/infonce-public encoder file (public or synthetic warm start) fits masked-ae."""
    source = SSLModel((1, 40), predictor=False, width=8)
    path = tmp_path / "enc.safetensors"
    export_encoder(path, source, {"method": "simclr", "input_shape": "1,40"})
    model = get_objective("masked-ae").build_model((1, 40), width=8)
    load_init_encoder(model, path)
    for k, v in source.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[k], v)


def test_registry_and_shareable_parts() -> None:
    assert OBJECTIVES["masked-ae"] is MaskedAE
    objective = get_objective("masked-ae")
    assert objective.decomposable and objective.clip_unit == "record"
    model = objective.build_model((1, 8, 8))
    assert {k.split(".", 1)[0] for k in model.state_dict()} <= set(PARTS)


def test_clipped_sum_is_finite_on_a_batch_of_one() -> None:
    objective = MaskedAE()
    model = objective.build_model((1, 40), width=8)
    objective.start_round(model)
    out = clipped_gradient_sum(model, objective, [torch.randn(1, 1, 40)], C, "fast")
    assert torch.isfinite(out).all() and float(out.norm()) <= C * (1 + 1e-4)


@pytest.mark.parametrize("shape", [(2, 41), (3, 12, 12)], ids=["signal", "image"])
def test_map_decoder_puts_each_position_on_the_pixels_it_covers(shape) -> None:
    model = MaskedAENet(shape, width=8, decoder="map")
    t, k, c = math.prod(model.map_grid), model.scale, shape[0]
    # token p predicts the value p + 0.5 (channel 0) and -(p + 0.5) (last channel)
    block = torch.ones(c, *k)
    block[-1] = -1
    tokens = torch.stack([(p + 0.5) * block.flatten() for p in range(t)])[None]
    out = model.fold(tokens)[0]
    assert out.shape == shape
    for index in np.ndindex(*shape[1:]):
        cell = [i // s for i, s in zip(index, k)]
        p = cell[0] if len(cell) == 1 else cell[0] * model.map_grid[1] + cell[1]
        assert out[(0, *index)] == p + 0.5 and out[(c - 1, *index)] == -(p + 0.5)


@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)], ids=["signal", "image"])
def test_map_decoder_is_per_record_under_both_engines(shape) -> None:
    objective = MaskedAE(decoder="map")
    for engine in ENGINES:
        worst, total = max_change(objective, shape, engine=engine)
        assert C * 0.99 <= worst <= C * (1 + 1e-4) and total > 2 * C
