"""The experiment harness on a tiny model: every method runs, rows are complete, resume works."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_grid_runs_resumes_and_reports(tmp_path: Path, tiny_llama_dir: Path,
                                       shared_data: Path) -> None:
    from fedctx.experiment import ExperimentConfig, Harness, plan_runs
    from fedctx.report import markdown

    config = ExperimentConfig(
        name="tiny", tasks=("sst2",), data_root=str(shared_data), model=str(tiny_llama_dir),
        participants=(2,), dirichlet_alpha=(0.5,), epsilons=(math.inf, 4.0),
        vector_sources=("private",), control_sources=("zero",), seeds=(0,),
        demonstrations_per_class=2, records_per_participant=12, rounds=1, steps_per_round=2,
        batch_size=4, test_per_class=4, local_only_participants=2,
        vector_denoise_modes=("none", "james_stein"),
    )
    harness = Harness(config, tmp_path / "out")
    rows = harness.run(progress=False)
    assert len(rows) == len(plan_runs(config)) == 4 + 4
    methods = {(r["method"], r["vector_source"], r["epsilon"]) for r in rows}
    assert ("fedctx", "private", 4.0) in methods and ("fedctx", "zero", math.inf) in methods
    private = next(r for r in rows if r["method"] == "fedctx" and r["epsilon"] == 4.0
                   and "vector_shrinkage" not in r)
    denoised = next(r for r in rows if r.get("vector_denoise") == "james_stein")
    assert denoised["epsilon"] == 4.0 and denoised["epsilon_spent"] <= 4.0 + 1e-6
    assert 0 <= denoised["vector_shrinkage"]["min"] <= denoised["vector_shrinkage"]["max"] <= 1
    assert 0 < private["epsilon_spent"] <= 4.0 + 1e-6
    low, high = private["noise_multiplier_range"]
    assert 0 < low <= private["noise_multiplier"] <= high
    assert private["bytes_sent_per_participant"] > 0
    # vector round + 1 calibration round, with per-round upload and compute figures
    assert private["rounds_released"] == 2 and private["client_seconds_per_round"] > 0
    assert 0 < private["bytes_per_round"] < private["bytes_sent_per_participant"]
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["n_test"] == 8

    before = (tmp_path / "out" / "results.jsonl").read_text()
    again = Harness(config, tmp_path / "out").run(progress=False)  # resume: nothing to do
    assert len(again) == len(rows)
    assert (tmp_path / "out" / "results.jsonl").read_text() == before

    # A cell killed mid-run: its row is gone but its state (ledgers with the budget spent)
    # is still on disk. Resuming re-runs it from nothing instead of inheriting the spend.
    results = tmp_path / "out" / "results.jsonl"
    results.write_text("".join(line + "\n" for line in before.splitlines()
                               if json.loads(line)["run_key"] != private["run_key"]))
    assert (tmp_path / "out" / "runs" / private["run_key"]).is_dir()
    rerun = Harness(config, tmp_path / "out").run(progress=False)
    assert not (tmp_path / "out" / "failures.jsonl").exists()
    redone = next(r for r in rerun if r["run_key"] == private["run_key"])
    assert 0 < redone["epsilon_spent"] <= 4.0 + 1e-6

    # Another setting (not in any run key) would mix two experiments in one folder:
    # refused before anything runs; another grid axis is just more cells.
    from dataclasses import replace

    from privacy.errors import ConfigError

    with pytest.raises(ConfigError, match=r"test_per_class: 4 there, 5 here"):
        Harness(replace(config, test_per_class=5), tmp_path / "out").run(progress=False)
    wider = Harness(replace(config, seeds=(0, 1), device="cpu:0", name="renamed"),
                    tmp_path / "out")
    assert len(wider.pending()) == len(plan_runs(config))  # seed 1's cells
    assert (tmp_path / "out" / "results.jsonl").read_text().count("\n") == len(rerun)

    table = markdown([json.loads(line) for line in before.splitlines()])
    assert "fedctx private (eps=4)" in table and "zero_shot" in table
    assert "fedctx private (eps=4, James-Stein)" in table


def test_validation_split_is_held_out_of_the_training_records(
    tmp_path: Path, tiny_llama_dir: Path, shared_data: Path
) -> None:
    """``evaluation_split = "validation"`` scores every method on records held out of the
    train split (never the test split), disjoint from every participant's records."""
    from fedctx.experiment import ExperimentConfig, Harness, plan_runs
    from participant.data import load_split
    from participant.tasks import load_task

    config = ExperimentConfig(
        name="tiny-val", tasks=("sst2",), data_root=str(shared_data), model=str(tiny_llama_dir),
        evaluation_split="validation", participants=(2,), dirichlet_alpha=(0.5,),
        epsilons=(math.inf,), vector_sources=("public",), control_sources=(), seeds=(0,),
        demonstrations_per_class=2, records_per_participant=12, rounds=1, steps_per_round=1,
        batch_size=4, test_per_class=3, baselines=("zero_shot",),
    )
    harness = Harness(config, tmp_path / "out")
    spec = plan_runs(config)[0]
    _, parts, held_out, _ = harness.splits(spec)
    test_texts = {e.text for e in load_split(load_task("sst2"), "test",
                                             data_dir=str(shared_data / "sst2"))}
    held_texts = {e.text for e in held_out}
    assert len(held_out) == 6 and sorted(e.label for e in held_out) == [0, 0, 0, 1, 1, 1]
    assert not held_texts & test_texts
    assert not held_texts & {e.text for part in parts for e in part}
    rows = harness.run(progress=False)
    assert len(rows) == 2 and not (tmp_path / "out" / "failures.jsonl").exists()
    for row in rows:  # the federated participant scored the same held-out file
        assert row["evaluation_split"] == "validation" and row["n_test"] == 6
        assert row["device"] == "cpu"
    from privacy.errors import ConfigError

    (tmp_path / "bad.toml").write_text('[experiment]\nname = "x"\nevaluation_split = "dev"\n')
    with pytest.raises(ConfigError, match="evaluation_split"):
        ExperimentConfig.from_toml(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="evaluation_split"):
        ExperimentConfig(name="x", evaluation_split="dev")


