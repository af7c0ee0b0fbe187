"""The global model a round's message carries, checked against the local model before any of
it is decoded.

A client trusts the server with the model it starts from, not with its own memory or its
local state: Flower's ``ArrayRecord.to_torch_state_dict`` runs ``np.load`` on every array the
message holds, and ``np.load`` allocates the size an array's ``.npy`` header declares before
it reads a byte of it, so a header claiming 2**40 elements costs that much memory (or a
MemoryError) on the client; and ``load_state_dict(..., strict=False)`` ignores unknown and
missing names, so a model with a part left out would be trained from the client's random
initialisation for that part and sent back as if it were the global one.

:func:`decode_global_model` checks, in this order and before it allocates anything of the
declared sizes:

1. the names: each one a parameter or buffer of the local model, the shared parts whole (a
   part the server sends is sent entirely: ``encoder``, ``projector``, ...), the encoder among
   them (the server refuses to run without it);
2. the total size of the arrays' bytes against what the local tensors of those names take
   (plus a bounded ``.npy`` header per array);
3. for each array, from its metadata: the serialisation (``numpy.ndarray``), the dtype and the
   shape of the local tensor of that name; then its ``.npy`` header (parsed alone) must
   declare that same shape and dtype, and exactly that many bytes must follow it;
4. the values: finite.

Any failure is a :class:`GlobalModelError` naming the first parameter that does not fit; the
ClientApp refuses the round with it (a refusal reply, nothing trained, nothing spent) and the
local model and state are untouched. What passes is decoded with ``np.frombuffer`` from the
bytes already in memory (one copy, into a writable tensor). A header byte-identical to the one
``np.save`` writes for the local tensor's dtype and shape is not parsed again
(:mod:`fedssl.npy_header`).

>>> import torch.nn as nn
>>> from flwr.app import ArrayRecord
>>> model = nn.Sequential()
>>> model.add_module("encoder", nn.Linear(2, 2))
>>> sorted(decode_global_model(ArrayRecord(model.state_dict()), model))
['encoder.bias', 'encoder.weight']
>>> bad = ArrayRecord({"encoder.weight": torch.zeros(3, 2), "encoder.bias": torch.zeros(2)})
>>> try:
...     decode_global_model(bad, model)
... except GlobalModelError as exc:
...     print(str(exc).split(": ", 1)[1])
parameter 'encoder.weight' has shape (3, 2), expected (2, 2)
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedssl.npy_header import MAX_NPY_HEADER, npy_header, read_npy_header

#: serialisation of the arrays a client accepts (Flower's NumPy ``.npy`` bytes)
NUMPY_STYPE = "numpy.ndarray"
#: the part every shared model includes
ENCODER = "encoder"


class GlobalModelError(ValueError):
    """The server's global model does not fit the local model (names, shapes, dtypes, sizes
    or values); the message names the first parameter that does not fit."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"the server's global model does not fit this client's model: "
                         f"{problem}")


def _part(name: str) -> str:
    return name.split(".", 1)[0]


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return torch.empty(0, dtype=tensor.dtype).numpy().dtype


def _check_names(names: list[str], local: dict[str, torch.Tensor]) -> None:
    unknown = [n for n in names if n not in local]
    if unknown:
        raise GlobalModelError(f"parameter {unknown[0]!r} is not in the local model"
                               + (f" (nor {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    parts = {_part(n) for n in names}
    if ENCODER not in parts:
        raise GlobalModelError("it holds no encoder parameters (the encoder is always shared)")
    received = set(names)
    missing = [n for n in local if _part(n) in parts and n not in received]
    if missing:
        raise GlobalModelError(f"parameter {missing[0]!r} of the shared part "
                               f"{_part(missing[0])!r} is missing"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def _decode(name: str, array: Array, ref: torch.Tensor) -> np.ndarray:
    """One array checked against ``ref`` (metadata, then the ``.npy`` header), then read."""
    dtype, shape = _numpy_dtype(ref), tuple(ref.shape)
    if array.stype != NUMPY_STYPE:
        raise GlobalModelError(f"parameter {name!r} is serialised as {array.stype!r}, "
                               f"expected {NUMPY_STYPE!r}")
    if str(array.dtype) != str(dtype):
        raise GlobalModelError(f"parameter {name!r} has dtype {array.dtype}, expected {dtype}")
    if tuple(array.shape) != shape:
        raise GlobalModelError(f"parameter {name!r} has shape {tuple(array.shape)}, "
                               f"expected {shape}")
    data = array.data
    if not isinstance(data, bytes):
        raise GlobalModelError(f"parameter {name!r} holds {type(data).__name__}, not bytes")
    header = npy_header(dtype.str, shape)
    if len(data) == len(header) + ref.numel() * dtype.itemsize and data.startswith(header):
        offset, fortran = len(header), False  # exactly what np.save writes: nothing to parse
    else:
        try:
            h_shape, fortran, h_dtype, offset = read_npy_header(data, MAX_NPY_HEADER)
        except ValueError as exc:
            raise GlobalModelError(f"parameter {name!r} has {exc}") from None
        if h_shape != shape or h_dtype != dtype:
            raise GlobalModelError(f"parameter {name!r}: its .npy header declares shape "
                                   f"{h_shape} of {h_dtype}, its metadata {shape} of {dtype}")
        size = len(data) - offset
        if size != ref.numel() * dtype.itemsize:
            raise GlobalModelError(f"parameter {name!r} has {size} bytes of values, expected "
                                   f"{ref.numel() * dtype.itemsize} for shape {shape} of "
                                   f"{dtype}")
    value = np.frombuffer(data, dtype=dtype, offset=offset).reshape(
        shape, order="F" if fortran else "C")
    if np.issubdtype(dtype, np.floating) and not np.isfinite(value).all():
        raise GlobalModelError(f"parameter {name!r} contains NaN or Inf")
    return value


def _nbytes(array: Array) -> int:
    data = array.data
    return len(data) if isinstance(data, (bytes, bytearray, memoryview)) else 0


def decode_global_model(arrays: ArrayRecord, model: torch.nn.Module
                        ) -> OrderedDict[str, torch.Tensor]:
    """The global model in ``arrays`` as a state dict for ``model`` (in the message's order),
    after the checks of this module's docstring; ``model`` is only read.

    Args:
        arrays: the global model's arrays from the server's message.
        model: the local model the arrays must fit.

    Raises:
        GlobalModelError: the first check that fails, naming the parameter.
    """
    local = model.state_dict()
    names = list(arrays.keys())
    _check_names(names, local)
    sizes = {n: _nbytes(arrays[n]) for n in names}
    limit = sum(local[n].numel() * local[n].element_size() + MAX_NPY_HEADER for n in names)
    if sum(sizes.values()) > limit:
        name = next(n for n in names
                    if sizes[n] > local[n].numel() * local[n].element_size() + MAX_NPY_HEADER)
        raise GlobalModelError(f"parameter {name!r} is {sizes[name]} bytes, more than its "
                               f"shape {tuple(local[name].shape)} takes (the arrays total "
                               f"{sum(sizes.values())} bytes, the local model's {limit})")
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name in names:
        state[name] = torch.from_numpy(_decode(name, arrays[name], local[name]).copy())
    return state
