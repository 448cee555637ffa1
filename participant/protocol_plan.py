"""The protocol plan: the settings every participant of a federation must share.

Participants that disagree on, say, the vector source or the number of calibration rounds
join different rounds (round ids carry them) or average updates that mean different things;
with a quorum below the roster size such a federation would split silently. So the
keyholder pins its plan with its keys (``PublishKeysRequest.protocol_plan``), the
coordinator serves it as-is, and every participant refuses to contribute under a plan other
than its own, naming the settings that differ. The plan holds configuration only (no data,
no keys); budgets are not part of it: each organisation sets its own epsilon.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from .errors import ProtocolError


def canonical_plan(settings: Mapping[str, object]) -> str:
    """Canonical JSON of ``settings`` (sorted keys, no spaces; tuples become lists)."""
    return json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))


def check_plan(*, mine: str, federation: str) -> None:
    """Raise :class:`ProtocolError` naming every setting where ``mine`` differs from the
    federation's plan (or saying that the keyholder pinned none)."""
    if not federation:
        raise ProtocolError("the federation has no protocol plan: its keyholder pinned none "
                            "with its keys, so the participants' settings cannot be checked")
    if mine == federation:
        return
    ours = json.loads(mine)
    try:
        theirs = json.loads(federation)
    except ValueError as exc:
        raise ProtocolError(f"the federation's protocol plan is not JSON: {exc}") from exc
    if not isinstance(theirs, dict):
        raise ProtocolError("the federation's protocol plan is not a JSON object")
    differences = [
        f"{key}: {ours.get(key, '<unset>')!r} here, "
        f"{theirs.get(key, '<unset>')!r} in the federation"
        for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)
    ]
    raise ProtocolError("this participant's protocol plan differs from the one its keyholder "
                        "pinned: " + "; ".join(differences or ["encoding"]))
