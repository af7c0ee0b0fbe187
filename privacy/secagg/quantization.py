"""Clip, scale and stochastically round float updates into Z_2^32 without sum overflow.

What: secure aggregation sums integers modulo ``2^32`` (Bonawitz et al. 2017 work over
``Z_R``); float model updates must first be mapped to integers. :class:`Quantizer`:

1. clips each coordinate to ``[-c, c]``;
2. maps it affinely onto ``[0, M]``: ``y = (x + c) * M / (2c)``;
3. rounds stochastically and *unbiasedly*: ``q = floor(y + u)`` with ``u`` uniform in
   ``[0, 1)`` (23-bit coins), i.e. ``q = floor(y) + Bernoulli(y - floor(y))`` and ``E[q] = y``.
   It is computed in float64 as ``rint(y + u - 1/2)`` through the ``1.5 * 2^52`` magic-number
   trick (the integer lands in the low mantissa bits; no slow float->int cast), so ``E[q]``
   matches ``y`` up to the coin grid and float64 rounding: within ``2^-20`` of one level
   for any ``M < 2^32``;
4. adds ``headroom`` (see the DP hook below).

Why the range: with ``n`` clients each contributing at most ``S = floor((2^32 - 1) / n)``, the
true integer sum is at most ``n S <= 2^32 - 1``, so the ``mod 2^32`` sum the server recovers
*is* the integer sum - no wrap-around, even when every client sends ``+c`` everywhere. ``M``
is ``S - 2 * headroom``, optionally capped by ``2^bits - 1``.

Decoding: given the recovered sum ``T`` over ``m`` contributors, the mean is
``(T - m h) * 2c / (m M) - c``, which equals the mean of the per-client dequantised values
``(q_i - h) * 2c / M - c`` exactly as rationals. :meth:`Quantizer.decode_mean` evaluates it
as ``((T - m h) * 2c - m M c) / (m M)`` in float64, where numerator and denominator are exact
whenever ``c`` has at most 20 significant bits (e.g. 0.5, 1, 8): the result is then the
correctly rounded float of the exact rational mean.

Distributed-DP hook: ``Quantizer.encode(..., noise_hook=f)`` calls ``f(q)`` on the uint32
vector *after* quantisation and *before* it is handed to the masking client, and expects a
uint32 vector of the same shape back. This is where a distributed discrete-Gaussian or Skellam
noise share (Kairouz et al. 2021; Agarwal et al. 2021) is to be added, modulo ``2^32``.
Reserve room for it with ``headroom=h``: values are then shifted to ``[h, h + M]`` and the
noise share must keep each coordinate in ``[0, S]`` (i.e. ``|noise| <= h``), which keeps the
no-overflow guarantee. :mod:`fedssl.privacy.client_level.distributed` uses it for the Skellam
mechanism
(``levels`` caps ``M`` so the headroom fits, ``wrap=True`` since Skellam noise is unbounded).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from fractions import Fraction

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import SecAggError
from .prg import keystream

MODULUS = 1 << 32
_CHUNK = 1 << 16
_MAGIC = 1.5 * 2.0**52  # adding it rounds |v| < 2^51 to an integer held in the low mantissa bits

NoiseHook = Callable[[NDArray[np.uint32]], NDArray[np.uint32]]
"""``f(q) -> q'``: add a distributed-DP noise share to the quantised vector."""


