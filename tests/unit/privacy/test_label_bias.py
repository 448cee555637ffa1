"""The class-balanced label bias: statistics, their sensitivity, the estimate, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.errors import ConfigError
from privacy.label_bias import (
    SENSITIVITY,
    balanced_bias,
    class_statistics,
    release_class_statistics,
    summed_noise_std,
)


def _records(n: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probabilities = torch.softmax(torch.randn(n, num_classes, generator=g) * 2, dim=-1)
    return probabilities, torch.randint(0, num_classes, (n,), generator=g)


def test_statistics_sum_probabilities_and_count_per_true_class() -> None:
    probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    stats = class_statistics(probabilities, torch.tensor([0, 0, 1]))
    assert stats.dtype == torch.float64
    torch.testing.assert_close(stats, torch.tensor([[1.5, 0.5, 2.0], [0.2, 0.8, 1.0]],
                                                   dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), num_classes=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_one_record_moves_the_statistics_by_at_most_the_sensitivity(
        n: int, num_classes: int, seed: int) -> None:
    probabilities, labels = _records(n, num_classes, seed)
    full = class_statistics(probabilities, labels)
    without_last = class_statistics(probabilities[:-1], labels[:-1])
    assert float((full - without_last).norm()) <= SENSITIVITY + 1e-12


def test_a_prior_that_ignores_the_input_is_removed_in_one_step() -> None:
    # every record, whatever its class, is predicted 0.8 / 0.15 / 0.05: pure prior shift
    probabilities = torch.tensor([[0.8, 0.15, 0.05]]).repeat(60, 1)
    labels = torch.arange(60) % 3
    bias = balanced_bias(class_statistics(probabilities, labels))
    corrected = torch.softmax(probabilities.log() + bias, dim=-1)
    torch.testing.assert_close(corrected.mean(0), torch.full((3,), 1 / 3), atol=1e-6, rtol=0)


def test_the_bias_weights_classes_equally_not_by_their_counts() -> None:
    probabilities, labels = _records(200, 3, seed=1)
    stats = class_statistics(probabilities, labels)
    reweighted = stats.clone()
    reweighted[0] *= 7.0  # seven times the records of class 0, same conditional means
    torch.testing.assert_close(balanced_bias(reweighted), balanced_bias(stats))


def test_the_bias_recovers_balanced_accuracy_of_a_skewed_classifier() -> None:
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(3000) % 3
    logits = torch.nn.functional.one_hot(labels, 3).float() * 1.5 + torch.randn(3000, 3,
                                                                                 generator=g)
    skewed = logits + torch.tensor([2.0, 0.0, -1.0])  # what a biased calibration adds
    before = (skewed.argmax(-1) == labels).float().mean()
    bias = balanced_bias(class_statistics(torch.softmax(skewed, -1), labels))
    after = ((skewed + bias).argmax(-1) == labels).float().mean()
    assert after > before + 0.15
    assert bias[0] < bias[1] < bias[2]


def test_release_adds_noise_of_the_stated_scale() -> None:
    probabilities, labels = _records(40, 2, seed=5)
    exact = class_statistics(probabilities, labels)
    torch.testing.assert_close(release_class_statistics(probabilities, labels,
                                                        noise_multiplier=0.0), exact)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([release_class_statistics(probabilities, labels, noise_multiplier=3.0,
                                                  generator=g) - exact for _ in range(2000)])
    assert abs(float(draws.std()) - 3.0 * math.sqrt(2)) < 0.1


def test_noisy_statistics_give_a_bounded_bias() -> None:
    stats = torch.tensor([[-4.0, 9.0, -2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    bias = balanced_bias(stats)
    assert torch.isfinite(bias).all()
    assert float(bias.max()) <= math.log(1000 / 2) + 1e-5


def test_a_noisy_row_cannot_claim_more_than_all_of_its_records() -> None:
    # a rare class's noisy sums over a small noisy count: 9 / 1 would say label 1 holds
    # nine times every record of that class; a conditional mean is at most 1
    stats = torch.tensor([[60.0, 40.0, 0.0, 100.0],
                          [30.0, 70.0, 0.0, 100.0],
                          [0.0, 9.0, 0.0, 1.0]], dtype=torch.float64)
    # m = (0.6 + 0.3 + 1e-6, 0.4 + 0.7 + 1, 3e-6) / 3, the last floored at 1e-3
    m = torch.tensor([0.9 + 1e-6, 2.1, 3e-6], dtype=torch.float64) / 3
    expected = -torch.log(3 * m.clamp(min=1e-3))
    torch.testing.assert_close(balanced_bias(stats), expected.float())


def test_shrinkage_silences_a_class_whose_count_is_noise() -> None:
    """With ``prior_count`` a class row whose count is small next to it pulls every label
    alike (about nothing on ``b``); rows with many records keep their say; 0 is the
    plain estimate."""
    probabilities, labels = _records(3000, 3, seed=4)
    stats = class_statistics(probabilities, labels)
    plain = balanced_bias(stats)
    torch.testing.assert_close(balanced_bias(stats, prior_count=0.0), plain)
    torch.testing.assert_close(balanced_bias(stats, prior_count=1.0), plain, atol=0.01, rtol=0)
    noise_row = stats.clone()
    noise_row[2] = torch.tensor([0.0, 3.0, 0.0, 2.0], dtype=torch.float64)  # 2 noisy records
    # what the bias is if row 2 says "uniform", i.e. nothing
    rows = torch.cat([stats[:2, :-1] / stats[:2, -1:],
                      torch.full((1, 3), 1 / 3, dtype=torch.float64)])
    without_row = (-torch.log(3 * rows.mean(0))).float()
    shrunk = balanced_bias(noise_row, prior_count=50.0)
    assert float((shrunk - without_row).abs().max()) < 0.1
    assert float((balanced_bias(noise_row) - without_row).abs().max()) > 0.5


def test_the_summed_noise_std_is_the_releases_std_times_sqrt_contributions() -> None:
    assert summed_noise_std(noise_multiplier=5.0, contributions=10) == pytest.approx(
        5.0 * math.sqrt(2) * math.sqrt(10))
    assert summed_noise_std(noise_multiplier=0.0, contributions=10) == 0.0
    with pytest.raises(ConfigError):
        summed_noise_std(noise_multiplier=-1.0, contributions=3)
    with pytest.raises(ConfigError, match="prior_count"):
        balanced_bias(torch.ones(2, 3, dtype=torch.float64), prior_count=float("nan"))


@pytest.mark.parametrize(("probabilities", "labels", "match"), [
    (torch.ones(3), torch.zeros(3, dtype=torch.long), "must be"),
    (torch.full((2, 2), 0.5), torch.tensor([0, 2]), "labels must lie"),
    (torch.tensor([[0.9, 0.9]]), torch.tensor([0]), "sum to at most 1"),
    (torch.tensor([[float("nan"), 0.5]]), torch.tensor([0]), "finite"),
])
def test_bad_records_are_refused(probabilities: torch.Tensor, labels: torch.Tensor,
                                 match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        class_statistics(probabilities, labels)


@pytest.mark.parametrize("stats", [
    torch.zeros(2, 2, dtype=torch.float64),
    torch.tensor([[float("nan"), 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64),
])
def test_bad_statistics_are_refused(stats: torch.Tensor) -> None:
    with pytest.raises(ConfigError):
        balanced_bias(stats)
