"""Calibration coefficients shared by groups of layers: expansion, gradients, validation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from participant.calibration import CalibrationConfig, per_layer
from privacy.errors import ConfigError


@pytest.mark.parametrize(("layers", "groups"), [(30, 1), (30, 3), (30, 7), (7, 3), (5, 5)])
def test_groups_are_contiguous_balanced_and_cover_every_layer(layers: int, groups: int) -> None:
    rows = torch.arange(groups, dtype=torch.float32)[:, None].repeat(1, 4)
    expanded = per_layer(rows, layers)
    group_of = expanded[:, 0].long().tolist()
    assert len(group_of) == layers and group_of == sorted(group_of)  # contiguous
    sizes = torch.bincount(torch.tensor(group_of), minlength=groups)
    assert set(group_of) == set(range(groups)) and int(sizes.max() - sizes.min()) <= 1


def test_per_layer_keeps_leading_dimensions_and_passes_per_layer_rows_through() -> None:
    batch = torch.randn(5, 3, 4)
    assert per_layer(batch, 9).shape == (5, 9, 4)
    assert per_layer(batch, 3) is batch
    with pytest.raises(ConfigError):
        per_layer(batch, 2)


@pytest.mark.parametrize("groups", [-1, True, 2.0])
def test_config_rejects_invalid_group_counts(groups: object) -> None:
    with pytest.raises(ConfigError):
        CalibrationConfig(coefficient_groups=groups)  # type: ignore[arg-type]


def test_more_groups_than_layers_is_a_clear_error() -> None:
    assert CalibrationConfig().trained_rows(30) == 30
    assert CalibrationConfig(coefficient_groups=3).trained_rows(30) == 3
    with pytest.raises(ConfigError, match="exceeds"):
        CalibrationConfig(coefficient_groups=31).trained_rows(30)


def test_a_shared_row_gets_the_sum_of_its_layers_per_record_gradients(
    tiny_llama_dir: Path, shared_data: Path
) -> None:
    """Chain rule through the expansion: the DP-SGD per-record gradient of a group is the
    sum of the per-layer gradients, so clipping bounds the same record's whole influence."""
    from participant.calibration import LocalCalibrator
    from participant.data import load_split
    from participant.layers import resolve_layer_sites
    from participant.model import load_model
    from participant.tasks import load_task

    lm = load_model(str(tiny_llama_dir))
    sites = resolve_layer_sites(lm.model)
    task = load_task("sst2")
    records = load_split(task, "train", data_dir=str(shared_data / "sst2"))[:6]
    vector = torch.randn(2, sites.num_layers, lm.model.config.hidden_size,
                         generator=torch.Generator().manual_seed(0))

    def gradients(groups: int) -> torch.Tensor:
        config = CalibrationConfig(batch_size=3, coefficient_groups=groups,
                                   calibration_noise=0.0)
        calibrator = LocalCalibrator(lm, sites, task, records, vector, config=config,
                                     noise_multiplier=0.0, seed=0)
        grads, _ = calibrator.per_example_gradients(list(range(len(records))))
        return grads

    per_layer_grads, shared = gradients(0), gradients(1)
    assert per_layer_grads.shape == (6, sites.num_layers, 4) and shared.shape == (6, 1, 4)
    assert torch.allclose(shared[:, 0], per_layer_grads.sum(dim=1), atol=1e-5, rtol=1e-4)
    assert float(shared.abs().max()) > 0


def _tiny(tiny_llama_dir: Path, shared_data: Path, n: int = 6):  # type: ignore[no-untyped-def]
    from tiny_checkpoint import load_tiny_sst2

    return load_tiny_sst2(tiny_llama_dir, shared_data, n=n)


