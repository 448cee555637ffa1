"""Distributed DP over real gRPC peers: masked rounds sum right, hide each contribution,
and carry each participant's share of the noise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.e2e.test_loopback_federation import _participant_config, _run_all

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

IDS = ("org1", "org2", "org3")
RECORDS = 16


def _configs(server, pki, tmp_path, tiny_llama_dir, shared_data, *, max_colluders=1,  # type: ignore[no-untyped-def]
             vector_source="public", **privacy_extra):
    from participant.calibration import CalibrationConfig
    from participant.config import PrivacySettings

    calibration = CalibrationConfig(rounds=2, steps_per_round=1, batch_size=4,
                                    optimizer="global_adam", label_bias="balanced")
    privacy = PrivacySettings(target_epsilon=4.0, max_colluders=max_colluders,
                              **privacy_extra)
    weighting = {"vector_weighting": "records"} if vector_source == "private" else {}
    return [_participant_config(pid, server.port, pki, tmp_path, tiny_llama_dir, shared_data,
                                vector_source=vector_source, calibration=calibration,
                                privacy=privacy, max_calibration_records=RECORDS,
                                num_partitions=3, **weighting) for pid in IDS]


def _record_means(monkeypatch: pytest.MonkeyPatch, update) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """Replace every calibration round's update by ``update(calibrator)`` (a float) and
    return the list that collects each decrypted mean the global optimiser is given."""
    from participant.calibration import GlobalCoefficients, LocalCalibrator

    means: list[torch.Tensor] = []
    real_apply = GlobalCoefficients.apply

    def known_update(self, coefficients):  # type: ignore[no-untyped-def]
        return torch.full_like(coefficients, update(self))

    def recorded_apply(self, mean_update):  # type: ignore[no-untyped-def]
        means.append(mean_update.clone())
        return real_apply(self, mean_update)

    monkeypatch.setattr(LocalCalibrator, "run_round", known_update)
    monkeypatch.setattr(GlobalCoefficients, "apply", recorded_apply)
    return means


@pytest.mark.parametrize("limbs", [1, 2])
def test_masked_rounds_give_the_mean_and_no_single_contribution_reads(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path,
    monkeypatch: pytest.MonkeyPatch, limbs: int,
) -> None:
    """Known updates (a participant's positive labels / 1000, different per participant):
    every participant's decrypted, unmasked mean is their mean to the fixed point's step,
    while a colluder holding the CKKS key and one stored contribution reads uniform
    residues, not the participant's update."""
    import participant.federation as federation
    from privacy import ckks, payload

    if limbs > 1:  # what a larger federation's noise shares would make it take
        real_limbs = federation.fixed_point_limbs
        monkeypatch.setattr(federation, "fixed_point_limbs",
                            lambda *a, **k: (limbs, real_limbs(*a, **k)[1]))
    updates: list[float] = []

    def known_update(calibrator) -> float:  # type: ignore[no-untyped-def]
        updates.append(float(calibrator.queries.labels.sum()) / 1000)
        return updates[-1]

    means = _record_means(monkeypatch, known_update)
    server = coordinator_factory(roster=IDS)
    reports = _run_all(_configs(server, pki, tmp_path, tiny_llama_dir, shared_data))

    assert len(means) == 3 * 2 and max(updates) - min(updates) >= 1e-3
    expected = sum(updates) / len(updates)  # the same updates in both rounds
    for mean in means:
        # to a few fixed-point steps (about 1e-4 here with one limb, 1e-9 with two), far
        # below the spread of updates
        torch.testing.assert_close(mean, torch.full_like(mean, expected),
                                   atol=5e-4 if limbs == 1 else 1e-7, rtol=0)
    for pid, report in reports.items():
        assert report.max_colluders == 1, pid
        assert report.noise_share == pytest.approx(report.noise_multiplier / math.sqrt(2))
        assert report.epsilon_spent <= 4.0 + 1e-6, pid
        assert report.epsilon_if_more_collude > 1.5 * report.epsilon_spent  # sqrt(2) less noise
        assert report.masked_values_clamped == 0 and report.calibration_sums_capped == 0
        assert 0 < report.delta_discretization < 1e-12  # what the fixed point adds to delta
        assert all(r["contributions"] == 3 for r in report.rounds)
    ledger = next((tmp_path / "org2" / "ledger").glob("*.jsonl")).read_text()
    assert ledger.count("this one added 1/sqrt(2) of it") == 2 + 1  # 2 rounds, label bias
    # every participant holds the record cap, so each adds the base share and spends the target
    assert reports["org1"].epsilon_spent == pytest.approx(4.0, abs=0.05)
    assert len({r.noise_multiplier for r in reports.values()}) == 1

    secret = ckks.load_secret_context((tmp_path / "org1" / "keys" / "fed-test.ckks").read_bytes())
    store = server.aggregator.store
    (digest,) = [d for p, d in store.contributions("calib-public-1") if p == "org2"]
    length = server.aggregator.aggregate("org1", "calib-public-1").vector_length
    assert length == limbs * (4 * 2 + 1)  # 2 layers' coefficients and the weight, per digit
    alone = ckks.decrypt_vector(secret, payload.unframe(store.get_blob(digest)), length=length)
    # digits uniform in [0, 2^b), b >= 12, not an update below 0.02 (a digit below 1: 2^-11)
    assert np.mean(alone > 1.0) > 0.9 and alone.min() > -0.05
    assert np.all(np.abs(alone - np.rint(alone)) < 0.05)


@pytest.mark.parametrize("vector_denoise", ["none", "james_stein"])
def test_a_private_vector_under_distributed_dp_is_the_record_weighted_mean(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path,
    monkeypatch: pytest.MonkeyPatch, vector_denoise: str,
) -> None:
    """The private vector's masked round: every participant's vector is the federation's
    noisy whitened sums over its record count (to the fixed point's step), each sum
    carrying this participant's noise *share* (1 / sqrt(n - t) of the budget's), and the
    release is in the ledger under the shared noise multiplier."""
    import participant.federation as federation
    from privacy.masking import fixed_point_scale

    sums: list[torch.Tensor] = []
    counts: list[int] = []
    real_sum = federation.private_whitened_sum

    multipliers: list[float] = []

    def recorded_sum(activations, reference, **kwargs):  # type: ignore[no-untyped-def]
        sums.append(real_sum(activations, reference, **kwargs))
        counts.append(activations.shape[0])
        multipliers.append(kwargs["noise_multiplier"])
        return sums[-1]

    vectors: dict[str, tuple[torch.Tensor, object, float]] = {}
    real_vector = federation.Participant._private_vector

    def recorded_vector(self, reference, demos, **kwargs):  # type: ignore[no-untyped-def]
        vector = real_vector(self, reference, demos, **kwargs)
        step = 1 / fixed_point_scale(bound=self._vector_bound, participants=len(IDS),
                                     bits=self.masked_sum.bits * self.masked_sum.limbs)
        vectors[self.config.participant_id] = (vector, reference, step)
        return vector

    monkeypatch.setattr(federation, "private_whitened_sum", recorded_sum)
    monkeypatch.setattr(federation.Participant, "_private_vector", recorded_vector)
    server = coordinator_factory(roster=IDS)
    reports = _run_all(_configs(server, pki, tmp_path, tiny_llama_dir, shared_data,
                                vector_source="private", vector_denoise=vector_denoise))

    assert len(sums) == 3 and set(vectors) == set(IDS)
    expected_whitened = (sum(sums) / sum(counts)).numpy()  # every weight is 1 here
    for pid, (vector, reference, step) in vectors.items():
        scales = reference.block_scales.double().numpy()[:, None]
        got = ((vector.double() - reference.vector.double()).reshape(scales.shape[0], -1)
               / scales).numpy()
        clip = math.sqrt(scales.shape[0])  # the default whitened clip
        if vector_denoise == "none":
            # three participants' rounding, a step each, over the record count
            np.testing.assert_allclose(got, expected_whitened,
                                       atol=3 * step * clip / sum(counts) + 1e-6, rtol=0)
        else:  # shrunk towards the reference, block by block, by a factor in [0, 1]
            assert np.linalg.norm(got) <= np.linalg.norm(expected_whitened) * 1.001
            report = reports[pid]
            assert report.vector_shrinkage is not None
            assert 0 <= report.vector_shrinkage["min"] <= report.vector_shrinkage["max"] <= 1
    for pid, report in reports.items():
        assert report.rounds[0]["round"] == "vector-weighted"
        assert report.rounds[0]["contributions"] == 3
        assert report.noise_share == pytest.approx(report.noise_multiplier / math.sqrt(2))
        assert report.epsilon_spent <= 4.0 + 1e-6, pid
        assert report.masked_values_clamped == 0
    # each sum carried a share of the noise, not the whole budget's
    assert multipliers == pytest.approx([reports["org1"].noise_share] * 3)
    ledger = next((tmp_path / "org2" / "ledger").glob("*.jsonl")).read_text()
    assert ledger.count("this one added 1/sqrt(2) of it") == 1 + 2 + 1  # vector, rounds, bias
    entries = [json.loads(line) for line in ledger.splitlines() if line.strip()]
    (vector_entry,) = [e for e in entries
                       if e["event"] == "reserve" and e["release_id"] == "fed-test/vector"]
    assert vector_entry["noise_multiplier"] == pytest.approx(reports["org2"].noise_multiplier)
    assert vector_entry["sample_rate"] == 1.0 and vector_entry["steps"] == 1


def test_a_masked_federation_refuses_a_coordinator_that_closes_rounds_early(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path,
) -> None:
    from participant.errors import ProtocolError

    server = coordinator_factory(roster=IDS, quorum=2)
    with pytest.raises(ProtocolError, match="quorum of 2 of 3"):
        _run_all(_configs(server, pki, tmp_path, tiny_llama_dir, shared_data))


def test_max_colluders_must_leave_an_honest_participant(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path,
) -> None:
    from participant.errors import ProtocolError

    server = coordinator_factory(roster=IDS)
    with pytest.raises(ProtocolError, match="leave no honest participant"):
        _run_all(_configs(server, pki, tmp_path, tiny_llama_dir, shared_data, max_colluders=3))


def test_a_participant_with_another_collusion_bound_is_refused_before_any_release(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path,
) -> None:
    """The bound, the records floor and the budget fix the common noise and the masks'
    meaning: they are in the protocol plan, so a participant that differs stops at join."""
    import dataclasses
    import threading

    from participant.errors import ProtocolError
    from participant.federation import Participant

    server = coordinator_factory()  # org1 and org2
    first, second, _ = _configs(server, pki, tmp_path, tiny_llama_dir, shared_data)
    second = dataclasses.replace(second, privacy=dataclasses.replace(
        second.privacy, max_colluders=0))
    holder, other = Participant(first), Participant(second)
    try:
        joined = []
        keyholder = threading.Thread(target=lambda: joined.append(
            holder.join(holder.client.federation(), protocol_plan=holder.protocol_plan())))
        keyholder.start()
        with pytest.raises(ProtocolError, match="distributed_dp: .*'max_colluders': 0"):
            other.join(other.client.federation(), protocol_plan=other.protocol_plan())
        keyholder.join(timeout=60)
        assert not list((tmp_path / "org2").glob("ledger/*.jsonl"))  # nothing released
    finally:
        holder.close()
        other.close()


def test_a_participant_with_few_records_is_weighed_down_not_everyone_noised_up(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """org3 holds 6 records (Poisson rate 4/6 against 4/16): its budget needs more noise.
    It adds that noise over sqrt(h) and weighs its update by floor / own < 1, so the
    decrypted mean is the weighted mean of the known updates, its ledger holds its own
    need, and the others' shares stay at the floor's."""
    import dataclasses

    lines = (shared_data / "sst2" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    small = tmp_path / "org3-records.jsonl"
    small.write_text("\n".join(lines[:6]) + "\n", encoding="utf-8")
    means = _record_means(monkeypatch, lambda calibrator: len(calibrator.queries.texts) / 100)
    server = coordinator_factory(roster=IDS)
    configs = _configs(server, pki, tmp_path, tiny_llama_dir, shared_data)
    configs[2] = dataclasses.replace(configs[2], data_file=str(small))
    reports = _run_all(configs)

    big, few = reports["org1"], reports["org3"]
    assert few.records == 6 and big.records == RECORDS
    assert big.update_weight == 1.0 and reports["org2"].update_weight == 1.0
    assert 0 < few.update_weight < 1
    assert few.noise_multiplier > big.noise_multiplier  # its own, larger need
    assert few.noise_share * few.update_weight == pytest.approx(big.noise_share)
    assert few.epsilon_spent == pytest.approx(4.0, abs=0.05)
    expected = (2 * RECORDS / 100 + few.update_weight * 6 / 100) / (2 + few.update_weight)
    assert abs(expected - (2 * RECORDS + 6) / 300) > 3e-3  # not the plain mean
    for mean in means:
        torch.testing.assert_close(mean, torch.full_like(mean, expected), atol=5e-4, rtol=0)


def test_a_participant_that_drops_out_is_recovered_from_the_survivors_shares(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """max_dropouts = 1: org3 stops before its second calibration round. That round closes
    at its deadline with org1 and org2, who reveal their shares of each other's self-mask
    and of org3's mask key and unmask exactly their own mean; the third round closes as
    soon as both are in (org3 is out of the mask set), and the noise was sized for the
    one honest participant left (n - t - d = 1)."""
    import dataclasses

    from participant.federation import Participant

    drop_round = "calib-public-2"
    inputs: dict[tuple[str, str], np.ndarray] = {}
    outputs: dict[tuple[str, str], tuple[np.ndarray, int]] = {}
    real_secure_mean = Participant.secure_mean

    def secure_mean(self, round_id, values, **kwargs):  # type: ignore[no-untyped-def]
        pid = self.config.participant_id
        if pid == "org3" and round_id == drop_round:
            raise RuntimeError("org3 drops out")
        inputs[(pid, round_id)] = values.copy()
        outputs[(pid, round_id)] = real_secure_mean(self, round_id, values, **kwargs)
        return outputs[(pid, round_id)]

    monkeypatch.setattr(Participant, "secure_mean", secure_mean)
    _record_means(monkeypatch, lambda calibrator: float(calibrator.queries.labels.sum()) / 1000)
    server = coordinator_factory(roster=IDS, quorum=2, round_timeout_s=20.0)
    configs = [dataclasses.replace(
        c, privacy=dataclasses.replace(c.privacy, max_dropouts=1),
        calibration=dataclasses.replace(c.calibration, rounds=3, label_bias="none"))
        for c in _configs(server, pki, tmp_path, tiny_llama_dir, shared_data)]
    errors: list[tuple[str, BaseException]] = []
    reports = _run_all(configs, failures=errors)
    assert [(pid, str(exc)) for pid, exc in errors] == [("org3", "org3 drops out")]
    assert set(reports) == {"org1", "org2"}

    for r, contributors in ((1, IDS), (2, IDS[:2]), (3, IDS[:2])):
        round_id = f"calib-public-{r}"
        expected = sum(inputs[(p, round_id)] for p in contributors) / len(contributors)
        for pid in IDS[:2]:
            mean, count = outputs[(pid, round_id)]
            assert count == len(contributors)
            np.testing.assert_allclose(mean, expected, atol=5e-4, rtol=0)
    rows = {r.round_id: r for r in server.aggregator.store.list_rounds()}
    # round 2 waited for its deadline; round 3 closed with both survivors, without waiting
    assert rows["calib-public-2"].closed_at - rows["calib-public-2"].opened_at >= 19.0
    assert rows["calib-public-3"].closed_at - rows["calib-public-3"].opened_at < 15.0
    for pid, report in reports.items():
        assert report.max_dropouts == 1 and report.dropped_participants == ["org3"], pid
        # one honest participant left (3 - 1 colluder - 1 dropout): each share is whole
        assert report.noise_share == pytest.approx(report.noise_multiplier)
        assert report.epsilon_spent <= 4.0 + 1e-6
        assert [r["contributions"] for r in report.rounds] == [3, 2, 2]
    # org3's mask key is public now; it may not contribute again
    from coordinator.errors import NotAllowedError

    header = dataclasses.replace(_stored_header(server, "calib-public-3"),
                                 round_id="calib-public-4")
    with pytest.raises(NotAllowedError, match="may not contribute again"):
        server.aggregator.check_header("org3", header)
    # a restarted participant re-sends the deposit it kept: the same shares, accepted
    from ceremony import client_for

    from proto.fedctx.v1 import fedctx_pb2 as pb

    kept = (tmp_path / "org1" / "keys" / "fed-test.mask-deposit").read_bytes()
    with client_for(pki, "org1", server.port) as org1:
        org1.deposit_mask_shares(pb.DepositMaskSharesRequest.FromString(kept))


def _stored_header(server, round_id):  # type: ignore[no-untyped-def]
    """A header a participant of ``round_id`` could send (for the coordinator's checks)."""
    from coordinator.aggregator import Header

    row = server.aggregator.store.get_round(round_id)
    return Header(
        federation_id="fed-test", round_id=round_id,
        model_fingerprint=server.aggregator.pinned("model_fingerprint"),
        layer_map_fingerprint=server.aggregator.pinned("layer_map_fingerprint"),
        ckks_context_fingerprint=server.aggregator.store.get_meta("ckks_context_fingerprint"),
        vector_length=row.vector_length, num_ciphertexts=row.num_ciphertexts,
        payload_bytes=100, payload_sha256=bytes(32), kind=row.kind)


def test_a_participant_that_drops_out_of_the_private_vector_round_is_recovered(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The private vector's round is masked with its own round key: org3 stops there, and
    org1 and org2 unmask exactly the sum of their two releases (weighted sums and counts),
    then calibrate without it."""
    import dataclasses

    from participant.federation import Participant

    inputs: dict[str, np.ndarray] = {}
    outputs: dict[str, tuple[np.ndarray, int]] = {}
    real_secure_mean = Participant.secure_mean

    def secure_mean(self, round_id, values, **kwargs):  # type: ignore[no-untyped-def]
        pid = self.config.participant_id
        if round_id == "vector-weighted":
            if pid == "org3":
                raise RuntimeError("org3 drops out")
            inputs[pid] = values.copy()
            outputs[pid] = real_secure_mean(self, round_id, values, **kwargs)
            return outputs[pid]
        return real_secure_mean(self, round_id, values, **kwargs)

    monkeypatch.setattr(Participant, "secure_mean", secure_mean)
    server = coordinator_factory(roster=IDS, quorum=2, round_timeout_s=20.0)
    configs = [dataclasses.replace(
        c, privacy=dataclasses.replace(c.privacy, max_dropouts=1, vector_denoise="none"),
        calibration=dataclasses.replace(c.calibration, rounds=1, label_bias="none"))
        for c in _configs(server, pki, tmp_path, tiny_llama_dir, shared_data,
                          vector_source="private")]
    errors: list[tuple[str, BaseException]] = []
    reports = _run_all(configs, failures=errors)
    assert [(pid, str(exc)) for pid, exc in errors] == [("org3", "org3 drops out")]

    expected = (inputs["org1"] + inputs["org2"]) / 2
    assert np.abs(expected[:-1]).max() > 0.05  # releases well above the tolerance
    for pid in ("org1", "org2"):
        mean, count = outputs[pid]
        assert count == 2
        np.testing.assert_allclose(mean, expected, atol=5e-3, rtol=0)
        report = reports[pid]
        assert report.dropped_participants == ["org3"]
        assert [r["contributions"] for r in report.rounds] == [2, 2]
