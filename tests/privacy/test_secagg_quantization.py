"""Quantisation: exact decoding, unbiased rounding, no overflow at the worst case."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from fedssl.privacy.secagg import Quantizer, SecAggError, run_secagg


@pytest.mark.parametrize(("n", "clip"), [(3, 1.0), (7, 8.0), (25, 0.5)])
def test_decoded_mean_equals_exact_mean_of_dequantised_values(n: int, clip: float) -> None:
    rng = np.random.default_rng(n)
    d = 64
    q = Quantizer(clip, n)
    vectors = [rng.normal(0, clip, d) for _ in range(n)]
    encoded = {u: q.encode(v, rng=rng) for u, v in enumerate(vectors)}
    result = run_secagg(encoded)
    exact_sum = sum(int(e.astype(np.int64)[0]) for e in encoded.values())
    ints = np.sum([e.astype(np.int64) for e in encoded.values()], axis=0)
    assert ints.max() < 2**32  # no wrap-around
    assert int(result.total[0]) == exact_sum
    assert np.array_equal(result.total.astype(np.int64), ints)
    decoded = q.decode_mean(result.total, n)
    c, m = Fraction(clip), q.max_level
    for j in range(d):
        per_client = [Fraction(int(e[j])) * 2 * c / m - c for e in encoded.values()]
        exact = sum(per_client) / n
        assert decoded[j] == float(exact)  # correctly rounded exact rational mean
        assert q.exact_mean(result.total[j : j + 1], n)[0] == exact


def test_worst_case_all_clients_at_plus_clip_do_not_overflow() -> None:
    n, d, clip = 40, 32, 8.0
    q = Quantizer(clip, n)
    enc = {u: q.encode(np.full(d, 1e9), rng=np.random.default_rng(u)) for u in range(n)}
    assert all(int(e.max()) == q.max_level for e in enc.values())
    assert n * q.max_level <= 2**32 - 1
    result = run_secagg(enc)
    assert np.all(result.total.astype(np.int64) == n * q.max_level)
    assert np.all(q.decode_mean(result.total, n) == clip)
    low = {u: q.encode(np.full(d, -1e9)) for u in range(n)}
    assert np.all(q.decode_mean(run_secagg(low).total, n) == -clip)


def test_stochastic_rounding_is_unbiased() -> None:
    q = Quantizer(1.0, 2, bits=4)  # coarse: 15 levels, so rounding is visible
    x = np.full(200_000, 0.3)
    codes = q.encode(x, rng=np.random.default_rng(0))
    target = (0.3 + 1.0) * q.max_level / 2.0
    assert set(np.unique(codes)) <= {int(np.floor(target)), int(np.ceil(target))}
    assert abs(codes.mean() - target) < 5 * 0.5 / np.sqrt(x.size)
    assert abs(q.dequantize(codes).mean() - 0.3) < 1e-3


def test_noise_hook_and_headroom() -> None:
    n, h = 4, 1000
    q = Quantizer(1.0, n, headroom=h)
    assert q.max_level + 2 * h <= q.slot

    def hook(v: np.ndarray) -> np.ndarray:  # stand-in for a DP noise share: +-h
        return (v.astype(np.int64) + np.where(np.arange(v.size) % 2, h, -h)).astype(np.uint32)

    enc = {
        u: q.encode(np.zeros(8), rng=np.random.default_rng(u), noise_hook=hook) for u in range(n)
    }
    mean = q.decode_mean(run_secagg(enc).total, n)
    assert np.allclose(mean, np.where(np.arange(8) % 2, 1, -1) * h * q.step, atol=q.step)
    with pytest.raises(SecAggError):
        q.encode(np.zeros(8), noise_hook=lambda v: v.astype(np.int64))  # wrong dtype


def test_rejects_bad_input() -> None:
    q = Quantizer(1.0, 3)
    with pytest.raises(SecAggError):
        q.encode(np.array([0.0, np.nan]))
    with pytest.raises(SecAggError):
        q.encode(np.zeros((2, 2)))
    with pytest.raises(SecAggError):
        Quantizer(0.0, 3)
