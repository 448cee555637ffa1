"""DP-FedAvg-LoRA baseline on the tiny Llama: DP-SGD mechanics, a real federation, the harness."""

from __future__ import annotations

import json
import math
import threading
import warnings
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def _records(shared_data: Path, n: int):  # type: ignore[no-untyped-def]
    from participant.data import load_split
    from participant.tasks import load_task

    task = load_task("sst2")
    return task, load_split(task, "train", data_dir=str(shared_data / "sst2"))[:n]


def _trainer(tiny_llama_dir: Path, shared_data: Path, **kwargs):  # type: ignore[no-untyped-def]
    from participant.lora import LocalLoraTrainer, LoraConfigSpec
    from participant.model import load_model

    task, records = _records(shared_data, 32)
    noise = kwargs.pop("noise_multiplier")
    config = LoraConfigSpec(batch_size=8, **kwargs)
    return LocalLoraTrainer(load_model(str(tiny_llama_dir)), task, records, config=config,
                            noise_multiplier=noise, seed=0)


def test_per_record_clipping_bounds_each_contribution_and_noise_has_stated_std(
    tiny_llama_dir: Path, shared_data: Path
) -> None:
    clip, sigma = 0.05, 2.0
    trainer = _trainer(tiny_llama_dir, shared_data, max_grad_norm=clip, noise_multiplier=sigma)
    # Adapters only: LoRA A/B of q_proj and v_proj in both layers, nothing else trainable.
    assert len(trainer.names) == 8 and all(".lora_" in n for n in trainer.names)
    assert sum(p.numel() for p in trainer.lm.model.parameters() if p.requires_grad) == trainer.size

    indices = [0, 1, 2, 3, 4]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads, _ = trainer.per_sample_gradients(indices)  # Opacus GradSampleModule hooks
        looped, _ = trainer.per_sample_gradients(indices, method="loop")  # one backward each
    # The first adapter's inputs require grad, so no "full backward hook" warning fires.
    assert not [w for w in caught if "backward hook" in str(w.message)]
    embeddings = trainer.lm.model.get_input_embeddings()
    assert not embeddings._forward_hooks  # the require-grad hook is removed again
    for a, b in zip(grads, looped, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    flat = torch.cat([g.reshape(len(indices), -1) for g in grads], dim=1)
    norms = flat.norm(dim=1)
    assert (norms > 2 * clip).all()  # every record really gets clipped at this bound

    optimizer = trainer.optimizer

    def clipped_sum(rows: list[int]) -> torch.Tensor:
        optimizer.zero_grad()
        for p, g in zip(trainer.params, grads, strict=True):
            p.grad_sample = g[rows]
        optimizer.clip_and_accumulate()  # type: ignore[attr-defined]
        total = torch.cat([p.summed_grad.reshape(-1) for p in trainer.params]).clone()
        optimizer.zero_grad()
        return total

    everyone = clipped_sum(list(range(len(indices))))
    expected = (flat * (clip / (norms + 1e-6)).clamp(max=1.0)[:, None]).sum(0)
    assert torch.allclose(everyone, expected, atol=1e-6)
    for j in range(len(indices)):  # remove one record: the sum moves by at most the clip
        rest = clipped_sum([i for i in range(len(indices)) if i != j])
        assert float((everyone - rest).norm()) <= clip * (1 + 1e-4)

    # An empty Poisson batch releases pure noise: std sigma * clip / expected batch size.
    expected_batch = 8  # batch_size 8 of 32 records: rate 1/4
    samples = torch.cat([trainer.private_gradient([]) for _ in range(3)])
    target = sigma * clip / expected_batch
    assert abs(float(samples.std()) / target - 1) < 0.05, (float(samples.std()), target)
    assert abs(float(samples.mean())) < 4 * target / math.sqrt(samples.numel())

    # A non-empty batch: noise of the same std around the clipped sum / expected batch size.
    noisy = torch.stack([trainer.private_gradient(indices) for _ in range(2)])
    residual = noisy - expected / expected_batch
    assert abs(float(residual.std()) / target - 1) < 0.1


def test_non_private_trainer_updates_only_the_adapter(
    tiny_llama_dir: Path, shared_data: Path
) -> None:
    trainer = _trainer(tiny_llama_dir, shared_data, noise_multiplier=0.0, learning_rate=1e-2,
                       steps_per_round=2)
    frozen = {n: p.detach().clone() for n, p in trainer.lm.model.named_parameters()
              if not p.requires_grad}
    start = trainer.flat_adapter()
    assert not trainer.private and start.dtype.name == "float64" and start.size == trainer.size
    update = trainer.run_round(start)
    assert update.shape == start.shape and abs(update).max() > 0
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.lm.model.named_parameters()
               if n in frozen)
    trainer.load_flat_adapter(start)
    assert (trainer.flat_adapter() == start).all()
    _, records = _records(shared_data, 8)
    assert 0.0 <= trainer.evaluate(records).accuracy <= 1.0


