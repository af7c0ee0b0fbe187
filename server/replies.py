"""What a client's reply may hold, checked before anything of it is averaged.

Reply screening, separate from averaging (:class:`~fedssl.server.strategy.FedSSLStrategy`
records the verdicts; :mod:`fedssl.ssl_core.aggregators` averages what passes): the model's
arrays are decoded once, with their declared sizes checked before numpy allocates anything,
and must match the global model's names, shapes and dtypes and be finite
(:func:`decode_arrays`); a reply must carry exactly the expected records and a positive,
exactly representable example count (:func:`check_update`); a site's ledger copy must be
text and key bytes (:func:`ledger_copy_types`). Every check returns the problem as a sentence
naming the client's fault, never raises on bad input.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedssl.npy_header import npy_header, read_npy_header

#: the largest example count a reply may claim (an exact float; NaN, inf or 1e308 weights
#: would turn the weighted mean into NaN)
MAX_EXAMPLES = 2**53


def client_name(msg: Message) -> str:
    """The client id a reply claims, else its node id."""
    if not msg.has_error() and "status" in msg.content.config_records:
        return str(msg.content.config_records["status"].get("client", ""))
    return f"node-{msg.metadata.src_node_id}"


def _check_npy_size(data: bytes) -> None:
    """Refuse ``.npy`` bytes whose header declares another size than the bytes that follow,
    before ``np.load`` allocates the declared array (it does, before reading a byte of it: a
    header claiming 2**40 elements would cost that much memory, or a MemoryError).

    Raises:
        ValueError: the header is unreadable or the sizes disagree.
    """
    shape, _, dtype, offset = read_npy_header(data)
    declared = math.prod(shape) * dtype.itemsize
    if declared != len(data) - offset:
        raise ValueError(f"its header declares shape {shape} of {dtype} ({declared} bytes) "
                         f"but {len(data) - offset} bytes follow")


def _decode(array: Array, ref: np.ndarray) -> np.ndarray:
    """``array.numpy()``, without numpy's header parsing when the bytes are exactly what
    ``np.save`` writes for ``ref``'s dtype and shape (then the result is the same array, a
    read-only view); anything else takes Flower's general path and its checks, after the
    declared size is checked against the bytes (:func:`_check_npy_size`)."""
    data = array.data
    if array.stype == "numpy.ndarray" and isinstance(data, bytes):
        header = npy_header(ref.dtype.str, ref.shape)
        if len(data) == len(header) + ref.nbytes and data.startswith(header):
            return np.frombuffer(data, dtype=ref.dtype, offset=len(header)).reshape(ref.shape)
        _check_npy_size(data)
    return array.numpy()


def decode_arrays(arrays: ArrayRecord, reference: dict[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """``arrays`` deserialised once, or why they can't be averaged into a model shaped like
    ``reference``: ``(values, None)`` or ``(None, problem)``.

    Args:
        arrays: a reply's arrays.
        reference: the global model's arrays by name.

    Returns:
        ``(values, None)`` or ``(None, problem)``.
    """
    keys = set(arrays.keys())
    if keys != set(reference):
        missing, extra = sorted(set(reference) - keys), sorted(keys - set(reference))
        return None, f"parameter names differ (missing {missing[:3]}, unexpected {extra[:3]})"
    values: dict[str, np.ndarray] = {}
    for name, ref in reference.items():
        try:
            value = _decode(arrays[name], ref)
        except Exception as exc:  # a malformed Array can't be deserialised
            return None, f"parameter {name!r} is not a readable array ({exc})"
        if value.shape != ref.shape:
            return None, f"parameter {name!r} has shape {value.shape}, expected {ref.shape}"
        if value.dtype != ref.dtype:
            return None, f"parameter {name!r} has dtype {value.dtype}, expected {ref.dtype}"
        if not np.isfinite(value).all():
            return None, f"parameter {name!r} contains NaN or Inf"
        values[name] = value
    return values, None


def check_arrays(arrays: ArrayRecord, reference: dict[str, np.ndarray]) -> str | None:
    """Why ``arrays`` can't be averaged into a model shaped like ``reference`` (or None).

    Args:
        arrays: a reply's arrays.
        reference: the global model's arrays by name.
    """
    return decode_arrays(arrays, reference)[1]


def check_update(msg: Message, reference: dict[str, np.ndarray], weighted_by_key: str,
                 with_arrays: bool = True
                 ) -> tuple[dict[str, np.ndarray] | None, float, Any, str | None]:
    """A trained reply's content checked: ``(values, examples, metrics, None)``, or
    ``(None, 0, None, problem)``.

    Args:
        msg: a reply without an error and not a refusal.
        reference: the shared model's arrays (names, shapes, dtypes).
        weighted_by_key: the metric holding the reply's number of examples.
        with_arrays: whether the reply carries the model (False under secure aggregation,
            where the update stays on the client until it is masked).
    """
    if (len(msg.content.array_records) != int(with_arrays)
            or len(msg.content.metric_records) != 1):
        return None, 0.0, None, (f"reply must hold {int(with_arrays)} ArrayRecord(s) and one "
                                 "MetricRecord")
    values: dict[str, np.ndarray] | None = None
    if with_arrays:
        arrays = next(iter(msg.content.array_records.values()))
        values, problem = decode_arrays(arrays, reference)
        if problem is not None:
            return None, 0.0, None, problem
    metrics = next(iter(msg.content.metric_records.values()))
    n = metrics.get(weighted_by_key)
    if (not isinstance(n, (int, float)) or isinstance(n, bool)
            or not 0 < n <= MAX_EXAMPLES):
        return None, 0.0, None, (f"'{weighted_by_key}' must be a positive number of "
                                 f"examples (at most 2**53), got {n!r}")
    return values, float(n), metrics, None


def ledger_copy_types(text: Any, pub: Any) -> str | None:
    """Why a reply's ledger copy cannot even be verified (None if it is text and key bytes):
    never ``bytes(pub)``, since an int would become that many zero bytes.

    Args:
        text: the reply's ledger copy.
        pub: the reply's public key.
    """
    if isinstance(text, str) and isinstance(pub, bytes):
        return None
    return (f"ledger copy must be text and its key bytes, got {type(text).__name__} and "
            f"{type(pub).__name__}")
