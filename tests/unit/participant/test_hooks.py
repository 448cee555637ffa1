"""Unit tests for participant.hooks: capture, injection, hook hygiene and per-example gradients."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel

from participant.errors import HookError, LayerMapError
from participant.hooks import (
    ATTN,
    MLP,
    capture_activations,
    default_coefficients,
    inject_context,
)
from participant.layers import LayerMapSpec, LayerSites, resolve_layer_sites
from tests.tiny_models import HIDDEN_SIZE, NUM_LAYERS, TINY_ARCHS, VOCAB_SIZE, build_tiny_model

BATCH, TOKENS = 3, 6
# One arch per hook style: pre-norm attn/mlp, GPT-2, dropout sites, post-norms, multimodal, MoE.
REPRESENTATIVE = [
    "llama", "gpt2", "gpt_neox", "phi3", "gemma3_text", "gemma3", "olmo2", "qwen3_moe"
]


def _ids(batch: int = BATCH, tokens: int = TOKENS, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB_SIZE, (batch, tokens), generator=generator)


def _no_hooks(model: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _hook_snapshot(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(m._forward_hooks) for name, m in model.named_modules()}


def _random_vector(sites: LayerSites, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, sites.num_layers, sites.hidden_size, generator=generator)


def _random_coefficients(shape: tuple[int, ...], seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=generator) + 0.5


def _positions_all(value: int, batch: int = BATCH) -> torch.Tensor:
    return torch.full((batch,), value, dtype=torch.long)


@contextmanager
def _record_layer_io(
    model: torch.nn.Module, sites: LayerSites
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Record each decoder layer's (input, output) residual stream, independently of our hooks."""
    records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(
        module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        inp = args[0] if args else kwargs["hidden_states"]
        out = output[0] if isinstance(output, tuple) else output
        records.append((inp.detach(), out.detach()))

    layers = model.get_submodule(sites.spec.layers_path)
    handles = [layer.register_forward_hook(hook, with_kwargs=True) for layer in layers]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _capture(
    model: PreTrainedModel,
    sites: LayerSites,
    ids: torch.Tensor,
    positions: torch.Tensor,
    **kw: Any,
) -> torch.Tensor:
    with torch.no_grad(), capture_activations(model, sites, positions=positions) as store:
        model(input_ids=ids, **kw)
    return store.result()


# ------------------------------------------------------------ hook hygiene


@pytest.mark.parametrize("arch", REPRESENTATIVE)
def test_hooks_removed_after_normal_exit(arch: str) -> None:
    model = build_tiny_model(arch)
    sites = resolve_layer_sites(model)
    assert _no_hooks(model)
    with capture_activations(model, sites, positions=_positions_all(1)):
        assert sum(len(m._forward_hooks) for m in model.modules()) == 2 * NUM_LAYERS
    assert _no_hooks(model)
    coefficients = default_coefficients(NUM_LAYERS)
    with inject_context(model, sites, vector=_random_vector(sites), coefficients=coefficients):
        assert sum(len(m._forward_hooks) for m in model.modules()) == 2 * NUM_LAYERS
    assert _no_hooks(model)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt_neox"])
def test_hooks_removed_after_exception_inside_with(arch: str) -> None:
    model = build_tiny_model(arch)
    sites = resolve_layer_sites(model)
    vector, coefficients = _random_vector(sites), default_coefficients(NUM_LAYERS)
    with pytest.raises(KeyError):
        with inject_context(model, sites, vector=vector, coefficients=coefficients):
            with capture_activations(model, sites, positions=_positions_all(1)):
                model(input_ids=_ids())
                raise KeyError("boom")
    assert _no_hooks(model)


def test_hooks_removed_when_a_hook_raises_mid_forward() -> None:
    model = build_tiny_model("llama")
    sites = resolve_layer_sites(model)
    with pytest.raises(HookError, match="out of range"):
        with capture_activations(model, sites, positions=_positions_all(TOKENS)):
            model(input_ids=_ids())
    assert _no_hooks(model)


def test_hooks_removed_when_registration_fails_part_way(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_tiny_model("llama")
    sites = resolve_layer_sites(model)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("cannot hook")

    monkeypatch.setattr(sites.mlp[NUM_LAYERS - 1], "register_forward_hook", refuse)
    with pytest.raises(RuntimeError, match="cannot hook"):
        with inject_context(
            model, sites, vector=_random_vector(sites), coefficients=default_coefficients(2)
        ):
            pytest.fail("body must not run")  # pragma: no cover
    with pytest.raises(RuntimeError, match="cannot hook"):
        with capture_activations(model, sites, positions=_positions_all(0)):
            pytest.fail("body must not run")  # pragma: no cover
    assert _no_hooks(model)


def test_transformers_own_capture_hooks_are_left_alone() -> None:
    # transformers 5.x installs permanent output-recording hooks the first time
    # output_hidden_states is requested; ours must come and go without touching them.
    model = build_tiny_model("llama")
    sites = resolve_layer_sites(model)
    model(input_ids=_ids(), output_hidden_states=True)
    before = _hook_snapshot(model)
    assert any(before.values())
    with capture_activations(model, sites, positions=_positions_all(2)) as store:
        model(input_ids=_ids(), output_hidden_states=True)
    store.result()
    assert _hook_snapshot(model) == before


# ------------------------------------------------------------ capture = residual contributions


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_captured_attn_plus_mlp_is_each_layers_residual_update(arch: str) -> None:
    """r_l - r_{l-1} == a_l + m_l at the captured tokens, every layer: the hook points are right."""
    model = build_tiny_model(arch)
    sites = resolve_layer_sites(model)
    ids = _ids()
    positions = torch.tensor([5, 0, 3])
    with torch.no_grad(), _record_layer_io(model, sites) as io:
        with capture_activations(model, sites, positions=positions) as store:
            out = model(input_ids=ids, output_hidden_states=True)
    captured = store.result()
    assert captured.shape == (BATCH, 2, NUM_LAYERS, HIDDEN_SIZE)
    assert captured.dtype == torch.float32 and captured.device.type == "cpu"
    assert not captured.requires_grad
    rows = torch.arange(BATCH)
    assert len(io) == NUM_LAYERS
    for layer, (before, after) in enumerate(io):
        update = (after - before)[rows, positions]
        total = captured[:, ATTN, layer] + captured[:, MLP, layer]
        torch.testing.assert_close(total, update, rtol=1e-5, atol=1e-5)
        assert captured[:, ATTN, layer].abs().sum() > 0 and captured[:, MLP, layer].abs().sum() > 0
    # transformers' hidden_states[l] is the residual entering layer l for l < L, but
    # hidden_states[L] is the final-norm output (tie_last_hidden_states), so only layers
    # 0..L-2 can be checked this way.
    hidden = out.hidden_states
    assert len(hidden) == NUM_LAYERS + 1
    for layer in range(NUM_LAYERS - 1):
        update = (hidden[layer + 1] - hidden[layer])[rows, positions]
        total = captured[:, ATTN, layer] + captured[:, MLP, layer]
        torch.testing.assert_close(total, update, rtol=1e-5, atol=1e-5)


# Phi's one resid_dropout module follows both sub-blocks: its sites are exact only without dropout.
_DROPOUT_EXACT = [arch for arch in TINY_ARCHS if arch != "phi"]


@pytest.mark.parametrize("arch", _DROPOUT_EXACT)
def test_decomposition_exact_in_train_mode_with_dropout(arch: str) -> None:
    model = build_tiny_model(arch)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
    model.train()
    sites = resolve_layer_sites(model)
    positions = torch.tensor([1, 4, 5])
    torch.manual_seed(0)
    with torch.no_grad(), _record_layer_io(model, sites) as io:
        with capture_activations(model, sites, positions=positions) as store:
            model(input_ids=_ids())
    captured = store.result()
    rows = torch.arange(BATCH)
    for layer, (before, after) in enumerate(io):
        total = captured[:, ATTN, layer] + captured[:, MLP, layer]
        torch.testing.assert_close(total, (after - before)[rows, positions], rtol=1e-5, atol=1e-5)


def _decomposition_error(model: PreTrainedModel, sites: LayerSites) -> float:
    positions = torch.tensor([2, 3, 4])
    with torch.no_grad(), _record_layer_io(model, sites) as io:
        with capture_activations(model, sites, positions=positions) as store:
            model(input_ids=_ids())
    captured, rows = store.result(), torch.arange(BATCH)
    errors = [
        (after - before)[rows, positions] - captured[:, ATTN, i] - captured[:, MLP, i]
        for i, (before, after) in enumerate(io)
    ]
    return max(float(error.abs().max()) for error in errors)


def test_negative_control_gemma3_self_attn_is_the_wrong_hook_point() -> None:
    model = build_tiny_model("gemma3_text")
    wrong = resolve_layer_sites(model, layer_map=LayerMapSpec("model.layers", "self_attn", "mlp"))
    assert _decomposition_error(model, wrong) > 1e-2
    assert _decomposition_error(model, resolve_layer_sites(model)) < 1e-5


def test_negative_control_gpt_neox_attention_misses_dropout() -> None:
    model = build_tiny_model("gpt_neox")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
    model.train()
    spec = LayerMapSpec("gpt_neox.layers", "attention", "mlp")
    wrong = resolve_layer_sites(model, layer_map=spec)
    torch.manual_seed(0)
    assert _decomposition_error(model, wrong) > 1e-2


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text", "gpt_neox"])
def test_capture_right_padded_batch_matches_unpadded_rows(arch: str) -> None:
    model = build_tiny_model(arch)
    sites = resolve_layer_sites(model)
    lengths = torch.tensor([6, 4, 5])
    ids = _ids()
    mask = (torch.arange(TOKENS)[None, :] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    batched = _capture(model, sites, ids, lengths - 1, attention_mask=mask)
    for row in range(BATCH):
        length = int(lengths[row])
        alone = _capture(model, sites, ids[row : row + 1, :length], torch.tensor([length - 1]))
        torch.testing.assert_close(batched[row], alone[0], rtol=1e-5, atol=1e-5)


def test_bfloat16_capture_is_converted_once_at_result() -> None:
    """Sites stay in the activations' dtype and device until ``result()``, which returns the
    float32 CPU values the hooked outputs had (no per-site copy during the forward pass)."""
    model = build_tiny_model("llama", dtype=torch.bfloat16)
    sites = resolve_layer_sites(model)
    positions = torch.tensor([5, 2, 4])
    seen: dict[tuple[int, int], torch.Tensor] = {}

    def spy(kind: int, layer: int):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            seen[kind, layer] = hidden[torch.arange(BATCH), positions].float()
        return hook

    handles = [
        modules[layer].register_forward_hook(spy(kind, layer))
        for kind, modules in ((ATTN, sites.attn), (MLP, sites.mlp))
        for layer in range(sites.num_layers)
    ]
    try:
        with torch.no_grad(), capture_activations(model, sites, positions=positions) as store:
            model(input_ids=_ids())
    finally:
        for handle in handles:
            handle.remove()
    assert all(row.dtype == torch.bfloat16 for rows in store._rows for row in rows)
    result = store.result()
    assert result.dtype == torch.float32 and result.device.type == "cpu"
    for (kind, layer), expected in seen.items():
        torch.testing.assert_close(result[:, kind, layer], expected, rtol=0, atol=0)


def test_capture_requires_exactly_one_forward() -> None:
    model = build_tiny_model("llama")
    sites = resolve_layer_sites(model)
    with capture_activations(model, sites, positions=_positions_all(0)) as store:
        pass
    with pytest.raises(HookError, match=r"attn\[0\] x0"):
        store.result()
    with torch.no_grad(), capture_activations(model, sites, positions=_positions_all(0)) as store:
        model(input_ids=_ids())
        model(input_ids=_ids())
    with pytest.raises(HookError, match=r"mlp\[1\] x2"):
        store.result()


def test_capture_rejects_bad_positions() -> None:
    model = build_tiny_model("llama")
    sites = resolve_layer_sites(model)
    with pytest.raises(TypeError):
        with capture_activations(model, sites, positions=torch.zeros(BATCH)):
            pass
    with pytest.raises(TypeError):
        with capture_activations(model, sites, positions=torch.zeros(BATCH, 1, dtype=torch.long)):
            pass
    with pytest.raises(ValueError):
        with capture_activations(model, sites, positions=torch.tensor([0, -1, 2])):
            pass
    with pytest.raises(HookError, match="expected batch 2"):
        with capture_activations(model, sites, positions=torch.tensor([0, 1])):
            model(input_ids=_ids())
    assert _no_hooks(model)


def test_sites_of_another_model_are_rejected() -> None:
    model, other = build_tiny_model("llama"), build_tiny_model("llama")
    sites = resolve_layer_sites(other)
    with pytest.raises(LayerMapError, match="not a submodule"):
        with capture_activations(model, sites, positions=_positions_all(0)):
            pass
    vector, coefficients = _random_vector(sites), default_coefficients(2)
    with pytest.raises(LayerMapError, match="not a submodule"):
        with inject_context(model, sites, vector=vector, coefficients=coefficients):
            pass


# ------------------------------------------------------------ injection


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_identity_injection_leaves_logits_bit_identical(arch: str, dtype: torch.dtype) -> None:
    model = build_tiny_model(arch, dtype=dtype)
    sites = resolve_layer_sites(model)
    ids = _ids()
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        identity = default_coefficients(NUM_LAYERS, lambda_init=0.0, beta_init=1.0)
        with inject_context(model, sites, vector=_random_vector(sites), coefficients=identity):
            hooked = model(input_ids=ids).logits
        default = default_coefficients(NUM_LAYERS)
        with inject_context(model, sites, vector=_random_vector(sites), coefficients=default):
            injected = model(input_ids=ids).logits
    assert hooked.dtype == dtype
    assert torch.equal(hooked, plain)
    assert torch.isfinite(injected).all()
    assert not torch.equal(injected, plain)


@pytest.mark.parametrize("arch", REPRESENTATIVE)
def test_lambda_one_beta_zero_replaces_contribution_with_vector_everywhere(arch: str) -> None:
    model = build_tiny_model(arch)
    sites = resolve_layer_sites(model)
    vector = _random_vector(sites)
    replace = default_coefficients(NUM_LAYERS, lambda_init=1.0, beta_init=0.0)
    ids = _ids()
    with inject_context(model, sites, vector=vector, coefficients=replace):
        for token in range(TOKENS):
            captured = _capture(model, sites, ids, _positions_all(token))
            expected = vector.unsqueeze(0).expand(BATCH, -1, -1, -1)
            torch.testing.assert_close(captured, expected, rtol=0, atol=1e-6)


def test_linear_mix_formula_per_layer_and_kind() -> None:
    model = build_tiny_model("qwen3")
    sites = resolve_layer_sites(model)
    vector = _random_vector(sites)
    coefficients = _random_coefficients((NUM_LAYERS, 4))
    ids, positions = _ids(), torch.tensor([0, 2, 5])
    # Layer 0's attention input does not depend on any injection, so its raw output is known.
    clean = _capture(model, sites, ids, positions)
    with inject_context(model, sites, vector=vector, coefficients=coefficients):
        mixed = _capture(model, sites, ids, positions)
    lam, beta = coefficients[0, 0], coefficients[0, 1]
    expected = beta * clean[:, ATTN, 0] + lam * vector[ATTN, 0]
    torch.testing.assert_close(mixed[:, ATTN, 0], expected, rtol=1e-5, atol=1e-5)


def test_output_structure_is_preserved() -> None:
    model = build_tiny_model("llama")
    sites = resolve_layer_sites(model)
    seen: dict[str, Any] = {}
    handles = [
        sites.attn[0].register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o)),
        sites.mlp[0].register_forward_hook(lambda m, a, o: seen.__setitem__("mlp", o)),
    ]
    model(input_ids=_ids())
    plain_attn = seen["attn"]
    for handle in handles:
        handle.remove()
    vector, coefficients = _random_vector(sites), default_coefficients(2)
    with inject_context(model, sites, vector=vector, coefficients=coefficients):
        handles = [
            sites.attn[0].register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o)),
            sites.mlp[0].register_forward_hook(lambda m, a, o: seen.__setitem__("mlp", o)),
        ]
        model(input_ids=_ids())
        for handle in handles:
            handle.remove()
    assert isinstance(plain_attn, tuple) and isinstance(seen["attn"], tuple)
    assert len(seen["attn"]) == len(plain_attn)
    assert seen["attn"][1] is None or isinstance(seen["attn"][1], torch.Tensor)
    assert isinstance(seen["mlp"], torch.Tensor)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt_neox", "gpt2"])
