"""Stage 2b: local calibration of the 4L injection coefficients, optionally DP-SGD.

Loss: cross-entropy of the label word's first token at the query's last token, with the
context vector injected (over the label words by default; over the full vocabulary as
in I2CL with ``loss="full_vocab"``). Per-example gradients come from one batched backward
pass: each batch row gets its own copy of the coefficients (``[B, G, 4]``, G = L unless
layers share coefficients), so the gradient of that copy is exactly that record's
gradient. Opacus's ``DPOptimizer`` then clips each to ``max_grad_norm``, sums, adds
Gaussian noise of std ``noise_multiplier * max_grad_norm`` and divides by the expected
batch size (Poisson sampling at rate ``sample_rate``: the setting Opacus's accountants
analyse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from opacus.optimizers import AdaClipDPOptimizer, DPOptimizer

from privacy.errors import ConfigError

from .data import Example
from .hooks import default_coefficients, inject_context
from .layers import LayerSites
from .model import LoadedModel, last_token_logits
from .tasks import TaskSpec

#: ``CalibrationConfig.update_weighting`` values.
UPDATE_WEIGHTINGS = ("uniform", "precision")
#: ``CalibrationConfig.optimizer`` values.
CALIBRATION_OPTIMIZERS = ("local_adamw", "global_adam")
#: ``CalibrationConfig.clip_scale`` values.
CLIP_SCALES = ("none", "residual", "residual_capped")
#: ``CalibrationConfig.label_bias``: none (the papers) or the class-balanced label bias.
LABEL_BIASES = ("none", "balanced")
#: Adaptive clipping: std of the unclipped-count noise, in units of the noise multiplier.
#: Andrew et al.'s Theorem 1 then raises the gradient noise to
#: ``sigma / sqrt(1 - 1 / (4 * ratio**2))`` (3% more at 2) so that both releases together
#: cost what the accountant charges for ``sigma`` alone.
CLIP_COUNT_NOISE_RATIO = 2.0


def precision_weight(*, expected_batch: int, noise_multiplier: float) -> float:
    """``expected_batch / sqrt(1 + sigma^2)``: the inverse std (in units of the clip) of a
    DP-SGD step's mean clipped gradient, counting the spread of clipped per-record
    gradients (about one clip: every record is clipped, docs/results.md §6) and the DP
    noise (sigma clips), over ``expected_batch`` records. Without DP it is the records per
    step (FedAvg's weighting by data). A function of the record count and the budget, which
    the accountant already treats as public; no record enters it."""
    return expected_batch / math.sqrt(1.0 + noise_multiplier ** 2)


@dataclass(frozen=True, slots=True)
class CalibrationConfig:
    """Local optimisation settings (reference-code defaults where the papers are silent).

    Attributes:
        learning_rate: AdamW peak learning rate. I2CL uses 0.01 for 100 epochs; with
            the ~50 local steps a CPU participant affords, 0.05 reached the accuracy of
            200 steps at 0.01 on a validation slice of the train split (docs/results.md).
        weight_decay: AdamW weight decay (I2CL: 1e-3).
        batch_size: expected records per step (Poisson sampling in private mode).
        steps_per_round: local steps between two federated averages.
        rounds: federated calibration rounds.
        warmup_fraction: linear warm-up share of all steps, then cosine decay (I2CL: 5%).
        calibration_noise: I2CL's residual noise scale during training (0.001).
        max_grad_norm: per-record gradient clip (DP-SGD; the sensitivity the noise is
            scaled to); the starting clip under ``clip_quantile``; ignored without privacy.
        clip_quantile: 0 (default) keeps the clip at ``max_grad_norm``. In (0, 1): adaptive
            clipping (Andrew et al. 2021, Opacus's ``AdaClipDPOptimizer``): after every
            step the clip moves geometrically towards this quantile of the per-record
            gradient norms, ``clip *= exp(-clip_learning_rate * (b - clip_quantile))``
            with ``b`` the step's fraction of unclipped records, estimated from the centred
            count ``sum_i (b_i - 1/2)`` (sensitivity 1/2) released with Gaussian noise of
            std ``CLIP_COUNT_NOISE_RATIO * sigma``, over the expected batch. The gradient
            noise grows 3% to pay for the count; the accountant is unchanged. A fixed clip
            far below the records' norms (every record clipped) weights every record alike
            and collapsed subj to one class even without noise (docs/results.md §16).
        clip_scale: ``none`` (default): every record is clipped to ``max_grad_norm``.
            ``residual``: record i is clipped to ``max_grad_norm * r_i``, with
            ``r_i = ||p_i - onehot(y_i)|| / sqrt(2)`` in [0, 1] the norm of its loss's
            gradient with respect to the logits (``1 - p(y_i)`` for two labels), computed
            in the same forward pass at the current coefficients. Opacus then clips at
            ``max_grad_norm`` as before (a no-op) and adds the same noise: sensitivity
            and accounting are unchanged, since any per-record function of norm at most
            the clip may be summed. Why: at a clip far below the records' norms (median
            2-11 against 1, docs/results.md §6) every record pushes with the same force
            however well it is already classified, so on a label-skewed split the
            records of the classes most participants hold keep pushing towards them after
            they are right, which the unclipped loss does not do (its gradients fade as
            p(y) -> 1); the clip alone collapsed subj to one class (§16). Scaling by the
            residual keeps the fading and normalises only the Jacobian part.
            ``residual_capped``: clipped to ``max_grad_norm * min(1, r_i / r_uniform)``,
            ``r_uniform = sqrt((K - 1) / (2 K))`` being the residual of the uniform
            prediction over the loss's K classes (1/2 for two labels, so ``min(1, 2 r_i)``;
            0.65 for six): a record predicted no better than chance keeps the whole clip,
            and only records the coefficients already classify fade. ``residual`` scales a
            misclassified six-label record the model is unsure of to about 0.65 of the
            clip, which cost trec signal (docs/results.md §18). Sensitivity and accounting
            as for ``residual``. Both are ignored without DP (nothing is clipped) and not
            combined with ``clip_quantile``.
        clip_learning_rate: the adaptive clip's geometric step. Andrew et al. take 0.2 over
            hundreds of rounds; a participant here takes about 20 DP steps, and at 0.5
            the clip can cross a 10x range (the records' median norms were 2-11 against a
            start of 1, docs/results.md §6) in about 10 of them.
        coefficient_groups: 0 (default) trains the 4 coefficients of every layer (I2CL);
            G > 0 splits the L layers into G contiguous groups that share their 4
            coefficients, so a round releases 4G values instead of 4L. DP-SGD noise has
            norm ``noise_multiplier * max_grad_norm * sqrt(4G)`` per step against a clipped
            signal of norm at most ``max_grad_norm``: fewer values, less noise in total, but
            less expressive coefficients; on a subj validation split it gave no accuracy
            gain at epsilon 8 (docs/results.md §6), hence the per-layer default.
        max_batch_tokens: padded tokens (rows x longest row) per forward/backward pass: a
            batch is split into length-sorted chunks under this bound, so memory stays
            bounded for long texts (ten in-process agnews participants exceeded 24 GiB
            before this and last-token-only logits); per-record gradients are exact
            whatever the split.
        loss: ``label_words`` (default: cross-entropy over the label words' first tokens,
            the quantity the classifier's argmax uses) or ``full_vocab`` (I2CL's
            cross-entropy over the whole vocabulary). With the ~20-50 local steps a CPU
            affords, label_words was better on validation slices of the train split
            (sst2 0.84 vs 0.78, trec 0.49 vs 0.33; docs/results.md).
        update_weighting: how the coordinator's secure sum averages the participants'
            round updates. ``uniform`` (default, the paper): the plain mean. ``precision``:
            each update weighted by :meth:`LocalCalibrator.update_weight`, the inverse std
            of the participant's step-mean clipped gradient, so that a participant whose
            gradients carry more DP noise counts less (on a Dirichlet split a participant
            with few records samples at rate 1 and its accountant needs sigma up to 18 at
            epsilon 1: one such participant held over half of the uniform mean's noise
            variance on five of six sst2/subj splits, ``benchmarks/dp_aggregate_noise.py``).
            The weight rides in one extra encrypted slot: the coordinator sees ciphertexts
            only, participants the sum of the weights.
        optimizer: where Adam's per-coordinate normalisation happens. ``local_adamw``
            (default, I2CL and the paper): every participant runs AdamW on its own (noisy)
            gradients and the round's mean update is added to the global coefficients.
            Under DP each participant's AdamW divides its signal by its own noise scale
            before the mean averages that noise. ``global_adam`` (FedAdam, Reddi et al.
            2021): participants take plain SGD
            steps at ``sgd_learning_rate`` and the round's mean update is the negative
            pseudo-gradient of one AdamW step (``learning_rate``, ``weight_decay``,
            warm-up and cosine decay over the rounds) that every participant takes
            identically on the decrypted aggregate (the coordinator cannot: it holds no
            key). With one step per round this is DP-Adam on the federation's averaged
            noisy gradient. Post-processing of the released aggregate: no budget spent.
            On a subj validation split it was the stronger optimiser with and without DP,
            but its own private-to-non-private gap was not smaller (docs/results.md §11).
        label_bias: ``none`` (default, I2CL and the paper): the classifier is the argmax of
            the label words' logits. ``balanced``: after the last round every participant
            releases class statistics of its records under the calibrated model
            (:mod:`privacy.label_bias`: per true class, the summed predicted label
            distributions and the count; sensitivity sqrt(2)), the federation sums them
            and every participant adds the class-balanced bias ``b [C]`` computed from the
            sum to the label logits at inference. A correction of calibration's class skew
            under DP (the per-record clip pulls towards the classes most participants
            hold, docs/results.md §16, §31); C numbers, no model change.
        label_bias_sample_rate: Poisson rate at which a participant samples its records for
            the statistics (what its accountant is told).
        label_bias_noise_multiplier: the statistics' own noise multiplier (fixed, under
            DP; the accountant composes it with the other releases and solves for their
            common one, :class:`privacy.accounting.PlannedRelease`). Counts of tens to
            hundreds of records afford far more noise than a DP-SGD step: at 5 (rate 0.25)
            the release raised calibration's noise multiplier by at most 2.5% at epsilon 1
            and 0.1% at epsilon 8 on docs/results.md's splits. A fixed multiplier rather
            than a multiple of each participant's own: a participant with few records
            needs a large common one, and its share would dominate the summed statistics'
            noise (docs/results.md §10, §31).
        label_bias_prior_stds: shrinks every class's row of the summed statistics towards
            the uniform distribution with ``k`` standard deviations of the sum's noise as
            pseudo-records (:func:`privacy.label_bias.balanced_bias`'s ``prior_count``;
            post-processing, no privacy cost): a class whose count the noise swamps (trec's
            rarest, a few sampled records against a noise std of 22 for ten participants)
            then moves the bias by about nothing instead of by its noise. 0: the plain
            estimate; no effect without DP. 1 (default): on a validation split's DP
            cells it kept or raised the mean and narrowed the spread over noise draws
            against 0 (docs/results.md §32).
        sgd_learning_rate: the participants' SGD step under ``global_adam`` (constant).
            With one step per round (the measured setting) it only scales the
            pseudo-gradient, which Adam's normalisation removes; with several local steps
            it is a real step size on clipped gradients (norm up to ``max_grad_norm``) and
            needs choosing.
    """

    learning_rate: float = 0.05
    weight_decay: float = 1e-3
    batch_size: int = 16
    steps_per_round: int = 12
    rounds: int = 4
    warmup_fraction: float = 0.05
    calibration_noise: float = 0.001
    max_grad_norm: float = 1.0
    clip_quantile: float = 0.0
    clip_learning_rate: float = 0.5
    clip_scale: str = "none"
    coefficient_groups: int = 0
    max_batch_tokens: int = 1024
    loss: str = "label_words"
    update_weighting: str = "uniform"
    optimizer: str = "local_adamw"
    sgd_learning_rate: float = 1.0
    label_bias: str = "none"
    label_bias_sample_rate: float = 0.25
    label_bias_noise_multiplier: float = 5.0
    label_bias_prior_stds: float = 1.0

    def __post_init__(self) -> None:
        if self.optimizer not in CALIBRATION_OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {CALIBRATION_OPTIMIZERS}, "
                              f"got {self.optimizer!r}")
        if self.sgd_learning_rate <= 0:
            raise ConfigError("sgd_learning_rate must be > 0")
        if self.label_bias not in LABEL_BIASES:
            raise ConfigError(f"label_bias must be one of {LABEL_BIASES}, got {self.label_bias!r}")
        if not 0 < self.label_bias_sample_rate <= 1:  # also refuses NaN
            raise ConfigError("label_bias_sample_rate must be in (0, 1], "
                              f"got {self.label_bias_sample_rate!r}")
        if not 0 < self.label_bias_noise_multiplier < math.inf:
            raise ConfigError("label_bias_noise_multiplier must be finite and > 0, "
                              f"got {self.label_bias_noise_multiplier!r}")
        if not 0 <= self.label_bias_prior_stds < math.inf:
            raise ConfigError("label_bias_prior_stds must be finite and >= 0, "
                              f"got {self.label_bias_prior_stds!r}")
        if self.update_weighting not in UPDATE_WEIGHTINGS:
            raise ConfigError(f"update_weighting must be one of {UPDATE_WEIGHTINGS}, "
                              f"got {self.update_weighting!r}")
        if self.batch_size < 1 or self.steps_per_round < 1 or self.rounds < 0:
            raise ConfigError("batch_size and steps_per_round must be >= 1, rounds >= 0")
        if self.loss not in ("full_vocab", "label_words"):
            raise ConfigError("loss must be 'full_vocab' or 'label_words'")
        if not (self.learning_rate > 0 and self.max_grad_norm > 0
                and self.clip_learning_rate > 0):  # also refuses NaN
            raise ConfigError("learning_rate, max_grad_norm and clip_learning_rate must be > 0")
        if not 0 <= self.clip_quantile < 1:
            raise ConfigError("clip_quantile must be in [0, 1) (0 = a fixed clip), "
                              f"got {self.clip_quantile!r}")
        if self.clip_scale not in CLIP_SCALES:
            raise ConfigError(f"clip_scale must be one of {CLIP_SCALES}, got {self.clip_scale!r}")
        if self.clip_scale != "none" and self.clip_quantile:
            raise ConfigError("clip_scale and clip_quantile cannot be combined: the adaptive "
                              "clip counts the records its clip leaves unclipped")
        if self.max_batch_tokens < 1:
            raise ConfigError("max_batch_tokens must be >= 1")
        if isinstance(self.coefficient_groups, bool) or not isinstance(
                self.coefficient_groups, int) or self.coefficient_groups < 0:
            raise ConfigError("coefficient_groups must be an int >= 0 (0 = one per layer)")

    def trained_rows(self, num_layers: int) -> int:
        """Rows of the trained ``[G, 4]`` coefficients for a model of ``num_layers``."""
        if self.coefficient_groups > num_layers:
            raise ConfigError(f"coefficient_groups={self.coefficient_groups} exceeds the "
                              f"model's {num_layers} layers")
        return self.coefficient_groups or num_layers

    @property
    def total_steps(self) -> int:
        """Local steps over the whole protocol."""
        return self.rounds * self.steps_per_round


class _AdaptiveClipOptimizer(AdaClipDPOptimizer):
    """Opacus's adaptive clipping with the clip's statistic as Andrew et al. release it.

    Opacus adds ``N(0, sigma_b^2)`` to the raw unclipped count (sensitivity 1 when a
    record is added or removed) but sizes the gradient noise by Theorem 1's
    ``(sigma^-2 - (2 sigma_b)^-2)^-1/2``, which holds for the centred sum
    ``sum_i (b_i - 1/2)`` (sensitivity 1/2); and it divides by the records the step drew,
    which under Poisson sampling depend on who is in the data and carry no noise. Here
    the released statistic is the centred noisy sum, and the fraction is
    ``(sum_i (b_i - 1/2) + noise) / expected batch + 1/2``, as in the paper.
    """

    def update_max_grad_norm(self) -> None:
        drawn = self.sample_size  # only inside the centred sum, whose sensitivity is 1/2
        centred_noisy_sum = float(self.unclipped_num) - drawn / 2
        unclipped_fraction = centred_noisy_sum / self.expected_batch_size + 0.5
        clip = float(self.max_grad_norm) * math.exp(
            -self.clipbound_learning_rate * (unclipped_fraction - self.target_unclipped_quantile))
        self.max_grad_norm = min(max(clip, self.min_clipbound), self.max_clipbound)


#: Distributed DP caps a step's clipped-gradient sum at this many batches of clips
#: (:class:`_SumCappedDPOptimizer`), which bounds the noise-free part of an update.
MAX_SUM_BATCHES = 3


class _SumCappedDPOptimizer(DPOptimizer):
    """Opacus's DP-SGD with the step's clipped-gradient sum projected onto the L2 ball of
    radius ``max_sum_norm`` before the noise.

    Projection onto a convex set is non-expansive, so adding or removing a record still
    moves the sum by at most ``max_grad_norm`` and the accountant is unchanged; what the
    cap buys is a bound on the release's noise-free part, which distributed DP's public
    value bound relies on (``privacy.masking.HEADROOM_STDS``). It acts only on a step
    whose clipped gradients sum past ``max_sum_norm`` (three batches' worth of aligned
    clips at the default), counted in ``sums_capped``.
    """

    def __init__(self, *args: Any, max_sum_norm: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not max_sum_norm > 0:
            raise ConfigError(f"max_sum_norm must be > 0, got {max_sum_norm}")
        self.max_sum_norm = max_sum_norm
        self.sums_capped = 0

    def add_noise(self) -> None:
        norm = float(torch.sqrt(sum(p.summed_grad.pow(2).sum() for p in self.params)))
        if norm > self.max_sum_norm:
            for p in self.params:
                p.summed_grad.mul_(self.max_sum_norm / norm)
            self.sums_capped += 1
        super().add_noise()


def per_layer(coefficients: torch.Tensor, num_layers: int) -> torch.Tensor:
    """Expand grouped coefficients ``[..., G, 4]`` to ``[..., L, 4]``.

    Layer ``l`` takes the row of group ``l * G // L`` (contiguous groups, sizes differing by
    at most one); ``G == L`` returns the input unchanged.
    """
    groups = coefficients.shape[-2]
    if groups == num_layers:
        return coefficients
    if not 0 < groups <= num_layers:
        raise ConfigError(f"{groups} coefficient rows cannot cover {num_layers} layers")
    group_of = torch.arange(num_layers) * groups // num_layers
    return coefficients.index_select(-2, group_of)


def _schedule(step: int, *, total: int, warmup_fraction: float) -> float:
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _scheduled_adamw(
    parameter: torch.nn.Parameter, config: CalibrationConfig, *, total_steps: int,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW at ``config.learning_rate`` with I2CL's warm-up and cosine decay."""
    optimizer = torch.optim.AdamW(
        [parameter], lr=config.learning_rate, weight_decay=config.weight_decay)
    total = max(1, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _schedule(s, total=total, warmup_fraction=config.warmup_fraction))
    return optimizer, scheduler


