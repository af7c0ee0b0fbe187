"""Label efficiency (issue 21 item 1): the shared fine-tuning recipe and the table that puts
a pretrained encoder beside the same network from scratch, its frozen probe and raw-input
logistic regression. Small synthetic data, fixed seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedssl.ssl_core.finetune import (
    FinetuneRecipe,
    finetune,
    format_label_efficiency,
    label_efficiency,
    label_subset,
    logistic_probe,
)


class _Linear(nn.Module):
    """A tiny encoder: a linear map of the flattened record."""

    def __init__(self, d_in: int = 8, feature_dim: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, feature_dim)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _blobs(n: int = 120, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Records ``(N, 1, 8)`` whose class is the sign pattern of their first coordinates."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, 1, 8)).astype(np.float32) * 0.5
    x[np.arange(n), 0, y] += 3.0
    return x, y


def test_label_subset_draws_k_per_class_per_seed() -> None:
    y = np.repeat(np.arange(4), 10)
    sub = label_subset(y, 3, seed=0)
    assert np.bincount(y[sub]).tolist() == [3, 3, 3, 3]
    assert np.array_equal(sub, label_subset(y, 3, seed=0))
    assert not np.array_equal(sub, label_subset(y, 3, seed=1))
    assert np.bincount(y[label_subset(y, 50, 0)]).tolist() == [10] * 4  # a small class: all
    with pytest.raises(ValueError, match=">= 1"):
        label_subset(y, 0, 0)


def test_label_subset_of_multi_label_data_covers_every_label() -> None:
    y = np.zeros((30, 3), np.int64)
    y[:10, 0] = 1
    y[10:20, 1] = 1
    y[5:30, 2] = 1
    sub = label_subset(y, 2, seed=0)
    assert (y[sub].sum(axis=0) >= 2).all() and len(sub) == len(set(sub.tolist()))


def test_finetune_learns_leaves_the_encoder_alone_and_is_seeded() -> None:
    x, y = _blobs()
    torch.manual_seed(0)
    enc = _Linear()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    recipe = FinetuneRecipe(steps=60, lr=1e-2)
    first = finetune(enc, x[:60], y[:60], x[60:], y[60:], recipe, seed=3)
    assert first["accuracy"] >= 0.9  # separable: a linear head on a linear map learns it
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())
    assert finetune(enc, x[:60], y[:60], x[60:], y[60:], recipe, seed=3) == first


def test_finetune_applies_the_augmentation_only_when_the_recipe_says_so() -> None:
    x, y = _blobs()
    calls: list[int] = []

    def augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        calls.append(len(batch))
        return batch

    finetune(_Linear(), x[:30], y[:30], x[30:], y[30:], FinetuneRecipe(steps=5), 0, augment)
    assert calls == [30] * 5  # all 30 records per step (fewer than the batch size)
    finetune(_Linear(), x[:30], y[:30], x[30:], y[30:], FinetuneRecipe(steps=5, augment=False),
             0, augment)
    assert len(calls) == 5


def test_multi_label_data_is_scored_by_auc() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 1, 8)).astype(np.float32)
    y = (x[:, 0, :2] > 0).astype(np.int64)  # two labels, each a sign of one coordinate
    out = finetune(_Linear(), x[:50], y[:50], x[50:], y[50:], FinetuneRecipe(steps=80, lr=1e-2))
    assert out["auc"] > 0.8 and 0 <= out["accuracy"] <= 1
    probe = logistic_probe(x[:50], y[:50], x[50:], y[50:])
    assert probe["auc"] > 0.9


@pytest.mark.parametrize("bad", [dict(steps=0), dict(batch_size=0), dict(lr=0.0),
                                 dict(lr=float("nan")), dict(weight_decay=-1.0)])
def test_a_bad_recipe_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="fine-tuning needs"):
        FinetuneRecipe(**bad)


def test_finetune_refuses_records_without_labels() -> None:
    x, y = _blobs()
    with pytest.raises(ValueError, match="labelled records"):
        finetune(_Linear(), x[:0], y[:0], x, y)


def test_the_table_puts_every_row_on_the_same_draws() -> None:
    x, y = _blobs(150)
    x_tr, y_tr, x_te, y_te = x[:100], y[:100], x[100:], y[100:]
    torch.manual_seed(0)
    result = label_efficiency(x_tr, y_tr, x_te, y_te, {"pretrained": _Linear()},
                              lambda: _Linear(), shots=(2, 5), seeds=(0, 1),
                              recipe=FinetuneRecipe(steps=10))
    kinds = [(r["kind"], r["encoder"]) for r in result["rows"]]
    assert kinds == [("raw-input", ""), ("from-scratch", ""), ("frozen", "pretrained"),
                     ("fine-tuned", "pretrained")]
    assert result["metric"] == "accuracy" and result["seeds"] == [0, 1]
    assert result["recipe"]["steps"] == 10
    raw = result["rows"][0]["values"]
    for k in (2, 5):  # the raw-input row is the probe on exactly seed s's k-per-class draw
        expected = [logistic_probe(x_tr[sub], y_tr[sub], x_te, y_te)["accuracy"]
                    for sub in (label_subset(y_tr, k, s) for s in (0, 1))]
        assert raw[str(k)]["per_seed"] == pytest.approx(expected)
        assert raw[str(k)]["mean"] == pytest.approx(np.mean(expected))
    text = format_label_efficiency(result)
    assert "| same network from scratch |" in text and "| pretrained, fine-tuned |" in text
    assert "gain of pretrained fine-tuned over from scratch:" in text and "at k=5" in text


def test_a_pretrained_encoder_shows_a_gain_over_scratch() -> None:
    """An encoder whose features keep the class-bearing coordinates and drop the loud noise
    beats the same network from scratch at 1 label per class: the table tells a useful
    encoder from a useless one (its gain is positive)."""
    rng = np.random.default_rng(0)
    y = np.arange(400) % 4
    x = np.concatenate([rng.normal(size=(400, 4)) * 0.5, rng.normal(size=(400, 4)) * 4.0], 1)
    x[np.arange(400), y] += 2.0
    x = x.astype(np.float32)[:, None, :]
    good = _Linear(feature_dim=4)
    with torch.no_grad():
        good.fc.weight.zero_()
        good.fc.weight[:, :4] = torch.eye(4)
        good.fc.bias.zero_()
    torch.manual_seed(0)
    result = label_efficiency(x[:300], y[:300], x[300:], y[300:], {"good": good}, _Linear,
                              shots=(1,), seeds=(0, 1, 2),
                              recipe=FinetuneRecipe(steps=50, lr=1e-2))
    by_kind = {r["kind"]: r["values"]["1"]["mean"] for r in result["rows"]}
    assert by_kind["frozen"] > by_kind["raw-input"] + 0.1
    assert by_kind["fine-tuned"] > by_kind["from-scratch"] + 0.1
    assert "+0." in format_label_efficiency(result).splitlines()[-1]


def test_label_efficiency_refuses_empty_shots_or_no_labels() -> None:
    x, y = _blobs()
    with pytest.raises(ValueError, match="at least one k"):
        label_efficiency(x, y, x, y, {}, _Linear, shots=())
    with pytest.raises(ValueError, match="labelled"):
        label_efficiency(x, None, x, None, {}, _Linear)  # type: ignore[arg-type]


def test_the_servers_table_uses_its_probe_split_and_seeds() -> None:
    """The ServerApp's label efficiency (report.json ``label_efficiency``): the run's
    ``finetune`` ks over ``finetune-seeds`` draws starting at the run's seed; none when not
    asked for."""
    from fedssl.server.evaluation import ServerEvaluation
    from fedssl.ssl_core.datasets import SSLDataset

    x, y = _blobs(150)
    data = SSLDataset("blobs", x[:100], y[:100], x[100:], y[100:], 3)
    off = ServerEvaluation(data, 80, 4, (), "cpu")
    assert off.label_efficiency({"federated encoder": _Linear()}, _Linear) is None
    on = ServerEvaluation(data, 80, 4, (), "cpu", finetune=(1, 2), finetune_seeds=2)
    table = on.label_efficiency({"federated encoder": _Linear()}, _Linear)
    assert table is not None and table["shots"] == [1, 2] and table["seeds"] == [4, 5]
    assert {r["kind"] for r in table["rows"]} == {"raw-input", "from-scratch", "frozen",
                                                  "fine-tuned"}
