"""``fedctx experiment``: privacy-utility grids with baselines, resumable, with a report.

Every federated run is a real federation: an in-process coordinator on 127.0.0.1:0 with
mutual TLS and one thread per participant, each with its own model instance, through the
same :class:`participant.federation.Participant` code path as a deployment (the threads take
turns at the CPUs for model work, one per usable core; see ``Participant``'s
``compute_slot``). Baselines
(zero-shot, few-shot ICL, local-only I2CL, centralised I2CL) run in-process on the same
splits and test queries. Results are appended to ``results.jsonl`` as each run ends; a
killed sweep resumes without redoing finished runs, and an out folder refuses a config
whose settings (what is not in a run key: rounds, records, test queries...) differ from
those its rows were computed under (``settings.json``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import statistics
import threading
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from privacy.errors import ConfigError

METHODS_FEDERATED = "fedctx"
#: Named in ``baselines`` but run once per epsilon, as a real federation (DP-FedAvg-LoRA).
METHOD_LORA = "dp_fedavg_lora"
#: What ``baselines`` may name (each a ``Harness._baseline_*``; non-private fedctx is the
#: ``inf`` entry of ``epsilons``, not a baseline).
BASELINES = ("zero_shot", "few_shot", "local_only", "centralised", METHOD_LORA)
#: ``participant.calibration.UPDATE_WEIGHTINGS``, restated so that reading a config (and
#: ``--plan``) does not import torch; a unit test keeps the two equal.
UPDATE_WEIGHTINGS = ("uniform", "precision")
#: ``participant.calibration.CALIBRATION_OPTIMIZERS``, restated for the same reason.
CALIBRATION_OPTIMIZERS = ("local_adamw", "global_adam")
#: ``local``: each participant's noise carries its whole budget (fedctx's threat model).
#: ``central_simulated``: an analysis arm, see ``ExperimentConfig.noise_models``.
#: ``distributed:<t>``: pairwise-masked rounds tolerating ``t`` colluders (deployable);
#: ``distributed:<t>:<d>`` also tolerates ``d`` dropouts (shares sized for ``n - t - d``).
NOISE_MODELS = ("local", "central_simulated", "distributed:<t>", "distributed:<t>:<d>")


def distributed_bounds(noise_model: str) -> tuple[int, int] | None:
    """``(t, d)`` of a ``distributed:<t>[:<d>]`` noise model (``d`` 0 when absent),
    ``None`` for another model.

    Raises:
        ConfigError: ``distributed:`` followed by anything but one or two ints >= 0.
    """
    if not noise_model.startswith("distributed:"):
        return None
    parts = noise_model.removeprefix("distributed:").split(":")
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"noise model {noise_model!r}: 'distributed:' takes the number of "
                          "colluding participants tolerated and, after another ':', of "
                          "dropouts, ints >= 0")
    return int(parts[0]), int(parts[1]) if len(parts) == 2 else 0


def distributed_colluders(noise_model: str) -> int | None:
    """``t`` of a ``distributed:<t>[:<d>]`` noise model, ``None`` for another model."""
    bounds = distributed_bounds(noise_model)
    return None if bounds is None else bounds[0]
#: ``participant.calibration.CLIP_SCALES``, restated for the same reason.
CLIP_SCALES = ("none", "residual", "residual_capped")
#: ``participant.calibration.LABEL_BIASES``, restated for the same reason.
LABEL_BIASES = ("none", "balanced")
#: ``privacy.accounting.ACCOUNTANTS``, restated so that reading a config does not import
#: Opacus (and torch); a unit test keeps the two equal.
ACCOUNTANTS = ("rdp", "prv")


#: Axes whose TOML integers (``[1, 3]``) are read as floats.
_FLOAT_AXES = frozenset({"epsilons", "max_grad_norms", "clip_quantiles"})

#: Settings that became grid axes, with the value that every row of a folder recording
#: it was computed at for it to be keyed as today (another value is refused).
_FORMER_SETTINGS = {"max_grad_norm": 1.0}

#: ``ExperimentConfig`` fields that are grid axes (in every run key) or do not change what
#: a cell computes; the other fields are an out folder's settings.
_NOT_SETTINGS = frozenset({
    "name", "device", "data_root", "tasks", "participants", "dirichlet_alpha", "epsilons",
    "vector_sources", "controls_at_epsilon", "control_sources", "seeds", "baselines",
    "vector_clip_modes", "vector_denoise_modes", "coefficient_groups", "update_weightings",
    "calibration_optimizers", "max_grad_norms", "clip_quantiles", "clip_scales", "noise_seeds",
    "noise_models", "label_biases",
})


@dataclass(frozen=True, slots=True)
class ExperimentConfig:
    """A grid of runs (every list is a grid axis)."""

    name: str
    tasks: tuple[str, ...] = ("sst2", "subj", "agnews", "trec")
    data_root: str = "../shared/data"
    model: str = "smollm2-135m"
    #: Where the model runs (``cpu``, ``cuda``...): not part of a run's key; every row
    #: records it.
    device: str = "cpu"
    #: ``test`` (the task's test split, the reported numbers) or ``validation``: a
    #: class-balanced slice of ``test_per_class`` records per class held out of the train
    #: split before partitioning (disjoint from every participant's records), for choosing
    #: settings without looking at the test split. Rows record it.
    evaluation_split: str = "test"
    participants: tuple[int, ...] = (10,)
    dirichlet_alpha: tuple[float, ...] = (0.5,)
    epsilons: tuple[float, ...] = (math.inf, 8.0, 1.0)
    vector_sources: tuple[str, ...] = ("private", "public")
    controls_at_epsilon: float = math.inf
    control_sources: tuple[str, ...] = ("random", "zero")
    seeds: tuple[int, ...] = (0,)
    delta: float = 1e-5
    #: Opacus accountant every DP participant derives its noise with (``rdp``, the
    #: recorded tables', or ``prv``: the same guarantee with 6-10% less noise here,
    #: docs/privacy.md).
    accountant: str = "rdp"
    demonstrations_per_class: int = 4
    records_per_participant: int = 64
    rounds: int = 4
    steps_per_round: int = 6
    batch_size: int = 16
    learning_rate: float = 0.05
    #: DP-SGD's per-record clips of the calibration gradient (the sensitivity the noise is
    #: scaled to; the starting clip where it adapts): an axis for fedctx cells under DP.
    #: Nearly every record is clipped at 1 (results §6, §16).
    max_grad_norms: tuple[float, ...] = (1.0,)
    #: Adaptive clipping's target quantiles of the per-record gradient norms (0 = a fixed
    #: clip; see ``CalibrationConfig.clip_quantile``): an axis for fedctx cells under DP.
    clip_quantiles: tuple[float, ...] = (0.0,)
    #: How each record's clip is scaled (``none``, ``residual`` or ``residual_capped``: see
    #: ``CalibrationConfig.clip_scale``): an axis for fedctx cells under DP.
    clip_scales: tuple[str, ...] = ("none",)
    #: Seeded DP noise, for paired comparisons (an axis for fedctx cells under DP): empty
    #: (default), every DP cell draws its noise from the OS-seeded generator, as a
    #: deployment does. ``[0, 1, ...]``: each DP cell runs once per noise seed, and the
    #: participants' noise is drawn from generators seeded from (seed, noise seed,
    #: participant) (``PrivacySettings.insecure_noise_seed``): cells that differ in one
    #: setting then share their noise draws, so their difference carries less of the
    #: draw-to-draw spread, and the noise seeds measure that spread.
    noise_seeds: tuple[int, ...] = ()
    #: Where the DP noise is sized (an axis for fedctx cells under DP). ``local``
    #: (default, the only deployable one): every participant's releases carry noise for
    #: the whole budget on their own, since the participants share the CKKS key and may
    #: collude. ``central_simulated`` (analysis only): every participant adds
    #: ``1 / sqrt(participants)`` of that noise, so that the *secure sum* carries the
    #: budget's noise, as a trusted aggregator (central DP) or non-colluding participants
    #: (distributed DP) would allow; it measures what the threat model's local noise
    #: costs. Each participant is given the larger budget that yields this share
    #: (``privacy.accounting.epsilon_of_central_noise``) and its ledger records it: the
    #: row's ``epsilon`` is the central target, ``epsilon_spent`` the participant's own.
    #: Needs ``global_adam`` with ``steps_per_round = 1``, where a round releases a
    #: linear function of the noisy gradient (the sum is then one Gaussian mechanism);
    #: local AdamW steps are not summable so, and such cells are not planned.
    noise_models: tuple[str, ...] = ("local",)
    #: ``none`` (the papers) and / or ``balanced`` (``CalibrationConfig.label_bias``: a
    #: class-balanced bias on the label logits from DP class statistics): an axis for
    #: every fedctx cell, the controls included.
    label_biases: tuple[str, ...] = ("none",)
    #: The adaptive clip's geometric step (``CalibrationConfig.clip_learning_rate``).
    clip_learning_rate: float = 0.5
    test_per_class: int = 25
    few_shot_per_class: int = 1
    baselines: tuple[str, ...] = ("zero_shot", "few_shot", "local_only", "centralised")
    local_only_participants: int = 3
    vector_clip_modes: tuple[str, ...] = ("deviation",)
    vector_denoise_modes: tuple[str, ...] = ("james_stein",)
    #: Calibration coefficient groups (0 = one row per layer, I2CL); an axis for fedctx
    #: runs and the local-only / centralised I2CL baselines.
    coefficient_groups: tuple[int, ...] = (0,)
    #: How calibration round updates are averaged (``uniform``, the paper, or
    #: ``precision``: see ``CalibrationConfig.update_weighting``); an axis for fedctx runs.
    update_weightings: tuple[str, ...] = ("uniform",)
    #: Where Adam normalises calibration updates (``local_adamw``, I2CL and the paper, or
    #: ``global_adam``: see ``CalibrationConfig.optimizer``); an axis for fedctx runs.
    calibration_optimizers: tuple[str, ...] = ("local_adamw",)
    lora_rank: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_rounds: int = 2
    lora_steps_per_round: int = 4
    lora_batch_size: int = 8
    lora_learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        if unknown := sorted(set(self.baselines) - set(BASELINES)):
            raise ConfigError(f"baselines {unknown} are not among {list(BASELINES)} "
                              "(non-private fedctx is epsilon inf in epsilons)")
        if self.evaluation_split not in ("test", "validation"):
            raise ConfigError("evaluation_split must be 'test' or 'validation', "
                              f"got {self.evaluation_split!r}")
        if not self.max_grad_norms or not all(c > 0 for c in self.max_grad_norms):  # NaN too
            raise ConfigError("max_grad_norms must be a non-empty list of clips > 0, "
                              f"got {list(self.max_grad_norms)}")
        if not self.clip_quantiles or not all(0 <= q < 1 for q in self.clip_quantiles):
            raise ConfigError("clip_quantiles must be a non-empty list in [0, 1) "
                              f"(0 = a fixed clip), got {list(self.clip_quantiles)}")
        if not self.clip_scales or not set(self.clip_scales) <= set(CLIP_SCALES):
            raise ConfigError(f"clip_scales must be a non-empty list of {CLIP_SCALES}, "
                              f"got {list(self.clip_scales)}")
        if (not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0
                    for k in self.noise_seeds)
                or len(set(self.noise_seeds)) != len(self.noise_seeds)):
            raise ConfigError("noise_seeds must be distinct ints >= 0, "
                              f"got {list(self.noise_seeds)}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant must be {' or '.join(map(repr, ACCOUNTANTS))}, "
                              f"got {self.accountant!r}")
        unknown = set(self.update_weightings) - set(UPDATE_WEIGHTINGS)
        if unknown or not self.update_weightings:
            raise ConfigError(f"update_weightings must be a non-empty list of "
                              f"{UPDATE_WEIGHTINGS}, got {list(self.update_weightings)}")
        unknown = set(self.calibration_optimizers) - set(CALIBRATION_OPTIMIZERS)
        if unknown or not self.calibration_optimizers:
            raise ConfigError(f"calibration_optimizers must be a non-empty list of "
                              f"{CALIBRATION_OPTIMIZERS}, got {list(self.calibration_optimizers)}")
        if not self.label_biases or not set(self.label_biases) <= set(LABEL_BIASES):
            raise ConfigError(f"label_biases must be a non-empty list of {LABEL_BIASES}, "
                              f"got {list(self.label_biases)}")
        bounds = [distributed_bounds(m) for m in self.noise_models]
        if not self.noise_models or any(
                m not in NOISE_MODELS and b is None
                for m, b in zip(self.noise_models, bounds, strict=True)):
            raise ConfigError(f"noise_models must be a non-empty list of {NOISE_MODELS}, "
                              f"got {list(self.noise_models)}")
        if any(b is not None and sum(b) >= min(self.participants) for b in bounds):
            raise ConfigError("a 'distributed:<t>[:<d>]' noise model needs t + d below every "
                              f"participant count {list(self.participants)}")
        if set(self.noise_models) != {"local"} and (
                self.steps_per_round != 1 or "global_adam" not in self.calibration_optimizers):
            raise ConfigError("noise_models other than 'local' need calibration_optimizers "
                              "with 'global_adam' and steps_per_round = 1 (a round must "
                              "release a linear function of the noisy gradient)")

    def settings(self) -> dict[str, object]:
        """What shapes a cell's result without being in its run key: every field but the
        grid axes, ``name``, ``device`` (a GPU redraws but runs the same cell) and
        ``data_root`` (the same data may sit elsewhere on another machine). Rows of one
        out folder are comparable only under the same settings (:meth:`Harness.run`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in _NOT_SETTINGS}

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentConfig:
        """Load an ``[experiment]`` table."""
        try:
            table = tomllib.loads(Path(path).read_text(encoding="utf-8"))["experiment"]
        except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read experiment config {path}: {exc}") from exc
        known = {f.name: f for f in fields(cls)}
        unknown = set(table) - set(known)
        if unknown:
            raise ConfigError(f"{path}: unknown experiment keys {sorted(unknown)}")
        for key, value in list(table.items()):
            if isinstance(value, list):
                table[key] = tuple(float(v) if key in _FLOAT_AXES else v for v in value)
        return cls(**table)