def test_per_example_coefficients_match_running_rows_alone(arch: str) -> None:
    model = build_tiny_model(arch)
    sites = resolve_layer_sites(model)
    vector = _random_vector(sites)
    per_example = _random_coefficients((BATCH, NUM_LAYERS, 4))
    ids = _ids()
    with torch.no_grad():
        with inject_context(model, sites, vector=vector, coefficients=per_example):
            batched = model(input_ids=ids).logits
        for row in range(BATCH):
            with inject_context(model, sites, vector=vector, coefficients=per_example[row]):
                alone = model(input_ids=ids[row : row + 1]).logits
            torch.testing.assert_close(batched[row], alone[0], rtol=1e-5, atol=1e-5)
        # and rows really differ from each other's coefficients
        with inject_context(model, sites, vector=vector, coefficients=per_example[0]):
            shared = model(input_ids=ids).logits
    assert not torch.allclose(shared[1], batched[1], atol=1e-4)


def _row_loss(logits: torch.Tensor, position: int, label: int) -> torch.Tensor:
    row = logits[position][None, :].float()
    return torch.nn.functional.cross_entropy(row, torch.tensor([label]))


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt_neox", "phi3"])
def test_per_example_gradients_from_one_backward_match_one_at_a_time(arch: str) -> None:
    model = build_tiny_model(arch)
    model.requires_grad_(False)
    sites = resolve_layer_sites(model)
    vector = _random_vector(sites)
    base = default_coefficients(NUM_LAYERS) + 0.05 * _random_coefficients((NUM_LAYERS, 4))
    lengths, labels = [6, 4, 5], [7, 11, 13]
    ids = _ids()
    mask = (torch.arange(TOKENS)[None, :] < torch.tensor(lengths)[:, None]).long()

    per_example = base.unsqueeze(0).repeat(BATCH, 1, 1).requires_grad_(True)
    with inject_context(model, sites, vector=vector, coefficients=per_example):
        logits = model(input_ids=ids, attention_mask=mask).logits
    loss = sum(_row_loss(logits[row], lengths[row] - 1, labels[row]) for row in range(BATCH))
    loss.backward()
    assert per_example.grad is not None

    singles = []
    for row in range(BATCH):
        coefficients = base.clone().requires_grad_(True)
        with inject_context(model, sites, vector=vector, coefficients=coefficients):
            alone = model(input_ids=ids[row : row + 1, : lengths[row]]).logits
        _row_loss(alone[0], lengths[row] - 1, labels[row]).backward()
        assert coefficients.grad is not None
        singles.append(coefficients.grad)
        torch.testing.assert_close(per_example.grad[row], coefficients.grad, rtol=1e-4, atol=1e-6)
    assert all(g.abs().sum() > 0 for g in singles)
    assert not torch.allclose(singles[0], singles[1])

    shared = base.clone().requires_grad_(True)
    with inject_context(model, sites, vector=vector, coefficients=shared):
        logits = model(input_ids=ids, attention_mask=mask).logits
    sum(_row_loss(logits[row], lengths[row] - 1, labels[row]) for row in range(BATCH)).backward()
    torch.testing.assert_close(per_example.grad.sum(0), shared.grad, rtol=1e-4, atol=1e-6)


