"""Where a client's records come from: its own data path, or a simulated partition.

A real site (``fedssl client --data PATH``) trains on every record under its data path. A
simulated client derives its partition from the run's data spec (dataset, seed, partitioner)
and its ``partition-id``; the data set and the split are cached per process, so a Ray actor
that serves many clients generates the data once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedssl.ssl_core.datasets import SSLDataset, load_dataset


@dataclass(frozen=True)
class DataSpec:
    """Which data set a run uses (hashable, so it keys the cache)."""

    dataset: str
    data_path: str = ""
    num_samples: int = 4000
    seed: int = 0
    image_size: int = 28


@functools.lru_cache(maxsize=4)
def cached_dataset(spec: DataSpec) -> SSLDataset:
    """Load (or generate) a data set once per process."""
    return load_dataset(spec.dataset, spec.data_path, spec.num_samples, spec.seed,
                        spec.image_size)


def simulated_partition(
    spec: DataSpec, partition_id: int, num_partitions: int, partitioner: str, alpha: float,
    shards_per_client: int,
) -> np.ndarray:
    """The training records of one simulated client (labels are not handed out)."""
    from fedssl.simulations.partitioners import partition_indices

    data = cached_dataset(spec)
    idx = partition_indices(
        data.y_train, num_partitions, partition_id, partitioner, alpha, shards_per_client,
        seed=spec.seed,
    )
    return data.x_train[idx]
