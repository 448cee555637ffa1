"""Noise shares of distributed DP: any h honest weighted shares carry each budget's need."""

from __future__ import annotations

import itertools
import math

import pytest

from participant.errors import ProtocolError
from participant.masked_sum import noise_shares


def test_equal_needs_split_the_noise_by_sqrt_h() -> None:
    shares = noise_shares(own=0.6, floor=0.6, participants=10, max_colluders=4)
    assert shares.share == pytest.approx(0.6 / math.sqrt(6))
    assert shares.weight == 1.0 and shares.effective == pytest.approx(0.6)
    local = noise_shares(own=0.6, floor=0.6, participants=10, max_colluders=9)
    assert local.share == pytest.approx(0.6) and local.effective == pytest.approx(0.6)


def test_a_participant_that_needs_more_counts_less_instead_of_adding_everyones_noise() -> None:
    shares = noise_shares(own=2.4, floor=0.6, participants=10, max_colluders=4)
    assert shares.effective == pytest.approx(2.4)
    assert shares.weight == pytest.approx(0.25)
    assert shares.share * shares.weight == pytest.approx(0.6 / math.sqrt(6))  # like everyone's


def test_every_honest_weighted_sum_carries_every_members_need() -> None:
    """Ten participants with different needs (sampling rates); a coalition of t drops any
    t of them. Relative to one record of member k (sensitivity w_k clips in the weighted
    sum), the remaining weighted shares' noise is at least k's own need."""
    needs = [0.6] * 6 + [0.75, 1.1, 2.4, 0.6]
    t = 4
    shares = [noise_shares(own=o, floor=0.6, participants=10, max_colluders=t) for o in needs]
    for honest in itertools.combinations(range(10), 10 - t):
        total = math.sqrt(sum((shares[k].weight * shares[k].share) ** 2 for k in honest))
        for k in honest:
            assert total / shares[k].weight >= needs[k] - 1e-12
            assert total / shares[k].weight >= shares[k].effective - 1e-12
    # below the floor (a smaller cap elsewhere) a participant still adds the floor's share
    low = noise_shares(own=0.3, floor=0.6, participants=10, max_colluders=t)
    assert (low.share, low.weight) == (pytest.approx(0.6 / math.sqrt(6)), 1.0)


def test_no_honest_participant_is_refused() -> None:
    with pytest.raises(ProtocolError, match="leaves no honest participant"):
        noise_shares(own=1.0, floor=1.0, participants=3, max_colluders=3)
