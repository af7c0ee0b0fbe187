"""Shamir secret sharing over the prime field GF(2^521 - 1).

What: ``t``-out-of-``m`` threshold sharing (Shamir 1979) as used by SecAgg (Bonawitz et al.
2017, CCS, Section 3) to let the server recover a dropped client's mask key ``s_sk`` or a
survivor's self-mask seed ``b_u`` from any ``t`` of its neighbours, while any ``t - 1`` shares
reveal nothing.

Why this field: the secrets are 32-byte values (X25519 private keys and 256-bit PRG seeds), so
the field must be larger than ``2^256`` for a secret to be a single field element. The Mersenne
prime ``p = 2^521 - 1`` is a well-known prime (M521) comfortably larger, and a share is the
66-byte big-endian encoding of ``y = f(x) mod p``. The x-coordinate is implicit: the share held
by node ``v`` is evaluated at ``x = v + 1`` (node ids are unsigned 64-bit, so ``x != 0``).

Math: the dealer picks ``f(X) = s + a_1 X + ... + a_{t-1} X^{t-1}`` with ``a_i`` uniform in
GF(p). For any ``t - 1`` distinct non-zero points and any candidate secret ``s'``, exactly one
such polynomial passes through ``(0, s')`` and those points, so the ``t - 1`` shares are uniform
and independent of ``s`` (perfect secrecy). Reconstruction is Lagrange interpolation at 0:
``s = sum_j y_j prod_{m != j} x_m / (x_m - x_j)``.

Usage::

    shares = split_secret(b"\\x01" * 32, threshold=3, xs=[1, 2, 3, 4])
    assert reconstruct_bytes(shares[1:], threshold=3) == b"\\x01" * 32
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import MalformedMessageError, ReconstructionError, SecAggError

PRIME: int = (1 << 521) - 1
"""The Mersenne prime 2^521 - 1."""

SHARE_BYTES: int = 66
"""Bytes of one encoded share value ``y`` (ceil(521 / 8))."""

SECRET_BYTES: int = 32
"""Length of the secrets this protocol shares (seeds and X25519 private keys)."""


@dataclass(frozen=True)
class Share:
    """One Shamir share: the point ``(x, y)`` on the dealer's polynomial."""

    x: int
    y: int


def evaluate_polynomial(coefficients: Sequence[int], x: int, prime: int = PRIME) -> int:
    """Evaluate ``sum_i coefficients[i] * x^i mod prime`` (Horner's rule).

    Args:
        coefficients: the coefficients, constant term first.
        x: the point.
        prime: the field's modulus.

    Returns:
        The value, in ``[0, prime)``.
    """
    acc = 0
    for coeff in reversed(coefficients):
        acc = (acc * x + coeff) % prime
    return acc


