"""DP-FedAvg-LoRA baseline, local side: PEFT LoRA adapters trained with DP-SGD (Opacus).

The frozen model gets LoRA adapters (PEFT ``inject_adapter_in_model``, in place, so the
participant's :class:`~participant.model.LoadedModel` scores with them) on the attention
projections; only the adapter weights are trainable. Objective: the same as coefficient
calibration (:mod:`participant.calibration`, ``CalibrationConfig.loss``): at the last token
of the zero-demonstration prompt ``task.query(text)``, cross-entropy of the label word's
first token over the label words' first tokens (``label_words``, calibration's default) or
over the full vocabulary (``full_vocab``).

Privacy (record level, as everywhere in fedctx): per-record gradients come from Opacus's
``GradSampleModule`` hooks on the adapters' ``nn.Linear`` layers (``lora_A`` / ``lora_B``),
one batched forward/backward with a *summed* loss, so ``grad_sample[i]`` is record ``i``'s
own gradient. ``DPOptimizer`` clips each record's gradient over *all* adapter weights to
``max_grad_norm`` (L2), sums, adds Gaussian noise of std ``noise_multiplier *
max_grad_norm`` and divides by the expected batch size. Batches are Poisson samples at rate
``batch_size / N`` (the sampling the Opacus accountants analyse). With ``noise_multiplier
== 0`` training is ordinary (no clipping, no noise, fixed-size batches). Should Opacus
not handle some module, ``per_sample="loop"`` computes the same per-record gradients with
one backward pass per record (slower, same result) and still hands them to DPOptimizer.

All participants must start from the same adapter: ``lora_A`` is initialised from a public
seed (``init_seed``) with PEFT's default scheme (Kaiming-uniform, ``a = sqrt(5)``), drawn
from a private ``torch.Generator`` so concurrent threads cannot perturb it; ``lora_B`` is
zero, so the initial adapter leaves the model's outputs unchanged.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from opacus.optimizers import DPOptimizer

from privacy.errors import ConfigError

from .calibration import EncodedQueries
from .data import Example
from .evaluation import Scores, score
from .model import LoadedModel, last_token_logits
from .tasks import TaskSpec

#: Where the default ``("q_proj", "v_proj")`` targets live in architectures that fuse the
#: attention projections into one module (LoRA then adapts the fused q/k/v projection).
FUSED_QKV = {"gpt2": ("c_attn",), "gpt_neox": ("query_key_value",), "phi3": ("qkv_proj",)}
_DEFAULT_TARGETS = ("q_proj", "v_proj")
_CONV1D_MODELS = frozenset({"gpt2"})  # transformers Conv1D stores weights transposed


@dataclass(frozen=True, slots=True)
class LoraConfigSpec:
    """LoRA and local DP-SGD settings of the DP-FedAvg-LoRA baseline.

    Attributes:
        rank: LoRA rank ``r`` (the papers' sizes suggest 8).
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / rank``).
        dropout: dropout on the adapters' input during training (0: none).
        target_modules: module-name suffixes that get adapters; the default q/v pair is
            mapped to the fused projection for GPT-2 (``c_attn``), GPT-NeoX and Phi-3.
        learning_rate: Adam learning rate (constant, no weight decay).
        steps_per_round: local DP-SGD steps between two federated averages.
        batch_size: expected records per step (Poisson rate ``batch_size / N`` when private).
        rounds: federated rounds.
        max_grad_norm: per-record L2 clip over all adapter weights (private mode only).
        init_seed: public seed of the shared initial adapter.
        loss: ``label_words`` or ``full_vocab``, as ``CalibrationConfig.loss``.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = _DEFAULT_TARGETS
    learning_rate: float = 1e-3
    steps_per_round: int = 4
    batch_size: int = 8
    rounds: int = 2
    max_grad_norm: float = 1.0
    init_seed: int = 0
    loss: str = "label_words"

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ConfigError("LoRA needs rank >= 1, alpha > 0 and dropout in [0, 1)")
        if not self.target_modules:
            raise ConfigError("LoRA needs at least one target module")
        if self.batch_size < 1 or self.steps_per_round < 1 or self.rounds < 1:
            raise ConfigError("batch_size, steps_per_round and rounds must be >= 1")
        if self.learning_rate <= 0 or self.max_grad_norm <= 0:
            raise ConfigError("learning_rate and max_grad_norm must be > 0")
        if self.loss not in ("label_words", "full_vocab"):
            raise ConfigError("loss must be 'label_words' or 'full_vocab'")

    @property
    def total_steps(self) -> int:
        """Local DP-SGD steps over the whole protocol."""
        return self.rounds * self.steps_per_round

    def resolved_targets(self, model_type: str) -> tuple[str, ...]:
        """The target module names for an architecture (default q/v mapped if fused)."""
        if self.target_modules == _DEFAULT_TARGETS and model_type in FUSED_QKV:
            return FUSED_QKV[model_type]
        return self.target_modules


