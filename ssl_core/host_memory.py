"""Keep freed host memory in the process between training steps (glibc ``mallopt``).

Why: every training step allocates and frees the same large temporaries (activations, output
gradients and, under DP-SGD, per-record gradients, Gram matrices and clip factors). glibc's
malloc serves blocks above its mmap threshold with fresh ``mmap`` calls and trims free memory
at the top of the heap, so each step gives those pages back to the kernel and the next step
faults them in again, zero-filled, one page at a time. In a virtual machine a page fault is
expensive: on this project's 2-core VM it made a DP-SGD step on the 1-D CNN 1.47x a non-DP
step instead of 1.28x, and on the 28x28 ResNet 1.41x instead of 1.19x (interleaved runs,
``benchmarks/dp_sgd.py``'s models, batch 64; the non-DP steps changed by under 5 %). PyTorch's
CUDA caching allocator keeps freed GPU memory for the same reason; this is the host-side
equivalent, done with the C library's own switches.

What: ``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` (the largest value glibc accepts: smaller blocks
come from the heap and are reused) and ``mallopt(M_TRIM_THRESHOLD, 256 MiB)`` (the heap is
trimmed only when more than that lies free at its top). The cost is resident memory: a
process keeps up to about ``trim_bytes`` of freed memory mapped, so its RSS stays near its
peak working set instead of dropping between steps.

Only glibc (Linux) has these switches; elsewhere :func:`retain_freed_memory` does nothing and
returns False. It is process-wide and idempotent; :func:`fedssl.client.trainer.train_local`
calls it unless ``TrainConfig.retain_host_memory`` is off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: defaults: glibc's largest mmap threshold on 64-bit, and 256 MiB of retained free heap
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 256 * 2**20

#: outcome of each (mmap, trim) setting tried in this process: tried once, warned once
_outcomes: dict[tuple[int, int], bool] = {}


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # not glibc (e.g. musl)
    fn = libc.mallopt
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def retain_freed_memory(mmap_bytes: int = MMAP_THRESHOLD_BYTES,
                        trim_bytes: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Make this process's malloc keep freed memory for reuse (see the module docstring).

    Args:
        mmap_bytes: allocations at least this large get their own mapping.
        trim_bytes: free memory above this is given back to the system.

    Returns:
        True when both settings are in effect, False where the C library has no such
        switches or refused a value (each setting is tried once per process).
    """
    key = (mmap_bytes, trim_bytes)
    if key in _outcomes:
        return _outcomes[key]
    mallopt = _mallopt()
    if mallopt is None:
        log.debug("malloc tuning skipped: not glibc")
        ok = False
    else:
        ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_bytes)) and bool(
            mallopt(M_TRIM_THRESHOLD, trim_bytes))
        if not ok:
            log.warning("glibc refused mallopt(mmap threshold %d, trim threshold %d); freed "
                        "host memory is returned to the kernel as usual", *key)
    _outcomes[key] = ok
    return ok
