"""Fold an injected context vector into the output projections, for serving.

:func:`participant.hooks.inject_context` turns each site's output ``out`` into
``beta * out + lambda * v``. Where ``out`` is an affine map's output ``x W^T + b`` (followed
only by dropout, the identity in eval mode), the same function is
``x (beta W)^T + (beta b + lambda v)``: :func:`fold_context` rewrites those projections once,
so that a plain forward pass computes the injected model with no hook (the bias rides in
the projection's matmul). It was built for a GPU at batch 1, where a small model is bound
by the host's kernel launches and the hooks' host work showed. Measured
(docs/benchmarks.md): on a host-bound proxy the fold costs 1.02x zero-shot against the
hooks' 1.08x on a CPU and 1.06x against 1.11x on an H100; on the default model on a CPU
it matches the hooks; on the default model on an H100 one run read 1.48x at batch 1
against the hooks' 1.14x (1.22x and 1.20x at batch 16), not explained yet. Hence
:func:`fold_by_default`. Calibration keeps the hooks: it needs gradients with respect to
the coefficients and per-example rows.

The fold is checked before it is kept: one probe forward with the hooks and one with the
folded weights must agree (relative L2 error of the logits within a dtype-dependent
tolerance), otherwise the original weights are put back and :class:`FoldError` is raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import torch

from participant.errors import FoldError
from participant.hooks import ATTN, MLP, inject_context
from participant.layers import LayerSites

__all__ = ["FOLDABLE_PROJECTIONS", "fold_by_default", "fold_context", "foldable_model_types"]

_PRE_NORM: Final[tuple[str, str]] = ("self_attn.o_proj", "mlp.down_proj")

FOLDABLE_PROJECTIONS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {
        # Paths relative to the decoder layer (the site's parent): the attention and the MLP
        # projection whose output, after eval-mode dropout at most, is the site's output.
        "gpt2": ("attn.c_proj", "mlp.c_proj"),
        "gpt_neox": ("attention.dense", "mlp.dense_4h_to_h"),
        "llama": _PRE_NORM,
        "mistral": _PRE_NORM,
        "qwen2": _PRE_NORM,
        "qwen3": _PRE_NORM,
        "smollm3": _PRE_NORM,
        "gemma": _PRE_NORM,
        "olmo": _PRE_NORM,
        "phi": ("self_attn.dense", "mlp.fc2"),
        "phi3": _PRE_NORM,
        # Not foldable: post-norm decoders (gemma2, gemma3, olmo2, olmo3) add RMSNorm(out),
        # which has no bias to carry lambda * v; mixture-of-experts MLPs (mixtral, qwen*_moe)
        # mix several projections with input-dependent weights.
    }
)
"""``config.model_type`` -> (attention projection, MLP projection), relative to the layer."""

#: Largest relative L2 error between hooked and folded probe logits, per parameter dtype:
#: float32 rounds only the fold's products; 16-bit weights round ``beta * W`` once more.
_TOLERANCE: Final[Mapping[torch.dtype, float]] = MappingProxyType(
    {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 5e-2, torch.float16: 1e-2})
_PROBE_TOKENS: Final[int] = 8


def foldable_model_types() -> tuple[str, ...]:
    """The ``config.model_type`` values :func:`fold_context` supports, sorted."""
    return tuple(sorted(FOLDABLE_PROJECTIONS))


def fold_by_default(model_type: str, device: torch.device | str) -> bool:
    """Whether ``fedctx infer --injection auto`` folds: where the architecture allows it,
    except on CUDA, where the one measurement on the default model (an H100, batch 1) had
    the hooks faster (docs/benchmarks.md); ``--injection fold`` still folds there."""
    return model_type in FOLDABLE_PROJECTIONS and torch.device(device).type != "cuda"


@dataclass(slots=True)
class _Saved:
    module: torch.nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None
    had_bias: bool


def _projections(model: torch.nn.Module, sites: LayerSites) -> list[list[torch.nn.Module]]:
    """``[kind][layer]`` projection modules, each a ``Linear`` or GPT-2 ``Conv1D``."""
    paths = FOLDABLE_PROJECTIONS.get(sites.model_type)
    if paths is None:
        raise FoldError(
            f"cannot fold into model_type {sites.model_type!r}: its sites are not the output of "
            f"one affine projection; foldable: {', '.join(foldable_model_types())}. "
            "Use participant.hooks.inject_context instead.")
    parent = {id(child): module for module in model.modules() for child in module.children()}
    found: list[list[torch.nn.Module]] = [[], []]
    for kind, modules in ((ATTN, sites.attn), (MLP, sites.mlp)):
        for layer, site in enumerate(modules):
            node = parent.get(id(site))
            for part in paths[kind].split("."):
                node = None if node is None else node._modules.get(part)
            weight = getattr(node, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or (
                    type(node).__name__ not in ("Linear", "Conv1D")):
                raise FoldError(f"layer {layer}: {paths[kind]!r} is not a Linear / Conv1D "
                                f"projection in this {sites.model_type} model")
            # nn.Linear's weight is [out, in]; GPT-2's Conv1D stores [in, out].
            width = weight.shape[1] if type(node).__name__ == "Conv1D" else weight.shape[0]
            if width != sites.hidden_size:
                raise FoldError(f"layer {layer}: {paths[kind]!r} outputs {width} values, "
                                f"the residual has {sites.hidden_size}")
            found[kind].append(node)
    return found


def _probe_logits(model: torch.nn.Module) -> torch.Tensor:
    vocab = int(model.get_input_embeddings().weight.shape[0])
    device = model.get_input_embeddings().weight.device
    ids = (torch.arange(1, _PROBE_TOKENS + 1, device=device) * 7919 % vocab).unsqueeze(0)
    return model(input_ids=ids, use_cache=False).logits.float()


@torch.no_grad()
def fold_context(
    model: torch.nn.Module, sites: LayerSites, *, vector: torch.Tensor,
    coefficients: torch.Tensor,
) -> None:
    """Rewrite ``model``'s output projections so that it computes the injected model.

    Afterwards a plain forward pass equals one inside ``inject_context(model, sites,
    vector=vector, coefficients=coefficients)`` up to rounding. The change is permanent (there
    is nothing to remove, and folding twice would inject twice): fold a model this process
    loaded for serving, never one that calibrates or is shared with other work.

    Args:
        model: The model ``sites`` was resolved from, in eval mode.
        sites: Hook sites from :func:`participant.layers.resolve_layer_sites`.
        vector: Context vector ``[2, L, d]``, finite.
        coefficients: Shared ``[L, 4]`` coefficients ``(lambda_attn, beta_attn, lambda_mlp,
            beta_mlp)``, finite (per-example rows cannot be folded).

    Raises:
        FoldError: If the architecture is not foldable, the model is in training mode or
            already folded, an argument has the wrong shape or is not finite, or the folded
            model disagrees with the hooks on the probe (then the weights are restored).
    """
    shape = (2, sites.num_layers, sites.hidden_size)
    if not isinstance(vector, torch.Tensor) or tuple(vector.shape) != shape:
        raise FoldError(f"vector must be a tensor of shape {shape}")
    if not isinstance(coefficients, torch.Tensor) or tuple(coefficients.shape) != (
            sites.num_layers, 4):
        raise FoldError(f"coefficients must be a shared [L, 4] = ({sites.num_layers}, 4) table; "
                        "per-example rows cannot be folded")
    if not (torch.isfinite(vector).all() and torch.isfinite(coefficients).all()):
        raise FoldError("vector and coefficients must be finite")
    if model.training:
        raise FoldError("fold into a model in eval mode: in training mode dropout sits between "
                        "a projection and its site")
    if getattr(model, "_fedctx_folded", False):
        raise FoldError("this model already carries a folded injection; reload it to fold again")
    projections = _projections(model, sites)
    dtype = next(model.parameters()).dtype
    tolerance = _TOLERANCE.get(dtype, 5e-2)
    with inject_context(model, sites, vector=vector, coefficients=coefficients):
        expected = _probe_logits(model)

    table = coefficients.detach().to(torch.float64).cpu()
    saved: list[_Saved] = []
    try:
        for kind in (ATTN, MLP):
            for layer, module in enumerate(projections[kind]):
                lam, beta = (float(table[layer, 2 * kind]), float(table[layer, 2 * kind + 1]))
                weight, bias = module.weight, module.bias
                saved.append(_Saved(module, weight.detach().to("cpu", copy=True),
                                     None if bias is None else bias.detach().to("cpu", copy=True),
                                     bias is not None))
                shift = lam * vector[kind, layer].to(device=weight.device, dtype=torch.float64)
                old_bias = (torch.zeros_like(shift) if bias is None
                            else bias.detach().to(torch.float64))
                new_bias = (beta * old_bias + shift).to(weight.dtype)
                weight.copy_((weight.to(torch.float64) * beta).to(weight.dtype))
                if bias is None:
                    module.bias = torch.nn.Parameter(new_bias, requires_grad=False)
                else:
                    bias.copy_(new_bias)
        folded = _probe_logits(model)
        error = float((folded - expected).norm() / expected.norm().clamp_min(1e-12))
        if not error <= tolerance:  # also catches NaN
            raise FoldError(f"the folded model's probe logits differ from the hooks' by "
                            f"{error:.2e} (relative L2; allowed {tolerance:g} in {dtype}); "
                            "the original weights were restored")
    except BaseException:
        for entry in saved:
            entry.module.weight.copy_(entry.weight.to(entry.module.weight.device))
            if entry.had_bias:
                entry.module.bias.copy_(entry.bias.to(entry.module.bias.device))
            else:
                entry.module.bias = None
        raise
    model._fedctx_folded = True  # type: ignore[attr-defined]
