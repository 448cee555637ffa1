"""The model on a CUDA device: the same numbers as on the CPU, bfloat16, LoRA, a real federation.

Skipped where no CUDA device is present (CI); run on a GPU machine with
``pytest tests/gpu``. Everything released (vectors, coefficients, adapters) stays on the
CPU; only the frozen model and its inputs move.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.timeout(300),
]


def _setup(tiny_llama_dir: Path, shared_data: Path, *, device: str, dtype: str = "float32",
           n: int = 8):  # type: ignore[no-untyped-def]
    from tiny_checkpoint import load_tiny_sst2

    return load_tiny_sst2(tiny_llama_dir, shared_data, n=n, device=device, dtype=dtype)


def test_cuda_float32_gives_the_cpus_predictions_activations_and_gradients(
    tiny_llama_dir: Path, shared_data: Path
) -> None:
    from participant.calibration import CalibrationConfig, LocalCalibrator
    from participant.context_vectors import last_token_activations
    from participant.evaluation import predict

    results = {}
    for device in ("cpu", "cuda"):
        lm, sites, task, records = _setup(tiny_llama_dir, shared_data, device=device)
        assert lm.device.type == device
        texts = [task.demonstration(r.text, r.label) for r in records]
        activations = last_token_activations(lm, sites, texts, batch_size=3)
        vector = activations.mean(dim=0)
        config = CalibrationConfig(batch_size=4, calibration_noise=0.0)
        calibrator = LocalCalibrator(lm, sites, task, records, vector, config=config,
                                     noise_multiplier=0.0, seed=0)
        grads, loss = calibrator.per_example_gradients(list(range(len(records))))
        coefficients = calibrator.coefficients.detach() + 0.05
        results[device] = (activations, grads, loss, predict(
            lm, sites, task, [r.text for r in records], vector=vector, coefficients=coefficients))
        assert activations.device.type == grads.device.type == "cpu"  # released values
    (a_cpu, g_cpu, l_cpu, p_cpu), (a_gpu, g_gpu, l_gpu, p_gpu) = results["cpu"], results["cuda"]
    assert torch.allclose(a_cpu, a_gpu, atol=1e-3, rtol=1e-3)
    assert torch.allclose(g_cpu, g_gpu, atol=1e-3, rtol=1e-2)
    assert math.isclose(l_cpu, l_gpu, rel_tol=1e-3) and p_cpu == p_gpu


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_private_calibration_steps_on_cuda(tiny_llama_dir: Path, shared_data: Path,
                                           dtype: str) -> None:
    from participant.calibration import CalibrationConfig, LocalCalibrator
    from participant.evaluation import evaluate

    lm, sites, task, records = _setup(tiny_llama_dir, shared_data, device="cuda", dtype=dtype)
    vector = torch.randn(2, sites.num_layers, lm.model.config.hidden_size)
    config = CalibrationConfig(batch_size=4, steps_per_round=3, rounds=1)
    calibrator = LocalCalibrator(lm, sites, task, records, vector, config=config,
                                 noise_multiplier=1.0, seed=0)
    update = calibrator.run_round(calibrator.coefficients.detach().clone())
    assert update.device.type == "cpu" and bool(torch.isfinite(update).all())
    assert float(update.abs().max()) > 0
    scores = evaluate(lm, sites, task, records, vector=vector,
                      coefficients=calibrator.coefficients.detach())
    assert 0.0 <= scores.accuracy <= 1.0


def test_dp_lora_round_on_cuda(tiny_llama_dir: Path, shared_data: Path) -> None:
    from participant.lora import LocalLoraTrainer, LoraConfigSpec

    lm, _, task, records = _setup(tiny_llama_dir, shared_data, device="cuda", n=16)
    trainer = LocalLoraTrainer(lm, task, records, config=LoraConfigSpec(batch_size=4),
                               noise_multiplier=1.0, seed=0)
    update = trainer.run_round(trainer.flat_adapter())
    assert update.shape == (trainer.size,) and bool((update != 0).any())
    assert 0.0 <= trainer.evaluate(records).accuracy <= 1.0


def test_experiment_cell_on_cuda_runs_a_real_federation(
    tmp_path: Path, tiny_llama_dir: Path, shared_data: Path
) -> None:
    from fedctx.experiment import ExperimentConfig, Harness

    config = ExperimentConfig(
        name="tiny-cuda", tasks=("sst2",), data_root=str(shared_data),
        model=str(tiny_llama_dir), device="cuda", participants=(2,), epsilons=(4.0,),
        vector_sources=("private",), control_sources=(), seeds=(0,),
        demonstrations_per_class=2, records_per_participant=12, rounds=1, steps_per_round=2,
        batch_size=4, test_per_class=4, baselines=("zero_shot",),
        vector_denoise_modes=("none",),
    )
    rows = Harness(config, tmp_path / "out").run(progress=False)
    assert not (tmp_path / "out" / "failures.jsonl").exists()
    federated = next(r for r in rows if r["method"] == "fedctx")
    assert federated["device"] == "cuda" and 0 < federated["epsilon_spent"] <= 4.0 + 1e-6


def test_folded_injection_on_cuda_matches_the_hooks(tiny_llama_dir: Path,
                                                    shared_data: Path) -> None:
    # float32 only: in bfloat16 both paths round differently (docs/benchmarks.md measures
    # each against float32 on the real model); the CPU unit tests bound that case.
    from participant.evaluation import label_scores
    from participant.folding import fold_context

    lm, sites, task, records = _setup(tiny_llama_dir, shared_data, device="cuda")
    generator = torch.Generator().manual_seed(0)
    vector = torch.randn(2, sites.num_layers, sites.hidden_size, generator=generator)
    coefficients = torch.rand(sites.num_layers, 4, generator=generator) + 0.5
    texts = [r.text for r in records]
    hooked = label_scores(lm, sites, task, texts, vector=vector, coefficients=coefficients)
    fold_context(lm.model, sites, vector=vector, coefficients=coefficients)
    folded = label_scores(lm, sites, task, texts)
    assert float((folded - hooked).norm() / hooked.norm()) < 1e-4
