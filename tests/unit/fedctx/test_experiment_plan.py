"""The experiment grid: the coefficient-groups axis adds runs without renaming old ones."""

from __future__ import annotations

import dataclasses
import math

import pytest

from fedctx.experiment import METHODS_FEDERATED, ExperimentConfig, RunSpec, describe, plan_runs


def test_coefficient_groups_axis_covers_fedctx_and_the_i2cl_baselines_only() -> None:
    base = ExperimentConfig(name="x", tasks=("sst2",), epsilons=(math.inf, 8.0),
                            vector_sources=("private",), control_sources=("zero",))
    grouped = dataclasses.replace(base, coefficient_groups=(0, 3))
    old, new = plan_runs(base), plan_runs(grouped)
    # At 0 (one row per layer, the default) every key is the one older results carry.
    assert [r.key() for r in new if r.coefficient_groups == 0] == [r.key() for r in old]
    added = [r for r in new if r.coefficient_groups == 3]
    assert sorted({r.method for r in added}) == ["centralised", "fedctx", "local_only"]
    assert len({r.key() for r in new}) == len(new)  # every cell distinct
    fedctx_added = [(r.epsilon, r.vector_source) for r in added if r.method == "fedctx"]
    assert sorted(fedctx_added) == [(8.0, "private"), (math.inf, "private"), (math.inf, "zero")]


