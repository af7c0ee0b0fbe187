"""Where a client's records come from: its own data path, or a simulated partition.

A real site (``fedssl client --data PATH``) trains on every record under its data path
(``DataSpec(with_test=False)``: nothing is held out, since the server evaluates on its own
data; labels are not needed). A
simulated client derives its partition from the run's data spec (dataset, seed, partitioner)
and its ``partition-id``; the data set and the split are cached per process, so a Ray actor
that serves many clients loads the data once, and a generated data set (MNIST-1D, digits) is
generated once per run: the driver writes it to ``RUN/cache`` and every other process
memory-maps it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedssl.atomic import atomic_directory
from fedssl.run_layout import RunLayout
from fedssl.ssl_core.data import generated_names
from fedssl.ssl_core.datasets import DataError, SSLDataset, load_dataset


@dataclass(frozen=True)
class DataSpec:
    """Which data set a run uses (hashable, so it keys the cache)."""

    dataset: str
    data_path: str = ""
    num_samples: int = 4000
    seed: int = 0
    image_size: int = 28
    #: False for a site's own data: it only trains, so no evaluation split is held out
    with_test: bool = True


#: generated data sets, which a simulation's driver writes once for every process to map
#: (read from the format registry)
GENERATED = generated_names()
_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def cache_dir(run_dir: str | Path, spec: DataSpec) -> Path:
    """Where a run keeps the generated data set ``spec`` (``RUN/cache/<dataset>-<hash>``).

    Args:
        run_dir: the run directory.
        spec: the data set's specification.

    Returns:
        The cache folder (not created here).
    """
    digest = hashlib.sha256(repr(spec).encode()).hexdigest()[:16]
    return RunLayout(run_dir).cache / f"{spec.dataset}-{digest}"


def write_cache(run_dir: str | Path, spec: DataSpec, data: SSLDataset) -> Path | None:
    """Save a generated data set as ``.npy`` files for the run's other processes (atomically:
    a half-written cache is never read). Data read from files is not copied (``None``).

    Args:
        run_dir: the run directory.
        spec: the data set's specification.
        data: the data set.

    Returns:
        The cache folder, or None when nothing was written.
    """
    if spec.dataset not in GENERATED:
        return None
    final = cache_dir(run_dir, spec)
    if (final / "meta.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # (another process may win the race: its copy is kept, ours dropped)
    with atomic_directory(final) as tmp:
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(getattr(data, name)))
        (tmp / "meta.json").write_text(json.dumps({"name": data.name,
                                                   "num_classes": data.num_classes}))
    return final


@functools.lru_cache(maxsize=4)
def cached_dataset(spec: DataSpec, run_dir: str = "") -> SSLDataset:
    """Load (or generate) a data set once per process; with ``run_dir``, memory-map the copy
    the simulation's driver wrote instead of generating it again (seconds per process).

    Args:
        spec: the data set's specification.
        run_dir: the run directory holding the cache, "" for none.

    Returns:
        The data set.

    Raises:
        DataError: the data set cannot be loaded.
    """
    folder = cache_dir(run_dir, spec) if run_dir else None
    if folder is not None and (folder / "meta.json").exists():
        meta = json.loads((folder / "meta.json").read_text())
        arrays = [np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                  for name in _ARRAYS]
        return SSLDataset(meta["name"], *arrays, num_classes=int(meta["num_classes"]))
    return load_dataset(spec.dataset, spec.data_path, spec.num_samples, spec.seed,
                        spec.image_size, with_test=spec.with_test)


def partition_labels(data: SSLDataset, partitioner: str) -> np.ndarray:
    """The per-record labels a simulated split is drawn from: the classes for label-skewed
    partitioners (``dirichlet``, ``shard``); ``iid`` ignores labels, so unlabelled and
    multi-label data can be split iid.

    Args:
        data: the training data.
        partitioner: the partitioner's name.

    Returns:
        One label per training record (zeros for ``iid`` on unlabelled or multi-label data).

    Raises:
        DataError: a label-skewed partitioner on data without one class per record.
    """
    if partitioner == "iid":
        return np.zeros(len(data.x_train), np.int64)
    if data.label_kind != "multi-class":
        what = "has no labels" if data.label_kind == "none" else (
            f"is multi-label ({data.num_classes} labels per record)")
        raise DataError(f"partitioner {partitioner!r} skews clients by class, but "
                        f"{data.source or data.name} {what}: use --partitioner iid")
    assert data.y_train is not None
    return data.y_train


def simulated_partition(
    spec: DataSpec, partition_id: int, num_partitions: int, partitioner: str, alpha: float,
    shards_per_client: int, run_dir: str = "",
) -> np.ndarray:
    """The training records of one simulated client (labels are not handed out).

    Args:
        spec: the data set's specification.
        partition_id: the client's index.
        num_partitions: how many clients.
        partitioner: ``iid``, ``dirichlet`` or ``shard``.
        alpha: the Dirichlet concentration.
        shards_per_client: shards per client of ``shard``.
        run_dir: the run directory holding the cache, "" for none.

    Returns:
        The client's records.

    Raises:
        DataError: the data set cannot be loaded, or the partitioner needs labels it lacks.
        PartitionError: invalid partition settings.
    """
    from fedssl.ssl_core.partitioners import PartitionError

    if not 0 <= partition_id < num_partitions:
        raise PartitionError(f"client {partition_id} out of range for {num_partitions} clients")
    split = _simulated_split(spec, run_dir, num_partitions, partitioner, float(alpha),
                             shards_per_client)
    return cached_dataset(spec, run_dir).x_train[split[partition_id]]


@functools.lru_cache(maxsize=4)
def _simulated_split(spec: DataSpec, run_dir: str, num_partitions: int, partitioner: str,
                     alpha: float, shards_per_client: int) -> tuple[np.ndarray, ...]:
    """Every simulated client's indices, once per process and setting: a simulation worker
    serves many clients, and drawing the labels' key for the partitioner's cache cost ~0.7 ms
    per client at 10,000 clients (a copy and a hash of the whole pool's labels)."""
    from fedssl.ssl_core.partitioners import all_partitions

    labels = partition_labels(cached_dataset(spec, run_dir), partitioner)
    return all_partitions(labels, num_partitions, partitioner, alpha, shards_per_client,
                          seed=spec.seed)
