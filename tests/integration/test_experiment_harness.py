"""The experiment harness on a tiny model: every method runs, rows are complete, resume works."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_grid_runs_resumes_and_reports(tmp_path: Path, tiny_llama_dir: Path, shared_data: Path) -> None:
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

    table = markdown([json.loads(line) for line in before.splitlines()])
    assert "fedctx private (eps=4)" in table and "zero_shot" in table
    assert "fedctx private (eps=4, James-Stein)" in table
