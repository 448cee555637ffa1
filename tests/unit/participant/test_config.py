"""Participant configuration: the vector source that ``auto`` resolves to."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from participant.config import ParticipantConfig, PrivacySettings
from privacy.errors import ConfigError


def _config(**overrides: object) -> ParticipantConfig:
    files = Path("unused")
    return ParticipantConfig(participant_id="org1", coordinator="127.0.0.1:1", tls_cert=files,
                             tls_key=files, tls_ca=files, state_dir=files, federation_id="f",
                             **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize("model, epsilon, expected", [
    ("smollm2-135m", 8.0, "public"),      # measured: the private release buys nothing there
    ("smollm2-135m", math.inf, "private"),  # without DP the paper's vector costs nothing
    ("/models/some-llama", 8.0, "private"),  # unmeasured models get the paper's method
])
def test_auto_vector_source_is_resolved_per_model_and_privacy(
        model: str, epsilon: float, expected: str) -> None:
    config = _config(model=model, privacy=PrivacySettings(target_epsilon=epsilon))
    assert config.vector_source == expected


def test_an_explicit_vector_source_is_kept_and_a_wrong_one_refused() -> None:
    assert _config(vector_source="private").vector_source == "private"
    with pytest.raises(ConfigError, match="'auto' or one of"):
        _config(vector_source="demonstrations")


def test_the_calibration_clip_is_read_from_the_calibration_table_only(tmp_path: Path) -> None:
    """``max_grad_norm`` and ``clip_quantile`` reach the calibration settings; under
    ``[participant.privacy]`` (where an older field was never read) the key is refused,
    naming where it belongs."""
    base = ('[participant]\nparticipant_id = "org1"\ncoordinator = "127.0.0.1:1"\n'
            'tls_cert = "c"\ntls_key = "k"\ntls_ca = "a"\nstate_dir = "s"\nfederation_id = "f"\n')
    good = tmp_path / "good.toml"
    good.write_text(base + "[participant.calibration]\nmax_grad_norm = 3.0\nclip_quantile = 0.5\n")
    calibration = ParticipantConfig.from_toml(good).calibration
    assert (calibration.max_grad_norm, calibration.clip_quantile) == (3.0, 0.5)
    misplaced = tmp_path / "misplaced.toml"
    misplaced.write_text(base + "[participant.privacy]\nmax_grad_norm = 3.0\n")
    with pytest.raises(ConfigError, match=r"\[participant.calibration\] max_grad_norm"):
        ParticipantConfig.from_toml(misplaced)


def test_insecure_noise_seed_gives_reproducible_separate_streams_or_none() -> None:
    """Unset (-1), DP noise comes from torch's OS-seeded generator (``None``); set, each
    stream (vector release, calibration) has its own generator, the same for the same
    seed; a bool, a float or a seed below -1 is refused."""
    import torch

    from participant.config import PrivacySettings

    assert PrivacySettings().noise_generator("vector") is None
    seeded = PrivacySettings(insecure_noise_seed=3)
    draw = lambda settings, stream: torch.randn(  # noqa: E731
        4, generator=settings.noise_generator(stream))
    assert torch.equal(draw(seeded, "vector"), draw(PrivacySettings(insecure_noise_seed=3),
                                                    "vector"))
    assert not torch.equal(draw(seeded, "vector"), draw(seeded, "calibration"))
    assert not torch.equal(draw(seeded, "vector"),
                           draw(PrivacySettings(insecure_noise_seed=4), "vector"))
    for bad in (-2, True, 1.5):
        with pytest.raises(ConfigError, match="insecure_noise_seed"):
            PrivacySettings(insecure_noise_seed=bad)  # type: ignore[arg-type]


def test_ckks_workers_is_checked_and_read_from_toml(tmp_path: Path) -> None:
    assert _config().ckks_workers == 1
    assert _config(ckks_workers=8).ckks_workers == 8
    for bad in (0, 65, True, 2.5):
        with pytest.raises(ConfigError, match="ckks_workers"):
            _config(ckks_workers=bad)
    path = tmp_path / "participant.toml"
    path.write_text(
        '[participant]\nparticipant_id = "org1"\ncoordinator = "127.0.0.1:1"\n'
        'tls_cert = "c"\ntls_key = "k"\ntls_ca = "a"\nstate_dir = "s"\nfederation_id = "f"\n'
        "ckks_workers = 4\n", encoding="utf-8")
    assert ParticipantConfig.from_toml(path).ckks_workers == 4


def test_distributed_dp_needs_a_budget() -> None:
    with pytest.raises(ConfigError, match="finite target_epsilon"):
        PrivacySettings(target_epsilon=math.inf, max_colluders=2)
    with pytest.raises(ConfigError, match="-1 \\(local DP\\)"):
        PrivacySettings(max_colluders=-2)
    with pytest.raises(ConfigError, match="must be an int"):
        PrivacySettings(max_colluders=True)  # type: ignore[arg-type]
    assert not PrivacySettings().distributed
    assert PrivacySettings(max_colluders=0).distributed


def test_distributed_dp_is_read_from_the_privacy_table(tmp_path: Path) -> None:
    path = tmp_path / "participant.toml"
    path.write_text(
        '[participant]\nparticipant_id = "org1"\ncoordinator = "127.0.0.1:1"\n'
        'tls_cert = "c"\ntls_key = "k"\ntls_ca = "a"\nstate_dir = "s"\nfederation_id = "f"\n'
        'vector_source = "public"\n'
        "[participant.privacy]\ntarget_epsilon = 8.0\nmax_colluders = 4\n"
        '[participant.calibration]\noptimizer = "global_adam"\nsteps_per_round = 1\n'
        "batch_size = 12\n", encoding="utf-8")
    privacy = ParticipantConfig.from_toml(path).privacy
    assert privacy.max_colluders == 4


def test_distributed_dp_refuses_releases_that_are_not_sums_of_equal_shares() -> None:
    from participant.calibration import CalibrationConfig

    privacy = PrivacySettings(max_colluders=3)
    summable = CalibrationConfig(optimizer="global_adam", steps_per_round=1, batch_size=12)
    config = _config(privacy=privacy, calibration=summable, vector_source="public")
    assert config.privacy.max_colluders == 3
    for calibration, vector_source, match in (
        (CalibrationConfig(batch_size=12), "public", "global_adam"),
        (CalibrationConfig(optimizer="global_adam", steps_per_round=3, batch_size=12),
         "public", "steps_per_round = 1"),
        (CalibrationConfig(optimizer="global_adam", steps_per_round=1, batch_size=12,
                           update_weighting="precision"), "public", "uniform"),
        (CalibrationConfig(optimizer="global_adam", steps_per_round=1, batch_size=12,
                           clip_quantile=0.5), "public", "clip_quantile"),
        (summable, "private", "vector_weighting = 'records'"),
    ):
        with pytest.raises(ConfigError, match=match):
            _config(privacy=privacy, calibration=calibration, vector_source=vector_source)
    # a private vector's release is a sum of equal shares when weighted by record count
    weighted = _config(privacy=privacy, calibration=summable, vector_source="private",
                       vector_weighting="records")
    assert weighted.vector_source == "private"
