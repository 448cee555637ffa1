"""Noise shares of distributed DP: any h honest shares carry what each budget needs."""

from __future__ import annotations

import itertools
import math

import pytest

from participant.errors import ProtocolError
from participant.masked_sum import noise_shares


def test_equal_needs_split_the_noise_by_sqrt_h() -> None:
    shares = noise_shares(own=0.6, floor=0.6, participants=10, max_colluders=4)
    assert shares.share == pytest.approx(0.6 / math.sqrt(6))
    assert shares.base == shares.share and shares.effective == pytest.approx(0.6)
    local = noise_shares(own=0.6, floor=0.6, participants=10, max_colluders=9)
    assert local.share == pytest.approx(0.6) and local.effective == pytest.approx(0.6)


def test_a_participant_that_needs_more_adds_the_difference_itself() -> None:
    shares = noise_shares(own=2.4, floor=0.6, participants=10, max_colluders=4)
    assert shares.effective == pytest.approx(2.4)
    assert shares.share ** 2 + 5 * shares.base ** 2 == pytest.approx(2.4 ** 2)
    assert shares.base == pytest.approx(0.6 / math.sqrt(6))


def test_every_honest_set_carries_every_members_need() -> None:
    """Ten participants with different needs (sampling rates); a coalition of t drops any
    t of them: the remaining shares' sum still carries each remaining member's own need."""
    needs = [0.6] * 6 + [0.75, 1.1, 2.4, 0.6]
    t = 4
    shares = [noise_shares(own=o, floor=0.6, participants=10, max_colluders=t) for o in needs]
    for honest in itertools.combinations(range(10), 10 - t):
        total = math.sqrt(sum(shares[k].share ** 2 for k in honest))
        for k in honest:
            assert total >= needs[k] - 1e-12
            assert total >= shares[k].effective - 1e-12
    # a participant needing less than the floor (never happens without a smaller cap)
    # still adds the base, so the others' guarantee holds
    assert noise_shares(own=0.3, floor=0.6, participants=10, max_colluders=t).share == \
        pytest.approx(0.6 / math.sqrt(6))


def test_no_honest_participant_is_refused() -> None:
    with pytest.raises(ProtocolError, match="leaves no honest participant"):
        noise_shares(own=1.0, floor=1.0, participants=3, max_colluders=3)