def test_last_token_logits_match_the_full_logits_at_each_rows_last_token(
    tiny_llama_dir: Path, shared_data: Path
) -> None:
    from participant.model import last_token_logits

    lm, _, task, records = _tiny(tiny_llama_dir, shared_data)
    enc = lm.tokenizer([task.query(r.text) for r in records], return_tensors="pt", padding=True)
    last = enc["attention_mask"].sum(1) - 1
    assert len(set(last.tolist())) > 1  # rows of different lengths (right padding)
    with torch.no_grad():
        full = lm.model(**enc).logits[torch.arange(len(records)), last]
        kept = last_token_logits(lm.model, enc["input_ids"], enc["attention_mask"], last)
    assert kept.shape == full.shape and torch.allclose(kept, full, atol=1e-5)


def test_splitting_a_batch_into_chunks_leaves_per_record_gradients_unchanged(
    tiny_llama_dir: Path, shared_data: Path
) -> None:
    from participant.calibration import LocalCalibrator

    lm, sites, task, records = _tiny(tiny_llama_dir, shared_data, n=8)
    vector = torch.randn(2, sites.num_layers, lm.model.config.hidden_size,
                         generator=torch.Generator().manual_seed(1))

    def gradients(max_batch_tokens: int) -> tuple[torch.Tensor, float, list[list[int]]]:
        config = CalibrationConfig(batch_size=8, calibration_noise=0.0,
                                   max_batch_tokens=max_batch_tokens)
        calibrator = LocalCalibrator(lm, sites, task, records, vector, config=config,
                                     noise_multiplier=0.0, seed=0)
        indices = [5, 0, 7, 2, 3]
        chunks = calibrator.queries.chunks(indices, max_tokens=max_batch_tokens)
        for chunk in chunks:  # each chunk within the bound, unless a row alone exceeds it
            longest = max(calibrator.queries.lengths[indices[j]] for j in chunk)
            assert len(chunk) == 1 or len(chunk) * longest <= max_batch_tokens
        grads, loss = calibrator.per_example_gradients(indices)
        return grads, loss, chunks

    whole, whole_loss, one = gradients(10**6)
    split, split_loss, many = gradients(1)
    assert len(one) == 1 and len(many) == 5  # one pass vs every record alone
    assert sorted(j for c in many for j in c) == list(range(5))
    assert torch.allclose(split, whole, atol=1e-5, rtol=1e-4)
    assert abs(split_loss - whole_loss) < 1e-4


def test_update_weight_is_the_inverse_std_of_a_steps_mean_gradient(
    tiny_llama_dir: Path, shared_data: Path
) -> None:
    """``expected_batch / sqrt(1 + sigma^2)``: the records per step without DP; with DP a
    participant sampling all its few records at rate 1 under a large sigma counts less."""
    from participant.calibration import LocalCalibrator

    lm, sites, task, records = _tiny(tiny_llama_dir, shared_data, n=8)
    vector = torch.zeros(2, sites.num_layers, lm.model.config.hidden_size)

    def weight(n: int, sigma: float) -> float:
        calibrator = LocalCalibrator(lm, sites, task, records[:n], vector,
                                     config=CalibrationConfig(batch_size=4),
                                     noise_multiplier=sigma, seed=0)
        return calibrator.update_weight()

    assert weight(8, 0.0) == 4.0 and weight(2, 0.0) == 2.0  # records per step
    assert weight(8, 1.0) == pytest.approx(4 / 2 ** 0.5)
    assert weight(2, 18.125) == pytest.approx(2 / (1 + 18.125 ** 2) ** 0.5)
    with pytest.raises(ConfigError, match="update_weighting"):
        CalibrationConfig(update_weighting="by-size")


def test_global_coefficients_add_the_mean_update_under_local_adamw() -> None:
    from participant.calibration import GlobalCoefficients

    start = torch.tensor([[0.1, 1.0, 0.1, 1.0]])
    state = GlobalCoefficients(start, config=CalibrationConfig(rounds=3))
    state.apply(torch.full((1, 4), 0.25))
    assert torch.equal(state.apply(torch.full((1, 4), -0.5)), start - 0.25)
    assert torch.equal(start, torch.tensor([[0.1, 1.0, 0.1, 1.0]]))  # input untouched
    with pytest.raises(ValueError, match="shape"):
        state.apply(torch.zeros(2, 4))


