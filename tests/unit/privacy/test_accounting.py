"""Tests for :mod:`privacy.accounting` against Opacus's own accountants."""

from __future__ import annotations

import math
import warnings

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from privacy.accounting import (
    PlannedRelease,
    epsilon_for_history,
    epsilon_of_central_noise,
    history_of,
    noise_multiplier_for_budget,
)
from privacy.errors import ConfigError

ACCOUNTANT_CLASSES = {"rdp": RDPAccountant, "prv": PRVAccountant}


def _opacus_epsilon(
    steps: list[tuple[float, float, int]], *, delta: float, accountant: str
) -> float:
    """Epsilon from an Opacus accountant driven through its public ``step`` API."""
    acc = ACCOUNTANT_CLASSES[accountant]()
    for noise_multiplier, sample_rate, count in steps:
        for _ in range(count):
            acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


# ------------------------------------------------------------- epsilon_for_history


def test_pinned_rdp_figure() -> None:
    # Computed once with Opacus 1.6.0 RDPAccountant: 1000 x step(1.0, 0.01), delta=1e-5.
    eps = epsilon_for_history([(1.0, 0.01, 1000)], delta=1e-5, accountant="rdp")
    assert eps == pytest.approx(2.1013652716430564, abs=1e-6)


def test_pinned_figure_matches_opacus_steps() -> None:
    assert _opacus_epsilon([(1.0, 0.01, 1000)], delta=1e-5, accountant="rdp") == (
        pytest.approx(2.1013652716430564, abs=1e-6)
    )


def test_default_accountant_is_rdp() -> None:
    history = [(1.0, 0.01, 1000)]
    assert epsilon_for_history(history, delta=1e-5) == epsilon_for_history(
        history, delta=1e-5, accountant="rdp"
    )


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize(
    ("steps", "delta"),
    [
        ([(1.0, 0.01, 1000)], 1e-5),
        ([(2.0, 1.0, 1)], 1e-5),  # one full-batch Gaussian release
        ([(0.8, 0.05, 200)], 1e-6),
        # heterogeneous plan: a full-batch vector release plus subsampled steps
        ([(1.5, 1.0, 1), (1.5, 0.02, 300)], 1e-5),
        ([(3.0, 0.1, 50), (1.2, 0.01, 400), (3.0, 1.0, 2)], 1e-5),
    ],
)
def test_matches_opacus_accountant(
    steps: list[tuple[float, float, int]], delta: float, accountant: str
) -> None:
    ours = epsilon_for_history(steps, delta=delta, accountant=accountant)
    theirs = _opacus_epsilon(steps, delta=delta, accountant=accountant)
    assert math.isfinite(ours)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)


