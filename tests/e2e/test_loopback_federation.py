"""Coordinator + two participants as real gRPC peers over mutual TLS on loopback."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _participant_config(pid, port, pki, tmp_path, tiny_llama_dir, shared_data, **extra):  # type: ignore[no-untyped-def]
    from participant.calibration import CalibrationConfig
    from participant.config import ParticipantConfig, PrivacySettings

    cert, key = pki.participants[pid]
    return ParticipantConfig(
        participant_id=pid, coordinator=f"127.0.0.1:{port}", tls_cert=cert, tls_key=key,
        tls_ca=pki.ca_cert, state_dir=tmp_path / pid, federation_id="fed-test", task="sst2",
        model=str(tiny_llama_dir), data_dir=str(shared_data / "sst2"),
        partition_index=int(pid[-1]) - 1, num_partitions=extra.pop("num_partitions", 2),
        demonstrations_per_class=4,
        max_calibration_records=extra.pop("max_calibration_records", 32), test_per_class=8,
        batch_size=8,
        privacy=extra.pop("privacy", PrivacySettings(target_epsilon=4.0, delta=1e-5)),
        calibration=extra.pop("calibration",
                              CalibrationConfig(rounds=2, steps_per_round=2, batch_size=4)),
        **extra,
    )


def _run_all(configs, compute_slot=None, *, failures=None):  # type: ignore[no-untyped-def]
    """Every participant in its own thread; their reports. The first error is raised,
    unless ``failures`` (a list) collects ``(participant id, error)`` pairs instead."""
    from participant.federation import Participant

    reports, errors = {}, []

    def run(config):  # type: ignore[no-untyped-def]
        participant = Participant(config, compute_slot=compute_slot)
        try:
            reports[config.participant_id] = participant.run()
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)
            if failures is not None:
                failures.append((config.participant_id, exc))
        finally:
            participant.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    if errors and failures is None:
        raise errors[0]
    return reports


def test_two_participants_private_federation(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path
) -> None:
    from privacy import ckks

    server = coordinator_factory()
    # org2 encrypts and decrypts in two worker processes, org1 in its own process.
    configs = [
        _participant_config(pid, server.port, pki, tmp_path, tiny_llama_dir, shared_data,
                            ckks_workers=workers)
        for pid, workers in (("org1", 1), ("org2", 2))
    ]
    reports = _run_all(configs)

    for pid, report in reports.items():
        assert [r["round"] for r in report.rounds] == [
            "vector", "calib-private-1", "calib-private-2"]
        assert all(r["contributions"] == 2 for r in report.rounds)
        assert 0 < report.epsilon_spent <= 4.0 + 1e-6, pid
        assert report.noise_multiplier > 0
        assert report.bytes_sent > 0
        assert set(report.scores) == {"zero_shot", "injected_uncalibrated", "injected_calibrated"}

    # Both participants decrypted the same global vector and coefficients.
    saved = [torch.load(tmp_path / pid / "fed-test-sst2-calibrated.pt", weights_only=True)
             for pid in ("org1", "org2")]
    assert torch.allclose(saved[0]["vector"], saved[1]["vector"], atol=1e-4)
    assert torch.allclose(saved[0]["coefficients"], saved[1]["coefficients"], atol=1e-5)

    # The coordinator's stored context is public-only: it cannot decrypt its aggregates.
    agg = server.aggregator.aggregate("org1", "vector")
    public = ckks.load_public_context(
        server.store.get_blob(server.store.get_meta("public_context_blob")))
    from privacy import payload

    with pytest.raises(ckks.CryptoError, match="secret context"):
        ckks.decrypt_vector(public, payload.unframe(agg.payload), length=agg.vector_length)

    # The ledgers hold every release, committed.
    for pid in ("org1", "org2"):
        ledger = next((tmp_path / pid / "ledger").glob("*.jsonl")).read_text()
        assert ledger.count('"event": "commit"') == 3


def test_a_participant_with_another_protocol_plan_is_refused_before_any_release(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path
) -> None:
    from participant.errors import ProtocolError
    from participant.federation import Participant

    server = coordinator_factory()
    holder, other = (Participant(_participant_config(
        pid, server.port, pki, tmp_path, tiny_llama_dir, shared_data, vector_source=source))
        for pid, source in (("org1", "private"), ("org2", "public")))
    try:
        joined = []
        keyholder = threading.Thread(target=lambda: joined.append(
            holder.join(holder.client.federation(), protocol_plan=holder.protocol_plan())))
        keyholder.start()
        with pytest.raises(ProtocolError, match="vector_source: 'public' here, 'private' in"):
            other.join(other.client.federation(), protocol_plan=other.protocol_plan())
        keyholder.join(timeout=60)
        assert joined and joined[0].protocol_plan == holder.protocol_plan()
        assert not list((tmp_path / "org2").glob("ledger/*.jsonl"))  # nothing released
        assert server.aggregator.federation_info()["rounds"] == []
    finally:
        holder.close()
        other.close()


def test_finished_task_is_cached_and_reused_without_new_releases(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path
) -> None:
    import dataclasses

    from participant.client import CoordinatorClient, TlsFiles
    from participant.federation import Participant

    server = coordinator_factory()
    configs = [
        _participant_config(pid, server.port, pki, tmp_path, tiny_llama_dir, shared_data,
                            vector_source="public")
        for pid in ("org1", "org2")
    ]
    reports = _run_all(configs)
    spent = reports["org2"].epsilon_spent
    assert [r["round"] for r in reports["org2"].rounds] == ["calib-public-1", "calib-public-2"]
    first = torch.load(tmp_path / "org2" / "fed-test-sst2-calibrated.pt", weights_only=True)

    cert, key = pki.participants["org2"]
    with CoordinatorClient(f"127.0.0.1:{server.port}", TlsFiles(cert, key, pki.ca_cert)) as c:
        (entry,) = c.list_tasks()
    assert entry.stored_by == "org1" and entry.task_name == "sst2"
    assert entry.vector_length == first["vector"].numel()

    # Later, org2 (e.g. an inference node of the same organisation) reuses the cached task.
    again = Participant(dataclasses.replace(configs[1], use_cached_task=True))
    try:
        report = again.run()
    finally:
        again.close()
    assert [r["round"] for r in report.rounds] == ["task-cache"]
    assert report.epsilon_spent == spent  # nothing new was released
    cached = torch.load(tmp_path / "org2" / "fed-test-sst2-calibrated.pt", weights_only=True)
    assert torch.allclose(cached["vector"], first["vector"], atol=1e-4)
    assert torch.allclose(cached["coefficients"], first["coefficients"], atol=1e-5)


def test_layers_sharing_coefficients_release_four_values_per_group(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path
) -> None:
    from participant.calibration import CalibrationConfig

    server = coordinator_factory()
    shared = CalibrationConfig(rounds=2, steps_per_round=2, batch_size=4, coefficient_groups=1)
    reports = _run_all([
        _participant_config(pid, server.port, pki, tmp_path, tiny_llama_dir, shared_data,
                            vector_source="public", calibration=shared)
        for pid in ("org1", "org2")
    ])
    assert all(0 < r.epsilon_spent <= 4.0 + 1e-6 for r in reports.values())
    for round_id in ("calib-public-1", "calib-public-2"):
        assert server.aggregator.aggregate("org1", round_id).vector_length == 4
    saved = torch.load(tmp_path / "org1" / "fed-test-sst2-calibrated.pt", weights_only=True)
    coefficients = saved["coefficients"]
    assert coefficients.shape == (2, 4)  # one row per layer, both layers the one group's
    assert torch.equal(coefficients[0], coefficients[1])
    assert not torch.allclose(coefficients[0], torch.tensor([0.1, 1.0, 0.1, 1.0]))  # trained


@pytest.mark.parametrize("epsilon", [float("inf"), 4.0])
def test_precision_weighted_updates_are_the_weighted_mean_through_the_encrypted_path(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path,
    epsilon: float, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each round's update is known (the participant's record count, everywhere), so the
    decrypted result must be sum_k w_k n_k / sum_k w_k with the calibrators' own weights:
    a participant with 2 records (rate 1, more noise under DP) counts less."""
    from participant.calibration import CalibrationConfig, LocalCalibrator
    from participant.config import PrivacySettings

    weights: dict[int, float] = {}
    real_weight = LocalCalibrator.update_weight

    def known_update(self, coefficients):  # type: ignore[no-untyped-def]
        return torch.full_like(coefficients, float(len(self.queries.texts)))

    def recorded_weight(self):  # type: ignore[no-untyped-def]
        weights[len(self.queries.texts)] = real_weight(self)
        return weights[len(self.queries.texts)]

    monkeypatch.setattr(LocalCalibrator, "run_round", known_update)
    monkeypatch.setattr(LocalCalibrator, "update_weight", recorded_weight)
    server = coordinator_factory()
    calibration = CalibrationConfig(rounds=2, steps_per_round=2, batch_size=4,
                                    update_weighting="precision")
    _run_all([
        _participant_config(pid, server.port, pki, tmp_path, tiny_llama_dir, shared_data,
                            vector_source="public", calibration=calibration,
                            max_calibration_records=records,
                            privacy=PrivacySettings(target_epsilon=epsilon))
        for pid, records in (("org1", 2), ("org2", 32))
    ])
    assert sorted(weights) == [2, 32]
    if epsilon < float("inf"):  # rate 1 needs more noise: less than its batch's share
        assert weights[2] / weights[32] < 2 / 4
    else:  # without DP the weight is the records per step
        assert (weights[2], weights[32]) == (2.0, 4.0)
    per_round = (2 * weights[2] + 32 * weights[32]) / (weights[2] + weights[32])
    assert server.aggregator.aggregate("org1", "calib-public-1").vector_length == 2 * 4 + 1
    for pid in ("org1", "org2"):
        saved = torch.load(tmp_path / pid / "fed-test-sst2-calibrated.pt", weights_only=True)
        expected = torch.tensor([0.1, 1.0, 0.1, 1.0]) + 2 * per_round
        assert torch.allclose(saved["coefficients"], expected.expand(2, 4), atol=1e-3)


