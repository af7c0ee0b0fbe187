"""Partitions are disjoint, cover the pool, are reproducible and skewed as asked."""

from __future__ import annotations

import numpy as np
import pytest

from fedssl.ssl_core.partitioners import PartitionError, partition_indices

LABELS = np.repeat(np.arange(10), 100)


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shard"])
def test_partitions_disjoint_and_cover(method: str) -> None:
    parts = [partition_indices(LABELS, 7, i, method, alpha=0.5, seed=3) for i in range(7)]
    allidx = np.concatenate(parts)
    assert len(allidx) == len(LABELS) == len(np.unique(allidx))
    again = partition_indices(LABELS, 7, 2, method, alpha=0.5, seed=3)
    np.testing.assert_array_equal(again, parts[2])


def test_dirichlet_small_alpha_skews_labels() -> None:
    def mean_classes(alpha: float) -> float:
        return np.mean([len(np.unique(LABELS[partition_indices(LABELS, 10, i, "dirichlet",
                                                                 alpha=alpha)]))
                        for i in range(10)])
    assert mean_classes(0.1) < mean_classes(100.0)
    assert mean_classes(100.0) == 10


def test_shard_gives_few_labels() -> None:
    idx = partition_indices(LABELS, 10, 0, "shard", shards_per_client=2)
    assert len(np.unique(LABELS[idx])) <= 2


def test_bad_arguments() -> None:
    with pytest.raises(PartitionError, match="unknown partitioner"):
        partition_indices(LABELS, 3, 0, "random")
    with pytest.raises(PartitionError, match="out of range"):
        partition_indices(LABELS, 3, 3)
    with pytest.raises(PartitionError, match="cannot give"):
        partition_indices(LABELS[:5], 3, 0)


@pytest.mark.parametrize("method", ["iid", "dirichlet"])
def test_simulated_client_gets_its_partition(method: str) -> None:
    """A simulated client's records are the pool's rows at its ``partition_indices``
    (the per-process split cache hands out the same split), and an index out of range is
    refused."""
    from fedssl.ssl_core.data_cache import (
        DataSpec,
        cached_dataset,
        partition_labels,
        simulated_partition,
    )

    spec = DataSpec("mnist1d", "", 600, seed=4)
    data = cached_dataset(spec)
    labels = partition_labels(data, method)
    for client in (0, 3, 5, 3):
        idx = partition_indices(labels, 6, client, method, alpha=0.5, seed=4)
        np.testing.assert_array_equal(
            simulated_partition(spec, client, 6, method, 0.5, 2), data.x_train[idx])
    with pytest.raises(PartitionError, match="client 6 out of range for 6 clients"):
        simulated_partition(spec, 6, 6, method, 0.5, 2)
