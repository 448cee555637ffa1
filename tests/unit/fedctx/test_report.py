"""Report tables and plots from results rows (no model involved)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedctx.report import cost_table, markdown, plot


def _row(method: str, accuracy: float, *, participants: int = 10, epsilon: float = math.inf,
         source: str = "", seed: int = 0, **extra: object) -> dict[str, object]:
    return {"task": "sst2", "method": method, "participants": participants,
            "dirichlet_alpha": 0.5, "epsilon": epsilon, "vector_source": source, "seed": seed,
            "accuracy": accuracy, **extra}


ROWS = [
    _row("zero_shot", 0.80, epsilon_spent=0.0),
    _row("fedctx", 0.86, source="private", seed=0, bytes_per_round=2048.0,
         client_seconds_per_round=3.0, rounds_released=5),
    _row("fedctx", 0.84, source="private", seed=1, bytes_per_round=4096.0,
         client_seconds_per_round=5.0, rounds_released=5),
    _row("fedctx", 0.70, source="private", epsilon=8.0, epsilon_spent=7.99,
         uncalibrated_accuracy=0.74, noise_multiplier=1.192,
         vector_denoise="james_stein", vector_shrinkage={"mean": 0.044, "min": 0, "max": 0.1}),
    _row("fedctx", 0.72, source="private", epsilon=8.0, participants=3, epsilon_spent=7.99),
    _row("dp_fedavg_lora", 0.75, epsilon=8.0, epsilon_spent=7.9, bytes_per_round=10240.0,
         client_seconds_per_round=9.0, lora={"rounds": 4}),
]


def test_markdown_means_and_std_over_seeds() -> None:
    text = markdown(ROWS)
    assert "| fedctx private (no DP) | 85.0 ± 1.4 |" in text
    assert "| dp_fedavg_lora (eps=8) | 75.0 |" in text
    assert "| fedctx private (eps=8, James-Stein) | 70.0 |" in text
    assert "### 3 participants, Dirichlet(0.5)" in text
    assert ("| sst2 | 10 | 0 | fedctx private (eps=8, James-Stein) | 74.0 | 70.0 | 7.990 "
            "| 1.192 | 0.044 |") in text


def test_coefficient_groups_get_their_own_rows() -> None:
    rows = [*ROWS, _row("fedctx", 0.9, source="public", epsilon=8.0, coefficient_groups=3),
            _row("local_only", 0.6, coefficient_groups=3), _row("local_only", 0.5)]
    text = markdown(rows)
    assert "| fedctx public (eps=8, 3 coefficient groups) | 90.0 |" in text
    assert "| local_only (3 coefficient groups) | 60.0 |" in text
    assert "| local_only | 50.0 |" in text


@pytest.mark.parametrize(("field", "default", "other", "label"), [
    ("update_weighting", "uniform", "precision", "precision-weighted"),
    ("calibration_optimizer", "local_adamw", "global_adam", "global Adam"),
    ("clip_scale", "none", "residual", "residual-scaled"),
    ("clip_scale", "none", "residual_capped", "residual-capped-scaled"),
    ("noise_model", "local", "central_simulated", "central noise (simulated)"),
    ("noise_model", "local", "distributed:4", "distributed noise (up to 4 colluding)"),
])
def test_calibration_variants_get_their_own_rows(
    field: str, default: str, other: str, label: str,
) -> None:
    rows = [*ROWS, _row("fedctx", 0.88, source="public", epsilon=8.0, **{field: other}),
            _row("fedctx", 0.82, source="public", epsilon=8.0, **{field: default})]
    text = markdown(rows)
    assert f"| fedctx public (eps=8, {label}) | 88.0 |" in text
    assert "| fedctx public (eps=8) | 82.0 |" in text


def test_cost_table_per_round() -> None:
    table = cost_table(ROWS)
    assert "| sst2 | fedctx private (no DP) | 85.0 ± 1.4 | 5 | 3.0 KiB | 4.0 |" in table
    assert "| sst2 | dp_fedavg_lora (eps=8) | 75.0 | 4 | 10.0 KiB | 9.0 |" in table
    assert cost_table([_row("zero_shot", 0.5)]) == ""


def test_plots_both_methods_and_participant_counts(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written = {p.name for p in plot(ROWS, tmp_path)}
    assert written == {"accuracy_vs_epsilon_sst2.png", "accuracy_vs_participants_sst2.png"}
    assert all((tmp_path / name).stat().st_size > 1000 for name in written)


def test_zero_shot_at_another_count_does_not_make_a_participants_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    # zero-shot sees no participant's data: a row at N=3 is a reference line, not a count
    rows = [_row("fedctx", 0.86, source="private"), _row("zero_shot", 0.80, participants=3)]
    assert {p.name for p in plot(rows, tmp_path)} == {"accuracy_vs_epsilon_sst2.png"}


def test_mean_over_tasks_and_paired_gaps_seed_by_seed() -> None:
    def run(task: str, seed: int, accuracy: float, **kw: object) -> dict[str, object]:
        return {**_row("fedctx", accuracy, seed=seed, **kw), "task": task}

    rows = [
        # reference (non-private, private vector): task means 0.80 (seed 1), 0.60 (seed 2)
        run("sst2", 1, 0.90, source="private"), run("trec", 1, 0.70, source="private"),
        run("sst2", 2, 0.70, source="private"), run("trec", 2, 0.50, source="private"),
        # DP run 2 and 4 points below on the same seeds: levels spread 20, gaps 2 apart
        run("sst2", 1, 0.88, source="public", epsilon=8.0),
        run("trec", 1, 0.68, source="public", epsilon=8.0),
        run("sst2", 2, 0.66, source="public", epsilon=8.0),
        run("trec", 2, 0.46, source="public", epsilon=8.0),
        run("sst2", 3, 0.99, source="public", epsilon=8.0),  # no trec: not a whole seed
    ]
    text = markdown(rows)
    assert "| fedctx private (no DP) | 80.0 ± 14.1 | 60.0 ± 14.1 | 70.0 ± 14.1 |" in text
    assert "| fedctx public (eps=8) | 84.3 ± 16.8 | 57.0 ± 15.6 | 67.0 ± 15.6 |" in text
    assert "| fedctx public (eps=8) | 2 | -3.0 ± 1.4 | 1: -2.0, 2: -4.0 |" in text
    assert "Macro-F1" not in text  # no row carries it
    f1 = markdown([{**rows[0], "macro_f1": 0.85}, {**rows[1], "macro_f1": 0.60}])
    assert "Macro-F1 (%):\n\n| method | sst2 | trec | mean |\n|---|---|---|---|\n" \
        "| fedctx private (no DP) | 85.0 | 60.0 | 72.5 |" in f1
    # without the reference there is no gap table
    assert "Paired with" not in markdown([r for r in rows if r["vector_source"] == "public"])


def test_noise_multiplier_cell_shows_the_participants_range_where_they_differ() -> None:
    rows = [_row("fedctx", 0.8, source="public", epsilon=8.0, epsilon_spent=7.99,
                 uncalibrated_accuracy=0.7, noise_multiplier=0.594,
                 noise_multiplier_range=[0.594, 1.046]),
            _row("fedctx", 0.8, source="public", epsilon=1.0, epsilon_spent=0.99,
                 uncalibrated_accuracy=0.7, noise_multiplier=1.479,
                 noise_multiplier_range=[1.479, 1.479])]
    text = markdown(rows)
    assert "| 7.990 | 0.594 (0.594-1.046) |" in text
    assert "| 0.990 | 1.479 |" in text