@dataclass
class RunSpec:
    """One cell of the grid."""

    task: str
    method: str
    participants: int
    dirichlet_alpha: float
    seed: int
    epsilon: float = math.inf
    vector_source: str = ""
    vector_clip_mode: str = "deviation"
    vector_denoise: str = "none"
    coefficient_groups: int = 0
    update_weighting: str = "uniform"
    calibration_optimizer: str = "local_adamw"
    max_grad_norm: float = 1.0
    clip_quantile: float = 0.0
    clip_scale: str = "none"
    #: -1: noise from the OS-seeded generator; k >= 0: seeded (``ExperimentConfig.noise_seeds``)
    noise_seed: int = -1
    noise_model: str = "local"
    label_bias: str = "none"

    def key(self) -> str:
        """Stable id used for resuming (fields at their defaults keep older keys valid)."""
        fields_ = asdict(self)
        for name, default in (("vector_clip_mode", "deviation"), ("vector_denoise", "none"),
                              ("coefficient_groups", 0), ("update_weighting", "uniform"),
                              ("calibration_optimizer", "local_adamw"),
                              ("max_grad_norm", 1.0), ("clip_quantile", 0.0),
                              ("clip_scale", "none"), ("noise_seed", -1),
                              ("noise_model", "local"), ("label_bias", "none")):
            if fields_[name] == default:
                del fields_[name]
        return hashlib.sha256(json.dumps(fields_, sort_keys=True).encode()).hexdigest()[:16]


