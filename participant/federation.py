"""The participant's side of a whole federation: keys, vector round, calibration rounds.

Order of events (every release is reserved in the privacy ledger before it leaves):
1. announce a signed X25519 key; the keyholder seals the CKKS secret context to every
   announced key and pins the protocol plan, the others fetch and open theirs (the
   coordinator relays bytes); everyone checks the model, layer map and plan;
2. vector round (``vector_source="private"`` only): DP mean deviation from the public
   reference (under distributed DP a masked, record-weighted sum), encrypted, summed by
   the coordinator, decrypted and averaged here;
3. calibration rounds: DP-SGD steps on local records, the coefficient update encrypted,
   summed, averaged; every participant restarts from the same global coefficients;
4. evaluation with zero demonstrations: zero-shot, injected, calibrated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy import ckks, keyshare
from privacy.accounting import (
    PlannedRelease,
    epsilon_for_history,
    noise_multiplier_for_budget,
)
from privacy.ckks_workers import CkksWorkers
from privacy.denoise import james_stein_blocks
from privacy.errors import BudgetExhaustedError
from privacy.label_bias import SENSITIVITY as LABEL_STATISTICS_SENSITIVITY
from privacy.label_bias import balanced_bias, release_class_statistics, summed_noise_std
from privacy.ledger import PrivacyLedger
from privacy.mask_recovery import public_of
from privacy.masking import HEADROOM_STDS, fixed_point_limbs
from proto.fedctx.v1 import fedctx_pb2 as pb

from .calibration import (
    MAX_SUM_BATCHES,
    CalibrationConfig,
    GlobalCoefficients,
    LocalCalibrator,
    per_layer,
)
from .client import CoordinatorClient, TlsFiles, is_not_ready
from .config import ParticipantConfig
from .context_vectors import (
    PublicReference,
    aggregate_noise_variance,
    default_vector_clip_norm,
    last_token_activations,
    private_deviation_mean,
    private_whitened_sum,
    public_reference,
    random_vector_like,
)
from .data import Example, balanced_sample, load_split, partition, read_records
from .errors import ProtocolError
from .evaluation import Scores, evaluate, label_scores
from .hooks import default_coefficients
from .layers import layer_map_fingerprint, resolve_layer_sites
from .masked_sum import MaskedSum, noise_shares
from .model import load_model
from .protocol_plan import canonical_plan, check_plan
from .tasks import TaskSpec, load_task

logger = logging.getLogger(__name__)


@dataclass
class ParticipantReport:
    """What a participant measured; written as JSON for the demo and experiments."""

    participant_id: str
    federation_id: str
    task: str
    vector_source: str
    records: int
    demonstrations: int
    noise_multiplier: float
    epsilon_spent: float
    delta: float
    target_epsilon: float
    bytes_sent: int = 0
    bytes_received: int = 0
    #: James-Stein factors applied to the vector's blocks (mean, min, max), if denoised.
    vector_shrinkage: dict[str, float] = field(default_factory=dict)
    rounds: list[dict[str, object]] = field(default_factory=list)
    #: the class-balanced label bias added at inference (``label_bias = "balanced"``)
    label_bias: list[float] = field(default_factory=list)
    #: distributed DP (``max_colluders >= 0``, :class:`participant.masked_sum.NoiseShares`):
    #: ``noise_multiplier`` is the honest sum's, each calibration step carried
    #: ``noise_share``, the update counted ``update_weight`` in the mean, ``epsilon_spent``
    #: holds while at most ``max_colluders`` collude and ``epsilon_if_more_collude`` is
    #: what the shares alone give
    max_colluders: int = -1
    noise_share: float | None = None
    update_weight: float | None = None
    epsilon_if_more_collude: float | None = None
    #: dropout recovery: how many may drop out over the federation, and who did (their
    #: masks were removed with the survivors' revealed shares)
    max_dropouts: int = 0
    dropped_participants: list[str] = field(default_factory=list)
    #: masked values clamped to their round's public bound (a count; should stay 0)
    masked_values_clamped: int = 0
    #: calibration steps whose clipped-gradient sum was capped (a count; should stay 0)
    calibration_sums_capped: int = 0
    #: what the fixed point adds to the guarantee's delta (``privacy.masking``)
    delta_discretization: float | None = None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _clip_text(config: CalibrationConfig, clip: float) -> str:
    """The ledger's sensitivity line for a calibration round starting at ``clip``."""
    if config.clip_scale == "residual":
        return (f"per-record gradient L2 {clip:g} (record i clipped to {clip:g} x its "
                f"residual r_i <= 1)")
    if config.clip_scale == "residual_capped":
        return (f"per-record gradient L2 {clip:g} (record i clipped to {clip:g} x "
                f"min(1, r_i / r_uniform) <= 1)")
    if not config.clip_quantile:
        return f"per-record gradient L2 {clip:g}"
    return (f"per-record gradient L2 {clip:.4g} at the round's start, adapting to the "
            f"{config.clip_quantile:g} quantile of the records' norms")


def asdict_task(task: TaskSpec) -> dict[str, object]:
    """The public part of a task spec (for cache metadata)."""
    return {"name": task.name, "template": task.template, "labels": list(task.labels)}


def planned_releases(config: ParticipantConfig, *, records: int) -> list[PlannedRelease]:
    """Every release a participant with ``config`` and ``records`` calibration records
    makes: the vector release (private source only; every demonstration, once), the
    calibration's DP-SGD steps (Poisson rate ``batch_size / records``, at most 1) and,
    with ``label_bias = "balanced"``, the class statistics (once, at their own rate and
    fixed noise multiplier)."""
    releases = []
    if config.vector_source == "private":
        releases.append(PlannedRelease(sample_rate=1.0, steps=1))
    cal = config.calibration
    if cal.total_steps:
        rate = min(1.0, cal.batch_size / records)
        releases.append(PlannedRelease(sample_rate=rate, steps=cal.total_steps))
    if cal.label_bias == "balanced":
        releases.append(PlannedRelease(sample_rate=cal.label_bias_sample_rate, steps=1,
                                       noise_multiplier=cal.label_bias_noise_multiplier))
    return releases