def split_secret(
    secret: bytes | int,
    threshold: int,
    xs: Sequence[int],
    *,
    prime: int = PRIME,
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> list[Share]:
    """Split ``secret`` into one share per x-coordinate in ``xs``; any ``threshold`` recover it.

    ``secret`` may be bytes (big-endian, must be smaller than ``prime``) or an int in
    ``[0, prime)``. ``randbelow`` draws the random coefficients (cryptographic by default).

    Args:
        secret: the secret.
        threshold: how many shares recover it (at least 1).
        xs: the shares' x-coordinates (:func:`node_x`).
        prime: the field's modulus.
        randbelow: draws the coefficients.

    Returns:
        One share per x-coordinate, in the order of ``xs``.

    Raises:
        SecAggError: the secret does not fit the field, ``threshold`` is below 1, or there
            are fewer x-coordinates than ``threshold``.
    """
    value = int.from_bytes(secret, "big") if isinstance(secret, bytes | bytearray) else secret
    if not 0 <= value < prime:
        raise SecAggError("Shamir: secret does not fit in the field")
    if threshold < 1:
        raise SecAggError(f"Shamir: threshold must be >= 1, got {threshold}")
    if len(xs) < threshold:
        raise SecAggError(f"Shamir: {len(xs)} shares cannot meet threshold {threshold}")
    _check_xs(xs, prime)
    coefficients = [value] + [randbelow(prime) for _ in range(threshold - 1)]
    return [Share(x, evaluate_polynomial(coefficients, x, prime)) for x in xs]


def interpolate_at(shares: Sequence[Share], x: int, prime: int = PRIME) -> int:
    """Lagrange-interpolate the unique polynomial of degree < len(shares) at ``x``.

    Args:
        shares: the points.
        x: where to evaluate.
        prime: the field's modulus.

    Returns:
        The value at ``x``.

    Raises:
        SecAggError: two shares have the same x.
    """
    if len({s.x % prime for s in shares}) != len(shares):
        raise SecAggError("Shamir: interpolation points must have distinct x")
    total = 0
    for j, share_j in enumerate(shares):
        num, den = 1, 1
        for m, share_m in enumerate(shares):
            if m != j:
                num = num * (x - share_m.x) % prime
                den = den * (share_j.x - share_m.x) % prime
        total = (total + share_j.y * num * pow(den, -1, prime)) % prime
    return total


def reconstruct_secret(shares: Sequence[Share], threshold: int, prime: int = PRIME) -> int:
    """Recover the secret from at least ``threshold`` shares (the first ``threshold`` are used).

    Args:
        shares: the shares.
        threshold: the split's threshold.
        prime: the field's modulus.

    Returns:
        The secret, as an integer.

    Raises:
        ReconstructionError: fewer than ``threshold`` shares.
    """
    if len(shares) < threshold:
        raise ReconstructionError(
            f"Shamir: need {threshold} shares to reconstruct, got {len(shares)}"
        )
    return interpolate_at(list(shares)[:threshold], 0, prime)


def reconstruct_bytes(
    shares: Sequence[Share], threshold: int, length: int = SECRET_BYTES, prime: int = PRIME
) -> bytes:
    """Recover a ``length``-byte secret (big-endian) from ``threshold`` shares.

    Args:
        shares: the shares.
        threshold: the split's threshold.
        length: the secret's length in bytes.
        prime: the field's modulus.

    Returns:
        The secret.

    Raises:
        ReconstructionError: fewer than ``threshold`` shares, or a value too large for
            ``length`` bytes.
    """
    value = reconstruct_secret(shares, threshold, prime)
    if value >= 1 << (8 * length):
        raise ReconstructionError("Shamir: reconstructed value does not fit the secret length")
    return value.to_bytes(length, "big")


def encode_share_value(y: int) -> bytes:
    """Encode a share value as ``SHARE_BYTES`` big-endian bytes.

    Args:
        y: a field element.

    Returns:
        ``SHARE_BYTES`` bytes.

    Raises:
        SecAggError: ``y`` is not in ``[0, PRIME)``.
    """
    if not 0 <= y < PRIME:
        raise SecAggError("Shamir: share value outside the field")
    return y.to_bytes(SHARE_BYTES, "big")


def decode_share_value(data: bytes) -> int:
    """Decode and validate a ``SHARE_BYTES`` share value.

    Args:
        data: ``SHARE_BYTES`` bytes.

    Returns:
        The share value.

    Raises:
        MalformedMessageError: the length is wrong or the value is not a field element.
    """
    if len(data) != SHARE_BYTES:
        raise MalformedMessageError(f"Shamir share must be {SHARE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise MalformedMessageError("Shamir share value is not a field element")
    return y


def node_x(node_id: int) -> int:
    """The x-coordinate of the share held by ``node_id`` (``node_id + 1``, never zero).

    Args:
        node_id: the holder's node id.

    Returns:
        The x-coordinate.
    """
    return node_id + 1


def _check_xs(xs: Sequence[int], prime: int) -> None:
    if any(x % prime == 0 for x in xs) or len({x % prime for x in xs}) != len(xs):
        raise SecAggError("Shamir: x-coordinates must be distinct and non-zero mod p")
