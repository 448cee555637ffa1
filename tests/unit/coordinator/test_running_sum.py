"""The coordinator folds each contribution into its round's running sum as it arrives.

The close then serialises that sum instead of re-reading and re-loading every stored
contribution; whenever the running sum cannot be trusted (a restart mid-round, a failed
addition) the close sums the stored contributions, so the aggregate never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator import aggregator as aggregator_module
from coordinator.aggregator import CLOSED, OPEN, Aggregator, Header
from coordinator.config import CoordinatorConfig
from coordinator.store import Store
from privacy import ckks, payload
from privacy.errors import CiphertextError

ROSTER = ("org1", "org2", "org3")
LENGTH = 2 * 2048 + 5  # three ciphertexts, the last one partial


@dataclass
class Federation:
    """A CKKS key pair, each roster member's vector and framed ciphertexts, and where to
    keep coordinator state."""

    secret: Any
    public: Any
    public_bytes: bytes
    parts: dict[str, tuple[np.ndarray, bytes]]
    pki: Any
    tmp_path: Path

    def aggregator(self, **settings: Any) -> Aggregator:
        """A coordinator on ``tmp_path/state`` (reopened if it exists) with published keys."""
        state = self.tmp_path / "state"
        config = CoordinatorConfig(
            federation_id="fed", roster=ROSTER, keyholder_id="org1", state_dir=state,
            tls_cert=self.pki.coordinator_cert, tls_key=self.pki.coordinator_key,
            tls_ca=self.pki.ca_cert, **settings,
        )
        agg = Aggregator(config, Store(state))
        if agg.store.get_meta("ckks_context_fingerprint") is None:
            agg.publish_keys(
                "org1", federation_id="fed", public_context=self.public_bytes,
                ckks_params_fingerprint="p", model_fingerprint="m", layer_map_fingerprint="l",
                sealed_keys={"org2": b"sealed-2", "org3": b"sealed-3"},
            )
        return agg

    def expected(self, peers: tuple[str, ...] = ROSTER) -> bytes:
        """The framed sum of ``peers``' stored contributions, summed from scratch."""
        return payload.frame(ckks.sum_ciphertexts(
            self.public, [payload.unframe(self.parts[p][1]) for p in peers]))


@pytest.fixture()
def fed(pki: Any, tmp_path: Path) -> Federation:
    secret = ckks.create_secret_context(ckks.CkksParams())
    public_bytes = ckks.serialize_public_context(secret)
    rng = np.random.default_rng(5)
    parts = {}
    for peer in ROSTER:
        values = rng.normal(0.0, 1.0, LENGTH)
        parts[peer] = (values, payload.frame(ckks.encrypt_vector(secret, values)))
    return Federation(secret, ckks.load_public_context(public_bytes), public_bytes, parts,
                      pki, tmp_path)


def _submit(agg: Aggregator, peer: str, data: bytes, round_id: str = "r1") -> Any:
    header = Header(
        federation_id="fed", round_id=round_id, model_fingerprint="m",
        layer_map_fingerprint="l",
        ckks_context_fingerprint=agg.store.get_meta("ckks_context_fingerprint") or "",
        vector_length=LENGTH, num_ciphertexts=3, payload_bytes=len(data),
        payload_sha256=payload.sha256(data), kind="context_vector",
    )
    return agg.submit(peer, header, data)


def test_close_serialises_the_running_sum_without_re_reading_contributions(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    agg = fed.aggregator()
    reads: list[str] = []
    real_get_blob = agg.store.get_blob
    monkeypatch.setattr(agg.store, "get_blob", lambda d: reads.append(d) or real_get_blob(d))
    for peer in ("org3", "org1"):
        assert _submit(agg, peer, fed.parts[peer][1]).state == OPEN
    # A repeated upload is a duplicate: not folded in twice.
    assert _submit(agg, "org1", fed.parts["org1"][1]).duplicate
    assert _submit(agg, "org2", fed.parts["org2"][1]).state == CLOSED
    result = agg.aggregate("org1", "r1")
    # Byte for byte what summing the stored contributions gives, in any order.
    assert result.payload == fed.expected()
    assert result.contributions == 3
    # The close read no contribution back (only the aggregate, to answer the download).
    contributed = {payload.sha256(data).hex() for _, data in fed.parts.values()}
    assert not contributed & set(reads)
    total = ckks.decrypt_vector(fed.secret, payload.unframe(result.payload), length=LENGTH)
    np.testing.assert_allclose(total, sum(v for v, _ in fed.parts.values()), atol=1e-5)
    assert agg._running == {}


def test_a_restart_mid_round_sums_the_stored_contributions(fed: Federation) -> None:
    first = fed.aggregator()
    _submit(first, "org1", fed.parts["org1"][1])
    _submit(first, "org2", fed.parts["org2"][1])
    first.store.close()

    second = fed.aggregator()  # same state folder; its running sums are gone
    assert _submit(second, "org3", fed.parts["org3"][1]).state == CLOSED
    assert second.aggregate("org2", "r1").payload == fed.expected()


def test_a_failed_addition_loses_nothing(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    agg = fed.aggregator()
    _submit(agg, "org1", fed.parts["org1"][1])
    real_add = ckks.EncryptedSum.add

    def failing_add(self: ckks.EncryptedSum, vector: ckks.LoadedVector) -> None:
        self._broken = True
        raise CiphertextError("simulated failure")

    monkeypatch.setattr(ckks.EncryptedSum, "add", failing_add)
    assert _submit(agg, "org2", fed.parts["org2"][1]).contributions == 2  # stored all the same
    assert "r1" not in agg._running
    monkeypatch.setattr(ckks.EncryptedSum, "add", real_add)
    assert _submit(agg, "org3", fed.parts["org3"][1]).state == CLOSED
    assert agg.aggregate("org3", "r1").payload == fed.expected()


def test_a_round_closed_at_its_deadline_uses_what_arrived(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    agg = fed.aggregator(quorum=2, round_timeout_s=5.0)
    _submit(agg, "org1", fed.parts["org1"][1])
    _submit(agg, "org2", fed.parts["org2"][1])
    clock = aggregator_module.now() + 60.0
    monkeypatch.setattr(aggregator_module, "now", lambda: clock)
    agg.tick()
    assert agg.aggregate("org1", "r1").payload == fed.expected(("org1", "org2"))
    assert agg._running == {}