def test_global_adam_steps_every_participant_identically_on_the_decrypted_mean(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Known round updates (the participant's record count): the decrypted mean, 17, is
    the negative gradient of one AdamW step per round in every participant, so after two
    rounds each coefficient moved by the learning rate twice (after weight decay), not by
    2 x 17 as the paper's mean would."""
    from participant.calibration import CalibrationConfig, LocalCalibrator

    def known_update(self, coefficients):  # type: ignore[no-untyped-def]
        return torch.full_like(coefficients, float(len(self.queries.texts)))

    monkeypatch.setattr(LocalCalibrator, "run_round", known_update)
    server = coordinator_factory()
    calibration = CalibrationConfig(rounds=2, steps_per_round=1, batch_size=4,
                                    optimizer="global_adam", learning_rate=0.05)
    _run_all([
        _participant_config(pid, server.port, pki, tmp_path, tiny_llama_dir, shared_data,
                            vector_source="public", calibration=calibration,
                            max_calibration_records=records)
        for pid, records in (("org1", 2), ("org2", 32))
    ])
    expected = torch.tensor([0.1, 1.0, 0.1, 1.0])
    for _ in range(2):  # both rounds at the peak rate (1-round warm-up, cosine from there)
        expected = expected * (1 - 0.05 * 1e-3) + 0.05
    for pid in ("org1", "org2"):
        saved = torch.load(tmp_path / pid / "fed-test-sst2-calibrated.pt", weights_only=True)
        assert torch.allclose(saved["coefficients"], expected.expand(2, 4), atol=1e-4)


@pytest.mark.parametrize("epsilon", [float("inf"), 4.0])
def test_vector_weighted_by_record_count(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path,
    epsilon: float,
) -> None:
    from participant.config import PrivacySettings

    server = coordinator_factory()
    configs = [
        _participant_config(pid, server.port, pki, tmp_path, tiny_llama_dir, shared_data,
                            vector_weighting="records",
                            privacy=PrivacySettings(target_epsilon=epsilon))
        for pid in ("org1", "org2")
    ]
    reports = _run_all(configs)
    first_round = reports["org1"].rounds[0]
    assert (first_round["round"], first_round["contributions"]) == ("vector-weighted", 2)
    assert first_round["bytes_sent"] > 0
    # with DP the decrypted mean is shrunk (James-Stein, the default); identically for all
    shrinkage = [reports[pid].vector_shrinkage for pid in ("org1", "org2")]
    assert shrinkage[0] == shrinkage[1] and (bool(shrinkage[0]) == (epsilon < float("inf")))
    saved = [torch.load(tmp_path / pid / "fed-test-sst2-calibrated.pt", weights_only=True)
             for pid in ("org1", "org2")]
    assert torch.allclose(saved[0]["vector"], saved[1]["vector"], atol=1e-4)


class _OneSlot:
    """A one-holder gate that records how it was used."""

    def __init__(self) -> None:
        self.lock, self.guard = threading.BoundedSemaphore(1), threading.Lock()
        self.holders = self.max_holders = self.entries = 0

    def __enter__(self) -> None:
        self.lock.acquire()
        with self.guard:
            self.holders += 1
            self.entries += 1
            self.max_holders = max(self.max_holders, self.holders)

    def __exit__(self, *exc: object) -> None:
        with self.guard:
            self.holders -= 1
        self.lock.release()


def test_participants_sharing_one_compute_slot_take_turns_without_deadlock(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path
) -> None:
    # A participant that held the slot while waiting for the other's contribution would
    # deadlock here: the slot must cover model work only, never a wait on the coordinator.
    server = coordinator_factory()
    slot = _OneSlot()
    reports = _run_all([
        _participant_config(pid, server.port, pki, tmp_path, tiny_llama_dir, shared_data)
        for pid in ("org1", "org2")
    ], compute_slot=slot)
    assert set(reports) == {"org1", "org2"}
    assert all(len(r.rounds) == 3 for r in reports.values())
    # per participant: model load, reference, demonstrations, 2 calibration rounds, evaluation
    assert slot.entries == 2 * 6
    assert slot.max_holders == 1


def test_the_label_bias_round_releases_class_statistics_once_and_caches_the_bias(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path
) -> None:
    import dataclasses
    import json
    import math

    from participant.calibration import CalibrationConfig
    from participant.federation import Participant

    server = coordinator_factory()
    calibration = CalibrationConfig(rounds=2, steps_per_round=2, batch_size=4,
                                    label_bias="balanced")
    configs = [
        _participant_config(pid, server.port, pki, tmp_path, tiny_llama_dir, shared_data,
                            vector_source="public", calibration=calibration)
        for pid in ("org1", "org2")
    ]
    reports = _run_all(configs)
    for pid, report in reports.items():
        assert [r["round"] for r in report.rounds] == [
            "calib-public-1", "calib-public-2", "label-bias-public"]
        assert all(r["contributions"] == 2 for r in report.rounds)
        assert 0 < report.epsilon_spent <= 4.0 + 1e-6, pid
        assert len(report.label_bias) == 2 and all(map(math.isfinite, report.label_bias))
        assert "injected_calibrated_label_bias" in report.scores
        entries = [json.loads(line) for line in
                   next((tmp_path / pid / "ledger").glob("*.jsonl")).read_text().splitlines()]
        (reserve,) = [e for e in entries if e.get("event") == "reserve"
                      and e["release_id"].endswith("/label-bias-public")]
        assert reserve["sample_rate"] == 0.25
        assert reserve["noise_multiplier"] == 5.0  # fixed; the common one is solved beside it
        assert report.noise_multiplier != 5.0
    # the participants decrypted one sum of statistics, so they hold one bias
    assert reports["org1"].label_bias == pytest.approx(reports["org2"].label_bias, abs=1e-4)
    saved = torch.load(tmp_path / "org2" / "fed-test-sst2-calibrated.pt", weights_only=True)
    torch.testing.assert_close(saved["label_bias"], torch.tensor(reports["org2"].label_bias))

    # the keyholder cached the bias with the task; a reuse gets it back, releasing nothing
    again = Participant(dataclasses.replace(configs[1], use_cached_task=True))
    try:
        report = again.run()
    finally:
        again.close()
    assert [r["round"] for r in report.rounds] == ["task-cache"]
    assert report.epsilon_spent == reports["org2"].epsilon_spent
    assert report.label_bias == pytest.approx(reports["org2"].label_bias, abs=1e-4)


def test_without_dp_the_label_bias_is_that_of_the_participants_summed_statistics(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path
) -> None:
    """The encrypted path sums what each participant computed: rebuilding the statistics
    from the same (seeded) samples in plaintext gives the same bias."""
    import math

    from participant.calibration import CalibrationConfig
    from participant.config import PrivacySettings
    from participant.evaluation import label_scores
    from participant.federation import Participant
    from privacy.label_bias import balanced_bias, class_statistics

    server = coordinator_factory()
    calibration = CalibrationConfig(rounds=1, steps_per_round=1, batch_size=4,
                                    label_bias="balanced", label_bias_sample_rate=0.5)
    configs = [
        _participant_config(pid, server.port, pki, tmp_path, tiny_llama_dir, shared_data,
                            vector_source="public", calibration=calibration,
                            privacy=PrivacySettings(target_epsilon=math.inf,
                                                    insecure_noise_seed=11))
        for pid in ("org1", "org2")
    ]
    reports = _run_all(configs)
    saved = torch.load(tmp_path / "org1" / "fed-test-sst2-calibrated.pt", weights_only=True)
    total = 0
    for config in configs:
        participant = Participant(config)
        try:
            keep = torch.rand(len(participant.records),
                              generator=config.privacy.noise_generator("label_bias")) < 0.5
            sampled = [e for e, k in zip(participant.records, keep.tolist(), strict=True) if k]
            logits = label_scores(participant.lm, participant.sites, participant.task,
                                  [e.text for e in sampled], vector=saved["vector"],
                                  coefficients=saved["coefficients"])
            total = total + class_statistics(torch.softmax(logits.double(), -1),
                                             torch.tensor([e.label for e in sampled]))
        finally:
            participant.close()
    expected = balanced_bias(total)
    assert reports["org1"].label_bias == pytest.approx(expected.tolist(), abs=1e-3)
