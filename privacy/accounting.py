"""Privacy accounting through Opacus accountants (RDP by default, PRV selectable).

A participant's releases are recorded as Opacus history entries
``(noise_multiplier, sample_rate, steps)``; the accountant composes them into one
``(epsilon, delta)``. Nothing here re-derives accounting that Opacus provides: the only
addition is a bisection over a *common* noise multiplier for a heterogeneous plan
(one full-batch vector release plus subsampled calibration steps), in the manner of
``opacus.accountants.utils.get_noise_multiplier``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from opacus.accountants import RDPAccountant, create_accountant

from .errors import ConfigError

ACCOUNTANTS = ("rdp", "prv")

#: RDP orders: Opacus's defaults (1.1 .. 63) plus a geometric tail to 1024. RDP bounds hold
#: at every order, so more orders can only tighten the minimum; the tail matters for
#: heavily noised, lightly sampled plans (e.g. sigma >= 10 at q = 12/256, which the
#: noise-multiplier search probes), whose optimum lies beyond 63 and where Opacus warns.
RDP_ORDERS = (*RDPAccountant.DEFAULT_ALPHAS, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True, slots=True)
class PlannedRelease:
    """One kind of release in a participant's protocol.

    Attributes:
        sample_rate: Poisson sampling rate of records per step (1.0 = every record).
        steps: how many times the mechanism is applied.
        noise_multiplier: ``None`` (default): the plan's common multiplier, which
            :func:`noise_multiplier_for_budget` solves for. A number: this release's own,
            fixed multiplier, composed with the others, e.g. for a few class counts that
            afford far more noise than DP-SGD's steps.
    """

    sample_rate: float
    steps: int
    noise_multiplier: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.noise_multiplier is not None and not 0 < self.noise_multiplier < math.inf:
            raise ConfigError("a fixed noise_multiplier must be finite and > 0, "
                              f"got {self.noise_multiplier}")  # NaN too


def history_of(plan: Sequence[PlannedRelease],
               noise_multiplier: float) -> list[tuple[float, float, int]]:
    """Opacus history entries ``(noise multiplier, sample rate, steps)`` of ``plan`` run at
    the common ``noise_multiplier`` (releases with a fixed multiplier keep theirs)."""
    return [(noise_multiplier if r.noise_multiplier is None else r.noise_multiplier,
             r.sample_rate, r.steps) for r in plan]


def epsilon_for_history(
    history: Sequence[tuple[float, float, int]], *, delta: float, accountant: str = "rdp"
) -> float:
    """Compose Opacus history entries into epsilon at ``delta``.

    Args:
        history: ``(noise_multiplier, sample_rate, steps)`` entries; a zero noise
            multiplier means a non-private release and gives ``inf``.
        delta: target delta.
        accountant: ``"rdp"`` or ``"prv"``.
    """
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not history:
        return 0.0
    if any(nm <= 0 for nm, _, _ in history):
        return math.inf
    acc = create_accountant(mechanism=accountant)
    acc.history = [(float(nm), float(q), int(s)) for nm, q, s in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if accountant == "rdp":
            return float(acc.get_epsilon(delta=delta, alphas=list(RDP_ORDERS)))
        return float(acc.get_epsilon(delta=delta))


def noise_multiplier_for_budget(
    *,
    target_epsilon: float,
    target_delta: float,
    plan: Sequence[PlannedRelease],
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
    prior_history: Sequence[tuple[float, float, int]] = (),
) -> float:
    """Smallest common noise multiplier whose composed epsilon is <= ``target_epsilon``.

    Args:
        target_epsilon: the participant's total budget for the whole protocol.
        target_delta: delta of the budget.
        plan: every release the participant will make.
        accountant: ``"rdp"`` or ``"prv"``.
        epsilon_tolerance: stop when the bracket's epsilon is within this of the target.
        prior_history: releases already made from the same records (from the ledger);
            the new plan gets only what they left of the budget.

    Returns:
        The common noise multiplier (std / sensitivity) for every release of the plan
        without a fixed one.
    """
    if not plan:
        raise ConfigError("plan must contain at least one release")
    if not (0 < target_epsilon < math.inf) or not 0 < target_delta < 1:  # rejects NaN
        raise ConfigError("target_epsilon must be > 0 and target_delta in (0, 1)")

    def eps(sigma: float) -> float:
        # The search probes far smaller multipliers than it returns; at those, epsilon is
        # huge and RDP's optimal order sits at the smallest one, which Opacus warns about.
        # That bound is still valid, only loose, and such probes are rejected anyway; the
        # returned multiplier's epsilon is recomputed below without the filter.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            return epsilon_for_history(
                [*prior_history, *history_of(plan, sigma)],
                delta=target_delta, accountant=accountant,
            )

    low, high = 0.0, 10.0
    while eps(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ConfigError(f"no noise multiplier reaches epsilon={target_epsilon}")
    while True:
        mid = (low + high) / 2
        if mid == 0:
            break
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
        if target_epsilon - eps(high) < epsilon_tolerance or high - low < 1e-6:
            break
    epsilon_for_history([*prior_history, *history_of(plan, high)],
                        delta=target_delta, accountant=accountant)  # warns if its bound is loose
    return high


def epsilon_of_central_noise(
    *,
    target_epsilon: float,
    target_delta: float,
    plan: Sequence[PlannedRelease],
    participants: int,
    accountant: str = "rdp",
) -> float:
    """A participant's own epsilon when it adds ``1 / sqrt(participants)`` of the noise
    that ``target_epsilon`` needs: the share each of ``participants`` adds when their
    noise is sized so that the *sum* carries ``target_epsilon``'s noise (central DP with a
    trusted aggregator, or distributed DP where no other participant colludes).

    Analysis only: fedctx's participants share the CKKS key and may collude, so each
    contribution is protected by its own noise alone, and the returned epsilon (larger
    than ``target_epsilon``) is what such a participant really spends. Giving it as the
    budget reproduces that share's noise multiplier through
    :func:`noise_multiplier_for_budget` (docs/results.md §28). The sum carries
    ``target_epsilon``'s noise for a record exactly when every participant's release has
    the same sensitivity and noise multiplier (equal expected batches); a participant
    with fewer records than the batch gets less.

    Raises:
        ConfigError: ``participants`` < 1, or the arguments of
            :func:`noise_multiplier_for_budget` are invalid.
    """
    if isinstance(participants, bool) or not isinstance(participants, int) or participants < 1:
        raise ConfigError(f"participants must be an int >= 1, got {participants!r}")
    sigma = noise_multiplier_for_budget(target_epsilon=target_epsilon,
                                        target_delta=target_delta, plan=plan,
                                        accountant=accountant)
    share = sigma / math.sqrt(participants)
    return epsilon_for_history(history_of(plan, share), delta=target_delta,
                               accountant=accountant)