def test_plan_lists_unfinished_cells_in_run_order_without_loading_anything(
        tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from fedctx.cli import main
    from fedctx.experiment import Harness, describe

    config_file = tmp_path / "grid.toml"
    config_file.write_text(
        '[experiment]\nname = "g"\ntasks = ["sst2"]\nmodel = "no-such-model"\n'
        'participants = [3]\nepsilons = [8.0]\nvector_sources = ["public"]\n'
        'control_sources = []\nseeds = [0]\nbaselines = ["zero_shot"]\n')
    config = ExperimentConfig.from_toml(str(config_file))
    out = tmp_path / "out"
    harness = Harness(config, out)
    cells = harness.pending()
    assert [c.method for c in cells] == ["zero_shot", "fedctx"]  # baselines first
    assert describe(cells[1]) == (
        "sst2 seed 0, 3 participants (Dirichlet 0.5): fedctx public (eps=8)")

    out.mkdir()  # one cell finished: it leaves the plan, the other stays
    harness.results_file.write_text(json.dumps({"run_key": cells[0].key()}) + "\n")
    assert [c.key() for c in harness.pending()] == [cells[1].key()]
    assert main(["experiment", "--config", str(config_file), "--out", str(out), "--plan"]) == 0
    printed = capsys.readouterr().out
    assert "2 cells, 1 done" in printed and "1 to run" in printed
    assert "1. " + describe(cells[1]) in printed and "zero_shot" not in printed


def test_tasks_flag_runs_a_subset_with_the_same_run_keys(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """``--tasks`` splits one grid over processes (e.g. on a GPU) without renaming cells;
    a task the config does not list is a clear error."""
    from fedctx.cli import main
    from fedctx.experiment import Harness, describe

    config_file = tmp_path / "grid.toml"
    config_file.write_text(
        '[experiment]\nname = "g"\ntasks = ["sst2", "trec"]\nmodel = "no-such-model"\n'
        'participants = [3]\nepsilons = [8.0]\nvector_sources = ["public"]\n'
        'control_sources = []\nseeds = [0]\nbaselines = ["zero_shot"]\n')
    full = Harness(ExperimentConfig.from_toml(str(config_file)), tmp_path / "out").pending()
    assert main(["experiment", "--config", str(config_file), "--out", str(tmp_path / "out"),
                 "--plan", "--tasks", "trec", "--device", "cuda"]) == 0
    printed = capsys.readouterr().out
    trec = [c for c in full if c.task == "trec"]
    assert "2 cells, 0 done" in printed and "sst2" not in printed
    assert all(f"{n}. {describe(c)}" in printed for n, c in enumerate(trec, 1))
    assert main(["experiment", "--config", str(config_file), "--plan", "--tasks", "agnews"]) == 2
    assert "not in" in capsys.readouterr().err


@pytest.mark.parametrize(("axis", "field", "values", "label"), [
    ("update_weightings", "update_weighting", "UPDATE_WEIGHTINGS", "precision-weighted updates"),
    ("calibration_optimizers", "calibration_optimizer", "CALIBRATION_OPTIMIZERS", "global adam"),
])
def test_a_fedctx_only_axis_adds_cells_and_keeps_old_keys(
    axis: str, field: str, values: str, label: str,
) -> None:
    import fedctx.experiment
    import participant.calibration
    from fedctx.experiment import describe
    from privacy.errors import ConfigError

    allowed = getattr(participant.calibration, values)
    assert getattr(fedctx.experiment, values) == allowed  # restated to keep --plan torch-free
    default, other = allowed
    base = ExperimentConfig(name="x", tasks=("sst2",), epsilons=(math.inf, 8.0),
                            vector_sources=("public",), control_sources=("zero",))
    both = dataclasses.replace(base, **{axis: (default, other)})
    old, new = plan_runs(base), plan_runs(both)
    assert [r.key() for r in new if getattr(r, field) == default] == [r.key() for r in old]
    added = [r for r in new if getattr(r, field) == other]
    assert {r.method for r in added} == {"fedctx"}  # baselines have one calibrator
    assert sorted((r.epsilon, r.vector_source) for r in added) == [
        (8.0, "public"), (math.inf, "public"), (math.inf, "zero")]
    assert len({r.key() for r in new}) == len(new)
    assert describe(added[0]).endswith(f"fedctx public (no DP, {label})")
    for bad in ((), (default, "by-size")):
        with pytest.raises(ConfigError, match=axis):
            dataclasses.replace(base, **{axis: bad})


def test_settings_added_since_a_folder_was_written_read_as_their_defaults(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A folder whose settings.json predates a config field (here ``accountant``) ran
    with that field's default: resuming at the default is allowed, another value is
    refused by name, and an unknown accountant is a config error."""
    import json

    import privacy.accounting
    from fedctx.experiment import ACCOUNTANTS, Harness
    from privacy.errors import ConfigError

    assert ACCOUNTANTS == privacy.accounting.ACCOUNTANTS  # restated to keep configs torch-free

    config = ExperimentConfig(name="g", tasks=("sst2",), epsilons=(8.0,),
                              vector_sources=("public",), control_sources=(), baselines=())
    out = tmp_path / "out"
    out.mkdir()
    older = {k: v for k, v in config.settings().items() if k != "accountant"}
    (out / "settings.json").write_text(json.dumps(older))
    assert len(Harness(config, out).pending()) == 1
    with pytest.raises(ConfigError, match=r"accountant: 'rdp' there, 'prv' here"):
        Harness(dataclasses.replace(config, accountant="prv"), out).pending()
    with pytest.raises(ConfigError, match="accountant must be 'rdp' or 'prv'"):
        dataclasses.replace(config, accountant="moments")


def test_the_calibration_clip_axes_cover_dp_fedctx_cells_and_reach_calibration(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``max_grad_norms`` x ``clip_quantiles`` multiply the fedctx cells under DP only (a
    clip means nothing without privacy), keep the default cell's older key, reach every
    participant's calibration config, and refuse clips that are not > 0 or quantiles
    outside [0, 1). A folder that recorded the former ``max_grad_norm`` setting at 1 is
    resumed (its rows are the default-clip cells); at another value it is refused."""
    import json

    from fedctx.experiment import Harness
    from privacy.errors import ConfigError

    config = ExperimentConfig(name="g", tasks=("sst2",), epsilons=(math.inf, 8.0),
                              vector_sources=("public",), control_sources=("zero",),
                              baselines=("zero_shot",), max_grad_norms=(1.0, 3.0),
                              clip_quantiles=(0.0, 0.5))
    runs = plan_runs(config)
    dp = [r for r in runs if r.method == "fedctx" and not math.isinf(r.epsilon)]
    assert sorted((r.max_grad_norm, r.clip_quantile) for r in dp) == [
        (1.0, 0.0), (1.0, 0.5), (3.0, 0.0), (3.0, 0.5)]
    no_dp = [r for r in runs if r.method == "fedctx" and math.isinf(r.epsilon)]
    assert len(no_dp) == 2 and all((r.max_grad_norm, r.clip_quantile) == (1.0, 0.0)
                                   for r in no_dp)
    assert len({r.key() for r in runs}) == len(runs)
    default = next(r for r in dp if (r.max_grad_norm, r.clip_quantile) == (1.0, 0.0))
    assert default.key() == RunSpec("sst2", "fedctx", 10, 0.5, 0, 8.0, "public").key()
    adaptive = next(r for r in dp if (r.max_grad_norm, r.clip_quantile) == (3.0, 0.5))
    calibration = Harness(config, tmp_path)._calibration(adaptive)
    assert (calibration.max_grad_norm, calibration.clip_quantile) == (3.0, 0.5)
    assert "clip adapting to the 0.5 quantile from 3" in describe(adaptive)

    toml = tmp_path / "g.toml"
    toml.write_text('[experiment]\nname = "g"\nmax_grad_norms = [1, 3]\n')
    assert ExperimentConfig.from_toml(toml).max_grad_norms == (1.0, 3.0)
    for out, recorded, refused in (("at1", 1.0, False), ("at10", 10.0, True)):
        (tmp_path / out).mkdir()
        (tmp_path / out / "settings.json").write_text(json.dumps(
            {**config.settings(), "max_grad_norm": recorded}))
        if refused:
            with pytest.raises(ConfigError, match=r"max_grad_norm: 10.0 there, None here"):
                Harness(config, tmp_path / out).pending()
        else:
            Harness(config, tmp_path / out).pending()
    for bad in ((0.0,), (-1.0,), (float("nan"),), ()):
        with pytest.raises(ConfigError, match="max_grad_norms must be"):
            dataclasses.replace(config, max_grad_norms=bad)
    for bad in ((1.0,), (-0.1,), (float("nan"),), ()):
        with pytest.raises(ConfigError, match="clip_quantiles must be"):
            dataclasses.replace(config, clip_quantiles=bad)


def test_the_clip_scale_axis_covers_dp_fedctx_cells_and_is_not_combined_with_adaptive(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """``clip_scales`` multiplies the fedctx cells under DP only, skips the combination
    with an adaptive clip (CalibrationConfig refuses it), keeps the default cell's key,
    reaches calibration and is named by ``describe``; unknown scales are refused."""
    import participant.calibration
    from fedctx.experiment import CLIP_SCALES, Harness
    from privacy.errors import ConfigError

    assert CLIP_SCALES == participant.calibration.CLIP_SCALES  # restated: --plan torch-free
    config = ExperimentConfig(name="g", tasks=("sst2",), epsilons=(math.inf, 8.0),
                              vector_sources=("public",), control_sources=(),
                              baselines=(), clip_quantiles=(0.0, 0.5),
                              clip_scales=("none", "residual", "residual_capped"))
    runs = plan_runs(config)
    assert sorted((r.epsilon, r.clip_quantile, r.clip_scale) for r in runs) == [
        (8.0, 0.0, "none"), (8.0, 0.0, "residual"), (8.0, 0.0, "residual_capped"),
        (8.0, 0.5, "none"), (math.inf, 0.0, "none")]
    default = next(r for r in runs if r.epsilon == 8.0 and r.clip_scale == "none"
                   and not r.clip_quantile)
    assert default.key() == RunSpec("sst2", "fedctx", 10, 0.5, 0, 8.0, "public").key()
    scaled = next(r for r in runs if r.clip_scale == "residual")
    assert scaled.key() != default.key()
    assert Harness(config, tmp_path)._calibration(scaled).clip_scale == "residual"
    assert describe(scaled).endswith("fedctx public (eps=8, residual-scaled clip)")
    capped = next(r for r in runs if r.clip_scale == "residual_capped")
    assert len({default.key(), scaled.key(), capped.key()}) == 3
    assert describe(capped).endswith("fedctx public (eps=8, residual-capped-scaled clip)")
    for bad in (("loss",), ()):
        with pytest.raises(ConfigError, match="clip_scales must be"):
            dataclasses.replace(config, clip_scales=bad)


def test_the_noise_seed_axis_replicates_dp_fedctx_cells_and_pairs_their_noise() -> None:
    """``noise_seeds`` replicates the fedctx cells under DP only (no noise to seed without
    it), keeps every key when empty, names the seed in ``describe``; a participant's seed
    depends on (seed, noise seed, participant) only, so cells that differ in the clip share
    it; a negative or repeated noise seed is refused."""
    from fedctx.experiment import participant_noise_seed
    from privacy.errors import ConfigError

    base = ExperimentConfig(name="n", tasks=("sst2",), epsilons=(math.inf, 8.0),
                            vector_sources=("public",), control_sources=(), baselines=(),
                            clip_scales=("none", "residual"))
    assert all(r.noise_seed == -1 for r in plan_runs(base))
    runs = plan_runs(dataclasses.replace(base, noise_seeds=(0, 1)))
    assert sorted((r.epsilon, r.clip_scale, r.noise_seed) for r in runs) == [
        (8.0, "none", 0), (8.0, "none", 1), (8.0, "residual", 0), (8.0, "residual", 1),
        (math.inf, "none", -1)]
    unseeded = {r.key() for r in plan_runs(base)}
    assert next(r for r in runs if math.isinf(r.epsilon)).key() in unseeded
    assert not unseeded & {r.key() for r in runs if r.noise_seed >= 0}
    plain, scaled = (next(r for r in runs if r.noise_seed == 0 and r.clip_scale == s)
                     for s in ("none", "residual"))
    other = next(r for r in runs if r.noise_seed == 1 and r.clip_scale == "none")
    assert describe(plain).endswith("fedctx public (eps=8, noise seed 0)")
    assert [participant_noise_seed(plain, i) for i in range(3)] == \
        [participant_noise_seed(scaled, i) for i in range(3)]
    seeds = {participant_noise_seed(spec, i) for spec in (plain, other) for i in range(3)}
    assert len(seeds) == 6 and min(seeds) >= 0
    assert participant_noise_seed(next(r for r in runs if math.isinf(r.epsilon)), 0) == -1
    for bad in ((-1,), (0, 0), (True,)):
        with pytest.raises(ConfigError, match="noise_seeds must be"):
            dataclasses.replace(base, noise_seeds=bad)


def test_central_noise_arm_pairs_global_adam_dp_cells_and_keeps_old_keys() -> None:
    """``noise_models`` adds a ``central_simulated`` cell next to every DP cell that
    releases a sum of Gaussian mechanisms (global Adam, one step per round), leaves every
    older key as it was, and refuses grids where no cell could take it."""
    from privacy.errors import ConfigError

    base = ExperimentConfig(name="x", tasks=("sst2",), epsilons=(math.inf, 8.0, 1.0),
                            vector_sources=("public",), control_sources=("zero",),
                            calibration_optimizers=("local_adamw", "global_adam"),
                            rounds=20, steps_per_round=1, baselines=("zero_shot",))
    both = dataclasses.replace(base, noise_models=("local", "central_simulated"))
    old, new = plan_runs(base), plan_runs(both)
    assert [r.key() for r in new if r.noise_model == "local"] == [r.key() for r in old]
    added = [r for r in new if r.noise_model == "central_simulated"]
    assert sorted((r.epsilon, r.calibration_optimizer) for r in added) == [
        (1.0, "global_adam"), (8.0, "global_adam")]
    assert len({r.key() for r in new}) == len(new)
    assert describe(added[0]).endswith(
        "fedctx public (eps=8, global adam, central noise, simulated)")
    with pytest.raises(ConfigError, match="steps_per_round = 1"):
        dataclasses.replace(both, steps_per_round=5)
    with pytest.raises(ConfigError, match="global_adam"):
        dataclasses.replace(both, calibration_optimizers=("local_adamw",))
    with pytest.raises(ConfigError, match="noise_models"):
        dataclasses.replace(base, noise_models=("trusted",))


def _global_adam_participant(state_dir):  # type: ignore[no-untyped-def]
    """A participant config at epsilon 8 with one-step ``global_adam`` calibration."""
    from participant.calibration import CalibrationConfig
    from participant.config import ParticipantConfig, PrivacySettings

    return ParticipantConfig(
        participant_id="p00", coordinator="127.0.0.1:1", task="sst2", vector_source="public",
        tls_cert="c", tls_key="k", tls_ca="ca", state_dir=state_dir, federation_id="f",
        privacy=PrivacySettings(target_epsilon=8.0),
        calibration=CalibrationConfig(rounds=20, steps_per_round=1, batch_size=12,
                                      optimizer="global_adam"))


def test_central_noise_cell_gives_each_participant_its_share_of_the_noise(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The harness hands participant k the budget whose noise multiplier is
    ``sigma_k / sqrt(N)``, sigma_k being what the cell's epsilon gives its own plan."""
    from fedctx.experiment import Harness
    from participant.federation import planned_releases
    from privacy.accounting import noise_multiplier_for_budget

    config = ExperimentConfig(name="x", tasks=("sst2",), epsilons=(8.0,),
                              vector_sources=("public",), control_sources=(),
                              calibration_optimizers=("global_adam",), rounds=20,
                              steps_per_round=1, batch_size=12,
                              noise_models=("central_simulated",), baselines=())
    spec = plan_runs(config)[0]
    harness = Harness(config, tmp_path)
    records = {0: [object()] * 256, 1: [object()] * 10}
    harness.splits = lambda _spec: (None, records, None, None)  # type: ignore[method-assign]
    participant = _global_adam_participant(tmp_path)
    for index, count in ((0, 256), (1, 10)):
        shared = harness._central_noise_share(spec, index, participant)
        plan = planned_releases(participant, records=count)
        assert plan[0].sample_rate == min(1.0, 12 / count)
        sigma = noise_multiplier_for_budget(target_epsilon=8.0, target_delta=1e-5, plan=plan)
        share = noise_multiplier_for_budget(
            target_epsilon=shared.privacy.target_epsilon, target_delta=1e-5, plan=plan)
        assert share == pytest.approx(sigma / math.sqrt(10), rel=0.02)
        assert shared.calibration == participant.calibration


def test_the_label_bias_axis_adds_fedctx_and_control_cells_not_baselines(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``label_biases`` multiplies the fedctx cells with and without DP (the bias is a
    release of its own, not a DP-SGD setting) and the controls (so that a biased DP cell
    has a biased reference), not the baselines; it keeps the default cells' keys, reaches
    calibration, is named by ``describe``; an unknown value is refused."""
    import participant.calibration
    from fedctx.experiment import LABEL_BIASES, Harness
    from privacy.errors import ConfigError

    assert LABEL_BIASES == participant.calibration.LABEL_BIASES  # restated: --plan torch-free
    base = ExperimentConfig(name="b", tasks=("sst2",), epsilons=(math.inf, 8.0),
                            vector_sources=("public",), control_sources=("zero",),
                            baselines=("zero_shot",))
    both = dataclasses.replace(base, label_biases=("none", "balanced"))
    old, new = plan_runs(base), plan_runs(both)
    assert [r.key() for r in new if r.label_bias == "none"] == [r.key() for r in old]
    added = [r for r in new if r.label_bias == "balanced"]
    assert sorted((r.epsilon, r.vector_source) for r in added) == [
        (8.0, "public"), (math.inf, "public"), (math.inf, "zero")]
    assert all(r.method == METHODS_FEDERATED for r in added)
    assert len({r.key() for r in new}) == len(new)
    assert Harness(both, tmp_path)._calibration(added[0]).label_bias == "balanced"
    dp = next(r for r in added if r.epsilon == 8.0)
    assert describe(dp).endswith("fedctx public (eps=8, balanced label bias)")
    for bad in ((), ("none", "prior")):
        with pytest.raises(ConfigError, match="label_biases"):
            dataclasses.replace(base, label_biases=bad)


def test_an_unknown_baseline_is_refused_when_the_config_is_read() -> None:
    """A misspelt or invented baseline used to be planned and then fail as a cell (it has
    no runner); it is a config error now, naming what is allowed."""
    from fedctx.experiment import BASELINES, Harness
    from privacy.errors import ConfigError

    assert all(hasattr(Harness, f"_baseline_{name}") for name in BASELINES)
    with pytest.raises(ConfigError, match=r"baselines \['fedctx_no_dp'\] are not among"):
        ExperimentConfig(name="b", tasks=("sst2",), baselines=("zero_shot", "fedctx_no_dp"))


def test_distributed_noise_cells_name_their_collusion_bound(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``distributed:<t>`` adds a deployable masked-rounds cell per DP global-Adam cell,
    keyed apart from the others; a bad or too large ``t`` is refused."""
    from fedctx.experiment import Harness, distributed_bounds, distributed_colluders
    from privacy.errors import ConfigError

    base = ExperimentConfig(name="x", tasks=("sst2",), epsilons=(math.inf, 8.0),
                            vector_sources=("public",), control_sources=(),
                            calibration_optimizers=("global_adam",), rounds=20,
                            steps_per_round=1, batch_size=12, participants=(10,),
                            baselines=())
    grid = dataclasses.replace(base, noise_models=("local", "distributed:0", "distributed:4"))
    runs = plan_runs(grid)
    assert sorted(r.noise_model for r in runs if r.epsilon == 8.0) == [
        "distributed:0", "distributed:4", "local"]
    assert len({r.key() for r in runs}) == len(runs)
    (cell,) = [r for r in runs if r.noise_model == "distributed:4"]
    assert describe(cell).endswith("global adam, distributed noise, up to 4 colluding)")
    assert distributed_colluders("local") is None and distributed_colluders("distributed:4") == 4
    assert distributed_bounds("distributed:4:1") == (4, 1)
    assert distributed_bounds("distributed:4") == (4, 0) and distributed_bounds("local") is None
    for bad in ("distributed:x", "distributed:-1", "distributed:10", "distributed:4:6",
                "distributed:4:1:1", "distributed:4:"):
        with pytest.raises(ConfigError):
            dataclasses.replace(base, noise_models=(bad,))
    with pytest.raises(ConfigError, match="steps_per_round = 1"):
        dataclasses.replace(grid, steps_per_round=3)

    harness = Harness(grid, tmp_path)
    participant = _global_adam_participant(tmp_path)
    privacy = harness._distributed_noise(cell, participant).privacy
    assert (privacy.max_colluders, privacy.max_dropouts, privacy.target_epsilon) == (4, 0, 8.0)
    dropouts = dataclasses.replace(grid, noise_models=("distributed:4:1",))
    (cell,) = [r for r in plan_runs(dropouts) if r.epsilon == 8.0]
    assert describe(cell).endswith("up to 4 colluding and 1 dropping out)")
    privacy = Harness(dropouts, tmp_path)._distributed_noise(cell, participant).privacy
    assert (privacy.max_colluders, privacy.max_dropouts) == (4, 1)
    # a private vector's cell releases the record-weighted sum (what distributed DP needs)
    private = dataclasses.replace(grid, vector_sources=("private",))
    (cell,) = [r for r in plan_runs(private)
               if r.epsilon == 8.0 and r.noise_model == "distributed:4"]
    config = Harness(private, tmp_path)._distributed_noise(
        cell, dataclasses.replace(participant, vector_source="private"))
    assert (config.vector_source, config.vector_weighting) == ("private", "records")
    assert config.privacy.max_colluders == 4