def test_coefficients_are_reread_each_forward_and_several_backwards_work() -> None:
    model = build_tiny_model("llama")
    model.requires_grad_(False)
    sites = resolve_layer_sites(model)
    coefficients = torch.nn.Parameter(default_coefficients(NUM_LAYERS))
    optimiser = torch.optim.SGD([coefficients], lr=0.5)
    ids = _ids()
    losses = []
    with inject_context(model, sites, vector=_random_vector(sites), coefficients=coefficients):
        for _ in range(3):
            optimiser.zero_grad()
            loss = model(input_ids=ids).logits[:, -1].logsumexp(-1).mean()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
    assert losses[0] != losses[1] != losses[2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text", "qwen3_moe"])
def test_inference_path_equals_the_differentiable_path_bit_for_bit(
        arch: str, dtype: torch.dtype) -> None:
    """Without a gradient to keep, the hooks use lambda * vector and beta built once on the
    activations' device; the logits are the differentiable path's, bit for bit."""
    model = build_tiny_model(arch, dtype=dtype)
    model.requires_grad_(False)
    sites = resolve_layer_sites(model)
    coefficients = torch.nn.Parameter(_random_coefficients((NUM_LAYERS, 4)))
    ids = _ids()
    with inject_context(model, sites, vector=_random_vector(sites), coefficients=coefficients):
        differentiable = model(input_ids=ids).logits
        with torch.no_grad():
            inference = model(input_ids=ids).logits
            again = model(input_ids=ids).logits  # from the cached constants
    assert differentiable.requires_grad and not inference.requires_grad
    assert torch.equal(inference, differentiable.detach())
    assert torch.equal(again, inference)


def test_inference_path_follows_in_place_coefficient_updates() -> None:
    model = build_tiny_model("llama")
    sites = resolve_layer_sites(model)
    vector, coefficients = _random_vector(sites), _random_coefficients((NUM_LAYERS, 4))
    ids = _ids()
    with torch.no_grad(), inject_context(model, sites, vector=vector,
                                         coefficients=coefficients):
        before = model(input_ids=ids).logits
        coefficients[:, 0::2] *= 3.0  # lambdas, in place: a new tensor version
        after = model(input_ids=ids).logits
    with torch.no_grad(), inject_context(model, sites, vector=vector,
                                         coefficients=coefficients.clone()):
        fresh = model(input_ids=ids).logits
    assert not torch.equal(after, before)
    assert torch.equal(after, fresh)


def test_inference_mode_constants_do_not_leak_into_a_differentiable_forward() -> None:
    """Constants built under ``torch.inference_mode`` are not reused where autograd must
    save them (here: gradients to the inputs' embeddings, coefficients frozen)."""
    model = build_tiny_model("llama")
    sites = resolve_layer_sites(model)
    ids = _ids()
    with inject_context(model, sites, vector=_random_vector(sites),
                        coefficients=_random_coefficients((NUM_LAYERS, 4))):
        with torch.inference_mode():
            expected = model(input_ids=ids).logits
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds).logits
        logits.sum().backward()
    assert embeds.grad is not None
    assert torch.equal(logits.detach(), expected)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt_neox", "gpt2"])