def plan_runs(config: ExperimentConfig) -> list[RunSpec]:
    """Every run of the grid, baselines first."""
    runs = []
    for task, n, alpha, seed in itertools.product(config.tasks, config.participants,
                                                  config.dirichlet_alpha, config.seeds):
        for method in config.baselines:
            if method in ("local_only", "centralised"):
                runs += [RunSpec(task, method, n, alpha, seed, coefficient_groups=groups)
                         for groups in config.coefficient_groups]
            elif method != METHOD_LORA:
                runs.append(RunSpec(task, method, n, alpha, seed))
        if METHOD_LORA in config.baselines:
            for eps in config.epsilons:
                runs.append(RunSpec(task, METHOD_LORA, n, alpha, seed, eps, ""))
        for eps, source in itertools.product(config.epsilons, config.vector_sources):
            dp = not math.isinf(eps)
            dp_private = source == "private" and dp
            modes = itertools.product(
                config.vector_clip_modes if dp_private else ("deviation",),
                config.vector_denoise_modes if dp_private else ("none",))
            clips = [(clip, quantile, scale) for clip, quantile, scale in itertools.product(
                config.max_grad_norms if dp else (1.0,), config.clip_quantiles if dp else (0.0,),
                config.clip_scales if dp else ("none",))
                if not (quantile and scale != "none")]  # not combined (CalibrationConfig)
            noise_seeds = (config.noise_seeds or (-1,)) if dp else (-1,)
            for (mode, denoise), groups, weighting, optimizer, (clip, quantile, scale), \
                    noise_seed, noise_model, label_bias in itertools.product(
                        modes, config.coefficient_groups, config.update_weightings,
                        config.calibration_optimizers, clips, noise_seeds,
                        config.noise_models if dp else ("local",), config.label_biases):
                if noise_model != "local" and (optimizer != "global_adam" or weighting
                                               != "uniform" or quantile):
                    continue  # not a sum of Gaussian mechanisms (ExperimentConfig)
                runs.append(RunSpec(task, METHODS_FEDERATED, n, alpha, seed, eps, source, mode,
                                    denoise, groups, weighting, optimizer, clip, quantile,
                                    scale, noise_seed, noise_model, label_bias))
        for source, groups, weighting, optimizer, label_bias in itertools.product(
                config.control_sources, config.coefficient_groups, config.update_weightings,
                config.calibration_optimizers, config.label_biases):
            runs.append(RunSpec(task, METHODS_FEDERATED, n, alpha, seed,
                                config.controls_at_epsilon, source, coefficient_groups=groups,
                                update_weighting=weighting, calibration_optimizer=optimizer,
                                label_bias=label_bias))
    return runs