class GlobalCoefficients:
    """The federation's coefficients ``[G, 4]``, advanced by each round's decrypted mean
    update; every participant holds one and, fed the same aggregates, computes the same
    values (``CalibrationConfig.optimizer``).

    ``local_adamw`` adds the mean update. ``global_adam`` takes one AdamW step with the
    negated mean update as the gradient (FedAdam). The input is already released under
    DP, so nothing here spends budget.
    """

    def __init__(self, start: torch.Tensor, *, config: CalibrationConfig) -> None:
        self._value = torch.nn.Parameter(start.detach().clone())
        self._adam = config.optimizer == "global_adam"
        if self._adam:
            self._optimizer, self._scheduler = _scheduled_adamw(
                self._value, config, total_steps=config.rounds)

    @property
    def value(self) -> torch.Tensor:
        """The current coefficients (a copy)."""
        return self._value.detach().clone()

    def apply(self, mean_update: torch.Tensor) -> torch.Tensor:
        """Advance by one round's ``mean_update`` (the shape of :attr:`value`); returns
        the new coefficients."""
        if mean_update.shape != self._value.shape:
            raise ValueError(f"mean update of shape {tuple(mean_update.shape)} for "
                             f"coefficients of shape {tuple(self._value.shape)}")
        update = mean_update.to(self._value.dtype)
        if not self._adam:
            with torch.no_grad():
                self._value.add_(update)
            return self.value
        self._optimizer.zero_grad()
        self._value.grad = -update
        self._optimizer.step()
        self._scheduler.step()
        return self.value


