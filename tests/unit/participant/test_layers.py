"""Unit tests for participant.layers: registry, resolution, validation and fingerprints."""

from __future__ import annotations

import json
import types

import pytest
import torch

from participant.errors import (
    LayerMapError,
    ParticipantError,
    UnsupportedArchitectureError,
)
from participant.layers import (
    LAYER_MAPS,
    LayerMapSpec,
    layer_map_fingerprint,
    resolve_layer_sites,
    supported_model_types,
)
from tests.tiny_models import HIDDEN_SIZE, NUM_LAYERS, TINY_ARCHS, build_tiny_model

# Class names of the hooked modules, read off each decoder layer's forward in transformers 5.24.
EXPECTED_SITE_CLASSES: dict[str, tuple[str, str]] = {
    "gpt2": ("GPT2Attention", "GPT2MLP"),
    "gpt_neox": ("Dropout", "Dropout"),
    "gpt_neox_sequential": ("Dropout", "Dropout"),
    "llama": ("LlamaAttention", "LlamaMLP"),
    "mistral": ("MistralAttention", "MistralMLP"),
    "mixtral": ("MixtralAttention", "MixtralSparseMoeBlock"),
    "qwen2": ("Qwen2Attention", "Qwen2MLP"),
    "qwen2_moe": ("Qwen2MoeAttention", "Qwen2MoeSparseMoeBlock"),
    "qwen3": ("Qwen3Attention", "Qwen3MLP"),
    "qwen3_moe": ("Qwen3MoeAttention", "Qwen3MoeSparseMoeBlock"),
    "smollm3": ("SmolLM3Attention", "SmolLM3MLP"),
    "phi": ("PhiAttention", "PhiMLP"),
    "phi3": ("Dropout", "Dropout"),
    "gemma": ("GemmaAttention", "GemmaMLP"),
    "gemma2": ("Gemma2RMSNorm", "Gemma2RMSNorm"),
    "gemma3_text": ("Gemma3RMSNorm", "Gemma3RMSNorm"),
    "gemma3": ("Gemma3RMSNorm", "Gemma3RMSNorm"),
    "olmo": ("OlmoAttention", "OlmoMLP"),
    "olmo2": ("Olmo2RMSNorm", "Olmo2RMSNorm"),
    "olmo3": ("Olmo3RMSNorm", "Olmo3RMSNorm"),
}


