"""Mask PRG: AES-256-CTR keystream expanded to uint32 vectors in Z_2^32.

What: Bonawitz et al. (2017) mask each input with ``PRG(b_u)`` and ``+-PRG(s_{u,v})``; the PRG
must be cryptographic and keyed with the full seed. Here ``PRG(seed)`` is the AES-256-CTR
keystream under key ``seed`` (32 bytes) starting at counter block ``0^96 || 0x00000002``, read
as little-endian uint32 words. Every seed is used for exactly one stream (seeds are fresh per
round via HKDF or ``os.urandom``), so a fixed counter start is safe.

Why: Flower's SecAgg+ seeds ``numpy.random.RandomState`` with a 32-bit XOR-fold of the secret
(2^32 possible masks, not a cryptographic PRG). AES via OpenSSL runs at several GB/s, and
:func:`apply_masks` processes the vector in cache-sized chunks, adding or subtracting every
stream chunk while it is still in L2, so the ``(k + 1) * d`` mask expansion per client costs
little more than the keystream itself.

Speed trick: the keystream is produced by OpenSSL's AES-256-GCM *encryptor* with the 96-bit
IV ``0^96`` over zero plaintext, never finalised (no tag is produced or used). GCM encryption
is by definition (NIST SP 800-38D) the CTR keystream from block ``IV || inc32(1) = IV || 2``
XORed with the plaintext, so the output is exactly the AES-256-CTR keystream defined above
(checked by the test suite against ``modes.CTR``); OpenSSL's stitched VAES/AVX-512 GCM code
path is ~3x faster than its CTR path on CPUs that have it. The 32-bit GCM counter bounds a
stream to 2^32 - 2 blocks (64 GiB), far above the ``4 * 2^31``-byte maximum vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

from .errors import SecAggError

SEED_BYTES = 32
_CHUNK = 1 << 16  # uint32 words per chunk: 256 KiB, fits L2 alongside the accumulator
_ZERO_IV = bytes(12)  # GCM 96-bit IV; keystream starts at counter block 0^96 || 2
U32 = np.dtype("<u4")


def keystream(seed: bytes):  # type: ignore[no-untyped-def]
    """An OpenSSL context whose ``update(zeros)`` yields the AES-256-CTR keystream of ``seed``.

    Args:
        seed: the 32-byte seed.

    Returns:
        The encryptor context.

    Raises:
        SecAggError: ``seed`` is not 32 bytes.
    """
    if len(seed) != SEED_BYTES:
        raise SecAggError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    return Cipher(algorithms.AES(bytes(seed)), modes.GCM(_ZERO_IV)).encryptor()


def expand_mask(seed: bytes, length: int) -> NDArray[np.uint32]:
    """``PRG(seed)`` as a fresh uint32 vector of ``length`` elements.

    Args:
        seed: the 32-byte seed.
        length: how many elements.

    Returns:
        The mask.
    """
    out = np.zeros(length, dtype=U32)
    apply_masks(out, add=[seed], subtract=())
    return out


def apply_masks(
    acc: NDArray[np.uint32],
    add: Sequence[bytes],
    subtract: Sequence[bytes],
    *,
    chunk: int = _CHUNK,
) -> NDArray[np.uint32]:
    """In place: ``acc += sum PRG(add) - sum PRG(subtract)  (mod 2^32)``; returns ``acc``.

    Args:
        acc: a contiguous 1-D uint32 accumulator.
        add: seeds whose masks are added.
        subtract: seeds whose masks are subtracted.
        chunk: elements expanded at a time (bounds the memory).

    Returns:
        ``acc``.

    Raises:
        SecAggError: ``acc`` is not a contiguous 1-D uint32 array.
    """
    if acc.dtype != U32 or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise SecAggError("apply_masks needs a contiguous 1-D uint32 accumulator")
    streams = [(keystream(s), np.add) for s in add] + [
        (keystream(s), np.subtract) for s in subtract
    ]
    if not streams:
        return acc
    d = acc.shape[0]
    chunk = max(1, min(chunk, d))
    zeros = bytes(4 * chunk)
    buf = bytearray(4 * chunk + 15)  # update_into needs block_size - 1 spare bytes
    words = np.frombuffer(buf, dtype=U32, count=chunk)
    for start in range(0, d, chunk):
        stop = min(d, start + chunk)
        m = stop - start
        src = zeros if m == chunk else zeros[: 4 * m]
        target = acc[start:stop]
        view = words[:m]
        for enc, op in streams:
            enc.update_into(src, buf)
            op(target, view, out=target)
    return acc
