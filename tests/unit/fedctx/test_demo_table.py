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


@pytest.mark.parametrize(("max_colluders", "max_dropouts", "vector_source"), [
    (-1, 0, "auto"), (1, 0, "auto"), (1, 1, "auto"), (-1, 0, "private"), (1, 0, "private")])
def test_demo_configs_pass_the_participants_checks_with_and_without_distributed_dp(
        max_colluders: int, max_dropouts: int, vector_source: str) -> None:
    """``fedctx demo --max-colluders 1`` writes what a participant accepts: the same 48
    DP-SGD steps, one masked ``global_adam`` round each (and with ``--vector-source
    private``, the record-weighted vector release distributed DP needs)."""
    from pathlib import Path

    from fedctx.demo import DemoOptions, participant_tables
    from participant.calibration import CalibrationConfig
    from participant.config import ParticipantConfig, PrivacySettings

    tables = participant_tables(DemoOptions(max_colluders=max_colluders,
                                            max_dropouts=max_dropouts,
                                            vector_source=vector_source))
    files = Path("unused")
    config = ParticipantConfig(
        participant_id="org1", coordinator="127.0.0.1:1", tls_cert=files, tls_key=files,
        tls_ca=files, state_dir=files, federation_id="f", model="smollm2-135m",
        **tables["participant"],  # type: ignore[arg-type]
        privacy=PrivacySettings(**tables["participant.privacy"]),  # type: ignore[arg-type]
        calibration=CalibrationConfig(**tables["participant.calibration"]))  # type: ignore[arg-type]
    cal = config.calibration
    assert cal.rounds * cal.steps_per_round == 48
    assert config.privacy.distributed == (max_colluders >= 0)
    assert (cal.optimizer == "global_adam") == (max_colluders >= 0)
    assert config.privacy.max_dropouts == max_dropouts


def test_the_table_states_the_distributed_guarantee() -> None:
    report = {**_report("public"), "max_colluders": 1, "noise_share": 0.61,
              "epsilon_if_more_collude": 15.2, "delta_discretization": 2.2e-16}
    out = io.StringIO()
    print_table({"org1": report, "org2": report, "org3": report}, elapsed_s=1.0, out=out)
    assert "at most 1 of 3 participants collude" in out.getvalue()
    assert "epsilon 15.2 if more collude" in out.getvalue()
    assert "dropout recovery" not in out.getvalue()
    dropped = {**report, "max_dropouts": 1, "dropped_participants": ["org3"]}
    out = io.StringIO()
    print_table({"org1": dropped, "org2": dropped}, elapsed_s=1.0, out=out)
    assert "up to 1 may drop out (each share sized for that); dropped: org3" in out.getvalue()
    assert "3 participants (1 dropped out)" in out.getvalue()
    assert "at most 1 of 3 participants collude" in out.getvalue()


def test_the_demo_stops_at_the_first_failed_participant_but_not_a_dropped_one() -> None:
    from pathlib import Path

    from fedctx.demo import _raise_on_failure

    class Process:
        def __init__(self, code):  # type: ignore[no-untyped-def]
            self.code = code

        def poll(self):  # type: ignore[no-untyped-def]
            return self.code

    running, killed = {"org1": Process(None), "org2": Process(0)}, {"org3": Process(-9)}
    _raise_on_failure({**running, **killed}, {"org3"}, Path("logs"))  # still running: fine
    with pytest.raises(RuntimeError, match="participant org3 failed"):
        _raise_on_failure({**running, **killed}, set(), Path("logs"))
