"""Participant configuration (TOML or keyword arguments), validated on construction."""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from privacy.ckks import CkksParams
from privacy.ckks_workers import MAX_WORKERS as MAX_CKKS_WORKERS
from privacy.errors import ConfigError

from .calibration import CalibrationConfig

VECTOR_SOURCES = ("private", "public", "random", "zero")

#: What ``vector_source="auto"`` (the default) becomes under DP, per model, as measured:
#: on the packaged SmolLM2-135M the private vector's release took about half of the budget
#: and the public reference (no budget) matched or beat it in every DP cell of
#: docs/results.md §3-4 and §7. Other models get the paper's private vector, and so does
#: every model without DP (nothing to save there).
VECTOR_SOURCE_UNDER_DP = {"smollm2-135m": "public"}


def resolve_vector_source(source: str, *, model: str, private: bool) -> str:
    """``source``, with ``auto`` replaced by the measured choice for ``model``."""
    if source != "auto":
        return source
    return VECTOR_SOURCE_UNDER_DP.get(model, "private") if private else "private"


@dataclass(frozen=True, slots=True)
class PrivacySettings:
    """Record-level DP for everything the participant releases.

    Attributes:
        target_epsilon: total budget for the whole protocol (vector + all calibration
            rounds); ``inf`` runs without privacy (no clipping, no noise).
        delta: delta of the budget (should be < 1 / number of records).
        accountant: Opacus accountant, ``rdp`` (default) or ``prv``.
        vector_clip_norm: whitened per-record clip of the context-vector release;
            0 means the default (sqrt(2L) for deviations, the public median for raw).
        vector_clip_mode: ``deviation`` (default: clip each record's deviation from the
            public reference) or ``raw`` (clip raw activations; a comparison arm that
            wastes the budget on the component common to all inputs).
        vector_denoise: ``james_stein`` (default) or ``none``: shrink the decrypted mean
            deviation, block by block, towards the public reference by its positive-part
            James-Stein factor from the known noise variance (post-processing, no budget
            spent; every participant of a federation must use the same setting).
        insecure_noise_seed: experiments only. -1 (default): every DP noise draw comes
            from torch's generator, seeded by the operating system when the process
            starts. ``k >= 0``: the vector release's and DP-SGD's noise come from
            generators seeded from ``k``, so two runs that differ in one setting draw the
            same noise (common random numbers: a paired comparison) and a run can be
            repeated draw for draw. Anyone who knows the seed can regenerate and subtract
            the noise, so the guarantee holds only against those who do not: never set
            it where the records are real.
        max_colluders: -1 (default): *local* DP. Every release carries its budget's whole
            noise on its own, so the guarantee holds whatever the other participants do,
            including all of them colluding with the coordinator (they share the CKKS key).
            ``t >= 0``: *distributed* DP for a federation of ``n`` participants that
            trusts at most ``t`` of them to collude (``t < n``). Contributions are
            pairwise-masked (:mod:`privacy.masking`), so a coalition of the coordinator and
            up to ``t`` participants reads only the sum of the others, and the ``n - t``
            honest participants' noise shares together carry what each one's budget needs
            (``participant.masked_sum.noise_shares``). Against a larger coalition a
            participant has only its own share (the report's ``epsilon_if_more_collude``).
            Needs ``optimizer = "global_adam"`` with ``steps_per_round = 1`` and uniform
            update weighting (a round's release must be a sum of Gaussian mechanisms), a
            fixed clip, ``vector_weighting = "records"`` for a private vector (its release is
            then a sum of clipped records, weighted like the calibration's updates), and
            every participant in every round unless ``max_dropouts`` allows fewer.
        max_dropouts: distributed DP only. 0 (default): every participant must contribute
            to every masked round. ``d >= 1``: up to ``d`` participants may drop out over
            the whole federation (Bonawitz-style recovery, :mod:`privacy.mask_recovery`):
            the survivors reveal Shamir shares that remove the missing participants'
            masks, every share carries ``1 / sqrt(n - t - d)`` of the noise (so the
            survivors' honest shares still carry all of it), and a round needs at least
            ``n - d`` contributions (the coordinator's quorum). Costs a separate mask key,
            sealed shares with every contribution and one more exchange per round.

    The calibration's per-record gradient clip is ``[participant.calibration]``'s
    ``max_grad_norm`` (``clip_quantile`` for an adaptive clip, ``clip_scale`` to scale each
    record's clip by its residual).
    """

    target_epsilon: float = 8.0
    delta: float = 1e-5
    accountant: str = "rdp"
    vector_clip_norm: float = 0.0
    vector_clip_mode: str = "deviation"
    vector_denoise: str = "james_stein"
    insecure_noise_seed: int = -1
    max_colluders: int = -1
    max_dropouts: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_colluders, bool) or not isinstance(self.max_colluders, int):
            raise ConfigError(f"max_colluders must be an int, got {self.max_colluders!r}")
        if self.max_colluders < -1:
            raise ConfigError("max_colluders must be -1 (local DP) or a count >= 0")
        if self.distributed and not self.private:
            raise ConfigError("max_colluders (distributed DP) needs a finite target_epsilon")
        if isinstance(self.max_dropouts, bool) or not isinstance(self.max_dropouts, int) or \
                self.max_dropouts < 0:
            raise ConfigError(f"max_dropouts must be an int >= 0, got {self.max_dropouts!r}")
        if self.max_dropouts and not self.distributed:
            raise ConfigError("max_dropouts needs distributed DP (max_colluders >= 0): local "
                              "DP rounds need no recovery")
        if not (self.target_epsilon > 0):
            raise ConfigError("target_epsilon must be > 0 (inf for no privacy)")
        if not 0 < self.delta < 1:
            raise ConfigError("delta must be in (0, 1)")
        if self.vector_clip_mode not in ("deviation", "raw"):
            raise ConfigError("vector_clip_mode must be 'deviation' or 'raw'")
        if self.vector_denoise not in ("none", "james_stein"):
            raise ConfigError("vector_denoise must be 'none' or 'james_stein'")
        if self.accountant not in ("rdp", "prv"):
            raise ConfigError("accountant must be 'rdp' or 'prv'")
        if isinstance(self.insecure_noise_seed, bool) or not isinstance(
                self.insecure_noise_seed, int) or self.insecure_noise_seed < -1:
            raise ConfigError("insecure_noise_seed must be -1 (noise from the OS-seeded "
                              f"generator) or a seed >= 0, got {self.insecure_noise_seed!r}")

    def noise_generator(self, stream: str) -> torch.Generator | None:
        """A generator for one stream of DP noise (``vector``, ``calibration``,
        ``label_bias``) seeded from ``insecure_noise_seed``, or ``None`` (torch's OS-seeded
        generator) when unset."""
        if self.insecure_noise_seed < 0:
            return None
        digest = hashlib.sha256(f"{self.insecure_noise_seed}/{stream}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))

    @property
    def private(self) -> bool:
        """Whether DP is on."""
        return not math.isinf(self.target_epsilon)

    @property
    def distributed(self) -> bool:
        """Whether the noise is shared among the participants (``max_colluders >= 0``)."""
        return self.max_colluders >= 0


@dataclass(frozen=True, slots=True)
class ParticipantConfig:
    """Everything one participant needs to join a federation.

    Data: either ``data_file`` (the organisation's own JSONL/CSV) or the task's train
    split sliced by ``partition_index`` of ``num_partitions`` (simulations).

    ``vector_source``: ``private`` (the papers: the mean of this participant's
    demonstrations, released under DP), ``public`` (the task's public reference text, no
    release), ``random`` or ``zero`` (controls), or ``auto`` (default), resolved on
    construction to ``VECTOR_SOURCE_UNDER_DP[model]`` under DP and to ``private`` otherwise.
    """

    participant_id: str
    coordinator: str
    tls_cert: Path
    tls_key: Path
    tls_ca: Path
    state_dir: Path
    federation_id: str
    task: str = "bbc"
    model: str = "smollm2-135m"
    dtype: str = "float32"
    device: str = "cpu"
    data_file: str = ""
    data_dir: str = ""
    partition_index: int = 0
    num_partitions: int = 1
    dirichlet_alpha: float = 0.0
    split_seed: int = 0
    vector_source: str = "auto"
    vector_weighting: str = "uniform"
    demonstrations_per_class: int = 8
    max_calibration_records: int = 256
    evaluate: bool = True
    test_per_class: int = 40
    #: labelled JSONL/CSV file to evaluate on instead of the task's test split (e.g. a
    #: validation slice held out of the training data); empty = the test split
    test_file: str = ""
    seed: int = 0
    test_seed: int = -1
    batch_size: int = 16
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    ckks: CkksParams = field(default_factory=CkksParams)
    #: processes that encrypt and decrypt (TenSEAL holds the GIL, so threads would not
    #: help); 1 = in this process. Several pay off on many-core hosts, e.g. beside a GPU.
    ckks_workers: int = 1
    results_file: str = ""
    server_name: str = ""
    cache_task: bool = True
    use_cached_task: bool = False

    def __post_init__(self) -> None:
        if self.vector_weighting not in ("uniform", "records"):
            raise ConfigError("vector_weighting must be 'uniform' (the paper) or 'records'")
        # resolved once, so every reader sees the concrete source
        object.__setattr__(self, "vector_source", resolve_vector_source(
            self.vector_source, model=self.model, private=self.privacy.private))
        if self.vector_source not in VECTOR_SOURCES:
            raise ConfigError(f"vector_source must be 'auto' or one of {VECTOR_SOURCES}")
        if not 0 <= self.partition_index < max(1, self.num_partitions):
            raise ConfigError("partition_index must be in [0, num_partitions)")
        if self.demonstrations_per_class < 0 or self.max_calibration_records < 1:
            raise ConfigError("demonstrations_per_class >= 0 and max_calibration_records >= 1")
        if self.dirichlet_alpha < 0:
            raise ConfigError("dirichlet_alpha must be >= 0 (0 = IID)")
        if self.privacy.distributed:
            _check_distributed(self)
        if isinstance(self.ckks_workers, bool) or not isinstance(self.ckks_workers, int) \
                or not 1 <= self.ckks_workers <= MAX_CKKS_WORKERS:
            raise ConfigError(f"ckks_workers must be an int in 1..{MAX_CKKS_WORKERS}")

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: object) -> ParticipantConfig:
        """Load ``[participant]`` (with ``[participant.privacy]``, ``.calibration``, ``.ckks``)."""
        path = Path(path)
        try:
            table = dict(tomllib.loads(path.read_text(encoding="utf-8")).get("participant", {}))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read participant config {path}: {exc}") from exc
        table.update({k: v for k, v in overrides.items() if v is not None})
        nested = {"privacy": PrivacySettings, "calibration": CalibrationConfig, "ckks": CkksParams}
        for key, kind in nested.items():
            if key in table and isinstance(table[key], dict):
                sub = dict(table[key])
                if key == "ckks" and "coeff_mod_bit_sizes" in sub:
                    sub["coeff_mod_bit_sizes"] = tuple(sub["coeff_mod_bit_sizes"])
                unknown = set(sub) - {f.name for f in fields(kind)}
                if unknown:
                    hint = " (the calibration clip is [participant.calibration] max_grad_norm)" \
                        if key == "privacy" and "max_grad_norm" in unknown else ""
                    raise ConfigError(f"{path}: unknown [{key}] keys {sorted(unknown)}{hint}")
                table[key] = kind(**sub)
        unknown = set(table) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"{path}: unknown participant keys {sorted(unknown)}")
        for key in ("tls_cert", "tls_key", "tls_ca", "state_dir"):
            if key in table:
                p = Path(str(table[key]))
                table[key] = p if p.is_absolute() else path.parent / p
        try:
            return cls(**table)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


def _check_distributed(config: ParticipantConfig) -> None:
    """Refuse settings under which the sum of the honest participants' releases is not one
    Gaussian mechanism with every share's noise (``PrivacySettings.max_colluders``)."""
    cal = config.calibration
    problems = []
    if cal.rounds and (cal.optimizer != "global_adam" or cal.steps_per_round != 1):
        problems.append("calibration needs optimizer = 'global_adam' with steps_per_round = 1 "
                        "(local multi-step updates are not linear in their noise)")
    if cal.update_weighting != "uniform":
        problems.append("update_weighting must be 'uniform' (weights differ per participant)")
    if cal.clip_quantile:
        problems.append("clip_quantile must be 0 (an adaptive clip differs per participant)")
    if config.vector_source == "private" and config.vector_weighting != "records":
        problems.append("vector_source 'private' needs vector_weighting = 'records' (each "
                        "participant then releases a sum with the same noise share; the "
                        "uniform mean of means would weigh the shares unequally)")
    if problems:
        raise ConfigError("distributed DP (max_colluders >= 0): " + "; ".join(problems))
