"""Unit tests for participant.folding: folded projections compute what the hooks compute."""

from __future__ import annotations

import pytest
import torch

from participant import folding
from participant.errors import FoldError
from participant.folding import fold_by_default, fold_context, foldable_model_types
from participant.hooks import default_coefficients, inject_context
from participant.layers import LayerSites, resolve_layer_sites
from tests.tiny_models import TINY_ARCHS, VOCAB_SIZE, build_tiny_model

FOLDABLE = [arch for arch in TINY_ARCHS
            if arch.removesuffix("_sequential") in foldable_model_types()]
NOT_FOLDABLE = [arch for arch in TINY_ARCHS if arch not in FOLDABLE]


def _setup(arch: str, dtype: torch.dtype = torch.float32, seed: int = 0
           ) -> tuple[torch.nn.Module, LayerSites, torch.Tensor, torch.Tensor]:
    model = build_tiny_model(arch, dtype=dtype)
    sites = resolve_layer_sites(model)
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(2, sites.num_layers, sites.hidden_size, generator=generator)
    coefficients = torch.empty(sites.num_layers, 4)
    coefficients[:, 0::2] = torch.rand(sites.num_layers, 2, generator=generator) - 0.5  # lambda
    coefficients[:, 1::2] = torch.rand(sites.num_layers, 2, generator=generator) + 0.5  # beta
    return model, sites, vector, coefficients


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, VOCAB_SIZE, (3, 7), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a right-padded row
    return ids, mask


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def test_the_registered_and_the_tiny_architectures_agree() -> None:
    # every foldable model type has a tiny model here, so the next test covers it
    assert {arch.removesuffix("_sequential") for arch in FOLDABLE} == set(foldable_model_types())


def test_auto_folds_foldable_architectures_except_on_cuda() -> None:
    # `fedctx infer --injection auto`: the hooks were measured faster on an H100 at batch 1
    assert fold_by_default("llama", "cpu") and fold_by_default("gpt2", torch.device("mps"))
    assert not fold_by_default("llama", "cuda") and not fold_by_default("llama", "cuda:1")
    assert not fold_by_default("gemma3_text", "cpu")  # post-norm: never foldable


@pytest.mark.parametrize("arch", FOLDABLE)
def test_folded_forward_equals_the_hooked_forward(arch: str) -> None:
    model, sites, vector, coefficients = _setup(arch)
    ids, mask = _batch()
    with torch.no_grad(), inject_context(model, sites, vector=vector, coefficients=coefficients):
        hooked = model(input_ids=ids, attention_mask=mask).logits
    plain = model(input_ids=ids, attention_mask=mask).logits.detach()
    fold_context(model, sites, vector=vector, coefficients=coefficients)
    with torch.no_grad():
        folded = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(hooked, plain, atol=1e-3)  # the injection does change the logits
    torch.testing.assert_close(folded, hooked, rtol=1e-4, atol=1e-5)
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bfloat16_fold_stays_within_the_rounding_of_the_hooks(arch: str) -> None:
    model, sites, vector, coefficients = _setup(arch, dtype=torch.bfloat16)
    ids, mask = _batch()
    with torch.no_grad(), inject_context(model, sites, vector=vector, coefficients=coefficients):
        hooked = model(input_ids=ids, attention_mask=mask).logits.float()
    fold_context(model, sites, vector=vector, coefficients=coefficients)
    with torch.no_grad():
        folded = model(input_ids=ids, attention_mask=mask).logits.float()
    assert folded.dtype == hooked.dtype and next(model.parameters()).dtype == torch.bfloat16
    assert float((folded - hooked).norm() / hooked.norm()) < 5e-2


@pytest.mark.parametrize("arch", NOT_FOLDABLE)
def test_unfoldable_architectures_are_refused_untouched(arch: str) -> None:
    model, sites, vector, coefficients = _setup(arch)
    before = _state(model)
    with pytest.raises(FoldError, match="foldable: gemma, gpt2, gpt_neox, llama"):
        fold_context(model, sites, vector=vector, coefficients=coefficients)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_a_fold_that_fails_its_check_restores_every_weight(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, sites, vector, coefficients = _setup("llama")
    before = _state(model)
    # q_proj has the residual's width, so only the probe can tell it is the wrong projection
    monkeypatch.setattr(folding, "FOLDABLE_PROJECTIONS",
                        {"llama": ("self_attn.q_proj", "mlp.down_proj")})
    with pytest.raises(FoldError, match="restored"):
        fold_context(model, sites, vector=vector, coefficients=coefficients)
    after = model.state_dict()
    assert before.keys() == after.keys()  # the bias the fold added to q_proj is gone again
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert model.model.layers[0].self_attn.q_proj.bias is None
    # and the model can still be folded correctly
    monkeypatch.undo()
    fold_context(model, sites, vector=vector, coefficients=coefficients)


def test_identity_coefficients_and_a_zero_vector_fold_to_the_same_function() -> None:
    model, sites, _, _ = _setup("qwen2")
    ids, mask = _batch()
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
    coefficients = default_coefficients(sites.num_layers, lambda_init=0.0)
    fold_context(model, sites, vector=torch.zeros(2, sites.num_layers, sites.hidden_size),
                 coefficients=coefficients)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, plain)


def test_bad_arguments_and_states_are_refused() -> None:
    model, sites, vector, coefficients = _setup("llama")
    before = _state(model)
    with pytest.raises(FoldError, match="per-example"):
        fold_context(model, sites, vector=vector, coefficients=coefficients.expand(3, -1, -1))
    with pytest.raises(FoldError, match="shape"):
        fold_context(model, sites, vector=vector[:, :1], coefficients=coefficients)
    bad = vector.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(FoldError, match="finite"):
        fold_context(model, sites, vector=bad, coefficients=coefficients)
    model.train()
    with pytest.raises(FoldError, match="eval mode"):
        fold_context(model, sites, vector=vector, coefficients=coefficients)
    model.eval()
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    fold_context(model, sites, vector=vector, coefficients=coefficients)
    with pytest.raises(FoldError, match="already"):
        fold_context(model, sites, vector=vector, coefficients=coefficients)