def test_bfloat16_injection_and_float32_coefficient_gradients(arch: str) -> None:
    model = build_tiny_model(arch, dtype=torch.bfloat16)
    model.requires_grad_(False)
    sites = resolve_layer_sites(model)
    ids = _ids()
    captured = _capture(model, sites, ids, _positions_all(TOKENS - 1))
    assert captured.dtype == torch.float32 and torch.isfinite(captured).all()
    coefficients = default_coefficients(NUM_LAYERS).requires_grad_(True)
    per_example = default_coefficients(NUM_LAYERS).repeat(BATCH, 1, 1).requires_grad_(True)
    for coef in (coefficients, per_example):
        vector = captured.mean(0)
        with inject_context(model, sites, vector=vector, coefficients=coef, noise_scale=1e-3):
            logits = model(input_ids=ids).logits
        assert logits.dtype == torch.bfloat16
        logits.float()[:, -1].logsumexp(-1).sum().backward()
        assert coef.grad is not None and coef.grad.dtype == torch.float32
        assert torch.isfinite(coef.grad).all() and coef.grad.abs().sum() > 0


def test_noise_is_norm_scaled_gaussian_and_seeded() -> None:
    model = build_tiny_model("llama")
    sites = resolve_layer_sites(model)
    ids, positions = _ids(), torch.tensor([1, 3, 5])
    vector = _random_vector(sites)
    identity = default_coefficients(NUM_LAYERS, lambda_init=0.0, beta_init=1.0)
    clean = _capture(model, sites, ids, positions)
    scale = 0.01

    def noisy(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        with inject_context(
            model, sites, vector=vector, coefficients=identity, noise_scale=scale,
            generator=generator,
        ):
            return _capture(model, sites, ids, positions)

    first, again, other = noisy(7), noisy(7), noisy(8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # The first hook to run is attn[0], whose input no noise has reached: its draw is the first one.
    draw = torch.randn((BATCH, TOKENS, HIDDEN_SIZE), generator=torch.Generator().manual_seed(7))
    rows = torch.arange(BATCH)
    norm = clean[:, ATTN, 0].norm(dim=-1, keepdim=True)
    expected = clean[:, ATTN, 0] + draw[rows, positions] * norm * scale
    torch.testing.assert_close(first[:, ATTN, 0], expected, rtol=1e-5, atol=1e-6)


def test_noise_does_not_block_coefficient_gradients() -> None:
    model = build_tiny_model("gemma3_text")
    model.requires_grad_(False)
    sites = resolve_layer_sites(model)
    coefficients = default_coefficients(NUM_LAYERS).requires_grad_(True)
    with inject_context(
        model, sites, vector=_random_vector(sites), coefficients=coefficients, noise_scale=1e-3,
        generator=torch.Generator().manual_seed(0),
    ):
        model(input_ids=_ids()).logits.sum().backward()
    assert coefficients.grad is not None and (coefficients.grad != 0).all()


def test_noise_term_carries_no_gradient() -> None:
    """d(out)/d(beta) == raw output and d(out)/d(lambda) == v under noise (its norm is detached)."""
    model = build_tiny_model("llama")
    model.requires_grad_(False)
    sites = resolve_layer_sites(model)
    vector = _random_vector(sites)
    ids = _ids()
    raw: dict[str, torch.Tensor] = {}
    handle = sites.attn[0].register_forward_hook(
        lambda m, a, o: raw.__setitem__("clean", o[0].detach())
    )
    model(input_ids=ids)
    handle.remove()
    coefficients = default_coefficients(NUM_LAYERS).requires_grad_(True)
    weights = torch.randn(BATCH, TOKENS, HIDDEN_SIZE, generator=torch.Generator().manual_seed(3))
    with inject_context(
        model, sites, vector=vector, coefficients=coefficients, noise_scale=0.5,
        generator=torch.Generator().manual_seed(0),
    ):
        handle = sites.attn[0].register_forward_hook(lambda m, a, o: raw.__setitem__("mixed", o[0]))
        model(input_ids=ids)
        handle.remove()
    (raw["mixed"] * weights).sum().backward()
    assert coefficients.grad is not None
    grad = coefficients.grad
    torch.testing.assert_close(grad[0, 1], (raw["clean"] * weights).sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad[0, 0], (vector[ATTN, 0] * weights).sum(), rtol=1e-5, atol=1e-5)


def test_injection_argument_validation() -> None:
    model = build_tiny_model("llama")
    sites = resolve_layer_sites(model)
    vector, coefficients = _random_vector(sites), default_coefficients(NUM_LAYERS)
    bad_calls: list[tuple[type[Exception], dict[str, Any]]] = [
        (ValueError, {"vector": vector[:, :1], "coefficients": coefficients}),
        (TypeError, {"vector": vector.long(), "coefficients": coefficients}),
        (ValueError, {"vector": vector, "coefficients": coefficients[:, :2]}),
        (ValueError, {"vector": vector, "coefficients": coefficients[None, None]}),
        (TypeError, {"vector": vector, "coefficients": coefficients.long()}),
        (ValueError, {"vector": vector, "coefficients": coefficients, "noise_scale": -1.0}),
        (ValueError, {"vector": vector, "coefficients": coefficients, "noise_scale": float("nan")}),
    ]
    for error, kwargs in bad_calls:
        with pytest.raises(error):
            with inject_context(model, sites, **kwargs):
                pass
    with pytest.raises(HookError, match="per-example coefficients have 2 rows, batch has 3"):
        with inject_context(model, sites, vector=vector, coefficients=coefficients.repeat(2, 1, 1)):
            model(input_ids=_ids())
    assert _no_hooks(model)


def test_default_coefficients_match_i2cl_init() -> None:
    coefficients = default_coefficients(5)
    assert coefficients.shape == (5, 4) and coefficients.dtype == torch.float32
    assert torch.equal(coefficients, torch.tensor([[0.1, 1.0, 0.1, 1.0]] * 5))
    custom = default_coefficients(1, lambda_init=0.0, beta_init=2.0)
    assert torch.equal(custom, torch.tensor([[0.0, 2.0, 0.0, 2.0]]))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            default_coefficients(bad)  # type: ignore[arg-type]
