"""The protocol plan check names what differs and refuses what it cannot read."""

from __future__ import annotations

import pytest

from participant.errors import ProtocolError
from participant.protocol_plan import canonical_plan, check_plan


def test_canonical_plan_is_independent_of_key_order() -> None:
    assert canonical_plan({"b": 1, "a": (2, 3)}) == canonical_plan({"a": [2, 3], "b": 1}) \
        == '{"a":[2,3],"b":1}'


def test_equal_plans_pass_and_every_difference_is_named() -> None:
    mine = canonical_plan({"task": "sst2", "rounds": 4, "vector_source": "public"})
    check_plan(mine=mine, federation=mine)
    theirs = canonical_plan({"task": "sst2", "rounds": 5, "vector_source": "private",
                             "loss": "label_words"})
    with pytest.raises(ProtocolError) as info:
        check_plan(mine=mine, federation=theirs)
    message = str(info.value)
    assert "rounds: 4 here, 5 in the federation" in message
    assert "vector_source: 'public' here, 'private' in the federation" in message
    assert "loss: '<unset>' here, 'label_words' in the federation" in message
    assert "task" not in message


@pytest.mark.parametrize("federation, reason", [
    ("", "pinned none"), ("{not json", "not JSON"), ("[1]", "not a JSON object")])
def test_a_missing_or_unreadable_federation_plan_is_refused(federation: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        check_plan(mine=canonical_plan({"task": "sst2"}), federation=federation)
