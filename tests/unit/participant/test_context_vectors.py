"""The context-vector release: per-record sensitivity, noise scale, aggregate noise variance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from participant.context_vectors import (
    PublicReference,
    aggregate_noise_variance,
    private_deviation_mean,
    private_whitened_sum,
)

LAYERS, WIDTH = 3, 400


def _reference() -> PublicReference:
    gen = torch.Generator().manual_seed(0)
    scales = torch.linspace(0.5, 3.0, 2 * LAYERS)
    return PublicReference(torch.randn(2, LAYERS, WIDTH, generator=gen), scales)


def _noise_only(reference: PublicReference, n: int, *, sigma: float, clip: float,
                seed: int) -> torch.Tensor:
    """A release whose records equal the reference: deviation 0, so the release is noise."""
    acts = reference.vector.expand(n, -1, -1, -1).clone()
    return private_deviation_mean(acts, reference, clip_norm=clip, noise_multiplier=sigma,
                                  generator=torch.Generator().manual_seed(seed))


def test_one_record_moves_the_whitened_sum_by_at_most_the_clip_norm() -> None:
    reference = _reference()
    acts = reference.vector + torch.randn(6, 2, LAYERS, WIDTH)
    outlier = reference.vector + 1e6 * torch.randn(1, 2, LAYERS, WIDTH)
    clip = 2.0
    without = private_deviation_mean(acts, reference, clip_norm=clip, noise_multiplier=0.0)
    with_ = private_deviation_mean(torch.cat([acts, outlier]), reference, clip_norm=clip,
                                   noise_multiplier=0.0)
    scales = reference.block_scales.double()[:, None]
    change = (7 * with_ - 6 * without).reshape(2 * LAYERS, WIDTH) / scales  # whitened sums
    assert float(change.norm()) <= clip * (1 + 1e-9)


@pytest.mark.parametrize("weighting", ["uniform", "records"])
def test_aggregate_noise_variance_matches_simulated_releases(weighting: str) -> None:
    reference, sigma, clip = _reference(), 1.7, 2.5
    counts = [4, 8, 13]
    releases = [_noise_only(reference, n_k, sigma=sigma, clip=clip, seed=k).numpy()
                for k, n_k in enumerate(counts)]
    if weighting == "uniform":
        aggregate = sum(releases) / len(counts)
        moment = sum(1 / n_k**2 for n_k in counts) / len(counts) ** 2
    else:
        aggregate = sum(n_k * r for n_k, r in zip(counts, releases, strict=True)) / sum(counts)
        moment = len(counts) / sum(counts) ** 2
    expected = aggregate_noise_variance(noise_multiplier=sigma, clip_norm=clip,
                                        block_scales=reference.block_scales,
                                        count_moment=moment)
    observed = aggregate.reshape(2 * LAYERS, WIDTH).var(axis=1)
    # sample variance of WIDTH Gaussians: relative standard error sqrt(2 / WIDTH)
    tolerance = 5 * math.sqrt(2 / WIDTH)
    np.testing.assert_allclose(observed / expected, 1.0, atol=tolerance)


def test_the_whitened_sum_is_the_mean_release_before_unwhitening_and_dividing() -> None:
    """Distributed DP releases :func:`private_whitened_sum`: the same clipped records and
    noise draw as the mean release, whitened, not divided; its noise std is the
    multiplier times the clip in every coordinate."""
    reference, clip, n = _reference(), 2.0, 5
    acts = reference.vector + torch.randn(n, 2, LAYERS, WIDTH)
    mean = private_deviation_mean(acts, reference, clip_norm=clip, noise_multiplier=0.7,
                                  generator=torch.Generator().manual_seed(3))
    whitened = private_whitened_sum(acts, reference, clip_norm=clip, noise_multiplier=0.7,
                                    generator=torch.Generator().manual_seed(3))
    scales = reference.block_scales.double()[:, None]
    torch.testing.assert_close(whitened * scales / n, mean.reshape(2 * LAYERS, WIDTH))
    noise = private_whitened_sum(reference.vector.expand(n, -1, -1, -1).clone(), reference,
                                 clip_norm=clip, noise_multiplier=0.7,
                                 generator=torch.Generator().manual_seed(4))
    assert float(noise.std()) == pytest.approx(0.7 * clip, rel=0.03)  # 2,400 draws
