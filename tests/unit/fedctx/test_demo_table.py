"""The demo's summary table names the vector that was injected."""

from __future__ import annotations

import io

import pytest

from fedctx.demo import print_table


def _report(source: str) -> dict[str, object]:
    score = {"accuracy": 0.5, "macro_f1": 0.4, "n": 200}
    return {"task": "bbc", "vector_source": source, "target_epsilon": 8.0, "delta": 1e-5,
            "noise_multiplier": 0.7, "records": 256, "demonstrations": 40,
            "epsilon_spent": 7.99, "bytes_sent": 1234,
            "scores": {k: score for k in ("zero_shot", "injected_uncalibrated",
                                          "injected_calibrated")}}


@pytest.mark.parametrize("source, label, demos", [
    ("private", "federated vector, calibrated", "40"),
    ("public", "public vector, calibrated", "-")])
def test_table_names_the_vector_and_its_demonstrations(source: str, label: str, demos: str) -> None:
    out = io.StringIO()
    print_table({"org1": _report(source)}, elapsed_s=12.0, out=out)
    text = out.getvalue()
    assert f"vector source {source}" in text and label in text
    assert text.splitlines()[-3].split()[:3] == ["org1", "256", demos]
