"""James-Stein shrinkage of a noisy release: lower error than the raw release, limits exact."""

from __future__ import annotations

import numpy as np
import pytest

from privacy.denoise import james_stein_blocks
from privacy.errors import ConfigError


@pytest.mark.parametrize("signal_to_noise", [0.0, 0.3, 1.0, 3.0])
def test_lower_squared_error_than_the_noisy_release(signal_to_noise: float) -> None:
    rng = np.random.default_rng(0)
    blocks, d, variance = 400, 64, 0.25
    mean = rng.normal(size=(blocks, d))
    mean *= signal_to_noise * np.sqrt(variance * d) / np.linalg.norm(mean, axis=1, keepdims=True)
    noisy = mean + rng.normal(scale=np.sqrt(variance), size=mean.shape)
    shrunk, factors = james_stein_blocks(noisy, noise_variance=variance)
    raw_error = float(((noisy - mean) ** 2).sum())
    shrunk_error = float(((shrunk - mean) ** 2).sum())
    assert shrunk_error < raw_error
    assert np.all((factors >= 0) & (factors <= 1))
    if signal_to_noise == 0.0:  # pure noise: mostly shrunk to (near) zero, error cut >= 5x
        assert shrunk_error < raw_error / 5


def test_exact_limits() -> None:
    x = np.arange(12, dtype=np.float64).reshape(2, 6) + 1.0
    same, factors = james_stein_blocks(x, noise_variance=0.0)  # no noise: unchanged
    assert np.array_equal(same, x) and np.array_equal(factors, [1.0, 1.0])
    gone, factors = james_stein_blocks(x, noise_variance=np.array([1e9, 0.0]))
    assert np.array_equal(gone[0], np.zeros(6)) and np.array_equal(gone[1], x[1])
    zero, factors = james_stein_blocks(np.zeros((1, 5)), noise_variance=1.0)
    assert np.array_equal(zero, np.zeros((1, 5))) and factors[0] == 0.0
    # the factor itself: 1 - (d - 2) v / ||x||^2
    row = np.array([[3.0, 4.0, 0.0]])  # ||x||^2 = 25, d - 2 = 1
    _, factors = james_stein_blocks(row, noise_variance=5.0)
    assert factors[0] == pytest.approx(0.8)


@pytest.mark.parametrize(("values", "variance"), [
    (np.zeros((2, 2)), 1.0), (np.zeros(5), 1.0), (np.zeros((2, 5)), -1.0),
    (np.zeros((2, 5)), float("nan")),
])
def test_rejects_bad_input(values: np.ndarray, variance: float) -> None:
    with pytest.raises(ConfigError):
        james_stein_blocks(values, noise_variance=variance)