def test_global_adam_steps_against_the_mean_update_and_ignores_its_scale() -> None:
    """With a constant mean update u, bias-corrected Adam moves every coefficient by the
    scheduled learning rate in u's direction (after AdamW's decay), whatever u's size:
    the normalisation happens once, on the aggregate."""
    from participant.calibration import GlobalCoefficients, _schedule

    config = CalibrationConfig(optimizer="global_adam", rounds=5, learning_rate=0.05,
                               weight_decay=1e-3)
    start = torch.tensor([[0.1, 1.0, 0.1, 1.0], [0.2, 0.5, -0.3, 2.0]])
    direction = torch.tensor([[1.0, -1.0, 1.0, 1.0], [-1.0, 1.0, 1.0, -1.0]])
    trajectories = []
    for scale in (1e-3, 1.0, 1e3):
        state = GlobalCoefficients(start, config=config)
        trajectories.append([state.apply(scale * direction) for _ in range(config.rounds)])
    expected = start.clone()
    for step, got in enumerate(trajectories[1]):
        lr = 0.05 * _schedule(step, total=5, warmup_fraction=config.warmup_fraction)
        expected = expected * (1 - lr * 1e-3) + lr * direction
        assert torch.allclose(got, expected, atol=1e-5)
    for other in (trajectories[0], trajectories[2]):
        assert all(torch.allclose(a, b, atol=1e-4)
                   for a, b in zip(other, trajectories[1], strict=True))


