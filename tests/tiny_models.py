"""Tiny, seeded, randomly initialised causal LMs for offline tests (no downloads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.models.gemma import GemmaConfig
from transformers.models.gemma2 import Gemma2Config
from transformers.models.gemma3 import Gemma3Config, Gemma3TextConfig
from transformers.models.gpt2 import GPT2Config
from transformers.models.gpt_neox import GPTNeoXConfig
from transformers.models.llama import LlamaConfig
from transformers.models.mistral import MistralConfig
from transformers.models.mixtral import MixtralConfig
from transformers.models.olmo import OlmoConfig
from transformers.models.olmo2 import Olmo2Config
from transformers.models.olmo3 import Olmo3Config
from transformers.models.phi import PhiConfig
from transformers.models.phi3 import Phi3Config
from transformers.models.qwen2 import Qwen2Config
from transformers.models.qwen2_moe import Qwen2MoeConfig
from transformers.models.qwen3 import Qwen3Config
from transformers.models.qwen3_moe import Qwen3MoeConfig
from transformers.models.siglip import SiglipVisionConfig
from transformers.models.smollm3 import SmolLM3Config

VOCAB_SIZE: Final[int] = 128
HIDDEN_SIZE: Final[int] = 32
NUM_LAYERS: Final[int] = 2
SEED: Final[int] = 1234

# Special token ids inside the tiny vocabulary (the defaults point into the real vocabularies).
_TOKENS: Final[dict[str, int]] = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

# Arguments shared by the Llama-like decoder configs.
_DECODER: Final[dict[str, Any]] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": HIDDEN_SIZE,
    "intermediate_size": 64,
    "num_hidden_layers": NUM_LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    **_TOKENS,
}
_MOE: Final[dict[str, Any]] = {"num_experts_per_tok": 2}


def _gemma3_text(**extra: Any) -> Gemma3TextConfig:
    return Gemma3TextConfig(
        **_DECODER,
        head_dim=8,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        **extra,
    )


def _gemma3_multimodal() -> Gemma3Config:
    # 16x16 image, 4x4 patches -> 4x4 patch grid pooled to 2x2 = 4 tokens per image.
    vision = SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
    )
    return Gemma3Config(
        text_config=_gemma3_text(),
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=VOCAB_SIZE - 3,
        eoi_token_index=VOCAB_SIZE - 2,
        image_token_index=VOCAB_SIZE - 1,
    )


_CONFIGS: Final[dict[str, Callable[[], PretrainedConfig]]] = {
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_embd=HIDDEN_SIZE,
        n_layer=NUM_LAYERS,
        n_head=4,
        n_positions=64,
        **_TOKENS,
    ),
    "gpt_neox": lambda: GPTNeoXConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=64,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=64,
        **_TOKENS,
        use_parallel_residual=True,
    ),
    "gpt_neox_sequential": lambda: GPTNeoXConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=64,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=64,
        **_TOKENS,
        use_parallel_residual=False,
    ),
    "llama": lambda: LlamaConfig(**_DECODER),
    "mistral": lambda: MistralConfig(**_DECODER, sliding_window=None),
    "mixtral": lambda: MixtralConfig(**_DECODER, **_MOE, num_local_experts=4, sliding_window=None),
    "qwen2": lambda: Qwen2Config(**_DECODER),
    "qwen2_moe": lambda: Qwen2MoeConfig(
        **_DECODER,
        **_MOE,
        num_experts=4,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=32,
    ),
    "qwen3": lambda: Qwen3Config(**_DECODER, head_dim=8),
    "qwen3_moe": lambda: Qwen3MoeConfig(
        **_DECODER, **_MOE, head_dim=8, num_experts=4, moe_intermediate_size=16
    ),
    "smollm3": lambda: SmolLM3Config(**_DECODER),
    "phi": lambda: PhiConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=64,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=64,
        **_TOKENS,
    ),
    "phi3": lambda: Phi3Config(**_DECODER),
    "gemma": lambda: GemmaConfig(**_DECODER, head_dim=8),
    "gemma2": lambda: Gemma2Config(**_DECODER, head_dim=8, sliding_window=4),
    "gemma3_text": _gemma3_text,
    "gemma3": _gemma3_multimodal,
    "olmo": lambda: OlmoConfig(**_DECODER),
    "olmo2": lambda: Olmo2Config(**_DECODER),
    "olmo3": lambda: Olmo3Config(**_DECODER, sliding_window=4),
}

TINY_ARCHS: Final[tuple[str, ...]] = tuple(_CONFIGS)
"""Every name :func:`build_tiny_model` accepts (``gpt_neox_sequential``: no parallel residual)."""


def tiny_config(arch: str) -> PretrainedConfig:
    """Return the tiny configuration used for ``arch``.

    Args:
        arch: One of :data:`TINY_ARCHS`.

    Returns:
        A fresh configuration object.

    Raises:
        KeyError: If ``arch`` is unknown.
    """
    try:
        factory = _CONFIGS[arch]
    except KeyError:
        raise KeyError(f"unknown tiny arch {arch!r}; known: {', '.join(TINY_ARCHS)}") from None
    return factory()


def build_tiny_model(arch: str, *, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Build a tiny random causal LM (2 layers, hidden 32, vocab 128), seeded and in eval mode.

    Args:
        arch: One of :data:`TINY_ARCHS`.
        dtype: Parameter dtype.

    Returns:
        The model, on CPU, in eval mode, with the eager attention implementation.
    """
    config = tiny_config(arch)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
    model.eval()
    return model