def test_rdp_orders_past_63_tighten_heavily_noised_plans_without_warning() -> None:
    # sigma 20 at q = 12/256 for 20 steps: Opacus's default orders stop at 63, below the
    # optimum, and it warns; the extended orders give a smaller (still valid) epsilon.
    history = [(20.0, 12 / 256, 20)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = epsilon_for_history(history, delta=1e-5)
    defaults = _opacus_epsilon(history, delta=1e-5, accountant="rdp")
    assert 0 < ours < defaults  # 0.034 against 0.106: the optimum order lies past 63


def test_noise_search_for_a_large_budget_does_not_warn_about_its_probes() -> None:
    # epsilon 108 (the central-noise arm's local budget): the bisection probes multipliers
    # whose optimal RDP order is the smallest; the one it returns is not, so no warning.
    plan = [PlannedRelease(sample_rate=12 / 256, steps=20)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sigma = noise_multiplier_for_budget(target_epsilon=108.1, target_delta=1e-5, plan=plan)
        spent = epsilon_for_history([(sigma, 12 / 256, 20)], delta=1e-5)
    assert 0.1 < sigma < 0.3
    assert 108.1 - 0.01 <= spent <= 108.1


def test_prv_tighter_than_rdp_on_known_setting() -> None:
    rdp = epsilon_for_history([(1.0, 0.01, 1000)], delta=1e-5, accountant="rdp")
    prv = epsilon_for_history([(1.0, 0.01, 1000)], delta=1e-5, accountant="prv")
    assert 0 < prv < rdp


def test_epsilon_monotone_in_noise_and_steps() -> None:
    eps = [epsilon_for_history([(s, 0.02, 300)], delta=1e-5) for s in (0.7, 1.0, 2.0, 4.0)]
    assert eps == sorted(eps, reverse=True)
    eps_steps = [epsilon_for_history([(1.0, 0.02, n)], delta=1e-5) for n in (10, 100, 1000)]
    assert eps_steps == sorted(eps_steps)


def test_int_entries_are_coerced() -> None:
    # entries are coerced to (float, float, int) before reaching Opacus
    a = epsilon_for_history([(1, 1, 3)], delta=1e-5)
    b = epsilon_for_history([(1.0, 1.0, 3)], delta=1e-5)
    assert a == b


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize(
    "history",
    [
        [(0.0, 1.0, 1)],
        [(-1.0, 0.5, 10)],
        [(1.0, 0.01, 100), (0.0, 1.0, 1)],  # one non-private release poisons the total
    ],
)
def test_zero_noise_is_infinite(history: list[tuple[float, float, int]], accountant: str) -> None:
    assert epsilon_for_history(history, delta=1e-5, accountant=accountant) == math.inf


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_empty_history_is_zero(accountant: str) -> None:
    assert epsilon_for_history([], delta=1e-5, accountant=accountant) == 0.0


@pytest.mark.parametrize("accountant", ["gdp", "RDP", "", "moments"])
def test_invalid_accountant(accountant: str) -> None:
    with pytest.raises(ConfigError):
        epsilon_for_history([(1.0, 0.01, 10)], delta=1e-5, accountant=accountant)
    with pytest.raises(ConfigError):
        epsilon_for_history([], delta=1e-5, accountant=accountant)
    with pytest.raises(ConfigError):
        noise_multiplier_for_budget(
            target_epsilon=1.0, target_delta=1e-5, plan=[PlannedRelease(1.0, 1)],
            accountant=accountant,
        )


# ------------------------------------------------------------------ PlannedRelease


@pytest.mark.parametrize(
    ("sample_rate", "steps"),
    [(0.0, 1), (-0.1, 1), (1.0001, 1), (math.nan, 1), (0.5, 0), (0.5, -3)],
)
def test_planned_release_validation(sample_rate: float, steps: int) -> None:
    with pytest.raises(ConfigError):
        PlannedRelease(sample_rate=sample_rate, steps=steps)


def test_planned_release_accepts_full_batch() -> None:
    r = PlannedRelease(sample_rate=1.0, steps=1)
    assert (r.sample_rate, r.steps, r.noise_multiplier) == (1.0, 1, None)


@pytest.mark.parametrize("noise_multiplier", [0.0, -1.0, math.inf, math.nan])
def test_planned_release_refuses_a_bad_fixed_multiplier(noise_multiplier: float) -> None:
    with pytest.raises(ConfigError, match="noise_multiplier"):
        PlannedRelease(sample_rate=0.5, steps=1, noise_multiplier=noise_multiplier)


def test_a_release_with_a_fixed_multiplier_is_composed_not_solved_for() -> None:
    plan = [PlannedRelease(12 / 256, 20), PlannedRelease(0.25, 1, noise_multiplier=5.0)]
    sigma = noise_multiplier_for_budget(target_epsilon=1.0, target_delta=1e-5, plan=plan)
    assert history_of(plan, sigma) == [(sigma, 12 / 256, 20), (5.0, 0.25, 1)]
    assert 1.0 - 0.01 < epsilon_for_history(history_of(plan, sigma), delta=1e-5) <= 1.0
    # the heavily noised release costs a little beside the steps; at the common
    # multiplier it would cost much more
    alone = noise_multiplier_for_budget(target_epsilon=1.0, target_delta=1e-5, plan=plan[:1])
    common = noise_multiplier_for_budget(
        target_epsilon=1.0, target_delta=1e-5,
        plan=[plan[0], PlannedRelease(0.25, 1)])
    assert alone < sigma < 1.05 * alone < common


# ------------------------------------------------------- noise_multiplier_for_budget


def _plan_history(sigma: float, plan: list[PlannedRelease]) -> list[tuple[float, float, int]]:
    return [(sigma, r.sample_rate, r.steps) for r in plan]


@pytest.mark.parametrize(
    ("target_epsilon", "plan", "accountant"),
    [
        (3.0, [PlannedRelease(0.01, 500)], "rdp"),
        (1.0, [PlannedRelease(1.0, 1)], "rdp"),
        (8.0, [PlannedRelease(1.0, 1), PlannedRelease(0.02, 200)], "rdp"),
        (2.0, [PlannedRelease(1.0, 2), PlannedRelease(0.05, 100)], "rdp"),
        (3.0, [PlannedRelease(1.0, 1), PlannedRelease(0.02, 200)], "prv"),
    ],
)
def test_noise_multiplier_meets_budget_within_tolerance(
    target_epsilon: float, plan: list[PlannedRelease], accountant: str
) -> None:
    tol = 0.01
    sigma = noise_multiplier_for_budget(
        target_epsilon=target_epsilon, target_delta=1e-5, plan=plan, accountant=accountant,
        epsilon_tolerance=tol,
    )
    assert sigma > 0
    eps = epsilon_for_history(_plan_history(sigma, plan), delta=1e-5, accountant=accountant)
    assert eps <= target_epsilon
    assert target_epsilon - eps < tol
    # and it is (close to) the smallest such sigma: a bit less noise overshoots
    eps_less = epsilon_for_history(
        _plan_history(sigma * 0.97, plan), delta=1e-5, accountant=accountant
    )
    assert eps_less > target_epsilon - tol


@pytest.mark.parametrize(
    ("target_epsilon", "sample_rate", "steps", "delta"),
    [(3.0, 0.01, 500, 1e-5), (1.0, 1.0, 1, 1e-5), (8.0, 0.004, 5000, 1e-6)],
)
def test_agrees_with_opacus_get_noise_multiplier(
    target_epsilon: float, sample_rate: float, steps: int, delta: float
) -> None:
    ours = noise_multiplier_for_budget(
        target_epsilon=target_epsilon, target_delta=delta,
        plan=[PlannedRelease(sample_rate, steps)], accountant="rdp",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
            steps=steps, accountant="rdp",
        )
    assert ours == pytest.approx(theirs, rel=0.03)


def test_tighter_tolerance_gets_closer() -> None:
    plan = [PlannedRelease(0.02, 300)]
    loose = noise_multiplier_for_budget(
        target_epsilon=2.0, target_delta=1e-5, plan=plan, epsilon_tolerance=0.5
    )
    tight = noise_multiplier_for_budget(
        target_epsilon=2.0, target_delta=1e-5, plan=plan, epsilon_tolerance=1e-3
    )
    eps_tight = epsilon_for_history(_plan_history(tight, plan), delta=1e-5)
    assert 2.0 - 1e-3 < eps_tight <= 2.0
    assert tight <= loose


def test_small_budget_extends_bracket_past_initial_sigma() -> None:
    # A tiny budget forces the upper bracket past the initial sigma=10.
    plan = [PlannedRelease(1.0, 1)]
    sigma = noise_multiplier_for_budget(target_epsilon=0.2, target_delta=1e-5, plan=plan)
    assert sigma > 10
    eps = epsilon_for_history(_plan_history(sigma, plan), delta=1e-5)
    assert 0.19 < eps <= 0.2


def test_unreachable_budget_raises() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError):
            noise_multiplier_for_budget(
                target_epsilon=1e-9, target_delta=1e-5, plan=[PlannedRelease(1.0, 1000)]
            )


@pytest.mark.parametrize(
    ("target_epsilon", "target_delta", "plan"),
    [
        (1.0, 1e-5, []),
        (0.0, 1e-5, [PlannedRelease(1.0, 1)]),
        (-1.0, 1e-5, [PlannedRelease(1.0, 1)]),
        (1.0, 0.0, [PlannedRelease(1.0, 1)]),
        (1.0, 1.0, [PlannedRelease(1.0, 1)]),
        (1.0, -1e-5, [PlannedRelease(1.0, 1)]),
        (1.0, math.nan, [PlannedRelease(1.0, 1)]),
    ],
)
def test_noise_multiplier_invalid_config(
    target_epsilon: float, target_delta: float, plan: list[PlannedRelease]
) -> None:
    with pytest.raises(ConfigError):
        noise_multiplier_for_budget(
            target_epsilon=target_epsilon, target_delta=target_delta, plan=plan
        )


def test_nan_target_epsilon_rejected() -> None:
    with pytest.raises(ConfigError):
        noise_multiplier_for_budget(
            target_epsilon=math.nan, target_delta=1e-5, plan=[PlannedRelease(1.0, 1)]
        )


# ------------------------------------------------------------- epsilon_of_central_noise


@pytest.mark.parametrize("participants", [1, 4, 10])
def test_central_noise_budget_gives_the_participants_share_of_the_noise(
    participants: int,
) -> None:
    """Given back as a budget, the returned epsilon yields sigma / sqrt(N): the share of
    the central noise each participant adds (1 participant: the target itself)."""
    plan = [PlannedRelease(1.0, 1), PlannedRelease(12 / 256, 20)]
    sigma = noise_multiplier_for_budget(target_epsilon=8.0, target_delta=1e-5, plan=plan)
    local = epsilon_of_central_noise(target_epsilon=8.0, target_delta=1e-5, plan=plan,
                                     participants=participants)
    share = noise_multiplier_for_budget(target_epsilon=local, target_delta=1e-5, plan=plan,
                                        epsilon_tolerance=1e-4)
    assert share == pytest.approx(sigma / math.sqrt(participants), rel=1e-3)
    if participants == 1:
        assert local == pytest.approx(8.0, abs=0.01)
    else:
        assert local > 8.0


@pytest.mark.parametrize("participants", [0, -3, 2.0, True])
def test_central_noise_needs_a_participant_count(participants: object) -> None:
    with pytest.raises(ConfigError, match="participants"):
        epsilon_of_central_noise(target_epsilon=8.0, target_delta=1e-5,
                                 plan=[PlannedRelease(1.0, 1)],
                                 participants=participants)  # type: ignore[arg-type]
