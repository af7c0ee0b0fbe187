"""Shamir secret sharing: any t shares reconstruct, t - 1 shares reveal nothing."""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter

import pytest

from fedssl.privacy.secagg.errors import ReconstructionError, SecAggError
from fedssl.privacy.secagg.shamir import (
    PRIME,
    SHARE_BYTES,
    Share,
    decode_share_value,
    encode_share_value,
    evaluate_polynomial,
    interpolate_at,
    reconstruct_bytes,
    split_secret,
)


def _is_probable_prime(p: int, rounds: int = 20) -> bool:
    d, s = p - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rnd = random.Random(0)
    for _ in range(rounds):
        x = pow(rnd.randrange(2, p - 1), d, p)
        if x in (1, p - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, p)
            if x == p - 1:
                break
        else:
            return False
    return True


def test_field_is_prime_and_holds_256_bit_secrets() -> None:
    assert PRIME > 1 << 256
    assert _is_probable_prime(PRIME)
    assert (PRIME.bit_length() + 7) // 8 == SHARE_BYTES


@pytest.mark.parametrize(("t", "m"), [(1, 1), (2, 3), (3, 5), (6, 11), (8, 15)])
def test_any_t_shares_reconstruct(t: int, m: int) -> None:
    secret = os.urandom(32)
    xs = random.Random(t).sample(range(1, 1 << 40), m)
    shares = split_secret(secret, t, xs)
    subsets = list(itertools.combinations(shares, t))
    for subset in random.Random(m).sample(subsets, min(30, len(subsets))):
        assert reconstruct_bytes(list(subset), t) == secret
    # all m shares (more than t) also reconstruct
    assert reconstruct_bytes(shares, t) == secret


def test_fewer_than_t_shares_refuse() -> None:
    shares = split_secret(b"\x07" * 32, 3, [1, 2, 3])
    with pytest.raises(ReconstructionError):
        reconstruct_bytes(shares[:2], 3)


def test_t_minus_1_shares_are_consistent_with_every_secret() -> None:
    """For t-1 real shares and ANY candidate secret there is a consistent full sharing.

    Interpolating the t-1 real shares together with the point (0, s') gives a polynomial of
    degree < t; its value at a t-th x is a fabricated share with which reconstruction yields
    exactly s'. So t-1 shares cannot rule out any secret.
    """
    t, xs = 5, [3, 8, 11, 20, 41, 77]
    secret = os.urandom(32)
    shares = split_secret(secret, t, xs)
    known = shares[: t - 1]
    for _ in range(20):
        candidate = int.from_bytes(os.urandom(32), "big")
        fake_y = interpolate_at([*known, Share(0, candidate)], xs[-1])
        assert interpolate_at([*known, Share(xs[-1], fake_y)], 0) == candidate  # consistent with s'


def test_t_minus_1_shares_distribution_independent_of_secret() -> None:
    """Exhaustively over a small field: t-1 shares are uniform whatever the secret."""
    p, t, xs = 13, 3, [2, 5]  # t - 1 = 2 shares of a degree-2 polynomial
    assert len(xs) == t - 1
    dists = []
    for secret in range(p):
        counts = Counter(
            tuple(evaluate_polynomial([secret, a1, a2], x, p) for x in xs)
            for a1 in range(p)
            for a2 in range(p)
        )
        dists.append(counts)
        assert len(counts) == p * p and set(counts.values()) == {1}  # uniform
    assert all(d == dists[0] for d in dists)


def test_small_field_reconstruction_matches_split() -> None:
    p = 2_147_483_647
    shares = split_secret(123456, 4, [1, 2, 3, 4, 5, 6], prime=p)
    assert interpolate_at(shares[2:6], 0, p) == 123456


def test_share_encoding_validation() -> None:
    y = PRIME - 1
    assert decode_share_value(encode_share_value(y)) == y
    with pytest.raises(SecAggError):
        decode_share_value(b"\x00" * (SHARE_BYTES - 1))
    with pytest.raises(SecAggError):
        decode_share_value(b"\xff" * SHARE_BYTES)  # >= PRIME
    with pytest.raises(SecAggError):
        split_secret(b"\x01" * 32, 3, [1, 1, 2])  # duplicated x
    with pytest.raises(SecAggError):
        split_secret(b"\x01" * 32, 3, [0, 1, 2])  # x = 0 would reveal the secret
