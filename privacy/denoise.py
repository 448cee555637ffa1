"""Post-processing of a Gaussian-noised release: positive-part James-Stein shrinkage.

A DP release ``x = mu + z`` with ``z ~ N(0, v I)`` per block of ``d`` coordinates, ``v``
known from public quantities (noise multiplier, clip norm, record counts), is shrunk
towards zero block by block:

    x_hat = max(0, 1 - (d - 2) v / ||x||^2) x

For ``d >= 3`` this has lower expected squared error than ``x`` itself for every ``mu``
(James & Stein 1961; the positive part improves on it again). It reads only the release
and public quantities, so it is post-processing: it spends no privacy budget. Applied to a
context vector's mean *deviation* from the public reference, a block that is mostly noise
falls back to the public reference instead of injecting noise into the residual stream.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def james_stein_blocks(
    values: np.ndarray, *, noise_variance: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Shrink each row of ``values`` by its positive-part James-Stein factor.

    Args:
        values: ``[B, d]`` noisy release, one block per row (``d >= 3``).
        noise_variance: ``[B]`` per-coordinate variance of the noise in each block
            (a scalar broadcasts); 0 leaves a block unchanged.

    Returns:
        ``(shrunk [B, d], factors [B])`` with every factor in ``[0, 1]``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] < 3:
        raise ConfigError(f"james_stein_blocks needs [blocks, d >= 3] values, got {values.shape}")
    variance = np.broadcast_to(np.asarray(noise_variance, dtype=np.float64), values.shape[:1])
    if not (np.all(np.isfinite(variance)) and np.all(variance >= 0)):
        raise ConfigError("noise_variance must be finite and >= 0")
    squared_norm = np.einsum("bd,bd->b", values, values)
    with np.errstate(divide="ignore", invalid="ignore"):
        factors = 1.0 - (values.shape[1] - 2) * variance / squared_norm
    factors = np.where(variance == 0, 1.0, np.clip(np.nan_to_num(factors, nan=0.0), 0.0, 1.0))
    return values * factors[:, None], factors
