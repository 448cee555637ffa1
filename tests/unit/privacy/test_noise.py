"""Statistical and validation tests for :mod:`privacy.noise` (the Gaussian mechanism)."""

from __future__ import annotations

import math

import pytest
import torch

from privacy.errors import ConfigError
from privacy.noise import add_gaussian_noise, gaussian_std

N = 200_000
Z = 5.0  # tolerances are Z standard errors of the estimator at sample size N


def _noise(sigma: float, *, seed: int, x: torch.Tensor | None = None) -> torch.Tensor:
    base = torch.zeros(N, dtype=torch.float64) if x is None else x
    gen = torch.Generator().manual_seed(seed)
    return (add_gaussian_noise(base, std=sigma, generator=gen) - base).double()


@pytest.mark.parametrize(("sigma", "seed"), [(1.0, 0), (2.5, 1), (0.37, 2), (13.0, 3)])
def test_sample_std_and_mean_match_stated_std(sigma: float, seed: int) -> None:
    noise = _noise(sigma, seed=seed)
    # Standard error of the sample std of N Gaussians is ~ sigma / sqrt(2N);
    # standard error of the sample mean is sigma / sqrt(N).
    std_tol = Z * sigma / math.sqrt(2 * N)
    mean_tol = Z * sigma / math.sqrt(N)
    assert abs(float(noise.std()) - sigma) <= std_tol
    assert abs(float(noise.mean())) <= mean_tol


def test_std_not_off_by_a_factor() -> None:
    # 0.37 separates sigma from sigma^2 (0.137), sqrt(sigma) (0.608), 2*sigma, sigma/2 ...
    sigma = 0.37
    s = float(_noise(sigma, seed=7).std())
    tol = Z * sigma / math.sqrt(2 * N)
    assert abs(s - sigma) <= tol
    for wrong in (sigma**2, math.sqrt(sigma), 2 * sigma, sigma / 2, sigma * math.sqrt(2)):
        assert abs(s - wrong) > 10 * tol


def test_noise_is_gaussian_shaped_and_uncorrelated() -> None:
    sigma = 1.7
    noise = _noise(sigma, seed=11)
    # Fraction within one sigma: p = 0.6827, binomial standard error sqrt(p(1-p)/N).
    p = math.erf(1 / math.sqrt(2))
    frac = float((noise.abs() <= sigma).double().mean())
    assert abs(frac - p) <= Z * math.sqrt(p * (1 - p) / N)
    # Adjacent coordinates are independent: lag-1 correlation ~ N(0, 1/N).
    z = (noise - noise.mean()) / noise.std()
    corr = float((z[:-1] * z[1:]).mean())
    assert abs(corr) <= Z / math.sqrt(N)


def test_noise_added_to_nonzero_input_and_shape_dtype_kept() -> None:
    sigma = 0.8
    x = torch.linspace(-5, 5, N, dtype=torch.float64).reshape(400, 500)
    gen = torch.Generator().manual_seed(5)
    y = add_gaussian_noise(x, std=sigma, generator=gen)
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    noise = (y - x).reshape(-1)
    assert abs(float(noise.std()) - sigma) <= Z * sigma / math.sqrt(2 * N)
    assert abs(float(noise.mean())) <= Z * sigma / math.sqrt(N)


def test_float32_input_returns_float32_with_right_std() -> None:
    sigma = 0.37
    x = torch.zeros(N, dtype=torch.float32)
    gen = torch.Generator().manual_seed(9)
    y = add_gaussian_noise(x, std=sigma, generator=gen)
    assert y.dtype == torch.float32
    assert abs(float(y.double().std()) - sigma) <= Z * sigma / math.sqrt(2 * N)


def test_seeded_generator_is_reproducible_and_seeds_differ() -> None:
    x = torch.zeros(1000, dtype=torch.float64)
    a = add_gaussian_noise(x, std=1.0, generator=torch.Generator().manual_seed(42))
    b = add_gaussian_noise(x, std=1.0, generator=torch.Generator().manual_seed(42))
    c = add_gaussian_noise(x, std=1.0, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_input_not_mutated() -> None:
    x = torch.ones(100, dtype=torch.float64)
    add_gaussian_noise(x, std=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, torch.ones(100, dtype=torch.float64))


def test_std_zero_returns_equal_copy() -> None:
    x = torch.randn(10, 3)
    y = add_gaussian_noise(x, std=0.0)
    assert torch.equal(x, y)
    assert y.dtype == x.dtype
    assert y.data_ptr() != x.data_ptr()
    y += 1  # a copy: the input is not aliased
    assert not torch.equal(x, y)


@pytest.mark.parametrize("std", [-1.0, -1e-12, math.nan, math.inf, -math.inf])
def test_add_gaussian_noise_rejects_bad_std(std: float) -> None:
    with pytest.raises(ConfigError):
        add_gaussian_noise(torch.zeros(3), std=std)


@pytest.mark.parametrize(
    ("noise_multiplier", "sensitivity"), [(1.0, 1.0), (0.37, 2.0), (2.5, 0.1), (0.0, 3.0)]
)
def test_gaussian_std_multiplies(noise_multiplier: float, sensitivity: float) -> None:
    assert gaussian_std(noise_multiplier=noise_multiplier, sensitivity=sensitivity) == (
        pytest.approx(noise_multiplier * sensitivity, rel=1e-15, abs=0)
    )


@pytest.mark.parametrize(
    ("noise_multiplier", "sensitivity"),
    [(-0.1, 1.0), (1.0, 0.0), (1.0, -1.0), (-1.0, -1.0)],
)
def test_gaussian_std_rejects_invalid(noise_multiplier: float, sensitivity: float) -> None:
    with pytest.raises(ConfigError):
        gaussian_std(noise_multiplier=noise_multiplier, sensitivity=sensitivity)


@pytest.mark.parametrize(
    ("noise_multiplier", "sensitivity"),
    [(math.nan, 1.0), (1.0, math.nan), (math.inf, 1.0), (1.0, math.inf)],
)
def test_gaussian_std_rejects_non_finite(noise_multiplier: float, sensitivity: float) -> None:
    with pytest.raises(ConfigError):
        gaussian_std(noise_multiplier=noise_multiplier, sensitivity=sensitivity)
