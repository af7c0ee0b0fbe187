"""The server's evaluation of the global encoder: the capped test split, and features that
are extracted once per encoder state (the final evaluation of the encoder the last round
evaluated reuses them) with the same results as probing the encoder afresh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedssl.server import evaluation as server_evaluation
from fedssl.server.evaluation import ServerEvaluation, eval_split
from fedssl.ssl_core.collapse import collapse_metrics
from fedssl.ssl_core.datasets import SSLDataset
from fedssl.ssl_core.evaluation import evaluate_encoder, extract_features


def _data(n_train: int = 120, n_test: int = 90) -> SSLDataset:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n_train + n_test)
    x = (rng.standard_normal((n_train + n_test, 1, 12)) + y[:, None, None]).astype(np.float32)
    return SSLDataset("blobs", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 3)


def _encoder(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6))


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """The record counts of every feature extraction the server's evaluation makes."""
    made: list[int] = []

    def counting(encoder, x, **kw):
        made.append(len(x))
        return extract_features(encoder, x, **kw)

    monkeypatch.setattr(server_evaluation, "extract_features", counting)
    return made


def test_the_test_split_is_capped_to_a_fixed_subset_in_order() -> None:
    data = _data()
    x_all = eval_split(data, 50, seed=3)[2]
    assert len(x_all) == 90
    _, _, x_cap, y_cap = eval_split(data, 50, seed=3, max_test=40)
    assert len(x_cap) == 40 and len(y_cap) == 40
    rows = [int(np.flatnonzero((data.x_test == r).all(axis=(1, 2)))[0]) for r in x_cap]
    assert rows == sorted(rows) and len(set(rows)) == 40  # a subset, in the split's order
    assert np.array_equal(y_cap, data.y_test[rows])
    again = eval_split(data, 50, seed=3, max_test=40)[2]
    assert np.array_equal(again, x_cap)
    assert not np.array_equal(eval_split(data, 50, seed=4, max_test=40)[2], x_cap)
    assert len(eval_split(data, 50, seed=3, max_test=500)[2]) == 90


def test_final_reuses_the_last_rounds_features_and_matches_a_fresh_probe(calls) -> None:
    data = _data()
    ev = ServerEvaluation(data, 80, 1, (1, 5), "cpu")
    encoder = _encoder()
    during = ev.during_run(encoder)
    assert calls == [80, 90]  # the probe's training records and the test split, once each
    final = ev.final(encoder)
    assert calls == [80, 90]  # unchanged encoder: nothing extracted again
    fresh = evaluate_encoder(encoder, *ev.split, labels_per_class=(1, 5), seed=1)
    assert final == pytest.approx(fresh)
    f_test = extract_features(encoder, ev.split[2])
    assert during == pytest.approx({**{k: fresh[k] for k in ("linear_probe_accuracy",
                                                           "knn_accuracy")},
                                    **collapse_metrics(f_test)})


def test_a_changed_encoder_is_probed_afresh(calls) -> None:
    data = _data()
    ev = ServerEvaluation(data, 80, 1, (5,), "cpu")
    encoder = _encoder()
    first = ev.during_run(encoder)
    with torch.no_grad():
        encoder[1].weight[0, 0] += 1e-3  # one value changed: another encoder
    second = ev.final(encoder)
    assert calls == [80, 90, 80, 90]
    assert second == pytest.approx(evaluate_encoder(encoder, *ev.split, labels_per_class=(5,),
                                                    seed=1))
    assert first["linear_probe_accuracy"] == pytest.approx(
        evaluate_encoder(_encoder(), *ev.split)["linear_probe_accuracy"])
