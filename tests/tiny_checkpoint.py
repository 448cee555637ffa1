"""A tiny Llama checkpoint *folder* (weights + word-level tokenizer) for offline e2e tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = (
    "review sentence sentiment label news type question answer headline topic the a an is was "
    "and of to in it this that film movie good bad great awful fun boring not very . , : ! ? "
    "negative positive objective subjective world sports business technology entertainment "
    "politics tech abbreviation entity description human location number"
).split()


def save_tiny_llama(folder: Path, *, seed: int = 0) -> Path:
    """Write a 2-layer random Llama plus a word-level tokenizer to ``folder``."""
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "\n": 4}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="removed"),
        pre_tokenizers.Split(Regex(r"\n|\w+|[^\w\s]"), behavior="isolated"),
    ])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>",
                                   pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def load_tiny_sst2(folder: Path, shared_data: Path, *, n: int = 6, device: str = "cpu",
                   dtype: str = "float32"):  # type: ignore[no-untyped-def]
    """``(LoadedModel, layer sites, sst2 task, first n sst2 train records)`` on ``device``."""
    from participant.data import load_split
    from participant.layers import resolve_layer_sites
    from participant.model import load_model
    from participant.tasks import load_task

    lm = load_model(str(folder), device=device, dtype=dtype)
    task = load_task("sst2")
    records = load_split(task, "train", data_dir=str(shared_data / "sst2"))[:n]
    return lm, resolve_layer_sites(lm.model), task, records
