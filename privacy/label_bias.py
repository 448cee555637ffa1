"""A class-balanced label bias from released class statistics.

A classifier over C label words predicts ``argmax(logits + b)``. The bias ``b [C]`` that
makes the classifier's mean predicted distribution, averaged over the *true* classes with
equal weight, uniform is the textbook correction of a prior shift (here: calibration's
per-record clip pulling towards the classes most participants hold, docs/results.md §16,
§31). One fixed-point step of it needs only class-conditional sums of the predicted
distributions and the class counts, which a participant can release:

``statistics[y] = (sum of softmax(logits_i) over its records i of class y, their count)``,
a ``[C, C + 1]`` array. Adding or removing one record changes one row by a probability
vector (L2 norm at most 1) and a count by 1: L2 sensitivity ``sqrt(2)``
(:data:`SENSITIVITY`). Summing the participants' releases and calling
:func:`balanced_bias` is post-processing.
"""

from __future__ import annotations

import math

import torch

from .errors import ConfigError
from .noise import add_gaussian_noise, gaussian_std

#: L2 sensitivity of :func:`class_statistics` under adding or removing one record.
SENSITIVITY = math.sqrt(2.0)


def class_statistics(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[C, C + 1]`` float64: row ``y`` is the sum of ``probabilities [n, C]`` over the
    records labelled ``y`` (``labels [n]``, in ``0..C-1``), then their count."""
    if probabilities.dim() != 2 or labels.shape != probabilities.shape[:1]:
        raise ConfigError(f"probabilities must be [n, C] and labels [n], got "
                          f"{tuple(probabilities.shape)} and {tuple(labels.shape)}")
    num_classes = probabilities.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(f"labels must lie in 0..{num_classes - 1}")
    if not torch.isfinite(probabilities).all() or (probabilities < 0).any() or (
            probabilities.sum(1) > 1 + 1e-6).any():
        raise ConfigError("probabilities must be finite, >= 0 and sum to at most 1 per row "
                          "(the sensitivity assumes it)")
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).double()
    return torch.cat([onehot.T @ probabilities.double(), onehot.sum(0)[:, None]], dim=1)


def release_class_statistics(
    probabilities: torch.Tensor, labels: torch.Tensor, *, noise_multiplier: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """:func:`class_statistics` plus Gaussian noise of std ``noise_multiplier * sqrt(2)``
    per value (0: exact, for a non-private federation). The caller samples the records
    (Poisson, at the rate its accountant is told) and ledgers the release."""
    std = gaussian_std(noise_multiplier=noise_multiplier, sensitivity=SENSITIVITY)
    return add_gaussian_noise(class_statistics(probabilities, labels), std=std,
                              generator=generator)


def balanced_bias(statistics: torch.Tensor, *, min_count: float = 1.0,
                  prior_count: float = 0.0) -> torch.Tensor:
    """``b [C]`` float32 from summed (possibly noisy) statistics ``[C, C + 1]``.

    ``b_c = -log(C m_c)`` with ``m_c = (1/C) sum_y S[y, c] / n_y``: the class-balanced mean
    probability of label ``c``; one step of the balanced prior adjustment from ``b = 0``
    (the statistics must come from the unbiased classifier). Noisy counts are floored at
    ``min_count`` and conditional means kept in [1e-6, 1]; ``m_c`` at 1e-3, so that no
    label is boosted by more than ``log(1000 / C)``.

    ``prior_count`` > 0 shrinks every class's conditional mean towards the uniform
    distribution with that many pseudo-records, ``(S[y] + prior_count / C) / (n_y +
    prior_count)``: a class whose (noisy) count is small next to it contributes about
    ``1 / C`` to every ``m_c``, i.e. nothing to ``b``, instead of its noise. Callers pass
    the std of the summed count's noise (:func:`summed_noise_std`).
    """
    if statistics.dim() != 2 or statistics.shape[1] != statistics.shape[0] + 1:
        raise ConfigError(f"statistics must be [C, C + 1], got {tuple(statistics.shape)}")
    if not torch.isfinite(statistics).all():
        raise ConfigError("statistics must be finite")
    if not min_count > 0:
        raise ConfigError(f"min_count must be > 0, got {min_count}")
    if not 0 <= prior_count < math.inf:
        raise ConfigError(f"prior_count must be finite and >= 0, got {prior_count}")
    num_classes = statistics.shape[0]
    sums = statistics[:, :-1].double()
    counts = statistics[:, -1].double()
    if prior_count > 0:
        sums = sums.clamp(min=0) + prior_count / num_classes
        counts = counts.clamp(min=0) + prior_count
    conditional = (sums / counts.clamp(min=min_count)[:, None]).clamp(min=1e-6, max=1.0)
    balanced_mean = conditional.mean(0).clamp(min=1e-3)
    return (-(num_classes * balanced_mean).log()).float()


def summed_noise_std(*, noise_multiplier: float, contributions: int) -> float:
    """Std of each value of ``contributions`` releases' sum, every release noised at
    ``noise_multiplier`` (:func:`release_class_statistics`): public, so every participant
    computes the same shrinkage from it."""
    if not noise_multiplier >= 0 or contributions < 0:
        raise ConfigError("noise_multiplier and contributions must be >= 0, got "
                          f"{noise_multiplier} and {contributions}")
    return gaussian_std(noise_multiplier=noise_multiplier, sensitivity=SENSITIVITY) \
        * math.sqrt(contributions)