@pytest.mark.parametrize("noise_multiplier", [0.0, 1e-9])
def test_global_adam_participants_take_plain_sgd_steps_on_clipped_gradients(
    tiny_llama_dir: Path, shared_data: Path, noise_multiplier: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under ``global_adam`` a round's update is ``-sgd_learning_rate`` times the step's
    mean gradient (clipped per record and divided by the expected batch under DP), not
    an AdamW step, so averaging over participants happens before any normalisation."""
    from participant.calibration import LocalCalibrator

    lm, sites, task, records = _tiny(tiny_llama_dir, shared_data, n=4)
    vector = torch.zeros(2, sites.num_layers, lm.model.config.hidden_size)
    config = CalibrationConfig(optimizer="global_adam", sgd_learning_rate=0.5, batch_size=4,
                               steps_per_round=1, max_grad_norm=1.0)
    calibrator = LocalCalibrator(lm, sites, task, records, vector, config=config,
                                 noise_multiplier=noise_multiplier, seed=0)
    rows = calibrator.coefficients.shape
    grads = torch.stack([torch.full(rows, v) for v in (0.1, -0.2, 3.0, -4.0)])
    monkeypatch.setattr(calibrator, "_sample", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(calibrator, "per_example_gradients", lambda idx: (grads, 1.0))
    update = calibrator.run_round(calibrator.coefficients.detach().clone())
    if noise_multiplier:  # each record clipped to norm 1, summed, / expected batch 4
        clipped = grads * (1.0 / grads.flatten(1).norm(dim=1)).clamp(max=1.0)[:, None, None]
        step_mean = clipped.sum(0) / 4
    else:
        step_mean = grads.mean(0)
    assert torch.allclose(update, -0.5 * step_mean, atol=1e-5)


def test_a_capped_step_projects_the_clipped_sum_and_keeps_a_records_sensitivity(
    tiny_llama_dir: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Distributed DP's ``max_sum_norm``: a step whose clipped gradients sum past the cap
    is projected onto it (and counted); one that does not is untouched; and a record added
    to a capped batch moves the capped sum by at most the clip (the projection is
    non-expansive, so the accountant's sensitivity holds)."""
    from participant.calibration import LocalCalibrator

    lm, sites, task, records = _tiny(tiny_llama_dir, shared_data, n=4)
    vector = torch.zeros(2, sites.num_layers, lm.model.config.hidden_size)
    config = CalibrationConfig(optimizer="global_adam", sgd_learning_rate=1.0, batch_size=4,
                               steps_per_round=1, max_grad_norm=1.0)
    rows = (config.trained_rows(sites.num_layers), 4)

    def step(grads: torch.Tensor) -> tuple[torch.Tensor, int]:
        calibrator = LocalCalibrator(lm, sites, task, records, vector, config=config,
                                     noise_multiplier=1e-9, seed=0, common_batch=True,
                                     max_sum_norm=2.0)
        monkeypatch.setattr(calibrator, "_sample", lambda: list(range(len(grads))))
        monkeypatch.setattr(calibrator, "per_example_gradients", lambda idx: (grads, 1.0))
        update = calibrator.run_round(calibrator.coefficients.detach().clone())
        return -update * 4, calibrator.sums_capped  # the (capped) clipped sum

    direction = torch.ones(rows) / math.sqrt(rows[0] * 4)
    aligned = torch.stack([3.0 * direction] * 3)  # three records clipped to 1: sum norm 3
    capped, count = step(aligned)
    assert count == 1 and float(capped.norm()) == pytest.approx(2.0, rel=1e-4)
    assert torch.allclose(capped, 2.0 * direction, atol=1e-5)
    small = torch.stack([0.5 * direction, -0.2 * direction])
    uncapped, count = step(small)
    assert count == 0 and torch.allclose(uncapped, 0.3 * direction, atol=1e-5)
    other = torch.randn(rows)
    neighbour, _ = step(torch.cat([aligned, (5.0 * other / other.norm())[None]]))
    assert float((neighbour - capped).norm()) <= 1.0 + 1e-4
    with pytest.raises(ConfigError, match="fixed clip"):
        LocalCalibrator(lm, sites, task, records, vector, noise_multiplier=1.0, seed=0,
                        config=CalibrationConfig(optimizer="global_adam", clip_quantile=0.5),
                        max_sum_norm=2.0)


def test_config_rejects_an_unknown_optimizer_and_a_bad_sgd_rate() -> None:
    with pytest.raises(ConfigError, match="optimizer"):
        CalibrationConfig(optimizer="server_adam")
    with pytest.raises(ConfigError, match="sgd_learning_rate"):
        CalibrationConfig(optimizer="global_adam", sgd_learning_rate=0.0)


def test_adaptive_clip_moves_towards_its_quantile_over_the_expected_batch(
    tiny_llama_dir: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``clip_quantile`` the clip moves by ``exp(-rate * (b - quantile))`` after each
    step, ``b = sum_i (unclipped_i - 1/2) / expected batch + 1/2`` (Andrew et al.'s
    centred count, sensitivity 1/2): up when every record is clipped; when half the
    expected batch was drawn and all of it fitted, b = 0.75, where Opacus's raw count
    over the records drawn (which Poisson sampling makes data-dependent) gives 1. The
    step itself clips at the clip in force before the move."""
    import math

    from participant.calibration import LocalCalibrator

    lm, sites, task, records = _tiny(tiny_llama_dir, shared_data, n=4)
    vector = torch.zeros(2, sites.num_layers, lm.model.config.hidden_size)
    config = CalibrationConfig(optimizer="global_adam", sgd_learning_rate=1.0, batch_size=4,
                               steps_per_round=1, max_grad_norm=1.0, clip_quantile=0.5,
                               clip_learning_rate=0.2)
    calibrator = LocalCalibrator(lm, sites, task, records, vector, config=config,
                                 noise_multiplier=1e-9, seed=0)
    assert calibrator.clip == 1.0 and calibrator.expected_batch == 4
    rows = calibrator.coefficients.shape
    large = torch.stack([torch.full(rows, v) for v in (3.0, -4.0, 5.0, 6.0)])
    monkeypatch.setattr(calibrator, "_sample", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(calibrator, "per_example_gradients", lambda idx: (large, 1.0))
    update = calibrator.run_round(calibrator.coefficients.detach().clone())
    clipped = large / large.flatten(1).norm(dim=1)[:, None, None]  # every record at clip 1
    assert torch.allclose(update, -clipped.sum(0) / 4, atol=1e-5)
    assert calibrator.clip == pytest.approx(math.exp(0.2 * 0.5), rel=1e-6)

    before = calibrator.clip
    small = torch.full((2, *rows), 1e-3)
    monkeypatch.setattr(calibrator, "_sample", lambda: [0, 1])
    monkeypatch.setattr(calibrator, "per_example_gradients", lambda idx: (small, 1.0))
    calibrator.run_round(calibrator.coefficients.detach().clone())
    # (2 - 2/2) / 4 + 1/2 = 0.75 unclipped: down by exp(-0.2 * 0.25), not exp(-0.2 * 0.5)
    assert calibrator.clip == pytest.approx(before * math.exp(-0.2 * 0.25), rel=1e-6)


@pytest.mark.parametrize(("field", "value"), [
    ("label_bias", "prior"), ("label_bias_sample_rate", 0.0),
    ("label_bias_sample_rate", 1.5), ("label_bias_sample_rate", float("nan")),
    ("label_bias_noise_multiplier", 0.0), ("label_bias_noise_multiplier", float("inf")),
    ("label_bias_prior_stds", -1.0), ("label_bias_prior_stds", float("nan")),
])
def test_config_rejects_bad_label_bias_settings(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        CalibrationConfig(**{field: value})  # type: ignore[arg-type]


def test_config_rejects_a_clip_quantile_outside_0_1_and_a_bad_clip_rate() -> None:
    for quantile in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="clip_quantile"):
            CalibrationConfig(clip_quantile=quantile)
    with pytest.raises(ConfigError, match="clip_learning_rate"):
        CalibrationConfig(clip_learning_rate=0.0)


@pytest.mark.parametrize("loss", ["label_words", "full_vocab"])
def test_residuals_are_the_logit_gradient_norm_over_sqrt2(
    tiny_llama_dir: Path, shared_data: Path, loss: str,
) -> None:
    """A record's residual is ``||softmax - onehot(y)|| / sqrt(2)`` of its loss's logits:
    ``1 - p(y)`` over two label words; it comes from the same forward pass as the
    gradients, which it leaves unchanged."""
    import math

    from participant.calibration import LocalCalibrator
    from participant.model import last_token_logits

    lm, sites, task, records = _tiny(tiny_llama_dir, shared_data, n=5)
    vector = torch.zeros(2, sites.num_layers, lm.model.config.hidden_size)
    config = CalibrationConfig(loss=loss, calibration_noise=0.0)
    calibrator = LocalCalibrator(lm, sites, task, records, vector, config=config,
                                 noise_multiplier=0.0, seed=0)
    indices = list(range(len(records)))
    grads, mean_loss, residuals = calibrator.per_example_gradients_and_residuals(indices)
    plain, plain_loss = calibrator.per_example_gradients(indices)
    assert torch.allclose(grads, plain) and mean_loss == pytest.approx(plain_loss)
    input_ids, mask, last = calibrator.queries.batch(indices)
    with torch.no_grad():  # zero vector, zero noise: the injection leaves the model as is
        final = last_token_logits(lm.model, input_ids, mask, last)
    ids = calibrator.queries.label_token_ids
    labels = calibrator.queries.labels
    if loss == "label_words":
        p_true = torch.softmax(final[:, ids], -1)[torch.arange(5), labels]
        expected = 1.0 - p_true  # two label words: ||p - e_y|| = sqrt(2) (1 - p_y)
    else:
        p = torch.softmax(final, -1)
        p[torch.arange(5), ids[labels]] -= 1.0
        expected = p.norm(dim=-1) / math.sqrt(2.0)
    assert torch.allclose(residuals, expected, atol=1e-5)
    assert bool(((residuals >= 0) & (residuals <= 1)).all())


@pytest.mark.parametrize(("clip_scale", "norms", "residuals", "clipped"), [
    # clips 0, 2, 0.5 and 1 (the last record's norm 0.1 is below its clip: kept)
    ("residual", (5.0, 5.0, -5.0, 0.1), (0.0, 1.0, 0.25, 0.5), (0.0, 2.0, -0.5, 0.1)),
    # sst2's two label words: clips 2 * min(1, 2 r) = 0, 1, 2 and 2
    ("residual_capped", (5.0, 5.0, -5.0, 5.0), (0.0, 0.25, 0.5, 0.9), (0.0, 1.0, -2.0, 2.0)),
])
def test_scaled_clips_clip_each_record_and_keep_the_noise(
    tiny_llama_dir: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch, clip_scale: str,
    norms: tuple[float, ...], residuals: tuple[float, ...], clipped: tuple[float, ...],
) -> None:
    """Under DP with a ``clip_scale`` record i enters the sum clipped to ``clip * s_i``: a
    record already classified (r = 0) adds nothing, one at s = 1 is clipped as before, one
    below its scaled clip is kept whole (sigma ~ 0, so the update is the clipped sum). The
    optimiser keeps the fixed clip and sigma, which set its noise std."""
    from participant.calibration import LocalCalibrator

    lm, sites, task, records = _tiny(tiny_llama_dir, shared_data, n=4)
    vector = torch.zeros(2, sites.num_layers, lm.model.config.hidden_size)
    config = CalibrationConfig(optimizer="global_adam", sgd_learning_rate=1.0, batch_size=4,
                               steps_per_round=1, max_grad_norm=2.0, clip_scale=clip_scale)
    calibrator = LocalCalibrator(lm, sites, task, records, vector, config=config,
                                 noise_multiplier=1e-9, seed=0)
    assert calibrator._loss_classes() == 2
    rows = calibrator.coefficients.shape
    unit = torch.ones(rows) / torch.ones(rows).norm()
    grads = torch.stack([n * unit for n in norms])
    monkeypatch.setattr(calibrator, "_sample", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(calibrator, "per_example_gradients_and_residuals",
                        lambda idx: (grads, 1.0, torch.tensor(residuals)))
    update = calibrator.run_round(calibrator.coefficients.detach().clone())
    assert torch.allclose(update, -sum(clipped) * unit / 4, atol=1e-5)
    assert calibrator.optimizer.max_grad_norm == 2.0  # type: ignore[attr-defined]
    assert calibrator.optimizer.noise_multiplier == 1e-9  # type: ignore[attr-defined]


def test_residual_clip_scales_plain_and_capped_at_the_uniform_predictions_residual() -> None:
    from participant.calibration import residual_clip_scales

    residuals = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.7, 1.0])
    plain = residual_clip_scales(residuals, clip_scale="residual", num_classes=2)
    assert torch.equal(plain, residuals)
    two = residual_clip_scales(residuals, clip_scale="residual_capped", num_classes=2)
    assert torch.allclose(two, torch.tensor([0.0, 0.2, 0.5, 1.0, 1.0, 1.0]))  # min(1, 2 r)
    # six labels: a uniform prediction's residual ||1/6 - e_y|| / sqrt(2) maps to exactly 1
    uniform = (torch.full((6,), 1 / 6) - torch.eye(6)[0]).norm() / math.sqrt(2.0)
    six = residual_clip_scales(torch.stack([uniform, uniform / 2]),
                               clip_scale="residual_capped", num_classes=6)
    assert torch.allclose(six, torch.tensor([1.0, 0.5]), atol=1e-6)
    with pytest.raises(ConfigError, match="2 classes"):
        residual_clip_scales(residuals, clip_scale="residual_capped", num_classes=1)
    with pytest.raises(ConfigError, match="no clip factors"):
        residual_clip_scales(residuals, clip_scale="none", num_classes=2)


def test_residual_clip_is_ignored_without_dp_and_refused_with_an_adaptive_clip(
    tiny_llama_dir: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from participant.calibration import LocalCalibrator

    with pytest.raises(ConfigError, match="clip_scale"):
        CalibrationConfig(clip_scale="loss")
    with pytest.raises(ConfigError, match="cannot be combined"):
        CalibrationConfig(clip_scale="residual", clip_quantile=0.5)
    lm, sites, task, records = _tiny(tiny_llama_dir, shared_data, n=2)
    vector = torch.zeros(2, sites.num_layers, lm.model.config.hidden_size)
    config = CalibrationConfig(optimizer="global_adam", batch_size=2, steps_per_round=1,
                               clip_scale="residual")
    calibrator = LocalCalibrator(lm, sites, task, records, vector, config=config,
                                 noise_multiplier=0.0, seed=0)
    grads = torch.stack([torch.full(calibrator.coefficients.shape, v) for v in (3.0, -1.0)])
    monkeypatch.setattr(calibrator, "_sample", lambda: [0, 1])
    monkeypatch.setattr(calibrator, "per_example_gradients", lambda idx: (grads, 1.0))
    update = calibrator.run_round(calibrator.coefficients.detach().clone())
    assert torch.allclose(update, -grads.mean(0), atol=1e-6)  # no clip, no scaling


def test_the_ledgers_sensitivity_line_names_each_clip_scale() -> None:
    from participant.federation import _clip_text

    assert _clip_text(CalibrationConfig(), 1.0) == "per-record gradient L2 1"
    assert "x its residual r_i <= 1" in _clip_text(CalibrationConfig(clip_scale="residual"), 1.0)
    capped = _clip_text(CalibrationConfig(clip_scale="residual_capped"), 2.0)
    assert capped.startswith("per-record gradient L2 2 ") and "min(1, r_i / r_uniform)" in capped


def test_seeded_dp_noise_is_shared_by_calibrations_that_differ_in_the_clip_only(
    tiny_llama_dir: Path, shared_data: Path,
) -> None:
    """With the same ``dp_noise_generator`` seed two calibrators draw the same DP-SGD noise:
    the difference of their one-step SGD updates is the difference of their clipped sums
    whatever the noise multiplier (common random numbers). Another seed draws other
    noise, and without a generator every run draws fresh noise."""
    from participant.calibration import LocalCalibrator

    lm, sites, task, records = _tiny(tiny_llama_dir, shared_data, n=4)
    vector = torch.zeros(2, sites.num_layers, lm.model.config.hidden_size)

    def update(clip_scale: str, sigma: float, noise_seed: int | None) -> torch.Tensor:
        config = CalibrationConfig(optimizer="global_adam", sgd_learning_rate=1.0, batch_size=4,
                                   steps_per_round=1, calibration_noise=0.0,
                                   clip_scale=clip_scale)
        generator = None if noise_seed is None else torch.Generator().manual_seed(noise_seed)
        calibrator = LocalCalibrator(lm, sites, task, records, vector, config=config,
                                     noise_multiplier=sigma, seed=0,
                                     dp_noise_generator=generator)
        return calibrator.run_round(calibrator.coefficients.detach().clone())

    noisy = update("none", 5.0, 7) - update("residual", 5.0, 7)
    quiet = update("none", 1e-9, 7) - update("residual", 1e-9, 7)
    assert float(update("none", 5.0, 7).abs().max()) > 0.5  # the noise dominates a step
    assert torch.allclose(noisy, quiet, atol=1e-5)
    assert torch.equal(update("none", 5.0, 7), update("none", 5.0, 7))
    assert not torch.allclose(update("none", 5.0, 7), update("none", 5.0, 8), atol=0.1)
    assert not torch.allclose(update("none", 5.0, None), update("none", 5.0, None), atol=0.1)
