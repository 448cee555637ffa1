"""What a participant plans to release, and what its budget buys."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from privacy.accounting import epsilon_for_history
from privacy.errors import BudgetExhaustedError


def _participant(source: str, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path,  # type: ignore[no-untyped-def]
                 federation: str = "fed-a", epsilon: float = 2.0):
    from participant.calibration import CalibrationConfig
    from participant.config import ParticipantConfig, PrivacySettings
    from participant.federation import Participant

    cert, key = pki.participants["org1"]
    return Participant(ParticipantConfig(
        participant_id="org1", coordinator="127.0.0.1:1", tls_cert=cert, tls_key=key,
        tls_ca=pki.ca_cert, state_dir=tmp_path / "org1", federation_id=federation, task="sst2",
        model=str(tiny_llama_dir), data_dir=str(shared_data / "sst2"), num_partitions=50,
        vector_source=source, max_calibration_records=64,
        privacy=PrivacySettings(target_epsilon=epsilon, delta=1e-5),
        calibration=CalibrationConfig(rounds=3, steps_per_round=4, batch_size=8),
    ))


def test_public_vector_spends_no_budget_and_buys_less_noise(  # type: ignore[no-untyped-def]
        pki, tmp_path, tiny_llama_dir, shared_data) -> None:
    private = _participant("private", pki, tmp_path, tiny_llama_dir, shared_data)
    public = _participant("public", pki, tmp_path, tiny_llama_dir, shared_data)
    assert [r.sample_rate for r in private.plan()] == [1.0, 8 / 64]
    assert [r.sample_rate for r in public.plan()] == [8 / 64]
    sigma_private, sigma_public = private.noise_multiplier(), public.noise_multiplier()
    assert sigma_public < sigma_private  # the saving shows up as less noise at the same epsilon
    for participant, sigma in ((private, sigma_private), (public, sigma_public)):
        history = [(sigma, r.sample_rate, r.steps) for r in participant.plan()]
        assert epsilon_for_history(history, delta=1e-5) == pytest.approx(2.0, abs=0.02)


def test_budget_spans_federations_on_the_same_records(  # type: ignore[no-untyped-def]
        pki, tmp_path, tiny_llama_dir, shared_data) -> None:
    first = _participant("private", pki, tmp_path, tiny_llama_dir, shared_data, "fed-a")
    sigma = first.noise_multiplier()
    first.ledger.reserve(release_id="fed-a/vector", description="t", noise_multiplier=sigma,
                         sample_rate=1.0, steps=1, sensitivity="t")
    # The same records in another federation: the remaining budget is smaller, so more noise.
    second = _participant("private", pki, tmp_path, tiny_llama_dir, shared_data, "fed-b")
    assert second.ledger.path == first.ledger.path
    assert second.noise_multiplier() > sigma
    # Spend everything: the next federation is refused before anything is computed or sent.
    from privacy.ledger import PrivacyLedger

    PrivacyLedger(first.ledger.path, budget_epsilon=math.inf, delta=1e-5).reserve(
        release_id="fed-a/all", description="t", noise_multiplier=0.3, sample_rate=1.0,
        steps=50, sensitivity="t")
    third = _participant("private", pki, tmp_path, tiny_llama_dir, shared_data, "fed-c",
                         epsilon=math.inf)
    assert third.noise_multiplier() == 0.0  # a non-private run is recorded but never refused
    fourth = _participant("private", pki, tmp_path, tiny_llama_dir, shared_data, "fed-d")
    with pytest.raises(BudgetExhaustedError, match="earlier federations"):
        fourth.noise_multiplier()
