"""Where the model runs: devices are checked up front, inputs follow the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from participant.errors import ModelLoadError
from participant.model import resolve_device


def test_cpu_resolves_and_unknown_or_absent_devices_are_clear_errors() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="unknown device|unsupported device"):
        resolve_device("tpu")
    with pytest.raises(ModelLoadError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")  # one past the last


def test_encode_puts_every_input_on_the_models_device(tiny_llama_dir: Path) -> None:
    from participant.model import load_model

    lm = load_model(str(tiny_llama_dir), device="cpu")
    encoded = lm.encode(["a b", "a b c d"], padding=True)
    assert set(encoded) >= {"input_ids", "attention_mask"}
    assert all(t.device == lm.device for t in encoded.values())
    assert encoded["input_ids"].shape[0] == 2
