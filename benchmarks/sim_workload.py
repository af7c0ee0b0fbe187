"""The workload of ``benchmarks/simulation.py``: its sizes and which rounds count.

What: the settings measured (:data:`KINDS`), the batch size, how many clients train per round
(:func:`per_round`), how many records each client holds (:func:`records_per_client`), the
MNIST-1D ``num_samples`` that yields exactly that pool (:func:`pool_samples`), and the steady
rounds a median is taken over (:func:`steady`).

Why a module of its own: every measured setting (fedssl, the vanilla Flower app, both compute
floors) and the report read these numbers, so they are defined once here and the settings
cannot drift apart in what they train. Imported by ``simulation.py``, which puts
``benchmarks/`` on ``sys.path``.
"""

from __future__ import annotations

import math

BATCH = 32
#: the data set and SSL method every setting trains (the floors build the data set's own
#: augmentation, ``augment_for(shape, DATASET)``, exactly as a simulated client does)
DATASET = "mnist1d"
METHOD = "simsiam"
TEST_FRACTION = 0.2  # load_mnist1d keeps 80 % as the training pool
KINDS = ("fedssl", "fedssl+secagg", "fedssl+dp", "flower", "pfl", "pfl-2proc", "floor",
         "floor-parallel")
#: pfl-research's settings and their worker processes (``pfl_baseline.py``)
PFL_WORKERS = {"pfl": 1, "pfl-2proc": 2}


def per_round(n: int) -> int:
    """Clients per round: all of them up to 100, then 100 (the issue's 1000-client setting)."""
    return n if n <= 100 else 100


def records_per_client(n: int, batches: int, max_pool: int) -> int:
    """Training records per client: ``batches`` batches of 32, capped so that the whole pool
    stays below ``max_pool`` records (MNIST-1D generation costs ~0.25 ms per record, paid by
    every fedssl process that loads the pool)."""
    per = min(batches * BATCH, max(BATCH, (max_pool // n) // BATCH * BATCH))
    return per


def pool_samples(n: int, records: int) -> int:
    """``num_samples`` for mnist1d that gives exactly ``n * records`` training records."""
    return math.ceil(n * records / (1 - TEST_FRACTION))


def steady(round_s: list[float]) -> list[float]:
    """Rounds 2..R-1 (no warm-up, no final evaluation); falls back for short runs."""
    if len(round_s) >= 3:
        return round_s[1:-1]
    return round_s[1:] or round_s