def participant_noise_seed(spec: RunSpec, index: int) -> int:
    """Participant ``index``'s ``insecure_noise_seed`` in ``spec``'s cell: -1 unless the
    cell has a noise seed; then a function of (seed, noise seed, participant) only, so
    that cells differing in any other setting share their participants' noise draws."""
    if spec.noise_seed < 0:
        return -1
    digest = hashlib.sha256(f"{spec.seed}/{spec.noise_seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def append_row(path: Path, row: dict[str, object]) -> None:
    """Append ``row`` as one JSON line in a single ``O_APPEND`` write: lines from several
    processes appending to one file do not interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
    finally:
        os.close(fd)


def _write_records(path: Path, task, examples) -> None:  # type: ignore[no-untyped-def]
    """``{"text", "label"}`` JSONL that ``participant.data.read_records`` reads back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": e.text, "label": task.labels[e.label]}) + "\n"
                            for e in examples))


def _noise_range(reports: dict[str, object]) -> list[float]:
    """``[min, max]`` DP-SGD noise multiplier over a cell's participants: with a label-skewed
    split a participant with fewer records samples a larger fraction per step and needs
    more noise for the same epsilon (``noise_multiplier`` is participant 0's)."""
    values = [float(r.noise_multiplier) for r in reports.values()]  # type: ignore[attr-defined]
    return [min(values), max(values)]


def _clip_range(reports: dict[str, object]) -> dict[str, list[float]]:
    """``{"clip_range": [min, max]}``: the participants' per-record clips after the last
    round (where the clip adapts, each participant's own); empty without DP."""
    clips = [float(r.rounds[-1]["clip"]) for r in reports.values()  # type: ignore[attr-defined]
             if r.rounds and "clip" in r.rounds[-1]]  # type: ignore[attr-defined]
    return {"clip_range": [min(clips), max(clips)]} if clips else {}


def _priority(spec: RunSpec) -> tuple[int, int]:
    """Run order: the cells that answer the main questions on every task come first, so a
    sweep cut short still covers all tasks (stable within a tier: the plan's order)."""
    if spec.method in ("zero_shot", "centralised"):
        tier = 0
    elif spec.method == METHODS_FEDERATED and (
            (spec.vector_source == "private" and (math.isinf(spec.epsilon) or spec.epsilon >= 8))
            or (spec.vector_source == "public" and spec.epsilon == 8)):
        tier = 1
    elif spec.method in ("few_shot", "local_only") or (
            spec.method == METHODS_FEDERATED and math.isinf(spec.epsilon)):
        tier = 2
    else:
        tier = 3
    return tier, 0


def describe(spec: RunSpec) -> str:
    """One line naming a cell.

    E.g. ``sst2 seed 1, 10 participants (Dirichlet 0.5): fedctx public (eps=8)``.
    """
    what = spec.method
    if spec.method == METHODS_FEDERATED:
        eps = "no DP" if math.isinf(spec.epsilon) else f"eps={spec.epsilon:g}"
        extras = [eps]
        if spec.vector_denoise != "none":
            extras.append(spec.vector_denoise)
        if spec.vector_clip_mode != "deviation":
            extras.append(f"{spec.vector_clip_mode} clip")
        if spec.update_weighting != "uniform":
            extras.append(f"{spec.update_weighting}-weighted updates")
        if spec.calibration_optimizer != "local_adamw":
            extras.append(spec.calibration_optimizer.replace("_", " "))
        if spec.clip_quantile:
            extras.append(f"clip adapting to the {spec.clip_quantile:g} quantile "
                          f"from {spec.max_grad_norm:g}")
        elif spec.max_grad_norm != 1.0:
            extras.append(f"clip {spec.max_grad_norm:g}")
        if spec.clip_scale != "none":
            extras.append(f"{spec.clip_scale.replace('_', '-')}-scaled clip")
        if spec.noise_seed >= 0:
            extras.append(f"noise seed {spec.noise_seed}")
        if spec.noise_model == "central_simulated":
            extras.append("central noise, simulated")
        elif spec.noise_model != "local":
            colluders, dropouts = distributed_bounds(spec.noise_model)  # type: ignore[misc]
            extras.append(f"distributed noise, up to {colluders} colluding"
                          + (f" and {dropouts} dropping out" if dropouts else ""))
        if spec.label_bias != "none":
            extras.append(f"{spec.label_bias} label bias")
        what = f"fedctx {spec.vector_source} ({', '.join(extras)})"
    if spec.coefficient_groups:
        what += f", {spec.coefficient_groups} coefficient groups"
    alpha = f"Dirichlet {spec.dirichlet_alpha:g}" if spec.dirichlet_alpha else "IID"
    return (f"{spec.task} seed {spec.seed}, {spec.participants} participants ({alpha}): "
            f"{what}")


