"""The Gaussian mechanism: calibrated noise with an explicit, seedable generator."""

from __future__ import annotations

import math

import torch

from .errors import ConfigError


def gaussian_std(*, noise_multiplier: float, sensitivity: float) -> float:
    """Standard deviation of the Gaussian mechanism: ``noise_multiplier * sensitivity``."""
    if not (0 <= noise_multiplier < math.inf) or not (0 < sensitivity < math.inf):
        raise ConfigError(
            "noise_multiplier must be >= 0 and sensitivity > 0, got "
            f"{noise_multiplier} and {sensitivity}"
        )
    return noise_multiplier * sensitivity


def add_gaussian_noise(
    x: torch.Tensor, *, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Return ``x + N(0, std^2 I)`` computed in float64.

    Args:
        x: any shape; the noise is i.i.d. per coordinate.
        std: noise standard deviation (0 returns ``x`` unchanged).
        generator: a seeded generator makes runs reproducible: for tests and
            experiments only, since a known seed voids the privacy guarantee.
    """
    if std < 0 or math.isnan(std) or math.isinf(std):
        raise ConfigError(f"std must be finite and >= 0, got {std}")
    if std == 0:
        return x.clone()
    noise = torch.randn(x.shape, dtype=torch.float64, generator=generator) * std
    return (x.double() + noise).to(x.dtype)
