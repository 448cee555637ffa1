"""DP-FedAvg-LoRA baseline, federation side: adapter updates through the fedctx protocol.

Composes :class:`participant.federation.Participant` (same gRPC client, mutual TLS, CKKS key
ceremony, ``secure_mean`` and privacy ledger as the context-vector path) and replaces its
vector/calibration rounds with LoRA rounds:

1. key ceremony (``Participant.join``): model, layer-map and protocol-plan bindings checked
   (the plan is the LoRA settings);
2. one common noise multiplier from the participant's ``(epsilon, delta)`` for the whole
   plan (``rounds x steps_per_round`` DP-SGD steps at rate ``batch_size / N``), composed
   with the ledger's earlier releases of the same records;
3. per round ``lora-{r}``: reserve the release in the ledger, train locally from the global
   adapter (:class:`participant.lora.LocalLoraTrainer`), encrypt the update (CKKS, streamed
   in the federation's chunk size), the coordinator sums ciphertexts, every participant
   decrypts the sum and applies the mean update, so all hold the same global adapter;
4. evaluation with the global adapter on the same class-balanced test sample as
   ``Participant`` (zero demonstrations), when ``config.evaluate`` is set.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from privacy import ckks
from privacy.accounting import PlannedRelease

from .config import ParticipantConfig
from .data import balanced_sample, load_split
from .errors import ProtocolError
from .federation import Participant, ParticipantReport
from .lora import LocalLoraTrainer, LoraConfigSpec
from .protocol_plan import canonical_plan

logger = logging.getLogger(__name__)

ROUND_KIND = "adapter_update"


@dataclass
class LoraParticipantReport(ParticipantReport):
    """A :class:`ParticipantReport` plus the adapter's size and settings.

    ``rounds`` entries carry per-round ``bytes_sent`` (this participant's upload: the framed
    ciphertexts and their header), ``bytes_received``, ``client_seconds`` (local DP-SGD
    training) and ``secure_mean_seconds`` (encrypt, upload, wait for the others, download,
    decrypt: includes waiting).
    """

    adapter_values: int = 0
    lora: dict[str, object] = field(default_factory=dict)


class LoraParticipant:
    """One participant of a DP-FedAvg-LoRA federation (see module docstring)."""

    def __init__(self, config: ParticipantConfig, lora: LoraConfigSpec) -> None:
        self.participant = Participant(config)
        self.config = config
        self.lora = lora
        self.trainer: LocalLoraTrainer | None = None

    @property
    def sample_rate(self) -> float:
        """Poisson sampling rate of local records per step."""
        return min(1.0, self.lora.batch_size / len(self.participant.records))

    def plan(self) -> list[PlannedRelease]:
        """Every release: ``rounds x steps_per_round`` subsampled Gaussian steps."""
        return [PlannedRelease(sample_rate=self.sample_rate, steps=self.lora.total_steps)]

    def noise_multiplier(self) -> float:
        """Common noise multiplier for the LoRA plan (the participant's budget logic)."""
        return self.participant.noise_multiplier(self.plan())

    def run(self) -> LoraParticipantReport:
        """Join, run every LoRA round, evaluate; returns the report."""
        cfg, lora, part = self.config, self.lora, self.participant
        client, ledger, task = part.client, part.ledger, part.task
        timings: dict[str, float] = {}
        sigma = self.noise_multiplier()
        report = LoraParticipantReport(
            cfg.participant_id, cfg.federation_id, task.name, "lora-adapter",
            len(part.records), 0, sigma, 0.0, cfg.privacy.delta, cfg.privacy.target_epsilon,
        )
        client.wait_ready(timeout_s=120)
        federation = client.federation()
        if cfg.participant_id not in federation.roster:
            raise ProtocolError(f"{cfg.participant_id!r} is not in the federation's roster")
        start = time.perf_counter()
        federation = part.join(federation, protocol_plan=canonical_plan(
            {"protocol": "dp-fedavg-lora", "task": task.name, **asdict(lora)}))
        timings["keys"] = time.perf_counter() - start

        self.trainer = trainer = LocalLoraTrainer(
            part.lm, task, part.records, config=lora, noise_multiplier=sigma, seed=cfg.seed,
        )
        report.adapter_values = trainer.size
        report.lora = {**asdict(lora), "target_modules": list(trainer.config.resolved_targets(
            str(getattr(part.lm.model.config, "model_type", "")))),
            "sample_rate": trainer.sample_rate, "per_sample_gradients": trainer.per_sample}
        adapter = trainer.flat_adapter()  # the shared initial adapter (public seed)
        train_s = secure_s = 0.0
        for r in range(1, lora.rounds + 1):
            round_id = f"lora-{r}"
            release = f"{cfg.federation_id}/{round_id}"
            status = client.round(round_id)
            if release not in {e.release_id for e in ledger.entries}:
                ledger.reserve(
                    release_id=release, description=f"LoRA round {r} (DP-SGD on adapters)",
                    noise_multiplier=sigma, sample_rate=trainer.sample_rate,
                    steps=lora.steps_per_round,
                    sensitivity=f"per-record gradient L2 {lora.max_grad_norm:g}",
                )
            began = time.perf_counter()
            update = (trainer.run_round(adapter) if not status.contributed
                      else np.zeros_like(adapter))
            compute = time.perf_counter() - began
            bound = max(1.0, 4 * float(np.abs(update).max(initial=0.0)))
            ckks.check_precision(cfg.ckks, n_summands=len(federation.roster),
                                 value_bound=bound, noise_std=None)
            sent, received = client.bytes_sent, client.bytes_received
            began = time.perf_counter()
            mean, count = part.secure_mean(round_id, update, kind=ROUND_KIND,
                                           federation=federation, release_id=release)
            waited = time.perf_counter() - began
            adapter = adapter + mean
            trainer.load_flat_adapter(adapter)
            train_s += compute
            secure_s += waited
            report.rounds.append({
                "round": round_id, "contributions": count,
                "bytes_sent": client.bytes_sent - sent,
                "bytes_received": client.bytes_received - received,
                "client_seconds": compute, "secure_mean_seconds": waited,
            })
            logger.info("[LoraParticipant] round=%s contributions=%d", round_id, count)
        timings["lora_training"] = train_s
        timings["lora_secure_mean"] = secure_s
        report.epsilon_spent = ledger.epsilon_spent()

        if cfg.evaluate:
            test = balanced_sample(load_split(task, "test", data_dir=cfg.data_dir or None),
                                   per_class=cfg.test_per_class, num_classes=len(task.labels),
                                   seed=cfg.test_seed if cfg.test_seed >= 0 else 1000 + cfg.seed)
            start = time.perf_counter()
            report.scores = {"lora": asdict(trainer.evaluate(test, batch_size=cfg.batch_size))}
            timings["evaluation"] = time.perf_counter() - start
        report.bytes_sent = client.bytes_sent
        report.bytes_received = client.bytes_received
        report.seconds = timings
        torch.save({"adapter": torch.from_numpy(adapter), "names": trainer.names,
                    "lora": report.lora, "task": task.name,
                    "model_fingerprint": part.lm.fingerprint},
                   part.state_dir / f"{cfg.federation_id}-{task.name}-lora.pt")
        if cfg.results_file:
            Path(cfg.results_file).write_text(json.dumps(asdict(report), indent=2))
        return report

    def close(self) -> None:
        """Close the participant's channel."""
        self.participant.close()


def run_lora_participant(config: ParticipantConfig, lora: LoraConfigSpec) -> LoraParticipantReport:
    """Run one participant of a DP-FedAvg-LoRA federation to the end."""
    node = LoraParticipant(config, lora)
    try:
        return node.run()
    finally:
        node.close()
