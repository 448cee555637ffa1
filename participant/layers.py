"""Per-architecture maps to the modules whose outputs are added to a causal LM's residual stream."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import torch

from participant.errors import LayerMapError, UnsupportedArchitectureError

__all__ = [
    "LAYER_MAPS",
    "LayerMapSpec",
    "LayerSites",
    "layer_map_fingerprint",
    "resolve_layer_sites",
    "supported_model_types",
]

_LAYER_MAP_VERSION: Final[str] = "fedctx.layer_map.v1"
_PATH_RE: Final[re.Pattern[str]] = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


@dataclass(frozen=True, slots=True)
class LayerMapSpec:
    """Where the two residual contributions of every decoder layer are produced.

    For decoder layer ``l`` the residual update is ``r_l = r_{l-1} + a_l + m_l``.
    ``attn_output`` and ``mlp_output`` name the modules whose forward output *is* ``a_l`` and
    ``m_l`` (a ``[B, T, d]`` tensor, or a tuple whose element 0 is one): the last module applied
    before the residual add.

    Attributes:
        layers_path: Dotted path from the top-level model to the sequence of decoder layers,
            e.g. ``"model.layers"``.
        attn_output: Dotted path, relative to one decoder layer, of the module whose output is
            the attention sub-block's contribution ``a_l``.
        mlp_output: Dotted path, relative to one decoder layer, of the module whose output is
            the MLP sub-block's contribution ``m_l``.
    """

    layers_path: str
    attn_output: str
    mlp_output: str

    def __post_init__(self) -> None:
        """Reject malformed dotted paths early.

        Raises:
            LayerMapError: If a path is not a dotted sequence of identifiers / indices, or the
                two site paths are equal.
        """
        for name in ("layers_path", "attn_output", "mlp_output"):
            value = getattr(self, name)
            if not isinstance(value, str) or _PATH_RE.fullmatch(value) is None:
                raise LayerMapError(
                    f"LayerMapSpec.{name} must be a dotted module path such as 'model.layers' "
                    f"or 'self_attn', got {value!r}"
                )
        if self.attn_output == self.mlp_output:
            raise LayerMapError(
                "LayerMapSpec.attn_output and mlp_output must differ, "
                f"both are {self.attn_output!r}"
            )


# Pre-norm decoders (Llama family): the attention / MLP outputs are added to the residual as is.
_PRE_NORM: Final[LayerMapSpec] = LayerMapSpec("model.layers", "self_attn", "mlp")
# Sandwich / post-norm decoders normalise each sub-block output before the residual add, so the
# contribution is the post-norm's output. NB: in Llama-style layers the module named
# ``post_attention_layernorm`` is the *pre-MLP* norm; here it really normalises the attention.
_POST_NORM: Final[LayerMapSpec] = LayerMapSpec(
    "model.layers", "post_attention_layernorm", "post_feedforward_layernorm"
)

LAYER_MAPS: Final[Mapping[str, LayerMapSpec]] = MappingProxyType(
    {
        # GPT2Block: residual + attn(ln_1(x)); GPT2Attention / GPT2MLP apply resid dropout inside.
        "gpt2": LayerMapSpec("transformer.h", "attn", "mlp"),
        # GPTNeoXLayer: attention / MLP outputs go through post_attention_dropout /
        # post_mlp_dropout before the add, with parallel and sequential residual alike.
        "gpt_neox": LayerMapSpec("gpt_neox.layers", "post_attention_dropout", "post_mlp_dropout"),
        "llama": _PRE_NORM,
        "mistral": _PRE_NORM,
        "mixtral": _PRE_NORM,
        "qwen2": _PRE_NORM,
        "qwen2_moe": _PRE_NORM,
        "qwen3": _PRE_NORM,
        "qwen3_moe": _PRE_NORM,
        "smollm3": _PRE_NORM,
        "gemma": _PRE_NORM,
        "olmo": _PRE_NORM,
        # PhiDecoderLayer (parallel block) applies ONE shared resid_dropout module to both
        # outputs, so the sites sit before it: exact in eval mode or with resid_pdrop == 0.
        "phi": _PRE_NORM,
        # Phi3DecoderLayer: residual + resid_attn_dropout(attn), residual + resid_mlp_dropout(mlp).
        "phi3": LayerMapSpec("model.layers", "resid_attn_dropout", "resid_mlp_dropout"),
        "gemma2": _POST_NORM,
        "gemma3_text": _POST_NORM,
        "gemma3": LayerMapSpec(
            "model.language_model.layers", "post_attention_layernorm", "post_feedforward_layernorm"
        ),
        "olmo2": _POST_NORM,
        "olmo3": _POST_NORM,
    }
)
"""Registered layer maps keyed by ``config.model_type`` (checked against transformers 5.24)."""


def supported_model_types() -> tuple[str, ...]:
    """Return the ``config.model_type`` values with a registered layer map, sorted.

    Returns:
        The sorted model types.
    """
    return tuple(sorted(LAYER_MAPS))


@dataclass(frozen=True, slots=True)
class LayerSites:
    """The resolved hook sites of one model.

    Attributes:
        attn: ``num_layers`` modules whose outputs ``[B, T, d]`` are the attention
            contributions ``a_l``.
        mlp: ``num_layers`` modules whose outputs ``[B, T, d]`` are the MLP contributions ``m_l``.
        num_layers: Number of decoder layers ``L``.
        hidden_size: Residual width ``d``.
        spec: The layer map used, as registered or given (also when a bare base model was
            resolved with the prefix stripped).
        model_type: ``config.model_type`` of the model.
    """

    attn: list[torch.nn.Module]
    mlp: list[torch.nn.Module]
    num_layers: int
    hidden_size: int
    spec: LayerMapSpec
    model_type: str

    def describe(self) -> str:
        """Return the canonical text of this layer map, hashed by :func:`layer_map_fingerprint`.

        Returns:
            Compact JSON with sorted keys: version, model type, the three paths, ``L``, ``d``.
        """
        return json.dumps(
            {
                "version": _LAYER_MAP_VERSION,
                "model_type": self.model_type,
                "layers_path": self.spec.layers_path,
                "attn_output": self.spec.attn_output,
                "mlp_output": self.spec.mlp_output,
                "num_layers": self.num_layers,
                "hidden_size": self.hidden_size,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        )


def layer_map_fingerprint(sites: LayerSites) -> str:
    """Return the SHA-256 hex digest of ``sites.describe()``.

    Args:
        sites: Resolved sites.

    Returns:
        64 lowercase hex characters.
    """
    return hashlib.sha256(sites.describe().encode("utf-8")).hexdigest()


def _unsupported_message(model_type: object) -> str:
    supported = ", ".join(supported_model_types())
    return (
        f"no layer map registered for model_type {model_type!r}; supported model_types: "
        f"{supported}. For another architecture pass an explicit map, e.g. "
        "resolve_layer_sites(model, layer_map=LayerMapSpec(layers_path='model.layers', "
        "attn_output='self_attn', mlp_output='mlp')), naming the modules whose outputs the "
        "decoder layer adds to the residual stream."
    )


def _walk(root: torch.nn.Module, path: str, *, what: str) -> torch.nn.Module:
    """Follow a dotted path of submodules; the error names the component that failed."""
    node: torch.nn.Module = root
    walked: list[str] = []
    for part in path.split("."):
        child = node._modules.get(part)
        if child is None:
            available = ", ".join(name for name, sub in node._modules.items() if sub is not None)
            where = ".".join(walked) or "<root>"
            raise LayerMapError(
                f"{what}: path {path!r} fails at {part!r}: {type(node).__name__} at {where!r} "
                f"has no submodule {part!r} (submodules: {available or 'none'})"
            )
        node = child
        walked.append(part)
    return node


def _resolve_layers(model: torch.nn.Module, spec: LayerMapSpec) -> torch.nn.Module:
    """Find the layer container, also accepting a bare base model (e.g. ``LlamaModel``)."""
    try:
        return _walk(model, spec.layers_path, what="layers_path")
    except LayerMapError:
        prefix = getattr(model, "base_model_prefix", "")
        if isinstance(prefix, str) and prefix and spec.layers_path.startswith(prefix + "."):
            try:
                return _walk(model, spec.layers_path[len(prefix) + 1 :], what="layers_path")
            except LayerMapError:
                pass
        raise


def _hidden_size(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    get_text_config = getattr(config, "get_text_config", None)
    text_config = get_text_config(decoder=True) if callable(get_text_config) else config
    size = getattr(text_config, "hidden_size", None)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise LayerMapError(
            f"cannot read a positive integer hidden_size from the model config (got {size!r})"
        )
    return size


def resolve_layer_sites(
    model: torch.nn.Module, *, layer_map: LayerMapSpec | None = None
) -> LayerSites:
    """Resolve the attention and MLP residual-contribution modules of every decoder layer.

    Args:
        model: A transformers causal LM (or its bare base model) with ``config.model_type``.
        layer_map: Explicit map overriding :data:`LAYER_MAPS`, for unregistered architectures.

    Returns:
        The resolved sites; ``num_layers`` is the length of the layer container.

    Raises:
        UnsupportedArchitectureError: If no ``layer_map`` is given and the model type is not
            registered.
        TypeError: If ``layer_map`` is not a :class:`LayerMapSpec`.
        LayerMapError: If a path does not resolve, the layers are not a non-empty module
            sequence, a site is shared, or the config has no usable ``model_type`` /
            ``hidden_size``.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if layer_map is None:
        if not isinstance(model_type, str) or model_type not in LAYER_MAPS:
            raise UnsupportedArchitectureError(_unsupported_message(model_type))
        spec = LAYER_MAPS[model_type]
    else:
        if not isinstance(layer_map, LayerMapSpec):
            raise TypeError(f"layer_map must be a LayerMapSpec, got {type(layer_map).__name__}")
        spec = layer_map
    if not isinstance(model_type, str) or not model_type:
        raise LayerMapError("the model has no config.model_type; the layer map binding needs one")

    container = _resolve_layers(model, spec)
    if not isinstance(container, (torch.nn.ModuleList, torch.nn.Sequential)) or not container:
        raise LayerMapError(
            f"layers_path {spec.layers_path!r} must name a non-empty ModuleList or Sequential, "
            f"got {type(container).__name__}"
        )
    layers = list(container)
    attn = [
        _walk(layer, spec.attn_output, what=f"attn_output of layer {index}")
        for index, layer in enumerate(layers)
    ]
    mlp = [
        _walk(layer, spec.mlp_output, what=f"mlp_output of layer {index}")
        for index, layer in enumerate(layers)
    ]

    seen: dict[int, str] = {}
    for kind, modules in (("attn", attn), ("mlp", mlp)):
        for index, module in enumerate(modules):
            label = f"{kind}[{index}]"
            previous = seen.setdefault(id(module), label)
            if previous != label:
                raise LayerMapError(
                    f"{label} and {previous} resolve to the same {type(module).__name__} module; "
                    "every site must be a distinct module so each contribution is hooked once"
                )

    return LayerSites(
        attn=attn,
        mlp=mlp,
        num_layers=len(layers),
        hidden_size=_hidden_size(model),
        spec=spec,
        model_type=model_type,
    )