def _local_records(config: ParticipantConfig, task_labels: int) -> list[Example]:
    task = load_task(config.task)
    if config.data_file:
        return read_records(Path(config.data_file), task)
    train = load_split(task, "train", data_dir=config.data_dir or None)
    parts = partition(
        train, num_parts=config.num_partitions, seed=config.split_seed,
        dirichlet_alpha=config.dirichlet_alpha or None, num_classes=task_labels,
    )
    return parts[config.partition_index]


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _poll(what: str, fn, *, timeout_s: float):  # type: ignore[no-untyped-def]
    """Call ``fn`` until it stops raising "not ready" (FAILED_PRECONDITION)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            if not is_not_ready(exc) or time.monotonic() > deadline:
                raise
        except _NotYet:
            if time.monotonic() > deadline:
                raise ProtocolError(
                    f"timed out after {timeout_s:.0f} s waiting for {what}") from None
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


class _NotYet(Exception):
    pass


class Participant:
    """Runs one participant through a federation (see module docstring)."""

    def __init__(self, config: ParticipantConfig, *,
                 compute_slot: AbstractContextManager[object] | None = None) -> None:
        """Load the model and data and open the channel (nothing is sent yet).

        Args:
            compute_slot: held around model loading and every model computation (never
                while waiting on the coordinator). Participants simulated as threads of one
                process share a ``threading.BoundedSemaphore`` sized to the CPUs so that
                they take turns instead of thrashing; a deployed participant needs none.
        """
        self.config = config
        self.compute_slot = compute_slot or nullcontext()
        self.task = load_task(config.task)
        with self.compute_slot:
            self.lm = load_model(config.model, dtype=config.dtype, device=config.device)
        self.sites = resolve_layer_sites(self.lm.model)
        self.layer_fp = layer_map_fingerprint(self.sites)
        self.records = _local_records(config, len(self.task.labels))[
            : config.max_calibration_records]
        self.client = CoordinatorClient(
            config.coordinator, TlsFiles(config.tls_cert, config.tls_key, config.tls_ca),
            server_name=config.server_name or None,
        )
        self.state_dir = Path(config.state_dir)
        self.signing_key = config.tls_key.read_bytes()
        privacy = config.privacy
        # One ledger per (data set, task): budgets span every federation using these records.
        data_digest = hashlib.sha256(
            "\n".join(f"{e.label}\t{e.text}" for e in self.records).encode()
        ).hexdigest()[:16]
        self.ledger = PrivacyLedger(
            self.state_dir / "ledger" / f"{self.task.name}-{data_digest}.jsonl",
            budget_epsilon=privacy.target_epsilon, delta=privacy.delta,
            accountant=privacy.accountant,
        )
        self.secret_context = None
        #: pairwise masks of distributed DP, set up after the keys (None: local DP)
        self.masked_sum: MaskedSum | None = None
        self._update_bound = 0.0  # masked calibration rounds' public value bound
        self._update_weight = 1.0  # this participant's weight in them (NoiseShares.weight)
        self._vector_bound = 0.0  # a masked private vector round's public value bound
        self._vector_share_std = 0.0  # and its weighted noise share, in clip units
        self._crypto: CkksWorkers | None = None
        self._crypto_context: object = None

    # -- privacy plan ------------------------------------------------------------------
    def plan(self) -> list[PlannedRelease]:
        """Every release this participant will make."""
        return planned_releases(self.config, records=len(self.records))

    def noise_multiplier(self, plan: list[PlannedRelease] | None = None) -> float:
        """Common noise multiplier for ``plan`` (default: this protocol's releases) from the
        target budget, minus what the same records spent in other federations; 0 without
        privacy.

        Raises:
            BudgetExhaustedError: earlier federations already spent the whole budget.
        """
        privacy = self.config.privacy
        plan = self.plan() if plan is None else plan
        if not privacy.private or not plan:
            return 0.0
        prior = [
            (e.noise_multiplier, e.sample_rate, e.steps) for e in self.ledger.entries
            if not e.release_id.startswith(f"{self.config.federation_id}/")
        ]
        spent = epsilon_for_history(prior, delta=privacy.delta, accountant=privacy.accountant)
        if spent >= privacy.target_epsilon:
            raise BudgetExhaustedError(
                f"these records already spent epsilon {spent:.3f} of the budget "
                f"{privacy.target_epsilon:g} in earlier federations (ledger {self.ledger.path})"
            )
        return noise_multiplier_for_budget(
            target_epsilon=privacy.target_epsilon, target_delta=privacy.delta,
            plan=plan, accountant=privacy.accountant, prior_history=prior,
        )

    def _floor_noise_multiplier(self, *, records: int) -> float:
        """What the budget needs for a participant with ``records`` calibration records and
        nothing spent before: the same for every participant of a federation (all inputs
        are in the protocol plan)."""
        privacy = self.config.privacy
        return noise_multiplier_for_budget(
            target_epsilon=privacy.target_epsilon, target_delta=privacy.delta,
            plan=planned_releases(self.config, records=records), accountant=privacy.accountant)

    def epsilon_if_more_collude(self, share: float, *, honest: int) -> float:
        """Distributed DP: this participant's epsilon from its own noise shares alone (its
        calibration ``share``, ``1 / sqrt(honest)`` of the label-bias multiplier), what it
        keeps against a coalition of more than ``max_colluders``."""
        privacy = self.config.privacy
        history = [(share if r.noise_multiplier is None else r.noise_multiplier / math.sqrt(honest),
                    r.sample_rate, r.steps) for r in self.plan()]
        return epsilon_for_history(history, delta=privacy.delta, accountant=privacy.accountant)

    # -- keys ---------------------------------------------------------------------------
    def _mask_keys(self) -> tuple[bytes, bytes]:
        """Dropout recovery's X25519 mask key pairs, one per masked round
        (:meth:`_masked_rounds`), as ``(private keys, public keys)`` concatenated; created
        on first use and kept in the state folder."""
        count = len(self._masked_rounds())
        path = self.state_dir / "keys" / f"{self.config.federation_id}.mask-x25519"
        if not path.exists():
            _write_private(path, b"".join(keyshare.generate_x25519_keypair()[0]
                                          for _ in range(count)))
        private = path.read_bytes()
        if len(private) != 32 * count:
            raise ProtocolError(f"{path} holds {len(private) // 32} mask keys, this protocol "
                                f"masks {count} rounds: a different plan in one federation")
        return private, b"".join(public_of(private[i:i + 32]) for i in range(0, count * 32, 32))

    def _masked_rounds(self) -> list[str]:
        """The ids of the rounds distributed DP masks, in order: a private vector's
        (record-weighted) round, every calibration round and, with the label bias, its
        class statistics."""
        cfg = self.config
        rounds = ["vector-weighted"] if cfg.vector_source == "private" else []
        rounds += [f"calib-{cfg.vector_source}-{r}" for r in range(1, cfg.calibration.rounds + 1)]
        if cfg.calibration.label_bias == "balanced":
            rounds.append(f"label-bias-{cfg.vector_source}")
        return rounds

    def _x25519(self) -> tuple[bytes, bytes]:
        path = self.state_dir / "keys" / f"{self.config.federation_id}.x25519"
        if path.exists():
            private = path.read_bytes()
            public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
            return private, public
        private, public = keyshare.generate_x25519_keypair()
        _write_private(path, private)
        return private, public

    def protocol_plan(self) -> str:
        """This protocol's plan (see :mod:`participant.protocol_plan`): the task, which
        rounds run (vector source and weighting, calibration rounds) and what their
        aggregates mean (denoising, calibration steps, batch, learning rate, groups, loss,
        update weighting, optimiser)."""
        cfg, cal = self.config, self.config.calibration
        return canonical_plan({
            "protocol": "ifed-icl", "task": self.task.name, "vector_source": cfg.vector_source,
            "vector_weighting": cfg.vector_weighting,
            "vector_denoise": cfg.privacy.vector_denoise, "rounds": cal.rounds,
            "steps_per_round": cal.steps_per_round, "batch_size": cal.batch_size,
            "learning_rate": cal.learning_rate, "coefficient_groups": cal.coefficient_groups,
            "loss": cal.loss, "update_weighting": cal.update_weighting,
            "optimizer": cal.optimizer, "sgd_learning_rate": cal.sgd_learning_rate,
            **({"distributed_dp": {
                "max_colluders": cfg.privacy.max_colluders,
                **({"max_dropouts": cfg.privacy.max_dropouts}
                   if cfg.privacy.max_dropouts else {}),
                "max_calibration_records": cfg.max_calibration_records,
                **({"demonstrations_per_class": cfg.demonstrations_per_class,
                    "vector_clip_mode": cfg.privacy.vector_clip_mode,
                    "vector_clip_norm": cfg.privacy.vector_clip_norm}
                   if cfg.vector_source == "private" else {}),
                "target_epsilon": cfg.privacy.target_epsilon, "delta": cfg.privacy.delta,
                "accountant": cfg.privacy.accountant, "max_grad_norm": cal.max_grad_norm,
                "clip_scale": cal.clip_scale}} if cfg.privacy.distributed else {}),
            **({"label_bias": cal.label_bias,
                "label_bias_sample_rate": cal.label_bias_sample_rate,
                "label_bias_noise_multiplier": cal.label_bias_noise_multiplier,
                "label_bias_prior_stds": cal.label_bias_prior_stds}
               if cal.label_bias != "none" else {}),
        })

    def join(self, federation: pb.GetFederationResponse, *,
             protocol_plan: str) -> pb.GetFederationResponse:
        """Establish keys (the keyholder pins ``protocol_plan`` with them), then check that
        the federation's model, layer map and plan are this participant's; returns the
        federation as it stands after the key ceremony."""
        self.establish_keys(federation, protocol_plan=protocol_plan)
        self.crypto()  # start any CKKS worker processes while the model works
        federation = self.client.federation()
        for key, mine in (("model_fingerprint", self.lm.fingerprint),
                          ("layer_map_fingerprint", self.layer_fp)):
            if getattr(federation, key) != mine:
                raise ProtocolError(f"this participant's {key} differs from the federation's")
        check_plan(mine=protocol_plan, federation=federation.protocol_plan)
        return federation

    def establish_keys(self, federation: pb.GetFederationResponse, *,
                       protocol_plan: str) -> None:
        """Announce, then create-and-seal (keyholder, pinning ``protocol_plan``) or
        fetch-and-open the CKKS key."""
        cfg = self.config
        ctx_path = self.state_dir / "keys" / f"{cfg.federation_id}.ckks"
        private, public = self._x25519()
        request = pb.AnnounceKeyRequest(
            federation_id=cfg.federation_id, x25519_public=public,
            signature=keyshare.sign_key_announcement(
                federation_id=cfg.federation_id, participant_id=cfg.participant_id,
                x25519_public=public, signing_key_pem=self.signing_key,
            ),
            certificate_pem=cfg.tls_cert.read_text(),
        )
        if cfg.privacy.max_dropouts:
            _, request.mask_x25519_public = self._mask_keys()
            request.mask_signature = keyshare.sign_key_announcement(
                federation_id=cfg.federation_id, participant_id=cfg.participant_id,
                x25519_public=request.mask_x25519_public, signing_key_pem=self.signing_key,
                purpose="mask")
        self.client.announce_key(request)
        if ctx_path.exists() and federation.ckks_context_fingerprint:
            context = ckks.load_secret_context(ctx_path.read_bytes())
            public_bytes = ckks.serialize_public_context(context)
            if ckks.context_fingerprint(public_bytes) == federation.ckks_context_fingerprint:
                self.secret_context = context
                return
        ca = cfg.tls_ca.read_bytes()
        if federation.keyholder_id == cfg.participant_id:
            others = set(federation.roster) - {cfg.participant_id}

            announcements = _poll("every participant's key", lambda: self._announced(others),
                                  timeout_s=federation.round_timeout_s)
            context = ckks.create_secret_context(cfg.ckks)
            public_bytes = ckks.serialize_public_context(context)
            fingerprint = ckks.context_fingerprint(public_bytes)
            data_key, encrypted_context = keyshare.encrypt_secret_context(
                ckks.serialize_secret_context(context), federation_id=cfg.federation_id,
                public_context_fingerprint=fingerprint,
            )
            sealed = []
            for a in announcements:
                keyshare.verify_key_announcement(
                    federation_id=cfg.federation_id, participant_id=a.participant_id,
                    x25519_public=a.x25519_public, signature=a.signature,
                    certificate_pem=a.certificate_pem.encode(), ca_certificate_pem=ca,
                )
                sealed.append(pb.SealedKey(
                    recipient_id=a.participant_id,
                    sealed_secret_context=keyshare.seal(
                        data_key, recipient_x25519_public=a.x25519_public,
                        federation_id=cfg.federation_id, recipient_id=a.participant_id,
                        public_context_fingerprint=fingerprint,
                        sender_signing_key_pem=self.signing_key,
                    ),
                ))
            self.client.publish_keys(pb.PublishKeysRequest(
                federation_id=cfg.federation_id, public_context=public_bytes,
                ckks_params_fingerprint=cfg.ckks.fingerprint(),
                model_fingerprint=self.lm.fingerprint, layer_map_fingerprint=self.layer_fp,
                sealed_keys=sealed, encrypted_secret_context=encrypted_context,
                protocol_plan=protocol_plan,
            ))
        else:
            response = _poll("the keyholder's sealed key", self.client.fetch_sealed_key,
                             timeout_s=federation.round_timeout_s)
            opened = keyshare.open_sealed(
                response.sealed_secret_context, recipient_x25519_private=private,
                federation_id=cfg.federation_id, recipient_id=cfg.participant_id,
                public_context_fingerprint=response.ckks_context_fingerprint,
                sender_certificate_pem=response.keyholder_certificate_pem.encode(),
                ca_certificate_pem=ca, sender_id=response.keyholder_id,
            )
            secret_bytes = opened if not response.encrypted_secret_context else \
                keyshare.decrypt_secret_context(
                    response.encrypted_secret_context, data_key=opened,
                    federation_id=cfg.federation_id,
                    public_context_fingerprint=response.ckks_context_fingerprint,
                )
            context = ckks.load_secret_context(secret_bytes)
            if ckks.context_fingerprint(ckks.serialize_public_context(context)) != \
                    response.ckks_context_fingerprint:
                raise ProtocolError("the opened CKKS context does not match the published one")
        _write_private(ctx_path, ckks.serialize_secret_context(context))
        self.secret_context = context

    def _start_masking(self, federation: pb.GetFederationResponse, *, sigma: float,
                       report: ParticipantReport) -> tuple[float, float, float]:
        """Distributed DP: check that no round can close with fewer contributions than the
        noise plan allows, derive the pair masks from the verified key announcements (and,
        with dropout recovery, exchange the mask keys' shares) and split the noise
        (:func:`noise_shares`, which also sets this participant's update weight). Returns
        ``(effective noise multiplier for the ledger, calibration share added, fraction of
        the label bias's multiplier added)``."""
        cfg = self.config
        roster = list(federation.roster)
        dropouts = cfg.privacy.max_dropouts
        if federation.quorum < len(roster) - dropouts:
            raise ProtocolError(
                f"distributed DP with max_dropouts = {dropouts} needs at least "
                f"{len(roster) - dropouts} contributions in every round, but the coordinator "
                f"closes rounds with a quorum of {federation.quorum} of {len(roster)}")
        shares = noise_shares(
            own=sigma, floor=self._floor_noise_multiplier(records=cfg.max_calibration_records),
            participants=len(roster), max_colluders=cfg.privacy.max_colluders,
            max_dropouts=dropouts)
        honest = self._honest(len(roster))
        # A public bound on a weighted update's coordinate: the lr times the clip times
        # MAX_SUM_BATCHES batches of clipped gradients (the calibrator caps the sum there)
        # plus HEADROOM_STDS stds of a weighted share (the same for all) over the batch,
        # and at least the weight slot's 1. Larger values are clamped (counted in the
        # report; their chance is in the delta the fixed point adds, below).
        cal = cfg.calibration
        weighted_std = cal.sgd_learning_rate * cal.max_grad_norm * shares.share \
            * shares.weight / cal.batch_size
        self._update_bound = max(1.0, cal.sgd_learning_rate * cal.max_grad_norm
                                 * MAX_SUM_BATCHES + HEADROOM_STDS * weighted_std)
        self._update_weight = shares.weight
        # A private vector's release, in clip units (the whitened clipped sum over the
        # clip, so one record moves it by at most 1, times the weight): each value at most
        # the demonstrations' public cap plus HEADROOM_STDS stds of a weighted share, and
        # the weighted count (its extra slot) at most the cap.
        self._vector_share_std = shares.share * shares.weight
        self._vector_bound = self._max_demonstrations() \
            + HEADROOM_STDS * self._vector_share_std
        private, _ = self._x25519()
        announcements = _poll(
            "every participant's key announcement",
            lambda: self._announced(set(roster)), timeout_s=federation.round_timeout_s)
        seed = cfg.privacy.insecure_noise_seed
        self.masked_sum = MaskedSum(
            own_id=cfg.participant_id, x25519_private=private, announcements=announcements,
            roster=roster, federation_id=cfg.federation_id,
            ca_certificate_pem=cfg.tls_ca.read_bytes(), ckks_params=cfg.ckks,
            seed=seed if seed >= 0 else int.from_bytes(os.urandom(8), "little"),
            mask_private=self._mask_keys()[0] if dropouts else None,
            mask_rounds=self._masked_rounds() if dropouts else (), max_dropouts=dropouts)
        if dropouts and len(roster) - cfg.privacy.max_colluders <= 2 * dropouts:
            logger.warning(
                "[Participant] dropout recovery with n - t <= 2d (%d - %d <= 2 x %d): a "
                "coordinator that named different survivor sets to different participants "
                "could collect both secrets of one (docs/privacy.md, 'Dropouts')",
                len(roster), cfg.privacy.max_colluders, dropouts)
        if dropouts:  # each mask key's Shamir shares, before anything is masked with it
            # kept (sealed to their recipients) so that a restart re-sends the same ones
            path = self.state_dir / "keys" / f"{cfg.federation_id}.mask-deposit"
            if path.exists():
                deposit = pb.DepositMaskSharesRequest.FromString(path.read_bytes())
            else:
                deposit = pb.DepositMaskSharesRequest(
                    federation_id=cfg.federation_id, shares=self.masked_sum.mask_key_shares())
                _write_private(path, deposit.SerializeToString())
            self.client.deposit_mask_shares(deposit)
            deposits = _poll("every participant's mask-key shares",
                             lambda: self._deposited(len(roster) - 1),
                             timeout_s=federation.round_timeout_s)
            self.masked_sum.receive_mask_key_shares(deposits)
        # What the fixed point adds to the guarantee's delta, refused before anything is
        # released if too much: every calibration round's coefficients (the weight slot
        # is public) and the label bias's class statistics.
        releases = [(weighted_std, self._update_bound,
                     cal.rounds * 4 * cal.trained_rows(self.sites.num_layers))]
        if cfg.vector_source == "private":
            releases.append((self._vector_share_std, self._vector_bound,
                             2 * self.sites.num_layers * self.sites.hidden_size))
        if cal.label_bias == "balanced":
            classes = len(self.task.labels)
            statistics_std = cal.label_bias_noise_multiplier / math.sqrt(honest) \
                * LABEL_STATISTICS_SENSITIVITY
            releases.append((statistics_std, self._statistics_bound(statistics_std),
                             classes * (classes + 1)))
        self.masked_sum.limbs, report.delta_discretization = fixed_point_limbs(
            releases, participants=self.masked_sum.participants, bits=self.masked_sum.bits,
            honest=honest, epsilon=cfg.privacy.target_epsilon, delta=cfg.privacy.delta)
        report.noise_multiplier = shares.effective
        report.max_colluders = cfg.privacy.max_colluders
        report.max_dropouts = dropouts
        report.noise_share = shares.share
        report.update_weight = shares.weight
        report.epsilon_if_more_collude = self.epsilon_if_more_collude(shares.share,
                                                                      honest=honest)
        logger.info("[Participant] masked rounds: %d participants, up to %d colluding, "
                    "modulus 2^%d x %d limbs", len(roster), cfg.privacy.max_colluders,
                    self.masked_sum.bits, self.masked_sum.limbs)
        return shares.effective, shares.share, 1 / math.sqrt(honest)

    def _max_demonstrations(self) -> int:
        """The most demonstrations any participant's vector release sums (public: the
        protocol plan pins both settings)."""
        cfg = self.config
        if cfg.demonstrations_per_class:
            return cfg.demonstrations_per_class * len(self.task.labels)
        return cfg.max_calibration_records

    def _statistics_bound(self, noise_std: float) -> float:
        """The label bias's public value bound: a count or a sum of probabilities over at
        most every record, plus ``HEADROOM_STDS`` stds of a share's noise."""
        return self.config.max_calibration_records + HEADROOM_STDS * noise_std

    def _honest(self, participants: int) -> int:
        """The fewest honest participants whose shares a coalition cannot read:
        ``n - max_colluders - max_dropouts``."""
        return participants - self.config.privacy.max_colluders \
            - self.config.privacy.max_dropouts

    def _deposited(self, others: int) -> list[pb.SealedShare]:
        found = list(self.client.mask_shares("").sealed)
        if len(found) < others:
            raise _NotYet
        return found

    def _share_note(self) -> str:
        """What a ledger entry's noise multiplier means under distributed DP ('' if local)."""
        if self.masked_sum is None:
            return ""
        honest = self._honest(self.masked_sum.participants)
        return (f"; distributed DP: the noise multiplier is what the weighted shares of at "
                f"least {honest} honest participants give this participant's records, this "
                f"one added 1/sqrt({honest}) of it")

    def _announced(self, ids: set[str]) -> list[pb.KeyAnnouncement]:
        found = [a for a in self.client.key_announcements() if a.participant_id in ids]
        if {a.participant_id for a in found} != ids:
            raise _NotYet
        return found

    # -- one encrypted round ------------------------------------------------------------
    def crypto(self) -> CkksWorkers:
        """Encryption and decryption under the secret context, over ``ckks_workers``
        processes (started on first use, stopped by :meth:`close`)."""
        assert self.secret_context is not None
        if self._crypto is None or self._crypto_context is not self.secret_context:
            self.close_crypto()
            self._crypto = CkksWorkers(self.secret_context, workers=self.config.ckks_workers)
            self._crypto_context = self.secret_context
        return self._crypto

    def close_crypto(self) -> None:
        """Stop the CKKS worker processes, if any (idempotent)."""
        if self._crypto is not None:
            self._crypto.close()
            self._crypto = None

    def secure_mean(
        self, round_id: str, values: np.ndarray, *, kind: str, federation: pb.GetFederationResponse,
        release_id: str | None, mask_bound: float | None = None,
    ) -> tuple[np.ndarray, int]:
        """Encrypt ``values``, contribute to ``round_id``, return (sum / count, count).

        Under distributed DP the contribution is pairwise-masked fixed point, each value
        clamped to ``mask_bound`` (public, the same for every participant of the round)."""
        assert self.secret_context is not None
        masked = self.masked_sum is not None
        if masked and mask_bound is None:
            raise ProtocolError(f"round {round_id!r} is masked but has no public value bound")
        if not np.all(np.isfinite(values)):
            raise ProtocolError(
                f"{self.config.participant_id}: {kind} for round {round_id!r} has non-finite "
                f"values ({int((~np.isfinite(values)).sum())} of {values.size}); nothing was sent"
            )
        status = self.client.round(round_id)
        length = values.size * (self.masked_sum.limbs if self.masked_sum else 1)
        if not status.contributed:
            plain, mask_shares = (values, []) if not masked else \
                self.masked_sum.mask(  # type: ignore[union-attr]
                    values, round_id=round_id, bound=mask_bound)  # type: ignore[arg-type]
            blobs = self.crypto().encrypt(plain)
            header = pb.ContributionHeader(
                federation_id=self.config.federation_id, round_id=round_id,
                model_fingerprint=self.lm.fingerprint, layer_map_fingerprint=self.layer_fp,
                ckks_context_fingerprint=federation.ckks_context_fingerprint,
                vector_length=length, kind=kind, mask_shares=mask_shares,
            )
            self.client.submit(header, blobs, chunk_bytes=federation.chunk_bytes)
        if release_id is not None:
            self.ledger.commit(release_id)
        self.client.wait_for_round(round_id, timeout_s=federation.round_timeout_s + 30)
        aggregate = self.client.download_aggregate(round_id)
        if aggregate.ckks_context_fingerprint != federation.ckks_context_fingerprint:
            raise ProtocolError("aggregate was produced under another CKKS context")
        total = self.crypto().decrypt(aggregate.blobs, length=length)
        if masked and self.masked_sum.recovers:  # type: ignore[union-attr]
            total = self._recover(round_id, total, contributions=aggregate.contributions,
                                  bound=mask_bound, timeout_s=federation.round_timeout_s)  # type: ignore[arg-type]
        elif masked:
            total = self.masked_sum.unmask(  # type: ignore[union-attr]
                total, contributions=aggregate.contributions, bound=mask_bound)  # type: ignore[arg-type]
        return total / aggregate.contributions, aggregate.contributions

    def _recover(self, round_id: str, decrypted: np.ndarray, *, contributions: int,
                 bound: float, timeout_s: float) -> np.ndarray:
        """Dropout recovery of a closed masked round: reveal this survivor's shares, wait
        for the threshold's reveals, unmask (:class:`MaskedSum`)."""
        masked_sum = self.masked_sum
        assert masked_sum is not None
        found = self.client.mask_shares(round_id)
        contributors = list(found.contributors)
        if set(found.retired) != set(masked_sum.roster) - masked_sum.active:
            raise ProtocolError(f"the coordinator's dropped participants {list(found.retired)} "
                                f"are not this participant's for round {round_id!r}")
        if masked_sum.holds_seed_share(round_id):
            reveals = masked_sum.reveal(round_id, contributors=contributors,
                                        sealed=found.sealed)
            self.client.reveal_mask_shares(pb.RevealMaskSharesRequest(round_id=round_id,
                                                                      shares=reveals))
        else:  # restarted after contributing: the others' reveals must do
            logger.warning("[Participant] round %s: contributed before a restart, so this "
                           "participant's self-mask share is gone; reading the others' "
                           "reveals", round_id)

        def revealed() -> list[pb.RevealedShare]:
            # poll the count (revealers are contributors: the coordinator checks), then
            # read the reveals once
            if self.client.mask_shares(round_id, omit_revealed=True).revealers \
                    < masked_sum.threshold:
                raise _NotYet
            shares = list(self.client.mask_shares(round_id).revealed)
            if not masked_sum.ready(shares, contributors=contributors):
                raise _NotYet
            return shares

        shares = _poll(f"round {round_id!r}'s reveals", revealed, timeout_s=timeout_s)
        dropped = sorted(masked_sum.active - set(contributors))
        if dropped:
            logger.warning("[Participant] round %s closed without %s: their masks were "
                           "recovered from the survivors' shares", round_id, dropped)
        return masked_sum.unmask(decrypted, contributions=contributions, bound=bound,
                                 round_id=round_id, contributors=contributors, revealed=shares)

    def _round_record(self, round_id: str, contributions: int, *, compute_s: float,
                      sent_before: int, waited_from: float) -> dict[str, object]:
        """A finished round for the report: this participant's upload bytes, local compute
        seconds and secure-mean seconds (encrypt, upload, wait, download, decrypt)."""
        return {"round": round_id, "contributions": contributions,
                "bytes_sent": self.client.bytes_sent - sent_before, "client_seconds": compute_s,
                "secure_mean_seconds": time.perf_counter() - waited_from}

    # -- the whole protocol ---------------------------------------------------------------
    def run(self) -> ParticipantReport:
        """Join, contribute to every round, evaluate; returns the report."""
        cfg, task = self.config, self.task
        timings: dict[str, float] = {}
        sigma = self.noise_multiplier()
        if cfg.privacy.private and cfg.privacy.insecure_noise_seed >= 0:
            logger.warning("[Participant] DP noise is seeded (insecure_noise_seed): an "
                           "experiment setting; whoever knows the seed can remove the noise")
        demos = (
            balanced_sample(self.records, per_class=cfg.demonstrations_per_class,
                            num_classes=len(task.labels), seed=cfg.seed)
            if cfg.demonstrations_per_class else list(self.records)
        )
        report = ParticipantReport(
            cfg.participant_id, cfg.federation_id, task.name, cfg.vector_source,
            len(self.records), len(demos), sigma, 0.0, cfg.privacy.delta,
            cfg.privacy.target_epsilon,
        )
        self.client.wait_ready(timeout_s=120)
        federation = self.client.federation()
        if cfg.participant_id not in federation.roster:
            raise ProtocolError(f"{cfg.participant_id!r} is not in the federation's roster")
        start = time.perf_counter()
        federation = self.join(federation, protocol_plan=self.protocol_plan())
        added = sigma  # the noise multiplier this participant adds to each calibration step
        label_bias_share = 1.0  # and the fraction of the label bias's multiplier
        if cfg.privacy.distributed:
            sigma, added, label_bias_share = self._start_masking(
                federation, sigma=sigma, report=report)
        timings["keys"] = time.perf_counter() - start

        cached = self.fetch_cached_task() if cfg.use_cached_task else None
        if cached is not None:
            vector, coefficients, label_bias = cached
            report.rounds.append({"round": "task-cache", "contributions": 0})
            report.epsilon_spent = self.ledger.epsilon_spent()
            if label_bias is not None:
                report.label_bias = [float(b) for b in label_bias]
            self._finish(report, vector, coefficients, timings, label_bias=label_bias)
            return report

        start = time.perf_counter()
        with self.compute_slot:
            reference = public_reference(self.lm, self.sites, task, batch_size=cfg.batch_size)
        shape = reference.vector.shape
        if cfg.vector_source == "private":
            vector = self._private_vector(reference, demos, sigma=sigma, added=added,
                                          federation=federation, report=report,
                                          timings=timings, start=start)
        elif cfg.vector_source == "public":
            vector = reference.vector
        elif cfg.vector_source == "random":
            seed = int(hashlib.sha256(cfg.federation_id.encode()).hexdigest()[:8], 16)
            vector = random_vector_like(reference.vector, seed=seed)
        else:
            vector = torch.zeros(shape)
        timings["vector_total"] = time.perf_counter() - start

        start = time.perf_counter()
        global_coefficients = GlobalCoefficients(
            default_coefficients(cfg.calibration.trained_rows(self.sites.num_layers)),
            config=cfg.calibration)
        coefficients = global_coefficients.value
        if cfg.calibration.rounds:
            calibrator = LocalCalibrator(
                self.lm, self.sites, task, self.records, vector, config=cfg.calibration,
                noise_multiplier=added, seed=cfg.seed,
                dp_noise_generator=cfg.privacy.noise_generator("calibration"),
                common_batch=cfg.privacy.distributed,
                max_sum_norm=MAX_SUM_BATCHES * cfg.calibration.batch_size
                * cfg.calibration.max_grad_norm if cfg.privacy.distributed else None,
            )
            for r in range(1, cfg.calibration.rounds + 1):
                round_id = f"calib-{cfg.vector_source}-{r}"
                release = f"{cfg.federation_id}/{round_id}"
                status = self.client.round(round_id)
                fresh = release not in {e.release_id for e in self.ledger.entries}
                if fresh:
                    self.ledger.reserve(
                        release_id=release,
                        description=f"calibration round {r} (DP-SGD){self._share_note()}",
                        noise_multiplier=sigma, sample_rate=calibrator.sample_rate,
                        steps=cfg.calibration.steps_per_round,
                        sensitivity=_clip_text(cfg.calibration, calibrator.clip),
                    )
                with self.compute_slot:
                    began = time.perf_counter()
                    update = (
                        calibrator.run_round(coefficients) if not status.contributed
                        else torch.zeros_like(coefficients)
                    )
                    compute_s = time.perf_counter() - began
                sent, waited_from = self.client.bytes_sent, time.perf_counter()
                payload = update.double().numpy().ravel()
                weighted = cfg.calibration.update_weighting == "precision" \
                    or cfg.privacy.distributed
                if weighted:  # sum_k w_k u_k / sum_k w_k, the weight in one extra slot
                    weight = self._update_weight if cfg.privacy.distributed \
                        else calibrator.update_weight()
                    payload = np.concatenate([payload * weight, [weight]])
                mean, count = self.secure_mean(
                    round_id, payload, kind="coefficient_update",
                    federation=federation, release_id=release,
                    mask_bound=self._update_bound if self.masked_sum else None,
                )
                if weighted:
                    mean = mean[:-1] / mean[-1]
                coefficients = global_coefficients.apply(
                    torch.from_numpy(mean).reshape(coefficients.shape).float())
                record = self._round_record(round_id, count, compute_s=compute_s,
                                            sent_before=sent, waited_from=waited_from)
                if calibrator.private:
                    record["clip"] = calibrator.clip  # after the round (it may adapt)
                report.rounds.append(record)
                logger.info("[Participant] round=%s contributions=%d", round_id, count)
        coefficients = per_layer(coefficients, self.sites.num_layers)
        timings["calibration"] = time.perf_counter() - start
        label_bias = None
        if cfg.calibration.label_bias == "balanced":
            start = time.perf_counter()
            label_bias = self._label_bias_round(vector, coefficients, sigma=sigma,
                                                share=label_bias_share, federation=federation,
                                                report=report)
            timings["label_bias"] = time.perf_counter() - start
        report.epsilon_spent = self.ledger.epsilon_spent()
        if self.masked_sum is not None:
            report.masked_values_clamped = self.masked_sum.clamped
            report.dropped_participants = sorted(set(self.masked_sum.roster)
                                                 - self.masked_sum.active)
            report.calibration_sums_capped = calibrator.sums_capped \
                if cfg.calibration.rounds else 0
        if cfg.cache_task and federation.keyholder_id == cfg.participant_id:
            self.store_cached_task(vector, coefficients, federation, report,
                                   label_bias=label_bias)
        self._finish(report, vector, coefficients, timings, label_bias=label_bias)
        return report

    def _private_vector(self, reference: PublicReference, demos: list[Example], *,
                        sigma: float, added: float, federation: pb.GetFederationResponse,
                        report: ParticipantReport, timings: dict[str, float],
                        start: float) -> torch.Tensor:
        """The vector round of ``vector_source = "private"``: this participant's DP
        release of its demonstrations' deviation from the public ``reference``, the
        federation's secure mean of them (optionally James-Stein denoised), and the
        resulting ``[2, L, d]`` context vector. Under local DP the release is the mean
        deviation with noise multiplier ``sigma``; under distributed DP the weighted
        whitened sum with this participant's share ``added``, masked."""
        cfg, task = self.config, self.task
        shape = reference.vector.shape
        with self.compute_slot:
            acts = last_token_activations(
                self.lm, self.sites, [task.demonstration(e.text, e.label) for e in demos],
                batch_size=cfg.batch_size)
        timings["vector_forward"] = time.perf_counter() - start
        raw_mode = cfg.privacy.vector_clip_mode == "raw"
        center = reference.centred_at_zero() if raw_mode else reference
        clip = cfg.privacy.vector_clip_norm or (
            reference.raw_clip_norm if raw_mode else default_vector_clip_norm(2 * shape[1]))
        private_start = time.perf_counter()
        release = f"{cfg.federation_id}/vector"
        if release not in {e.release_id for e in self.ledger.entries}:
            self.ledger.reserve(
                release_id=release,
                description=f"context-vector mean deviation{self._share_note()}",
                noise_multiplier=sigma, sample_rate=1.0, steps=1,
                sensitivity=f"whitened L2 {clip:.4g} (add/remove one record)",
            )
        vector_round = "vector" if cfg.vector_weighting == "uniform" else "vector-weighted"
        denoise = cfg.privacy.private and cfg.privacy.vector_denoise == "james_stein"
        if self.masked_sum is not None:
            # Distributed DP: the weighted whitened sum in clip units with a noise
            # share, and the weighted record count (public) in one extra slot.
            whitened = private_whitened_sum(
                acts, center, clip_norm=clip, noise_multiplier=added,
                generator=cfg.privacy.noise_generator("vector")).numpy().ravel()
            weight = self._update_weight
            payload = np.concatenate([whitened * (weight / clip), [weight * len(demos)]])
            compute_s = time.perf_counter() - start
            sent, waited_from = self.client.bytes_sent, time.perf_counter()
            total, count = self.secure_mean(
                vector_round, payload, kind="context_vector", federation=federation,
                release_id=release, mask_bound=self._vector_bound)
            scales = center.block_scales.double().numpy()[:, None]
            mean = (clip * total[:-1].reshape(scales.shape[0], -1) * scales
                    / total[-1]).ravel()  # sum_k w_k S_k / sum_k w_k N_k, un-whitened
            # every contribution's share has std w * added * clip = share std * clip
            count_moment = count / (total[-1] * count) ** 2
            noise_for_denoise = self._vector_share_std
        else:
            deviation = private_deviation_mean(
                acts, center, clip_norm=clip if cfg.privacy.private else None,
                noise_multiplier=sigma, generator=cfg.privacy.noise_generator("vector"),
            ).numpy().ravel()
            self._check_precision(deviation, sigma, clip, reference, len(demos), federation)
            compute_s = time.perf_counter() - start
            sent, waited_from = self.client.bytes_sent, time.perf_counter()
            noise_for_denoise = sigma
            if cfg.vector_weighting == "records":
                # Weighted by demonstration count: sum N_k v_k / sum N_k. The count rides in
                # one extra encrypted slot (counts are public metadata, see docs/privacy.md).
                weighted = np.concatenate([deviation * len(demos), [float(len(demos))]])
                total, count = self.secure_mean(
                    vector_round, weighted, kind="context_vector", federation=federation,
                    release_id=release)
                mean = total[:-1] / total[-1]
                count_moment = count / (total[-1] * count) ** 2  # n / (sum_k N_k)^2
            else:  # the paper's unweighted mean over participants
                # With denoising, 1 / N_k^2 rides in one extra slot (public counts): the
                # mean of that slot over n participants, divided by n, is sum_k 1/N_k^2 / n^2.
                payload = (np.concatenate([deviation, [1.0 / len(demos) ** 2]]) if denoise
                           else deviation)
                mean, count = self.secure_mean(vector_round, payload, kind="context_vector",
                                               federation=federation, release_id=release)
                if denoise:
                    mean, count_moment = mean[:-1], mean[-1] / count
        if denoise:
            blocks = mean.reshape(2 * shape[1], shape[2])
            variance = aggregate_noise_variance(
                noise_multiplier=noise_for_denoise, clip_norm=clip,
                block_scales=center.block_scales, count_moment=count_moment)
            blocks, factors = james_stein_blocks(blocks, noise_variance=variance)
            mean = blocks.ravel()
            report.vector_shrinkage = {"mean": float(factors.mean()),
                                       "min": float(factors.min()),
                                       "max": float(factors.max())}
        vector = center.vector + torch.from_numpy(mean).reshape(shape).float()
        report.rounds.append(self._round_record(vector_round, count, compute_s=compute_s,
                                                sent_before=sent, waited_from=waited_from))
        timings["vector_private_path"] = time.perf_counter() - private_start
        return vector

    def _label_bias_round(self, vector: torch.Tensor, coefficients: torch.Tensor, *,
                          sigma: float, share: float, federation: pb.GetFederationResponse,
                          report: ParticipantReport) -> torch.Tensor:
        """Release this participant's class statistics under the calibrated model, sum
        them with the others' through the secure mean, and return the class-balanced
        label bias ``[C]`` (:mod:`privacy.label_bias`). ``share`` is the fraction of the
        release's noise this participant adds (1 under local DP)."""
        cfg, cal = self.config, self.config.calibration
        round_id = f"label-bias-{cfg.vector_source}"
        release = f"{cfg.federation_id}/{round_id}"
        # under DP its own fixed multiplier (in the plan the common sigma was solved with)
        noise_multiplier = cal.label_bias_noise_multiplier if sigma > 0 else 0.0
        noise_added = noise_multiplier * share
        status = self.client.round(round_id)
        if release not in {e.release_id for e in self.ledger.entries}:
            self.ledger.reserve(
                release_id=release,
                description=f"class statistics for the label bias{self._share_note()}",
                noise_multiplier=noise_multiplier, sample_rate=cal.label_bias_sample_rate,
                steps=1, sensitivity=f"L2 {LABEL_STATISTICS_SENSITIVITY:.4g} "
                                     "(add/remove one record)")
        num_classes = len(self.task.labels)
        began = time.perf_counter()
        statistics = torch.zeros(num_classes, num_classes + 1, dtype=torch.float64)
        if not status.contributed:
            generator = cfg.privacy.noise_generator("label_bias")
            keep = torch.rand(len(self.records), generator=generator) \
                < cal.label_bias_sample_rate  # Poisson sampling, as the accountant assumes
            sampled = [e for e, k in zip(self.records, keep.tolist(), strict=True) if k]
            probabilities = torch.empty(0, num_classes)
            if sampled:
                with self.compute_slot:
                    probabilities = torch.softmax(label_scores(
                        self.lm, self.sites, self.task, [e.text for e in sampled],
                        vector=vector, coefficients=coefficients,
                        batch_size=cfg.batch_size).double(), dim=-1)
            labels = torch.tensor([e.label for e in sampled], dtype=torch.long)
            statistics = release_class_statistics(probabilities, labels,
                                                  noise_multiplier=noise_added,
                                                  generator=generator)
        compute_s = time.perf_counter() - began
        sent, waited_from = self.client.bytes_sent, time.perf_counter()
        bound = self._statistics_bound(noise_added * LABEL_STATISTICS_SENSITIVITY)
        mean, count = self.secure_mean(round_id, statistics.numpy().ravel(),
                                       kind="class_statistics", federation=federation,
                                       release_id=release,
                                       mask_bound=bound if self.masked_sum else None)
        total = torch.from_numpy(mean * count).reshape(num_classes, num_classes + 1)
        bias = balanced_bias(total, prior_count=cal.label_bias_prior_stds * summed_noise_std(
            noise_multiplier=noise_added, contributions=count))
        report.label_bias = [float(b) for b in bias]
        report.rounds.append(self._round_record(round_id, count, compute_s=compute_s,
                                                sent_before=sent, waited_from=waited_from))
        return bias

    # -- task cache -----------------------------------------------------------------------
    def task_id(self) -> str:
        """Cache key: task, vector source and model (the federation scopes the rest)."""
        return f"{self.task.name}.{self.config.vector_source}.{self.lm.fingerprint[:16]}"

    def store_cached_task(self, vector: torch.Tensor, coefficients: torch.Tensor,
                          federation: pb.GetFederationResponse, report: ParticipantReport, *,
                          label_bias: torch.Tensor | None = None) -> None:
        """Keyholder: encrypt the finished task and store it at the coordinator. A label
        bias ``[C]`` rides after the coefficients, encrypted like them (the coefficient
        count covers both; the metadata says how many values are the bias)."""
        assert self.secret_context is not None
        extra = label_bias.double().numpy().ravel() if label_bias is not None else np.zeros(0)
        values = np.concatenate([vector.double().numpy().ravel(),
                                 coefficients.double().numpy().ravel(), extra])
        metadata = {"task": asdict_task(self.task), "vector_source": self.config.vector_source,
                    "epsilon_spent_by_keyholder": report.epsilon_spent,
                    "rounds": self.config.calibration.rounds, "label_bias_count": extra.size}
        header = pb.TaskHeader(
            task_id=self.task_id(), task_name=self.task.name,
            model_fingerprint=self.lm.fingerprint, layer_map_fingerprint=self.layer_fp,
            ckks_context_fingerprint=federation.ckks_context_fingerprint,
            vector_length=vector.numel(), coefficient_count=coefficients.numel() + extra.size,
            metadata_json=json.dumps(metadata),
        )
        self.client.put_task(header, self.crypto().encrypt(values),
                             chunk_bytes=federation.chunk_bytes)

    def fetch_cached_task(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """The federation's cached task for this model, decrypted: ``(vector, coefficients,
        label bias or None)``; None if absent."""
        assert self.secret_context is not None
        found = self.client.get_task(self.task_id())
        if found is None:
            return None
        header, blobs = found
        if (header.model_fingerprint, header.layer_map_fingerprint) != (self.lm.fingerprint,
                                                                         self.layer_fp):
            raise ProtocolError("the cached task was made for another model or layer map")
        length = header.vector_length + header.coefficient_count
        bias_count = json.loads(header.metadata_json or "{}").get("label_bias_count", 0)
        if bias_count not in (0, len(self.task.labels)):
            raise ProtocolError(f"the cached task's label bias has {bias_count} values, "
                                f"the task {len(self.task.labels)} labels")
        values = self.crypto().decrypt(blobs, length=length)
        vector = torch.from_numpy(values[: header.vector_length]).float().reshape(
            2, self.sites.num_layers, self.sites.hidden_size)
        rest = values[header.vector_length :]
        coefficients = torch.from_numpy(rest[: rest.size - bias_count]).float().reshape(
            self.sites.num_layers, 4)
        label_bias = torch.from_numpy(rest[rest.size - bias_count :]).float() \
            if bias_count else None
        return vector, coefficients, label_bias

    def _finish(self, report: ParticipantReport, vector: torch.Tensor,
                coefficients: torch.Tensor, timings: dict[str, float], *,
                label_bias: torch.Tensor | None = None) -> None:
        cfg, task = self.config, self.task
        if cfg.evaluate:
            labelled = read_records(Path(cfg.test_file), task) if cfg.test_file else \
                load_split(task, "test", data_dir=cfg.data_dir or None)
            test = balanced_sample(labelled,
                                   per_class=cfg.test_per_class, num_classes=len(task.labels),
                                   seed=cfg.test_seed if cfg.test_seed >= 0 else 1000 + cfg.seed)
            start = time.perf_counter()
            with self.compute_slot:
                runs: dict[str, Scores] = {
                    "zero_shot": evaluate(self.lm, self.sites, task, test,
                                          batch_size=cfg.batch_size),
                    "injected_uncalibrated": evaluate(
                        self.lm, self.sites, task, test, vector=vector,
                        coefficients=default_coefficients(self.sites.num_layers),
                        batch_size=cfg.batch_size),
                    "injected_calibrated": evaluate(
                        self.lm, self.sites, task, test, vector=vector,
                        coefficients=coefficients, batch_size=cfg.batch_size),
                }
                if label_bias is not None:
                    runs["injected_calibrated_label_bias"] = evaluate(
                        self.lm, self.sites, task, test, vector=vector,
                        coefficients=coefficients, label_bias=label_bias,
                        batch_size=cfg.batch_size)
            report.scores = {k: asdict(v) for k, v in runs.items()}
            timings["evaluation"] = time.perf_counter() - start
        report.bytes_sent = self.client.bytes_sent
        report.bytes_received = self.client.bytes_received
        report.seconds = timings
        saved = {"vector": vector, "coefficients": coefficients, "task": task.name,
                 "model_fingerprint": self.lm.fingerprint, "layer_map": self.layer_fp}
        if label_bias is not None:
            saved["label_bias"] = label_bias
        torch.save(saved, self.state_dir / f"{cfg.federation_id}-{task.name}-calibrated.pt")
        if cfg.results_file:
            Path(cfg.results_file).write_text(json.dumps(asdict(report), indent=2))

    def _check_precision(self, values: np.ndarray, sigma: float, clip: float, reference,  # type: ignore[no-untyped-def]
                         n: int, federation: pb.GetFederationResponse) -> None:
        noise_std = None
        if sigma > 0:
            noise_std = float(sigma * clip * float(reference.block_scales.min()) / n)
        bound = max(1.0, float(np.abs(values).max()) * 4)
        ckks.check_precision(self.config.ckks, n_summands=len(federation.roster),
                             value_bound=bound, noise_std=noise_std)

    def close(self) -> None:
        """Stop any CKKS worker processes and close the channel."""
        try:
            self.close_crypto()
        finally:
            self.client.close()