def test_two_participant_dp_lora_federation_over_mtls_with_small_chunks(
    coordinator_factory, pki, tmp_path: Path, tiny_llama_dir: Path, shared_data: Path
) -> None:
    from participant.config import ParticipantConfig, PrivacySettings
    from participant.lora import LoraConfigSpec
    from participant.lora_federation import run_lora_participant

    server = coordinator_factory(chunk_bytes=4096)
    lora = LoraConfigSpec(rounds=2, steps_per_round=2, batch_size=4, learning_rate=1e-2)
    reports, errors = {}, []

    def run(pid: str) -> None:
        cert, key = pki.participants[pid]
        config = ParticipantConfig(
            participant_id=pid, coordinator=f"127.0.0.1:{server.port}", tls_cert=cert,
            tls_key=key, tls_ca=pki.ca_cert, state_dir=tmp_path / pid, federation_id="fed-test",
            task="sst2", model=str(tiny_llama_dir), data_dir=str(shared_data / "sst2"),
            partition_index=int(pid[-1]) - 1, num_partitions=2, max_calibration_records=32,
            evaluate=pid == "org1", test_per_class=8, batch_size=8,
            privacy=PrivacySettings(target_epsilon=4.0, delta=1e-5),
        )
        try:
            reports[pid] = run_lora_participant(config, lora)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(pid,)) for pid in ("org1", "org2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    if errors:
        raise errors[0]

    assert server.config.chunk_bytes == 4096
    for pid, report in reports.items():
        assert [r["round"] for r in report.rounds] == ["lora-1", "lora-2"]
        assert all(r["contributions"] == 2 for r in report.rounds)
        assert 0 < report.epsilon_spent <= 4.0 + 1e-6, pid
        assert report.noise_multiplier > 0
        # One CKKS ciphertext of tens of KiB per update, streamed in 4 KiB chunks (the
        # coordinator rejects any chunk larger than its chunk_bytes).
        assert all(r["bytes_sent"] > 3 * 4096 for r in report.rounds)
        assert all(r["client_seconds"] > 0 for r in report.rounds)
        ledger = [json.loads(line) for line in
                  next((tmp_path / pid / "ledger").glob("*.jsonl")).read_text().splitlines()]
        reserved = [e for e in ledger if e["event"] == "reserve"]
        assert [e["release_id"] for e in reserved] == ["fed-test/lora-1", "fed-test/lora-2"]
        assert all(e["noise_multiplier"] == report.noise_multiplier and e["steps"] == 2
                   and e["sample_rate"] == pytest.approx(4 / 32) for e in reserved)
        assert [e["release_id"] for e in ledger if e["event"] == "commit"] == \
            ["fed-test/lora-1", "fed-test/lora-2"]
    assert set(reports["org1"].scores) == {"lora"} and reports["org2"].scores == {}

    # Both participants decrypted the same sums: they hold the same global adapter.
    saved = [torch.load(tmp_path / pid / "fed-test-sst2-lora.pt", weights_only=True)
             for pid in ("org1", "org2")]
    assert saved[0]["names"] == saved[1]["names"]
    assert torch.allclose(saved[0]["adapter"], saved[1]["adapter"], atol=1e-7)
    assert saved[0]["adapter"].numel() == reports["org1"].adapter_values
    initial = _trainer(tiny_llama_dir, shared_data, noise_multiplier=0.0).flat_adapter()
    moved = saved[0]["adapter"].numpy() - initial  # same public init seed everywhere
    assert abs(moved).max() > 0


def test_harness_runs_dp_fedavg_lora_per_epsilon_without_touching_other_keys(
    tmp_path: Path, tiny_llama_dir: Path, shared_data: Path
) -> None:
    import dataclasses

    from fedctx.experiment import ExperimentConfig, Harness, plan_runs

    config = ExperimentConfig(
        name="tiny-lora", tasks=("sst2",), data_root=str(shared_data), model=str(tiny_llama_dir),
        participants=(2,), dirichlet_alpha=(0.5,), epsilons=(4.0,), vector_sources=(),
        control_sources=(), seeds=(0,), records_per_participant=12, test_per_class=4,
        baselines=("dp_fedavg_lora",), lora_rounds=1, lora_steps_per_round=2, lora_batch_size=4,
    )
    (spec,) = plan_runs(config)
    assert (spec.method, spec.epsilon, spec.vector_source) == ("dp_fedavg_lora", 4.0, "")

    # Adding the method adds only its own runs, one per epsilon; other keys are unchanged.
    base = ExperimentConfig(name="x", tasks=("sst2",), epsilons=(math.inf, 8.0))
    with_lora = dataclasses.replace(base, baselines=(*base.baselines, "dp_fedavg_lora"))
    old = [r.key() for r in plan_runs(base)]
    new = plan_runs(with_lora)
    assert [r.key() for r in new if r.method != "dp_fedavg_lora"] == old
    assert sorted(r.epsilon for r in new if r.method == "dp_fedavg_lora") == [8.0, math.inf]

    (row,) = Harness(config, tmp_path / "out").run(progress=False)
    for column in ("accuracy", "macro_f1", "n_test", "epsilon_spent",
                   "bytes_sent_per_participant", "bytes_per_round", "client_seconds_per_round"):
        assert column in row, column
    assert row["method"] == "dp_fedavg_lora" and row["n_test"] == 8
    assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["macro_f1"] <= 1.0
    assert 0 < row["epsilon_spent"] <= 4.0 + 1e-6
    assert row["bytes_per_round"] > 0 and row["bytes_sent_per_participant"] > row["bytes_per_round"]
    assert row["client_seconds_per_round"] > 0