class _ToyBlock(torch.nn.Module):
    """A hand-written pre-norm block with non-standard attribute names."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mix = torch.nn.Linear(width, width)
        self.ffn = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix(x)
        return x + self.ffn(x)


class _ToyModel(torch.nn.Module):
    """A non-transformers model with a transformers-like ``config``."""

    def __init__(self, width: int = 8, depth: int = 3, model_type: str = "toy") -> None:
        super().__init__()
        self.config = types.SimpleNamespace(model_type=model_type, hidden_size=width)
        self.trunk = torch.nn.Module()
        self.trunk.blocks = torch.nn.ModuleList(_ToyBlock(width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.trunk.blocks:
            x = block(x)
        return x


def test_tiny_fixture_covers_every_registered_model_type() -> None:
    built = {build_tiny_model(arch).config.model_type for arch in TINY_ARCHS}
    assert built == set(LAYER_MAPS)
    assert supported_model_types() == tuple(sorted(LAYER_MAPS))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_supported_arch_resolves(arch: str) -> None:
    model = build_tiny_model(arch)
    sites = resolve_layer_sites(model)
    assert sites.model_type == model.config.model_type
    assert sites.spec is LAYER_MAPS[sites.model_type]
    assert sites.num_layers == NUM_LAYERS == len(sites.attn) == len(sites.mlp)
    assert sites.hidden_size == HIDDEN_SIZE
    attn_class, mlp_class = EXPECTED_SITE_CLASSES[arch]
    assert all(type(m).__name__ == attn_class for m in sites.attn)
    assert all(type(m).__name__ == mlp_class for m in sites.mlp)
    layers = model.get_submodule(sites.spec.layers_path)
    for index, layer in enumerate(layers):
        assert sites.attn[index] is layer.get_submodule(sites.spec.attn_output)
        assert sites.mlp[index] is layer.get_submodule(sites.spec.mlp_output)
    assert len({id(m) for m in [*sites.attn, *sites.mlp]}) == 2 * NUM_LAYERS


def test_gemma3_hooks_post_norms_not_attention() -> None:
    sites = resolve_layer_sites(build_tiny_model("gemma3_text"))
    assert sites.spec.attn_output == "post_attention_layernorm"
    assert sites.spec.mlp_output == "post_feedforward_layernorm"


def test_unknown_architecture_names_every_supported_type() -> None:
    with pytest.raises(UnsupportedArchitectureError) as info:
        resolve_layer_sites(_ToyModel(model_type="mamba"))
    message = str(info.value)
    assert "'mamba'" in message
    for model_type in LAYER_MAPS:
        assert model_type in message
    assert "layer_map=LayerMapSpec(" in message
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, ParticipantError)


def test_model_without_config_is_unsupported() -> None:
    with pytest.raises(UnsupportedArchitectureError, match="None"):
        resolve_layer_sites(torch.nn.Linear(2, 2))


def test_explicit_override_for_an_unregistered_architecture() -> None:
    model = _ToyModel(width=8, depth=3)
    spec = LayerMapSpec(layers_path="trunk.blocks", attn_output="mix", mlp_output="ffn")
    sites = resolve_layer_sites(model, layer_map=spec)
    assert sites.num_layers == 3
    assert sites.hidden_size == 8
    assert sites.model_type == "toy"
    assert sites.spec is spec
    assert sites.attn == [block.mix for block in model.trunk.blocks]
    assert sites.mlp == [block.ffn for block in model.trunk.blocks]


def test_explicit_override_wins_over_registry() -> None:
    model = build_tiny_model("llama")
    spec = LayerMapSpec("model.layers", "self_attn.o_proj", "mlp.down_proj")
    sites = resolve_layer_sites(model, layer_map=spec)
    assert sites.attn == [layer.self_attn.o_proj for layer in model.model.layers]
    assert layer_map_fingerprint(sites) != layer_map_fingerprint(resolve_layer_sites(model))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gemma3"])
def test_base_model_without_lm_head_resolves(arch: str) -> None:
    full = build_tiny_model(arch)
    base = full.base_model
    sites_full, sites_base = resolve_layer_sites(full), resolve_layer_sites(base)
    assert sites_base.attn == sites_full.attn
    assert sites_base.mlp == sites_full.mlp
    assert sites_base.describe() == sites_full.describe()


def test_missing_layers_path_names_failing_component() -> None:
    model = build_tiny_model("llama")
    with pytest.raises(LayerMapError, match=r"'decoder'.*embed_tokens"):
        spec = LayerMapSpec("model.decoder.layers", "self_attn", "mlp")
        resolve_layer_sites(model, layer_map=spec)


def test_missing_site_path_names_layer_and_component() -> None:
    model = build_tiny_model("llama")
    with pytest.raises(LayerMapError, match=r"attn_output of layer 0.*'attention'.*self_attn"):
        resolve_layer_sites(model, layer_map=LayerMapSpec("model.layers", "attention", "mlp"))


def test_layers_path_must_be_a_module_sequence() -> None:
    model = build_tiny_model("llama")
    with pytest.raises(LayerMapError, match="ModuleList or Sequential"):
        resolve_layer_sites(model, layer_map=LayerMapSpec("model.norm", "self_attn", "mlp"))


def test_shared_site_is_rejected() -> None:
    model = _ToyModel()
    shared = torch.nn.Identity()
    for block in model.trunk.blocks:
        block.out = shared
    with pytest.raises(LayerMapError, match="same Identity module"):
        resolve_layer_sites(model, layer_map=LayerMapSpec("trunk.blocks", "out", "ffn"))


@pytest.mark.parametrize(
    ("layers", "attn", "mlp"),
    [
        ("", "a", "b"),
        ("model..layers", "a", "b"),
        ("model.layers", "a b", "b"),
        ("x", "same", "same"),
    ],
)
def test_malformed_spec_rejected_at_construction(layers: str, attn: str, mlp: str) -> None:
    with pytest.raises(LayerMapError):
        LayerMapSpec(layers, attn, mlp)


def test_override_must_be_a_spec() -> None:
    with pytest.raises(TypeError):
        not_a_spec = ("model.layers", "self_attn", "mlp")
        model = build_tiny_model("llama")
        resolve_layer_sites(model, layer_map=not_a_spec)  # type: ignore[arg-type]


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        LAYER_MAPS["new"] = LayerMapSpec("a", "b", "c")  # type: ignore[index]


def test_describe_is_canonical_json_and_fingerprint_is_its_sha256() -> None:
    import hashlib

    sites = resolve_layer_sites(build_tiny_model("qwen3"))
    text = sites.describe()
    assert json.loads(text) == {
        "version": "fedctx.layer_map.v1",
        "model_type": "qwen3",
        "layers_path": "model.layers",
        "attn_output": "self_attn",
        "mlp_output": "mlp",
        "num_layers": NUM_LAYERS,
        "hidden_size": HIDDEN_SIZE,
    }
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    fingerprint = layer_map_fingerprint(sites)
    assert fingerprint == hashlib.sha256(text.encode()).hexdigest()
    assert len(fingerprint) == 64


def test_fingerprint_is_stable_and_binds_type_and_shape() -> None:
    first = layer_map_fingerprint(resolve_layer_sites(build_tiny_model("llama")))
    again = layer_map_fingerprint(resolve_layer_sites(build_tiny_model("llama")))
    mistral = layer_map_fingerprint(resolve_layer_sites(build_tiny_model("mistral")))
    spec = LayerMapSpec("trunk.blocks", "mix", "ffn")
    toy3 = layer_map_fingerprint(resolve_layer_sites(_ToyModel(depth=3), layer_map=spec))
    toy4 = layer_map_fingerprint(resolve_layer_sites(_ToyModel(depth=4), layer_map=spec))
    assert first == again
    assert first != mistral  # same paths, different model_type
    assert toy3 != toy4  # different L
