"""The coordinator folds each contribution into its round's running sum as it arrives.

The close then serialises that sum instead of re-reading and re-loading every stored
contribution; whenever the running sum cannot be trusted (a restart mid-round, a failed
addition) the close sums the stored contributions, so the aggregate never changes.
"""

from __future__ import annotations

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


@pytest.fixture()
def keys() -> tuple[Any, Any, bytes]:
    secret = ckks.create_secret_context(ckks.CkksParams())
    public_bytes = ckks.serialize_public_context(secret)
    return secret, ckks.load_public_context(public_bytes), public_bytes


def _aggregator(pki: Any, state: Path, public_bytes: bytes) -> Aggregator:
    config = CoordinatorConfig(
        federation_id="fed", roster=ROSTER, keyholder_id="org1", state_dir=state,
        tls_cert=pki.coordinator_cert, tls_key=pki.coordinator_key, tls_ca=pki.ca_cert,
    )
    agg = Aggregator(config, Store(state))
    if agg.store.get_meta("ckks_context_fingerprint") is None:
        agg.publish_keys(
            "org1", federation_id="fed", public_context=public_bytes,
            ckks_params_fingerprint="p", model_fingerprint="m", layer_map_fingerprint="l",
            sealed_keys={"org2": b"sealed-2", "org3": b"sealed-3"},
        )
    return agg


def _submit(agg: Aggregator, peer: str, data: bytes, round_id: str = "r1") -> Any:
    header = Header(
        federation_id="fed", round_id=round_id, model_fingerprint="m",
        layer_map_fingerprint="l",
        ckks_context_fingerprint=agg.store.get_meta("ckks_context_fingerprint") or "",
        vector_length=LENGTH, num_ciphertexts=3, payload_bytes=len(data),
        payload_sha256=payload.sha256(data), kind="context_vector",
    )
    return agg.submit(peer, header, data)


def _contributions(secret: Any) -> dict[str, tuple[np.ndarray, bytes]]:
    rng = np.random.default_rng(5)
    out = {}
    for peer in ROSTER:
        values = rng.normal(0.0, 1.0, LENGTH)
        out[peer] = (values, payload.frame(ckks.encrypt_vector(secret, values)))
    return out


def _expected(public: Any, parts: dict[str, tuple[np.ndarray, bytes]]) -> bytes:
    return payload.frame(ckks.sum_ciphertexts(
        public, [payload.unframe(data) for _, data in parts.values()]))


def test_close_serialises_the_running_sum_without_re_reading_contributions(
    pki: Any, tmp_path: Path, keys: tuple[Any, Any, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, public, public_bytes = keys
    parts = _contributions(secret)
    expected = _expected(public, parts)
    agg = _aggregator(pki, tmp_path / "state", public_bytes)

    reads: list[str] = []
    real_get_blob = agg.store.get_blob
    monkeypatch.setattr(agg.store, "get_blob", lambda d: reads.append(d) or real_get_blob(d))
    for peer in ("org3", "org1"):
        assert _submit(agg, peer, parts[peer][1]).state == OPEN
    # A repeated upload is a duplicate: not folded in twice.
    assert _submit(agg, "org1", parts["org1"][1]).duplicate
    assert _submit(agg, "org2", parts["org2"][1]).state == CLOSED
    result = agg.aggregate("org1", "r1")
    # Byte for byte what summing the stored contributions gives, in any order.
    assert result.payload == expected
    assert result.contributions == 3
    # The close read no contribution back (only the aggregate, to answer the download).
    contributed = {payload.sha256(data).hex() for _, data in parts.values()}
    assert not contributed & set(reads)
    total = ckks.decrypt_vector(secret, payload.unframe(result.payload), length=LENGTH)
    np.testing.assert_allclose(total, sum(v for v, _ in parts.values()), atol=1e-5)
    assert agg._running == {}


def test_a_restart_mid_round_sums_the_stored_contributions(
    pki: Any, tmp_path: Path, keys: tuple[Any, Any, bytes]
) -> None:
    secret, public, public_bytes = keys
    parts = _contributions(secret)
    state = tmp_path / "state"
    first = _aggregator(pki, state, public_bytes)
    _submit(first, "org1", parts["org1"][1])
    _submit(first, "org2", parts["org2"][1])
    first.store.close()

    second = _aggregator(pki, state, public_bytes)  # its running sums are gone
    assert _submit(second, "org3", parts["org3"][1]).state == CLOSED
    assert second.aggregate("org2", "r1").payload == _expected(public, parts)


def test_a_failed_addition_loses_nothing(
    pki: Any, tmp_path: Path, keys: tuple[Any, Any, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, public, public_bytes = keys
    parts = _contributions(secret)
    agg = _aggregator(pki, tmp_path / "state", public_bytes)
    _submit(agg, "org1", parts["org1"][1])
    real_add = ckks.EncryptedSum.add

    def failing_add(self: ckks.EncryptedSum, vector: ckks.LoadedVector) -> None:
        self._broken = True
        raise CiphertextError("simulated failure")

    monkeypatch.setattr(ckks.EncryptedSum, "add", failing_add)
    assert _submit(agg, "org2", parts["org2"][1]).contributions == 2  # stored all the same
    assert "r1" not in agg._running
    monkeypatch.setattr(ckks.EncryptedSum, "add", real_add)
    assert _submit(agg, "org3", parts["org3"][1]).state == CLOSED
    assert agg.aggregate("org3", "r1").payload == _expected(public, parts)


def test_a_round_closed_at_its_deadline_uses_what_arrived(
    pki: Any, tmp_path: Path, keys: tuple[Any, Any, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, public, public_bytes = keys
    parts = _contributions(secret)
    config = CoordinatorConfig(
        federation_id="fed", roster=ROSTER, keyholder_id="org1", state_dir=tmp_path / "s",
        tls_cert=pki.coordinator_cert, tls_key=pki.coordinator_key, tls_ca=pki.ca_cert,
        quorum=2, round_timeout_s=5.0,
    )
    agg = Aggregator(config, Store(config.state_dir))
    agg.publish_keys(
        "org1", federation_id="fed", public_context=public_bytes,
        ckks_params_fingerprint="p", model_fingerprint="m", layer_map_fingerprint="l",
        sealed_keys={"org2": b"sealed-2", "org3": b"sealed-3"},
    )
    _submit(agg, "org1", parts["org1"][1])
    _submit(agg, "org2", parts["org2"][1])
    clock = aggregator_module.now() + 60.0
    monkeypatch.setattr(aggregator_module, "now", lambda: clock)
    agg.tick()
    del parts["org3"]
    assert agg.aggregate("org1", "r1").payload == _expected(public, parts)
    assert agg._running == {}