def test_a_failing_participant_fails_the_cell_fast_with_its_own_error(
        tmp_path: Path, tiny_llama_dir: Path, shared_data: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One participant dying mid-protocol (here: in its first calibration round) used to
    leave the others polling for its contribution until the round timeout (an hour); now
    the coordinator stops, the others fail within seconds, and the cause is recorded."""
    import threading
    import time

    from fedctx.experiment import ExperimentConfig, Harness
    from participant.calibration import LocalCalibrator

    real_run_round, lock, calls = LocalCalibrator.run_round, threading.Lock(), []

    def first_call_dies(self, coefficients):  # type: ignore[no-untyped-def]
        with lock:
            calls.append(1)
            first = len(calls) == 1
        if first:
            raise MemoryError("simulated: participant ran out of memory")
        return real_run_round(self, coefficients)

    monkeypatch.setattr(LocalCalibrator, "run_round", first_call_dies)
    config = ExperimentConfig(
        name="fail", tasks=("sst2",), data_root=str(shared_data), model=str(tiny_llama_dir),
        participants=(3,), dirichlet_alpha=(0.0,), epsilons=(math.inf,),
        vector_sources=("public",), control_sources=(), seeds=(0,), baselines=(),
        records_per_participant=8, rounds=2, steps_per_round=1, batch_size=4,
        test_per_class=2,
    )
    started = time.monotonic()
    rows = Harness(config, tmp_path / "out").run(progress=False)
    assert rows == []
    failure = json.loads((tmp_path / "out" / "failures.jsonl").read_text().splitlines()[0])
    assert "simulated: participant ran out of memory" in failure["error"]
    assert time.monotonic() - started < 240  # the round timeout is 3600 s


def test_an_adaptive_clip_cell_runs_within_budget_and_records_its_clips(
        tmp_path: Path, tiny_llama_dir: Path, shared_data: Path) -> None:
    """A fedctx cell with an adaptive calibration clip runs through the real federation,
    spends no more than its epsilon (the count's noise is paid inside sigma), and records
    the participants' clips after the last round, which moved off the starting clip."""
    from fedctx.experiment import ExperimentConfig, Harness
    from fedctx.report import markdown

    config = ExperimentConfig(
        name="adaptive", tasks=("sst2",), data_root=str(shared_data),
        model=str(tiny_llama_dir), participants=(2,), dirichlet_alpha=(0.0,),
        epsilons=(4.0,), vector_sources=("public",), control_sources=(), seeds=(0,),
        baselines=(), records_per_participant=12, rounds=2, steps_per_round=2, batch_size=4,
        test_per_class=2, max_grad_norms=(0.5,), clip_quantiles=(0.5,),
    )
    (row,) = Harness(config, tmp_path / "out").run(progress=False)
    assert (row["max_grad_norm"], row["clip_quantile"]) == (0.5, 0.5)
    assert 0 < row["epsilon_spent"] <= 4.0 + 1e-6
    low, high = row["clip_range"]
    assert 0 < low <= high and (low, high) != (0.5, 0.5)
    assert "fedctx public (eps=4, clip to the 0.5 quantile)" in markdown([row])
    ledgers = [f for d in (tmp_path / "out" / "runs").rglob("ledger") for f in d.glob("*.jsonl")]
    assert ledgers and "adapting to the 0.5 quantile" in ledgers[0].read_text()


def test_a_residual_scaled_clip_cell_runs_and_its_ledger_says_so(
    tiny_llama_dir: Path, shared_data: Path, tmp_path: Path,
) -> None:
    """A fedctx cell with ``clip_scales = ["residual"]`` runs through the real federation,
    spends no more than its epsilon (same noise as the fixed clip), and its ledger's
    sensitivity line names the scaled clip."""
    from fedctx.experiment import ExperimentConfig, Harness
    from fedctx.report import markdown

    config = ExperimentConfig(
        name="residual", tasks=("sst2",), data_root=str(shared_data),
        model=str(tiny_llama_dir), participants=(2,), dirichlet_alpha=(0.0,),
        epsilons=(4.0,), vector_sources=("public",), control_sources=(), seeds=(0,),
        baselines=(), records_per_participant=12, rounds=2, steps_per_round=2, batch_size=4,
        test_per_class=2, clip_scales=("residual",),
    )
    (row,) = Harness(config, tmp_path / "out").run(progress=False)
    assert row["clip_scale"] == "residual"
    assert 0 < row["epsilon_spent"] <= 4.0 + 1e-6
    assert "fedctx public (eps=4, residual-scaled)" in markdown([row])
    ledgers = [f for d in (tmp_path / "out" / "runs").rglob("ledger") for f in d.glob("*.jsonl")]
    assert ledgers and "x its residual" in ledgers[0].read_text()


def test_a_noise_seeded_dp_cell_repeats_its_draws_and_another_seed_does_not(
    tiny_llama_dir: Path, shared_data: Path, tmp_path: Path,
) -> None:
    """``noise_seeds``: the same DP cell run twice (two out folders) with noise seed 0 ends
    with the same calibrated coefficients, up to CKKS's encoding error; noise seed 1 ends
    elsewhere. Rows record the seed and the report names it."""
    from fedctx.experiment import ExperimentConfig, Harness
    from fedctx.report import markdown

    def cell(noise_seed: int, out: str) -> tuple[dict[str, object], torch.Tensor]:
        config = ExperimentConfig(
            name="paired", tasks=("sst2",), data_root=str(shared_data),
            model=str(tiny_llama_dir), participants=(2,), dirichlet_alpha=(0.0,),
            epsilons=(2.0,), vector_sources=("public",), control_sources=(), seeds=(0,),
            baselines=(), records_per_participant=12, rounds=2, steps_per_round=2,
            batch_size=4, test_per_class=2, noise_seeds=(noise_seed,),
        )
        (row,) = Harness(config, tmp_path / out).run(progress=False)
        (saved,) = (tmp_path / out / "runs").rglob("p00/*-calibrated.pt")
        return row, torch.load(saved, weights_only=True)["coefficients"]

    row, first = cell(0, "a")
    _, again = cell(0, "b")
    _, other = cell(1, "c")
    assert row["noise_seed"] == 0 and "noise seed 0" in markdown([row])
    moved = float((first - other).abs().max())
    assert moved > 1e-3
    assert float((first - again).abs().max()) < 1e-4 * moved
