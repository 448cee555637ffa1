"""Shamir sharing: any threshold of shares gives the secret back, fewer do not."""

from __future__ import annotations

import itertools
import os

import pytest

from privacy import shamir
from privacy.errors import ConfigError


@pytest.mark.parametrize(("threshold", "count"), [(1, 1), (1, 3), (2, 3), (3, 5), (5, 5)])
def test_every_threshold_subset_gives_the_secret_back(threshold: int, count: int) -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=threshold, shares=count)
    assert sorted(shares) == list(range(1, count + 1))
    assert all(len(s) == shamir.SHARE_BYTES for s in shares.values())
    for subset in itertools.combinations(sorted(shares), threshold):
        assert shamir.combine({x: shares[x] for x in subset}, threshold=threshold,
                              secret_bytes=32) == secret


def test_fewer_shares_than_the_threshold_are_refused_and_leave_the_secret_open() -> None:
    """With threshold 3, two shares are consistent with every secret: completing them with
    any third value interpolates to a different secret each time."""
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=3, shares=4)
    two = {1: shares[1], 2: shares[2]}
    with pytest.raises(shamir.ShareError, match="2 shares"):
        shamir.combine(two, threshold=3, secret_bytes=32)
    completions = {shamir.combine({**two, 3: os.urandom(65).rjust(66, b"\0")}, threshold=3,
                                  secret_bytes=66) for _ in range(20)}
    assert len(completions) == 20


def test_two_splits_of_one_secret_differ() -> None:
    secret = b"\x01" * 32
    assert shamir.split(secret, threshold=2, shares=3) != shamir.split(secret, threshold=2,
                                                                        shares=3)


def test_a_wrong_share_gives_another_secret_or_an_error() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=2, shares=3)
    forged = {1: shares[1], 2: (int.from_bytes(shares[2], "big") ^ 1).to_bytes(66, "big")}
    try:
        assert shamir.combine(forged, threshold=2, secret_bytes=32) != secret
    except shamir.ShareError:
        pass


@pytest.mark.parametrize("shares", [
    {1: b"\0" * 65},                                   # short
    {1: b"\xff" * 66},                                 # not a field element
    {0: b"\0" * 66},                                   # index 0 is the secret itself
])
def test_malformed_shares_are_refused(shares: dict[int, bytes]) -> None:
    with pytest.raises(shamir.ShareError):
        shamir.combine(shares, threshold=1, secret_bytes=32)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        shamir.split(b"k", threshold=4, shares=3)
    with pytest.raises(ConfigError, match="threshold"):
        shamir.split(b"k", threshold=0, shares=3)
    with pytest.raises(ConfigError, match="bytes"):
        shamir.split(b"k" * 65, threshold=1, shares=1)