def _outputs_require_grad(_module: torch.nn.Module, _inputs: object,
                          output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the module's output requires grad (the weights stay frozen)."""
    return output.requires_grad_(True)


def _has_lora(model: torch.nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


class LocalLoraTrainer:
    """One participant's LoRA adapter and its DP-SGD optimiser, kept across rounds.

    Args:
        lm: a freshly loaded frozen model; adapters are injected into ``lm.model`` in place.
        task: the task spec.
        examples: the participant's labelled records (private).
        config: LoRA and optimisation settings.
        noise_multiplier: DP-SGD noise multiplier; 0 disables DP (no clipping either).
        seed: seeds batch sampling.
        per_sample: ``"opacus"`` (GradSampleModule hooks) or ``"loop"`` (one backward
            per record); both give per-record gradients to the same DPOptimizer.
    """

    def __init__(
        self, lm: LoadedModel, task: TaskSpec, examples: list[Example], *,
        config: LoraConfigSpec, noise_multiplier: float, seed: int, per_sample: str = "opacus",
    ) -> None:
        from peft import LoraConfig, inject_adapter_in_model  # noqa: PLC0415 - heavy import

        if not examples:
            raise ConfigError("LoRA training needs at least one labelled record")
        if per_sample not in ("opacus", "loop"):
            raise ConfigError("per_sample must be 'opacus' or 'loop'")
        if _has_lora(lm.model):
            raise ConfigError("this model already carries LoRA adapters: load a fresh one")
        self.lm, self.task, self.config = lm, task, config
        self.queries = EncodedQueries(lm, task, examples)
        self.noise_multiplier = float(noise_multiplier)
        self.private = self.noise_multiplier > 0
        self.sample_rate = min(1.0, config.batch_size / len(examples))
        self.generator = torch.Generator().manual_seed(seed)
        model_type = str(getattr(lm.model.config, "model_type", ""))
        targets = config.resolved_targets(model_type)
        peft_config = LoraConfig(
            r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
            target_modules=list(targets), bias="none",
            fan_in_fan_out=model_type in _CONV1D_MODELS,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inject_adapter_in_model(peft_config, lm.model)
        self.names = [n for n, p in lm.model.named_parameters() if p.requires_grad]
        if not self.names or not all("lora_" in n for n in self.names):
            raise ConfigError(
                f"LoRA targets {targets} matched no module of this {model_type or 'model'} "
                "(or left non-adapter weights trainable)"
            )
        params = dict(lm.model.named_parameters())
        self.params = [params[n] for n in self.names]
        self.lora_modules = [m for n, m in lm.model.named_modules()
                             if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "lora_dropout")]
        self._init_adapter(config.init_seed)
        self.size = sum(p.numel() for p in self.params)
        self.per_sample = per_sample
        self.gsm = None
        if self.private and per_sample == "opacus":
            from opacus import GradSampleModule  # noqa: PLC0415

            self.gsm = GradSampleModule(lm.model, batch_first=True, loss_reduction="sum")
        base = torch.optim.Adam(self.params, lr=config.learning_rate)
        self.optimizer: torch.optim.Optimizer = base
        if self.private:
            self.optimizer = DPOptimizer(
                base, noise_multiplier=self.noise_multiplier, max_grad_norm=config.max_grad_norm,
                expected_batch_size=max(1, round(self.sample_rate * len(examples))),
                loss_reduction="mean",
            )
        self.losses: list[float] = []
        self.step_seconds: list[float] = []

    def _init_adapter(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in zip(self.names, self.params, strict=True):
                if ".lora_A." in name:  # drawn on the CPU: the same weights on any device
                    weights = torch.empty(p.shape, dtype=p.dtype)
                    torch.nn.init.kaiming_uniform_(weights, a=math.sqrt(5), generator=generator)
                    p.copy_(weights)
                else:
                    p.zero_()

    # -- the adapter as one flat vector ------------------------------------------------
    def flat_adapter(self) -> np.ndarray:
        """All adapter weights, in the model's parameter order, as float64 ``[size]``."""
        return torch.cat([p.detach().reshape(-1).cpu() for p in self.params]).double().numpy()

    def load_flat_adapter(self, values: np.ndarray) -> None:
        """Set every adapter weight from a flat vector made by :meth:`flat_adapter`."""
        flat = torch.as_tensor(np.asarray(values, dtype=np.float64))
        if flat.shape != (self.size,):
            raise ConfigError(f"adapter vector has {flat.numel()} values, expected {self.size}")
        offset = 0
        with torch.no_grad():
            for p in self.params:
                n = p.numel()
                p.copy_(
                    flat[offset : offset + n].reshape(p.shape).to(device=p.device, dtype=p.dtype)
                )
                offset += n

    # -- forward and per-record gradients ----------------------------------------------
    def _summed_loss(self, model: torch.nn.Module, indices: list[int]) -> torch.Tensor:
        input_ids, mask, last = self.queries.batch(indices)
        final = last_token_logits(model, input_ids, mask, last)
        labels = self.queries.labels[indices].to(final.device)
        label_token_ids = self.queries.label_token_ids.to(final.device)
        if self.config.loss == "label_words":
            return F.cross_entropy(final[:, label_token_ids], labels, reduction="sum")
        return F.cross_entropy(final, label_token_ids[labels], reduction="sum")

    def _train_mode(self, on: bool) -> None:
        # Only the adapters: Opacus captures activations of modules in training mode, and
        # adapter dropout acts in training mode; the frozen model stays in eval mode.
        for module in self.lora_modules:
            module.train(on)

    def per_sample_gradients(self, indices: list[int], *, method: str | None = None
                             ) -> tuple[list[torch.Tensor], float]:
        """``([B, *shape] per-record gradient of each adapter weight], mean loss)``."""
        method = method or self.per_sample
        if not indices:
            return [torch.zeros(0, *p.shape) for p in self.params], float("nan")
        if method == "opacus" and self.gsm is None:
            from opacus import GradSampleModule  # noqa: PLC0415

            self.gsm = GradSampleModule(self.lm.model, batch_first=True, loss_reduction="sum")
        # The first layer's lora_A sees only frozen activations, and a full backward hook
        # (Opacus's) on a module none of whose inputs require grad fires with a PyTorch
        # warning, per thread, so no warnings filter silences it reliably. Marking the
        # embeddings' output as requiring grad removes the cause (one small backward step).
        handle = self.lm.model.get_input_embeddings().register_forward_hook(
            _outputs_require_grad)
        self._train_mode(True)
        try:
            if method == "opacus":
                return self._opacus_per_sample_gradients(indices)
            if self.gsm is not None:  # Opacus hooks would capture activations here: off
                self.gsm.disable_hooks()
            rows: list[list[torch.Tensor]] = []
            total = 0.0
            for i in indices:  # the honest slow path: one backward per record
                loss = self._summed_loss(self.lm.model, [i])
                rows.append([g.detach() for g in torch.autograd.grad(loss, self.params)])
                total += float(loss.detach())
            return [torch.stack(col) for col in zip(*rows, strict=True)], total / len(indices)
        finally:
            handle.remove()
            if self.gsm is not None:
                self.gsm.enable_hooks()
            self._train_mode(False)

    def _opacus_per_sample_gradients(self, indices: list[int]
                                     ) -> tuple[list[torch.Tensor], float]:
        """One batched forward/backward through the GradSampleModule (summed loss)."""
        assert self.gsm is not None
        for p in self.params:
            p.grad_sample = None  # type: ignore[attr-defined]
            p.grad = None
        try:
            loss = self._summed_loss(self.gsm, indices)
            loss.backward()
            grads = [p.grad_sample.detach().clone() for p in self.params]  # type: ignore[attr-defined]
        finally:
            for p in self.params:
                p.grad_sample = None  # type: ignore[attr-defined]
                p.grad = None
        return grads, float(loss.detach()) / len(indices)

    def _sample(self) -> list[int]:
        n = len(self.queries.texts)
        if self.private:  # Poisson sampling, as the accountant assumes
            mask = torch.rand(n, generator=self.generator) < self.sample_rate
            return [int(i) for i in torch.nonzero(mask).flatten()]
        return [int(i) for i in
                torch.randperm(n, generator=self.generator)[: self.config.batch_size]]

    def private_gradient(self, indices: list[int]) -> torch.Tensor:
        """The flat gradient DP-SGD applies for this batch, without stepping.

        Clipped per-record gradients, summed, plus N(0, (noise_multiplier *
        max_grad_norm)^2) noise, divided by the expected batch size (private mode only).
        """
        if not self.private:
            raise ConfigError("private_gradient needs a noise multiplier > 0")
        assert isinstance(self.optimizer, DPOptimizer)
        grads, _ = self.per_sample_gradients(indices)
        self.optimizer.zero_grad()
        for p, g in zip(self.params, grads, strict=True):
            p.grad_sample = g  # type: ignore[attr-defined]
        self.optimizer.pre_step()
        flat = torch.cat([p.grad.detach().reshape(-1) for p in self.params]).clone()  # type: ignore[union-attr]
        self.optimizer.zero_grad()
        return flat

    def step(self) -> float:
        """One local step on a fresh batch; returns its mean loss (nan for an empty one)."""
        indices = self._sample()
        if self.private:
            grads, loss = self.per_sample_gradients(indices)
            self.optimizer.zero_grad()
            for p, g in zip(self.params, grads, strict=True):
                p.grad_sample = g  # type: ignore[attr-defined]
        else:
            self.optimizer.zero_grad()
            self._train_mode(True)
            try:
                total = self._summed_loss(self.lm.model, indices)
                (total / len(indices)).backward()
            finally:
                self._train_mode(False)
            loss = float(total.detach()) / len(indices)
        self.optimizer.step()
        return loss

    def run_round(self, start_flat: np.ndarray) -> np.ndarray:
        """Train ``steps_per_round`` steps from the global adapter; return the update."""
        start = np.asarray(start_flat, dtype=np.float64)
        self.load_flat_adapter(start)
        began = time.perf_counter()
        for _ in range(self.config.steps_per_round):
            loss = self.step()
            if not math.isnan(loss):
                self.losses.append(loss)
        self.step_seconds.append(time.perf_counter() - began)
        return self.flat_adapter() - start

    # -- prediction with the adapter -------------------------------------------------------
    def predict(self, texts: list[str], *, batch_size: int = 16) -> list[int]:
        """Class index per text (label words' first tokens at the last token, adapter on)."""
        label_ids = self.queries.label_token_ids
        predictions: list[int] = []
        for start in range(0, len(texts), batch_size):
            prompts = [self.task.query(t) for t in texts[start : start + batch_size]]
            enc = self.lm.encode(prompts, padding=True)
            last = enc["attention_mask"].sum(1) - 1
            with torch.no_grad():
                final = last_token_logits(self.lm.model, enc["input_ids"],
                                          enc["attention_mask"], last)
            predictions += final[:, label_ids.to(final.device)].argmax(dim=-1).tolist()
        return predictions

    def evaluate(self, examples: list[Example], *, batch_size: int = 16) -> Scores:
        """Accuracy and macro-F1 with the current adapter."""
        began = time.perf_counter()
        predictions = self.predict([e.text for e in examples], batch_size=batch_size)
        return score(predictions, [e.label for e in examples], num_classes=len(self.task.labels),
                     seconds=time.perf_counter() - began)
