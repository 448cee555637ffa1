"""``fedctx experiment --jobs``: cells in child processes sharing one out folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fedctx.experiment import ExperimentConfig, Harness, append_row, plan_runs
from fedctx.parallel import run_in_processes
from privacy.errors import ConfigError


def _grid(tmp_path: Path) -> Harness:
    config = ExperimentConfig(name="p", tasks=("sst2", "subj", "trec"), epsilons=(),
                              vector_sources=(), control_sources=(), baselines=("zero_shot",))
    return Harness(config, tmp_path / "out")


def test_a_child_that_dies_without_a_row_is_recorded_with_its_status_and_log(
        tmp_path: Path) -> None:
    harness = _grid(tmp_path)
    rows = run_in_processes(harness, jobs=2, progress=False, command=lambda key: [
        sys.executable, "-c", f"print('loading'); print('killed: {key}'); raise SystemExit(3)"])
    assert rows == []
    failures = [json.loads(line) for line in harness.failures_file.read_text().splitlines()]
    assert (sorted(f["run_key"] for f in failures)
            == sorted(s.key() for s in plan_runs(harness.config)))
    for failure in failures:
        assert f"process exited 3: killed: {failure['run_key']}" in failure["error"]
        assert (harness.out_dir / "logs" / f"{failure['run_key']}.log").exists()
    assert (harness.out_dir / "settings.json").exists()


def test_finished_cells_are_not_rerun_and_a_zero_exit_with_its_row_is_no_failure(
        tmp_path: Path) -> None:
    harness = _grid(tmp_path)
    first, *rest = plan_runs(harness.config)
    harness.prepare()
    append_row(harness.results_file, {"run_key": first.key(), "accuracy": 0.5})
    script = ("import json, os, sys; from fedctx.experiment import append_row; from pathlib "
              f"import Path; append_row(Path({str(harness.results_file)!r}), "
              "{'run_key': sys.argv[1], 'accuracy': 1.0})")
    started: list[str] = []

    def command(key: str) -> list[str]:
        started.append(key)
        return [sys.executable, "-c", script, key]

    rows = run_in_processes(harness, jobs=3, command=command, progress=False)
    assert sorted(started) == sorted(s.key() for s in rest)
    assert len(rows) == 3 and not harness.failures_file.exists()
    assert harness.results_file.read_text().count("\n") == 3


def test_jobs_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="jobs must be >= 1"):
        run_in_processes(_grid(tmp_path), jobs=0, command=lambda key: ["true"])
