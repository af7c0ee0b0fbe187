"""The ``.npy`` header of a model array in a Flower message: the bytes ``np.save`` writes,
and a bounded parse of any other header.

Why: every array of every message (the global model a client receives, each reply the server
screens) carries a ``.npy`` header, and NumPy parses it with ``ast.literal_eval``: about 45 %
of decoding the MNIST-1D model. The header of an array of a known dtype and shape is fixed, so
the decoders compare the bytes with :func:`npy_header` (cached) and parse only a header that
differs (:func:`read_npy_header`, which never allocates the array it declares).

A leaf module: it imports nothing of fedssl, so every package may use it.

>>> import io, numpy as np
>>> buf = io.BytesIO(); np.save(buf, np.zeros((2, 3), np.float32))
>>> data = buf.getvalue()
>>> data.startswith(npy_header("<f4", (2, 3)))
True
>>> shape, fortran, dtype, offset = read_npy_header(data)
>>> shape, fortran, str(dtype), len(data) - offset
((2, 3), False, 'float32', 24)
"""

from __future__ import annotations

import functools
import io

import numpy as np

#: largest ``.npy`` header accepted per array (NumPy's own reading limit, ``max_header_size``)
MAX_NPY_HEADER = 10_000


@functools.lru_cache(maxsize=4096)
def npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The exact header (magic, version 1.0, padded dict) ``np.save`` writes for a C-order
    array of this dtype and shape.

    Args:
        dtype: the dtype's ``.str``, e.g. ``"<f4"``.
        shape: the array's shape.

    Returns:
        The header bytes; the values follow them.
    """
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                               "shape": tuple(shape)})
    return buf.getvalue()


def read_npy_header(data: bytes, max_header_size: int = MAX_NPY_HEADER
                    ) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Parse the header of ``.npy`` bytes without reading or allocating the array.

    Args:
        data: the ``.npy`` bytes.
        max_header_size: the longest header accepted.

    Returns:
        ``(shape, fortran_order, dtype, offset)``, ``offset`` where the values start.

    Raises:
        ValueError: the bytes have no readable header (bad magic, version, length or dict).
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(stream, max_header_size=max_header_size)
    except (ValueError, TypeError, OSError, SyntaxError) as exc:
        raise ValueError(f"no readable .npy header ({exc})") from None
    return tuple(shape), bool(fortran), dtype, stream.tell()
