"""Split a labelled training pool across simulated clients, reproducibly from a seed.

- ``iid``: a uniform random split into near-equal parts.
- ``dirichlet``: label skew; each class's records are divided among clients in proportions
  drawn from Dirichlet(alpha) (Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical
  Data Distribution for Federated Visual Classification"). Small alpha -> strong skew.
- ``shard``: McMahan et al. 2017 (FedAvg) pathological split: records sorted by label, cut
  into ``shards_per_client * num_clients`` shards, each client gets ``shards_per_client``.

All clients' partitions are drawn together, once per pool and setting (``all_partitions``,
cached: one permutation of the labels); ``partition_indices`` returns one client's.
Every client is guaranteed at least ``min_size`` records (re-drawing the Dirichlet split if
needed), because a client with no data can't train.
"""

from __future__ import annotations

import functools

import numpy as np

PARTITIONERS = ("iid", "dirichlet", "shard")


class PartitionError(ValueError):
    """Raised for an unknown partitioner or impossible parameters."""


@functools.lru_cache(maxsize=8)
def _all_partitions(
    labels_key: bytes, n: int, num_clients: int, method: str, alpha: float,
    shards_per_client: int, seed: int, min_size: int,
) -> tuple[np.ndarray, ...]:
    labels = np.frombuffer(labels_key, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if method == "iid":
        return tuple(np.sort(p) for p in np.array_split(rng.permutation(n), num_clients))
    if method == "shard":
        order = np.argsort(labels, kind="stable")
        shards = np.array_split(order, num_clients * shards_per_client)
        perm = rng.permutation(len(shards))
        return tuple(
            np.sort(np.concatenate([shards[j] for j in perm[i::num_clients]]))
            for i in range(num_clients)
        )
    if method == "dirichlet":
        classes = np.unique(labels)
        for _attempt in range(1000):
            parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for c in classes:
                idx = rng.permutation(np.flatnonzero(labels == c))
                props = rng.dirichlet(np.full(num_clients, alpha))
                cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
                for i, chunk in enumerate(np.split(idx, cuts)):
                    parts[i].append(chunk)
            out = tuple(np.sort(np.concatenate(p)) for p in parts)
            if min(len(p) for p in out) >= min_size:
                return out
        raise PartitionError(
            f"could not draw a Dirichlet({alpha}) split of {n} records into {num_clients} "
            f"clients with at least {min_size} records each; raise alpha or the sample count"
        )
    raise PartitionError(f"unknown partitioner {method!r}; choose one of {PARTITIONERS}")


def all_partitions(
    labels: np.ndarray,
    num_clients: int,
    method: str = "iid",
    alpha: float = 0.5,
    shards_per_client: int = 2,
    seed: int = 0,
    min_size: int = 2,
) -> tuple[np.ndarray, ...]:
    """Every client's indices into the training pool, client ``i`` at position ``i``.

    Args:
        labels: one label per record of the pool.
        num_clients: how many clients.
        method: ``iid``, ``dirichlet`` or ``shard``.
        alpha: the Dirichlet concentration (smaller: more skewed).
        shards_per_client: shards per client of ``shard``.
        seed: makes the split reproducible.
        min_size: the fewest records any client gets.

    Returns:
        One sorted index array per client (cached: the same arrays for the same arguments).

    Raises:
        PartitionError: an unknown method, an invalid alpha, or a split that cannot give
            every client ``min_size`` records.
    """
    if method not in PARTITIONERS:
        raise PartitionError(f"unknown partitioner {method!r}; choose one of {PARTITIONERS}")
    if num_clients < 1:
        raise PartitionError(f"need at least one client, got {num_clients}")
    if num_clients * min_size > len(labels):
        raise PartitionError(
            f"{len(labels)} records cannot give {num_clients} clients {min_size} records each"
        )
    if method == "dirichlet" and alpha <= 0:
        raise PartitionError(f"Dirichlet alpha must be positive, got {alpha}")
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    return _all_partitions(
        labels.tobytes(), len(labels), num_clients, method, float(alpha), shards_per_client,
        seed, min_size,
    )


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    client: int,
    method: str = "iid",
    alpha: float = 0.5,
    shards_per_client: int = 2,
    seed: int = 0,
    min_size: int = 2,
) -> np.ndarray:
    """Indices into the training pool held by ``client`` (0-based) of ``num_clients``:
    its entry of :func:`all_partitions`.

    Args:
        client: which client; every other argument as in :func:`all_partitions`.

    Returns:
        The client's indices.

    Raises:
        PartitionError: a client out of range, or any of :func:`all_partitions`' errors.
    """
    if num_clients < 1 or not 0 <= client < num_clients:
        raise PartitionError(f"client {client} out of range for {num_clients} clients")
    return all_partitions(labels, num_clients, method, alpha, shards_per_client, seed,
                          min_size)[client]