@dataclass
class Harness:
    """Runs a grid into ``out_dir``."""

    config: ExperimentConfig
    out_dir: Path
    _cache: dict[str, object] = field(default_factory=dict)

    @property
    def results_file(self) -> Path:
        """Append-only results, one JSON object per run."""
        return self.out_dir / "results.jsonl"

    @property
    def failures_file(self) -> Path:
        """Append-only failed cells (the error, or a process's exit status), one per line."""
        return self.out_dir / "failures.jsonl"

    def finished(self) -> dict[str, dict[str, object]]:
        """Runs already in the results file (for resuming)."""
        if not self.results_file.exists():
            return {}
        rows = {}
        for line in self.results_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["run_key"]] = row
        return rows

    @property
    def settings_file(self) -> Path:
        """The settings the folder's rows were computed under (written by the first run)."""
        return self.out_dir / "settings.json"

    def check_settings(self) -> None:
        """Refuse a folder whose rows were computed under other settings: a run key names
        only the cell, so resuming with, e.g., another ``test_per_class`` or ``rounds``
        would silently mix two experiments in one table. (A folder from before this file
        existed adopts the current settings; a setting the file does not name, added to
        the config since, ran at its default.)"""
        if not self.settings_file.exists():
            return
        try:
            recorded = json.loads(self.settings_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {self.settings_file}: {exc}") from exc
        current = json.loads(json.dumps(self.config.settings()))  # tuples as lists
        defaults = json.loads(json.dumps(
            {f.name: f.default for f in fields(ExperimentConfig) if f.name in current}))
        recorded = {**defaults, **{k: v for k, v in recorded.items()
                                   if k not in _FORMER_SETTINGS or v != _FORMER_SETTINGS[k]}}
        changed = sorted(k for k in recorded.keys() | current.keys()
                         if recorded.get(k) != current.get(k))
        if changed:
            diff = "; ".join(f"{k}: {recorded.get(k)!r} there, {current.get(k)!r} here"
                             for k in changed)
            raise ConfigError(f"{self.out_dir} holds runs made with other settings ({diff}); "
                              "use another --out, or the folder's settings")

    def pending(self) -> list[RunSpec]:
        """The cells not yet in the results file, in the order :meth:`run` takes them."""
        self.check_settings()
        done = self.finished()
        return sorted((r for r in plan_runs(self.config) if r.key() not in done), key=_priority)

    def prepare(self) -> list[RunSpec]:
        """Check the folder's settings, create it (with ``settings.json``); the pending cells."""
        pending = self.pending()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not self.settings_file.exists():
            self.settings_file.write_text(json.dumps(self.config.settings(), indent=1) + "\n")
        return pending

    def run(self, *, progress: bool = True,
            keys: frozenset[str] | None = None) -> list[dict[str, object]]:
        """Run every unfinished cell (of ``keys`` only, if given); returns all rows.
        Rows are appended one ``write`` each, so processes may share the folder
        (``fedctx experiment --jobs``, :mod:`fedctx.parallel`)."""
        from tqdm.auto import tqdm

        pending = [s for s in self.prepare() if keys is None or s.key() in keys]
        for spec in tqdm(pending, desc="runs", disable=not progress):
            start = time.perf_counter()
            try:
                row = self._run_one(spec)
            except Exception as exc:  # noqa: BLE001 - one failed cell must not end a sweep
                append_row(self.failures_file, {
                    **asdict(spec), "run_key": spec.key(), "error": repr(exc),
                    "wall_s": time.perf_counter() - start})
                continue
            row.update(asdict(spec), run_key=spec.key(), wall_s=time.perf_counter() - start,
                       model=self.config.model, device=self.config.device,
                       evaluation_split=self.config.evaluation_split)
            append_row(self.results_file, row)
        return list(self.finished().values())

    # -- shared pieces -----------------------------------------------------------------
    def model(self):  # type: ignore[no-untyped-def]
        """``(LoadedModel, layer sites)`` of the config's model, loaded once. Public so
        that analyses (``benchmarks/move_scaling.py``) score with the sweep's model."""
        if "lm" not in self._cache:
            from participant.layers import resolve_layer_sites
            from participant.model import load_model

            lm = load_model(self.config.model, device=self.config.device)
            self._cache["lm"] = (lm, resolve_layer_sites(lm.model))
        return self._cache["lm"]

    def splits(self, spec: RunSpec):  # type: ignore[no-untyped-def]
        """``(task, participants' records, test records, data folder)`` of a cell: the
        Dirichlet (or IID) split of the train split, each part capped at
        ``records_per_participant``; cached per task, count, alpha and seed. Public so that
        analyses (``benchmarks/dp_aggregate_noise.py``) use the very split a sweep runs."""
        from participant.data import balanced_sample, load_split, partition
        from participant.tasks import load_task

        key = f"{spec.task}/{spec.participants}/{spec.dirichlet_alpha}/{spec.seed}"
        if key not in self._cache:
            task = load_task(spec.task)
            data_dir = str(Path(self.config.data_root) / spec.task)
            local = data_dir if Path(data_dir).exists() else None
            train = load_split(task, "train", data_dir=local)
            if self.config.evaluation_split == "validation":
                test = balanced_sample(train, per_class=self.config.test_per_class,
                                       num_classes=len(task.labels), seed=2000 + spec.seed)
                held_out = {id(e) for e in test}
                train = [e for e in train if id(e) not in held_out]
            else:
                test = balanced_sample(load_split(task, "test", data_dir=local),
                                       per_class=self.config.test_per_class,
                                       num_classes=len(task.labels), seed=1000 + spec.seed)
            parts = partition(train, num_parts=spec.participants, seed=spec.seed,
                              dirichlet_alpha=spec.dirichlet_alpha or None,
                              num_classes=len(task.labels))
            parts = [p[: self.config.records_per_participant] for p in parts]
            self._cache[key] = (task, parts, test, data_dir)
        return self._cache[key]

    def _calibration(self, spec: RunSpec):  # type: ignore[no-untyped-def]
        from participant.calibration import CalibrationConfig

        c = self.config
        return CalibrationConfig(rounds=c.rounds, steps_per_round=c.steps_per_round,
                                 batch_size=c.batch_size, learning_rate=c.learning_rate,
                                 max_grad_norm=spec.max_grad_norm,
                                 clip_quantile=spec.clip_quantile,
                                 clip_scale=spec.clip_scale,
                                 clip_learning_rate=c.clip_learning_rate,
                                 coefficient_groups=spec.coefficient_groups,
                                 update_weighting=spec.update_weighting,
                                 optimizer=spec.calibration_optimizer,
                                 label_bias=spec.label_bias)

    # -- methods ------------------------------------------------------------------------
    def _run_one(self, spec: RunSpec) -> dict[str, object]:
        if spec.method == METHODS_FEDERATED:
            return self._federated(spec)
        return getattr(self, f"_baseline_{spec.method}")(spec)

    def _scores(self, scores) -> dict[str, object]:  # type: ignore[no-untyped-def]
        return {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1, "n_test": scores.n}

    def _baseline_zero_shot(self, spec: RunSpec) -> dict[str, object]:
        from participant.evaluation import evaluate

        lm, sites = self.model()
        task, _, test, _ = self.splits(spec)
        return {**self._scores(evaluate(lm, sites, task, test)), "epsilon_spent": 0.0}

    def _baseline_few_shot(self, spec: RunSpec) -> dict[str, object]:
        from participant.data import balanced_sample
        from participant.evaluation import few_shot_predict, score

        lm, _ = self.model()
        task, parts, test, _ = self.splits(spec)
        pooled = [e for p in parts for e in p]
        demos = balanced_sample(pooled, per_class=self.config.few_shot_per_class,
                                num_classes=len(task.labels), seed=spec.seed)
        predictions = few_shot_predict(lm, task, demos, [e.text for e in test])
        result = score(predictions, [e.label for e in test], num_classes=len(task.labels))
        return {**self._scores(result), "epsilon_spent": math.inf,
                "note": f"{len(demos)} demonstrations in the prompt (not private)"}

    def _i2cl(self, spec: RunSpec, records: list, seed: int, steps_scale: int = 1):  # type: ignore[no-untyped-def,type-arg]
        """Non-private I2CL on one record set: (vector, coefficients)."""
        from participant.calibration import LocalCalibrator, per_layer
        from participant.context_vectors import last_token_activations
        from participant.data import balanced_sample
        from participant.hooks import default_coefficients

        lm, sites = self.model()
        task = self.splits(spec)[0]
        demos = balanced_sample(records, per_class=self.config.demonstrations_per_class,
                                num_classes=len(task.labels), seed=seed)
        vector = last_token_activations(
            lm, sites, [task.demonstration(e.text, e.label) for e in demos]).mean(0)
        base = self._calibration(spec)
        config = replace(base, rounds=1, steps_per_round=base.total_steps * steps_scale,
                         optimizer="local_adamw")
        calibrator = LocalCalibrator(lm, sites, task, records, vector, config=config,
                                     noise_multiplier=0.0, seed=seed)
        start = default_coefficients(config.trained_rows(sites.num_layers))
        return vector, per_layer(start + calibrator.run_round(start), sites.num_layers)

    def _baseline_local_only(self, spec: RunSpec) -> dict[str, object]:
        from participant.evaluation import evaluate

        lm, sites = self.model()
        task, parts, test, _ = self.splits(spec)
        accs, f1s = [], []
        for index in range(min(self.config.local_only_participants, len(parts))):
            vector, coefficients = self._i2cl(spec, parts[index], seed=spec.seed + index)
            s = evaluate(lm, sites, task, test, vector=vector, coefficients=coefficients)
            accs.append(s.accuracy)
            f1s.append(s.macro_f1)
        return {"accuracy": statistics.mean(accs), "macro_f1": statistics.mean(f1s),
                "accuracy_std_over_participants": statistics.pstdev(accs),
                "n_test": len(test), "epsilon_spent": math.inf,
                "note": f"mean over {len(accs)} participants calibrating alone"}

    def _baseline_centralised(self, spec: RunSpec) -> dict[str, object]:
        from participant.evaluation import evaluate

        lm, sites = self.model()
        task, parts, test, _ = self.splits(spec)
        pooled = [e for p in parts for e in p]
        vector, coefficients = self._i2cl(spec, pooled, seed=spec.seed)
        return {**self._scores(evaluate(lm, sites, task, test, vector=vector,
                                        coefficients=coefficients)),
                "epsilon_spent": math.inf, "note": "pooled data, one calibrator"}

    def _loopback_federation(self, spec: RunSpec, run_participant) -> tuple[list[str], dict]:  # type: ignore[no-untyped-def,type-arg]
        """A real federation for one cell: in-process coordinator (mTLS, 127.0.0.1:0) and
        one thread per participant; ``run_participant(index, **base)`` builds the
        participant's config from ``base`` (identity, TLS, data file) and runs it. If one
        participant fails, the coordinator stops, the others fail fast, and the first
        error is raised (the cell is recorded as failed)."""
        import torch

        from coordinator.config import CoordinatorConfig
        from coordinator.server import CoordinatorServer

        from .provision import provision

        task, parts, test, data_dir = self.splits(spec)
        run_dir = self.out_dir / "runs" / spec.key()
        # A cell killed mid-run left its coordinator state and ledgers (with reservations)
        # behind; the re-run starts from nothing rather than inherit a half-spent budget.
        shutil.rmtree(run_dir, ignore_errors=True)
        ids = [f"p{i:02d}" for i in range(spec.participants)]
        pki = provision(run_dir / "pki", ids)
        federation_id = f"exp-{spec.key()}"
        server = CoordinatorServer(CoordinatorConfig(
            federation_id=federation_id, roster=tuple(ids), keyholder_id=ids[0],
            state_dir=run_dir / "coordinator", tls_cert=pki.coordinator_cert,
            tls_key=pki.coordinator_key, tls_ca=pki.ca_cert, round_timeout_s=3600,
        )).start()
        reports: dict[str, object] = {}
        errors: list[BaseException] = []
        stop_lock, stopped = threading.Lock(), threading.Event()

        def stop_coordinator() -> None:
            # Once: on the first participant's failure, so that the others' next call fails
            # within seconds instead of waiting out a round timeout (an hour here) for a
            # contribution that will never come; and at the end of the cell.
            with stop_lock:
                if not stopped.is_set():
                    stopped.set()
                    server.stop(grace_s=0)

        torch.set_num_threads(1)
        test_file = ""
        if self.config.evaluation_split == "validation":
            test_file = str(run_dir / "data" / "validation.jsonl")
            _write_records(Path(test_file), task, test)

        def run(index: int) -> None:
            pid = ids[index]
            data_file = run_dir / "data" / f"{pid}.jsonl"
            _write_records(data_file, task, parts[index])
            cert, key = pki.participants[pid]
            base = {
                "participant_id": pid, "coordinator": f"127.0.0.1:{server.port}",
                "tls_cert": cert, "tls_key": key, "tls_ca": pki.ca_cert,
                "state_dir": run_dir / pid, "federation_id": federation_id, "task": spec.task,
                "model": self.config.model, "device": self.config.device,
                "data_file": str(data_file), "data_dir": data_dir,
                "max_calibration_records": self.config.records_per_participant,
                "evaluate": index == 0, "test_per_class": self.config.test_per_class,
                "test_file": test_file,
                "seed": 1000 * spec.seed + index, "test_seed": 1000 + spec.seed,
            }
            try:
                reports[pid] = run_participant(index, **base)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)  # the first error is the cell's cause; then stop the rest
                stop_coordinator()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(spec.participants)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            stop_coordinator()
        if errors:
            raise errors[0]
        return ids, reports

    def _baseline_dp_fedavg_lora(self, spec: RunSpec) -> dict[str, object]:
        return self._lora(spec)

    def _lora(self, spec: RunSpec) -> dict[str, object]:
        """DP-FedAvg of LoRA adapters: a real federation, like :meth:`_federated`."""
        from participant.config import ParticipantConfig, PrivacySettings
        from participant.lora import LoraConfigSpec
        from participant.lora_federation import run_lora_participant

        c = self.config
        lora = LoraConfigSpec(rank=c.lora_rank, alpha=2.0 * c.lora_rank,
                              target_modules=tuple(c.lora_targets), rounds=c.lora_rounds,
                              steps_per_round=c.lora_steps_per_round,
                              batch_size=c.lora_batch_size, learning_rate=c.lora_learning_rate)

        def run(index: int, **base: object) -> object:
            config = ParticipantConfig(
                **base, vector_source="zero",  # type: ignore[arg-type]
                privacy=PrivacySettings(target_epsilon=spec.epsilon, delta=c.delta,
                                        accountant=c.accountant))
            return run_lora_participant(config, lora)

        ids, reports = self._loopback_federation(spec, run)
        first = reports[ids[0]]
        scores = first.scores["lora"]  # type: ignore[attr-defined]
        rounds = [r for rep in reports.values() for r in rep.rounds]  # type: ignore[attr-defined]
        return {
            "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "n_test": scores["n"],
            "epsilon_spent": max(r.epsilon_spent for r in reports.values()),  # type: ignore[attr-defined]
            "noise_multiplier": first.noise_multiplier,  # type: ignore[attr-defined]
            "noise_multiplier_range": _noise_range(reports),
            "bytes_sent_per_participant": statistics.mean(
                r.bytes_sent for r in reports.values()),  # type: ignore[attr-defined]
            "bytes_per_round": statistics.mean(r["bytes_sent"] for r in rounds),
            "client_seconds_per_round": statistics.mean(r["client_seconds"] for r in rounds),
            "secure_mean_seconds_per_round": statistics.mean(
                r["secure_mean_seconds"] for r in rounds),
            "adapter_values": first.adapter_values,  # type: ignore[attr-defined]
            "lora": first.lora,  # type: ignore[attr-defined]
            "client_seconds": first.seconds,  # type: ignore[attr-defined]
        }

    def _central_noise_share(self, spec: RunSpec, index: int, config):  # type: ignore[no-untyped-def]
        """``config`` with the budget whose noise is participant ``index``'s share of the
        central noise for ``spec.epsilon`` (``ExperimentConfig.noise_models``)."""
        from participant.federation import planned_releases
        from privacy.accounting import epsilon_of_central_noise

        records = len(self.splits(spec)[1][index])
        local = epsilon_of_central_noise(
            target_epsilon=spec.epsilon, target_delta=self.config.delta,
            plan=planned_releases(config, records=records), participants=spec.participants,
            accountant=self.config.accountant)
        return replace(config, privacy=replace(config.privacy, target_epsilon=local))

    def _distributed_noise(self, spec: RunSpec, config):  # type: ignore[no-untyped-def]
        """``config`` under distributed DP (``distributed:<t>[:<d>]``): masked rounds
        tolerating ``t`` colluders and ``d`` dropouts (``PrivacySettings.max_colluders``,
        ``max_dropouts``; nobody drops out here, the shares are sized as if). A private
        vector is released as a record-weighted sum (``vector_weighting = "records"``),
        the only form distributed DP takes."""
        colluders, dropouts = distributed_bounds(spec.noise_model)  # type: ignore[misc]
        weighting = "records" if spec.vector_source == "private" else config.vector_weighting
        return replace(config, vector_weighting=weighting, privacy=replace(
            config.privacy, max_colluders=colluders, max_dropouts=dropouts))

    def _federated(self, spec: RunSpec) -> dict[str, object]:
        from participant.config import ParticipantConfig, PrivacySettings
        from participant.federation import Participant

        # The participants are threads of this process: they take turns at the CPUs for
        # model work (ten threads on two cores thrash), and wait for the coordinator freely.
        slot = threading.BoundedSemaphore(len(os.sched_getaffinity(0)))

        def run(index: int, **base: object) -> object:
            config = ParticipantConfig(
                **base, vector_source=spec.vector_source,  # type: ignore[arg-type]
                demonstrations_per_class=self.config.demonstrations_per_class,
                privacy=PrivacySettings(target_epsilon=spec.epsilon, delta=self.config.delta,
                                        accountant=self.config.accountant,
                                        vector_clip_mode=spec.vector_clip_mode,
                                        vector_denoise=spec.vector_denoise,
                                        insecure_noise_seed=participant_noise_seed(spec, index)),
                calibration=self._calibration(spec),
            )
            if spec.noise_model == "central_simulated":
                config = self._central_noise_share(spec, index, config)
            elif spec.noise_model != "local":
                config = self._distributed_noise(spec, config)
            participant = Participant(config, compute_slot=slot)
            try:
                return participant.run()
            finally:
                participant.close()

        ids, reports = self._loopback_federation(spec, run)
        first = reports[ids[0]]
        scores = first.scores["injected_calibrated"]  # type: ignore[attr-defined]
        label_bias = {}
        if spec.label_bias != "none":  # the cell's classifier; what calibration alone gave
            label_bias = {"accuracy_without_label_bias": scores["accuracy"],
                          "macro_f1_without_label_bias": scores["macro_f1"],
                          "label_bias_values": first.label_bias}  # type: ignore[attr-defined]
            scores = first.scores["injected_calibrated_label_bias"]  # type: ignore[attr-defined]
        rounds = [r for rep in reports.values() for r in rep.rounds  # type: ignore[attr-defined]
                  if "bytes_sent" in r]
        per_round = {
            "bytes_per_round": statistics.mean(r["bytes_sent"] for r in rounds),
            "client_seconds_per_round": statistics.mean(r["client_seconds"] for r in rounds),
            "rounds_released": len(rounds) // len(reports),
        } if rounds else {}
        shrinkage = {"vector_shrinkage": first.vector_shrinkage} \
            if first.vector_shrinkage else {}  # type: ignore[attr-defined]
        distributed = {  # what a coalition larger than the bound leaves each participant
            "noise_share": first.noise_share,  # type: ignore[attr-defined]
            "update_weight_range": [min(r.update_weight for r in reports.values()),  # type: ignore[attr-defined]
                                    max(r.update_weight for r in reports.values())],  # type: ignore[attr-defined]
            "epsilon_if_more_collude": max(
                r.epsilon_if_more_collude for r in reports.values()),  # type: ignore[attr-defined]
            "masked_values_clamped": sum(
                r.masked_values_clamped for r in reports.values()),  # type: ignore[attr-defined]
            "calibration_sums_capped": sum(
                r.calibration_sums_capped for r in reports.values()),  # type: ignore[attr-defined]
            "delta_discretization": max(
                r.delta_discretization for r in reports.values()),  # type: ignore[attr-defined]
        } if first.noise_share is not None else {}  # type: ignore[attr-defined]
        return {**per_round, **shrinkage, **label_bias, **distributed,
            "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "n_test": scores["n"],
            "uncalibrated_accuracy": first.scores["injected_uncalibrated"]["accuracy"],  # type: ignore[attr-defined]
            "epsilon_spent": max(r.epsilon_spent for r in reports.values()),  # type: ignore[attr-defined]
            "noise_multiplier": first.noise_multiplier,  # type: ignore[attr-defined]
            "noise_multiplier_range": _noise_range(reports),
            **_clip_range(reports),
            "bytes_sent_per_participant": statistics.mean(
                r.bytes_sent for r in reports.values()),  # type: ignore[attr-defined]
            "client_seconds": first.seconds,  # type: ignore[attr-defined]
        }