class EncodedQueries:
    """Tokenised zero-demonstration prompts with their label token ids."""

    def __init__(self, lm: LoadedModel, task: TaskSpec, examples: list[Example]) -> None:
        self.lm = lm
        self.texts = [task.query(e.text) for e in examples]
        self.labels = torch.tensor([e.label for e in examples], dtype=torch.long)
        self.label_token_ids = torch.tensor(task.label_token_ids(lm.tokenizer), dtype=torch.long)
        self.lengths = [len(ids) for ids in lm.tokenizer(self.texts)["input_ids"]]

    def chunks(self, indices: list[int], *, max_tokens: int) -> list[list[int]]:
        """Positions into ``indices``, sorted by length and grouped so that each group's
        rows x longest row stays within ``max_tokens`` (a single longer row goes alone)."""
        order = sorted(range(len(indices)), key=lambda j: self.lengths[indices[j]])
        groups: list[list[int]] = []
        for j in order:
            if groups and (len(groups[-1]) + 1) * self.lengths[indices[j]] <= max_tokens:
                groups[-1].append(j)
            else:
                groups.append([j])
        return groups

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(input_ids [B, T], attention_mask [B, T], last positions [B])``."""
        enc = self.lm.encode([self.texts[i] for i in indices], padding=True)
        return enc["input_ids"], enc["attention_mask"], enc["attention_mask"].sum(1) - 1


def residual_clip_scales(residuals: torch.Tensor, *, clip_scale: str,
                         num_classes: int) -> torch.Tensor:
    """Per-record clip factors in [0, 1] from residuals ``[B]`` (``CalibrationConfig.clip_scale``).

    ``residual``: the residuals themselves. ``residual_capped``: ``min(1, r / r_uniform)``
    with ``r_uniform = sqrt((K - 1) / (2 K))``, the residual of a uniform prediction over
    ``num_classes`` = K. Either way a record's clipped gradient has norm at most the clip,
    so the sensitivity is the clip's.
    """
    if clip_scale == "residual":
        return residuals
    if clip_scale == "residual_capped":
        if num_classes < 2:
            raise ConfigError(f"residual_capped needs at least 2 classes, got {num_classes}")
        uniform = math.sqrt((num_classes - 1) / (2 * num_classes))
        return (residuals / uniform).clamp(max=1.0)
    raise ConfigError(f"no clip factors for clip_scale {clip_scale!r}")


class LocalCalibrator:
    """One participant's coefficient trainer, kept across federated rounds.

    Args:
        lm: the frozen model.
        sites: its layer sites.
        task: the task spec.
        examples: the participant's labelled calibration records (private).
        vector: ``[2, L, d]`` the injected (global) context vector.
        config: optimisation settings; the trained coefficients are ``[G, 4]`` with
            ``G = config.trained_rows(L)`` (expand with :func:`per_layer`).
        noise_multiplier: DP-SGD noise multiplier; 0 disables DP (no clipping either).
        seed: seeds batch sampling and calibration noise.
        dp_noise_generator: draws DP-SGD's noise; ``None`` (deployments) uses torch's
            OS-seeded generator (``PrivacySettings.insecure_noise_seed``).
        common_batch: divide every step's noisy gradient sum by ``config.batch_size`` even
            when this participant has fewer records (default: by its expected batch), so
            that a record weighs the same in every participant's update: distributed DP
            needs every share of a summed release to have the same sensitivity.
        max_sum_norm: under DP, project each step's clipped-gradient sum onto this L2
            radius before the noise (:class:`_SumCappedDPOptimizer`; distributed DP).

    The coefficients, their gradients and the optimiser live on the CPU whatever the
    model's device (they are 4G values); each forward pass moves the per-record rows to
    the model's device once.
    """

    def __init__(
        self, lm: LoadedModel, sites: LayerSites, task: TaskSpec, examples: list[Example],
        vector: torch.Tensor, *, config: CalibrationConfig, noise_multiplier: float, seed: int,
        dp_noise_generator: torch.Generator | None = None, common_batch: bool = False,
        max_sum_norm: float | None = None,
    ) -> None:
        if not examples:
            raise ConfigError("calibration needs at least one labelled record")
        self.lm, self.sites, self.vector, self.config = lm, sites, vector, config
        self.queries = EncodedQueries(lm, task, examples)
        self.private = noise_multiplier > 0
        self.sample_rate = min(1.0, config.batch_size / len(examples))
        #: Records per step: Poisson's expected count under DP, the batch otherwise.
        self.expected_batch = config.batch_size if common_batch else \
            max(1, round(self.sample_rate * len(examples)))
        self.noise_multiplier = noise_multiplier
        self.coefficients = torch.nn.Parameter(
            default_coefficients(config.trained_rows(sites.num_layers)))
        self.generator = torch.Generator().manual_seed(seed)
        # Calibration noise is drawn where the activations are (one stream on a CPU).
        self.noise_generator = self.generator if lm.device.type == "cpu" else \
            torch.Generator(device=lm.device).manual_seed(seed)
        # Under global_adam the participant's steps are plain SGD and the schedule is the
        # global optimiser's (GlobalCoefficients); otherwise I2CL's AdamW runs here.
        base: torch.optim.Optimizer
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        if config.optimizer == "global_adam":
            base = torch.optim.SGD([self.coefficients], lr=config.sgd_learning_rate)
        else:
            base, self.scheduler = _scheduled_adamw(
                self.coefficients, config, total_steps=config.total_steps)
        self.optimizer: torch.optim.Optimizer = base
        if max_sum_norm is not None and config.clip_quantile:
            raise ConfigError("max_sum_norm needs a fixed clip (clip_quantile = 0)")
        if self.private and config.clip_quantile:
            self.optimizer = _AdaptiveClipOptimizer(
                base, noise_multiplier=noise_multiplier, max_grad_norm=config.max_grad_norm,
                expected_batch_size=self.expected_batch, loss_reduction="mean",
                target_unclipped_quantile=config.clip_quantile,
                clipbound_learning_rate=config.clip_learning_rate,
                min_clipbound=config.max_grad_norm / 1000,
                max_clipbound=config.max_grad_norm * 1000,
                unclipped_num_std=CLIP_COUNT_NOISE_RATIO * noise_multiplier,
                generator=dp_noise_generator,
            )
        elif self.private:
            capped = {"max_sum_norm": max_sum_norm} if max_sum_norm is not None else {}
            self.optimizer = (_SumCappedDPOptimizer if capped else DPOptimizer)(
                base, noise_multiplier=noise_multiplier, max_grad_norm=config.max_grad_norm,
                expected_batch_size=self.expected_batch,
                loss_reduction="mean", generator=dp_noise_generator, **capped,
            )
        self.losses: list[float] = []

    @property
    def sums_capped(self) -> int:
        """Steps whose clipped-gradient sum was projected onto ``max_sum_norm`` (0 if none)."""
        return int(getattr(self.optimizer, "sums_capped", 0))

    @property
    def clip(self) -> float:
        """The per-record clip now (``max_grad_norm`` unless it adapts); 0 without DP."""
        if not self.private:
            return 0.0
        return float(self.optimizer.max_grad_norm)  # type: ignore[attr-defined]

    def update_weight(self) -> float:
        """This participant's weight in a ``precision``-weighted mean of round updates
        (:func:`precision_weight` of its records per step and noise multiplier)."""
        return precision_weight(expected_batch=self.expected_batch,
                                noise_multiplier=self.noise_multiplier)

    def _sample(self) -> list[int]:
        n = len(self.queries.texts)
        if self.private:  # Poisson sampling, as the accountant assumes
            mask = torch.rand(n, generator=self.generator) < self.sample_rate
            return [int(i) for i in torch.nonzero(mask).flatten()]
        return [
            int(i) for i in torch.randperm(n, generator=self.generator)[: self.config.batch_size]
        ]

    def per_example_gradients(self, indices: list[int]) -> tuple[torch.Tensor, float]:
        """``([B, G, 4] per-record gradients, mean loss)`` at the current coefficients."""
        grads, loss, _ = self.per_example_gradients_and_residuals(indices)
        return grads, loss

    def per_example_gradients_and_residuals(
        self, indices: list[int],
    ) -> tuple[torch.Tensor, float, torch.Tensor]:
        """``([B, G, 4] per-record gradients, mean loss, [B] residuals)``: a record's
        residual is ``||p - onehot(y)|| / sqrt(2)`` in [0, 1] over the loss's softmax, the
        norm of its loss's gradient with respect to the logits (``clip_scale``)."""
        grads = torch.zeros(len(indices), *self.coefficients.shape)
        residuals = torch.zeros(len(indices))
        if not indices:
            return grads, float("nan"), residuals
        total = 0.0
        for chunk in self.queries.chunks(indices, max_tokens=self.config.max_batch_tokens):
            grads[chunk], loss, residuals[chunk] = self._chunk_gradients(
                [indices[j] for j in chunk])
            total += loss
        return grads, total / len(indices), residuals

    def _chunk_gradients(self, indices: list[int]) -> tuple[torch.Tensor, float, torch.Tensor]:
        """``([b, G, 4] per-record gradients, summed loss, [b] residuals)`` for one
        forward/backward."""
        input_ids, mask, last = self.queries.batch(indices)
        per_row = self.coefficients.detach().unsqueeze(0).repeat(len(indices), 1, 1)
        per_row.requires_grad_(True)
        # One differentiable copy to the model's device per forward pass (the gradient comes
        # back in one), not one per hooked site in each direction.
        rows_on_device = per_layer(per_row, self.sites.num_layers).to(self.lm.device)
        with inject_context(
            self.lm.model, self.sites, vector=self.vector,
            coefficients=rows_on_device,
            noise_scale=self.config.calibration_noise, generator=self.noise_generator,
        ):
            final = last_token_logits(self.lm.model, input_ids, mask, last)
        labels = self.queries.labels[indices].to(final.device)
        label_token_ids = self.queries.label_token_ids.to(final.device)
        if self.config.loss == "label_words":
            logits, targets = final[:, label_token_ids], labels
        else:
            logits, targets = final, label_token_ids[labels]
        loss = F.cross_entropy(logits, targets, reduction="sum")
        (grad,) = torch.autograd.grad(loss, per_row)  # on the CPU, like the coefficients
        with torch.no_grad():
            residual = torch.softmax(logits.float(), dim=-1)
            residual[torch.arange(len(indices), device=residual.device), targets] -= 1.0
            residuals = residual.norm(dim=-1).div(math.sqrt(2.0)).clamp(max=1.0).cpu()
        return grad.detach(), float(loss.detach()), residuals

    def _step_gradients(self, indices: list[int]) -> tuple[torch.Tensor, float]:
        """A step's per-record gradients as handed to the (DP) optimiser: under DP with a
        ``clip_scale``, record i already clipped to ``clip * s_i`` with ``s_i`` in [0, 1]
        (:func:`residual_clip_scales`; at most the clip, so Opacus's own clip leaves it
        and the noise is unchanged)."""
        if not (self.private and self.config.clip_scale != "none"):
            return self.per_example_gradients(indices)
        grads, loss, residuals = self.per_example_gradients_and_residuals(indices)
        scales = residual_clip_scales(residuals, clip_scale=self.config.clip_scale,
                                      num_classes=self._loss_classes())
        norms = grads.flatten(1).norm(dim=1)
        factor = (self.clip * scales / norms.clamp(min=1e-12)).clamp(max=1.0)
        return grads * factor.view(-1, *([1] * (grads.dim() - 1))), loss

    def _loss_classes(self) -> int:
        """K, the number of classes the loss's softmax runs over."""
        if self.config.loss == "label_words":
            return len(self.queries.label_token_ids)
        return int(self.lm.model.get_output_embeddings().weight.shape[0])

    def run_round(self, start: torch.Tensor) -> torch.Tensor:
        """Train ``steps_per_round`` steps from ``start`` ``[G, 4]``; return the update."""
        with torch.no_grad():
            self.coefficients.copy_(start)
        for _ in range(self.config.steps_per_round):
            grads, loss = self._step_gradients(self._sample())
            self.optimizer.zero_grad()
            if self.private:
                self.coefficients.grad_sample = grads  # type: ignore[attr-defined]
            else:
                self.coefficients.grad = grads.mean(dim=0)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            if not math.isnan(loss):
                self.losses.append(loss)
        return (self.coefficients.detach() - start).clone()