class Quantizer:
    """Unbiased stochastic quantiser from ``[-clip, clip]^d`` floats to uint32 slots.

    Guarantee: for at most ``num_clients`` contributors, the sum of encoded vectors never
    exceeds ``2^32 - 1`` (no modular wrap), so the securely aggregated sum decodes to the exact
    mean of the clients' dequantised values.
    """

    def __init__(
        self, clip: float, num_clients: int, *, bits: int | None = None, headroom: int = 0,
        levels: int | None = None,
    ) -> None:
        if not (np.isfinite(clip) and clip > 0):
            raise SecAggError(f"clip must be a positive finite float, got {clip}")
        if num_clients < 1:
            raise SecAggError("num_clients must be >= 1")
        if headroom < 0:
            raise SecAggError("headroom must be >= 0")
        self.clip = float(clip)
        self.num_clients = int(num_clients)
        self.headroom = int(headroom)
        self.slot = (MODULUS - 1) // self.num_clients
        levels_cap = levels
        levels = self.slot - 2 * self.headroom
        if bits is not None:
            if not 1 <= bits <= 32:
                raise SecAggError("bits must be in [1, 32]")
            levels = min(levels, (1 << bits) - 1)
        if levels_cap is not None:
            levels = min(levels, int(levels_cap))
        if levels < 1:
            raise SecAggError("too many clients or too much headroom for 32-bit aggregation")
        self.max_level = int(levels)

    @property
    def step(self) -> float:
        """Width of one quantisation level, ``2c / M``."""
        return 2.0 * self.clip / self.max_level

    def encode(
        self,
        values: ArrayLike,
        *,
        rng: np.random.Generator | None = None,
        noise_hook: NoiseHook | None = None,
        wrap: bool = False,
    ) -> NDArray[np.uint32]:
        """Quantise a flat float vector to uint32 in ``[h, h + M]`` (then apply ``noise_hook``).

        With ``wrap=True`` the noisy vector may leave ``[0, S]`` (unbounded noise added modulo
        ``2^32``, as the distributed Skellam mechanism does); otherwise a share beyond the
        headroom is refused.

        Args:
            values: the flat float vector.
            rng: the stochastic rounding's coins.
            noise_hook: adds a noise share to the quantised vector (distributed DP).
            wrap: let the noisy vector wrap modulo ``2^32``.

        Returns:
            The encoded vector.

        Raises:
            SecAggError: not a 1-D vector of finite numbers, a noise hook that changes the shape
                or dtype, or (without ``wrap``) a noise share beyond the headroom.
        """
        x = np.asarray(values)
        if x.ndim != 1:
            raise SecAggError("Quantizer.encode expects a 1-D vector")
        if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
            raise SecAggError(f"cannot quantise dtype {x.dtype}")
        if not np.isfinite(x).all():
            raise SecAggError("cannot quantise NaN or infinite values")
        # Rounding coins: an AES-256-CTR keystream (prg.py) keyed from ``rng`` or the OS, 4 bytes
        # per coordinate; several times faster than numpy's generators and reproducible under a
        # seeded ``rng``. The coins need no secrecy beyond that of the update itself.
        key = rng.bytes(32) if rng is not None else os.urandom(32)
        coins = keystream(key)
        d = x.shape[0]
        out = np.empty(d, dtype=np.uint32)
        chunk = min(_CHUNK, max(d, 1))
        f = np.empty(chunk, dtype=np.float64)
        zeros = bytes(4 * chunk)
        rbuf = bytearray(4 * chunk + 15)
        r = np.frombuffer(rbuf, dtype=np.uint32, count=chunk)
        g = r.view(np.float32)
        scale, top = self.max_level / (2.0 * self.clip), float(self.max_level)
        for start in range(0, d, chunk):
            stop = min(d, start + chunk)
            m = stop - start
            fc, rc, gc = f[:m], r[:m], g[:m]
            # y - 3/2 = (x + c) M / (2c) - 3/2, with y clipped to [0, M]
            np.multiply(x[start:stop], scale, out=fc, dtype=np.float64)
            fc += top / 2.0 - 1.5
            np.clip(fc, -1.5, top - 1.5, out=fc)
            # coins: 23 random mantissa bits -> g = 1 + u, u uniform on a 2^-23 grid in [0, 1)
            coins.update_into(zeros[: 4 * m], rbuf)
            rc >>= 9
            rc |= 0x3F800000
            fc += gc  # y + u - 1/2, in [-1/2, M + 1/2)
            fc += _MAGIC  # rint: = floor(y + u), i.e. floor(y) plus a carry w.p. frac(y)
            out[start:stop] = fc.view(np.uint64)  # low 32 mantissa bits = the integer
        np.minimum(out, np.uint32(self.max_level), out=out)  # guards a rounding tie at M + 1/2
        if self.headroom:
            out += np.uint32(self.headroom)
        if noise_hook is not None:
            noisy = noise_hook(out)
            if not isinstance(noisy, np.ndarray) or noisy.dtype != np.uint32 or noisy.shape != (d,):
                raise SecAggError("noise_hook must return a uint32 vector of the same shape")
            if not wrap and noisy.size and int(noisy.max()) > self.slot:
                raise SecAggError("noise share exceeds the reserved headroom (overflow risk)")
            out = noisy
        return out

    def dequantize(self, encoded: NDArray[np.uint32]) -> NDArray[np.float64]:
        """One client's dequantised values ``(q - h) * 2c / M - c``.

        Args:
            encoded: one client's encoded vector.

        Returns:
            The float values.
        """
        q = encoded.astype(np.float64) - self.headroom
        return (q * (2.0 * self.clip) - self.max_level * self.clip) / self.max_level

    def decode_mean(self, total: NDArray[np.uint32], count: int) -> NDArray[np.float64]:
        """Mean of ``count`` clients' dequantised values from their uint32 sum.

        Args:
            total: the uint32 sum of the encoded vectors.
            count: how many vectors were summed.

        Returns:
            The mean, float64.

        Raises:
            SecAggError: ``count`` is not in ``[1, num_clients]``.
        """
        if not 1 <= count <= self.num_clients:
            raise SecAggError(f"count must be in [1, {self.num_clients}], got {count}")
        t = total.astype(np.float64)
        if self.headroom:
            t -= float(count * self.headroom)
        t *= 2.0 * self.clip
        t -= float(count * self.max_level) * self.clip
        t /= float(count * self.max_level)
        return t

    def exact_mean(self, total: NDArray[np.uint32], count: int) -> list[Fraction]:
        """The exact rational mean (slow; for verification).

        Args:
            total: the uint32 sum of the encoded vectors.
            count: how many vectors were summed.

        Returns:
            The mean of each coordinate as a fraction.
        """
        c = Fraction(self.clip)
        return [
            (Fraction(int(v) - count * self.headroom) * 2 * c) / (count * self.max_level) - c
            for v in total
        ]
