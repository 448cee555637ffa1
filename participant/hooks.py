"""Context-managed forward hooks that capture or rewrite per-layer residual contributions."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Final

import torch

from participant.errors import HookError, LayerMapError
from participant.layers import LayerSites

__all__ = [
    "ATTN",
    "MLP",
    "ActivationStore",
    "capture_activations",
    "default_coefficients",
    "inject_context",
]

ATTN: Final[int] = 0
"""Index of the attention contribution in a context vector ``[2, L, d]``."""
MLP: Final[int] = 1
"""Index of the MLP contribution in a context vector ``[2, L, d]``."""

_KIND_NAMES: Final[tuple[str, str]] = ("attn", "mlp")
_COEFFICIENT_COLUMNS: Final[int] = 4  # (lambda_attn, beta_attn, lambda_mlp, beta_mlp)

_Hook = Callable[[torch.nn.Module, tuple[Any, ...], Any], Any]
_Rows = list[list[torch.Tensor]]
"""Per-site constants ``[kind][layer]``: views that a hook takes by list index, not a dispatch."""


def _primary(output: Any, *, site: str) -> torch.Tensor:
    """Return the ``[B, T, d]`` tensor a hooked module adds to the residual (tuple element 0)."""
    is_sequence = isinstance(output, (tuple, list)) and len(output) > 0
    tensor = output[0] if is_sequence else output
    if not isinstance(tensor, torch.Tensor):
        raise HookError(
            f"{site}: expected a tensor or a tuple starting with one, got {type(output).__name__}"
        )
    if tensor.dim() != 3:
        raise HookError(
            f"{site}: expected a [batch, tokens, hidden] output, got shape {tuple(tensor.shape)}"
        )
    return tensor


def _replace_primary(output: Any, tensor: torch.Tensor) -> Any:
    """Return ``output`` with its primary tensor replaced, keeping the tuple / list structure."""
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    if isinstance(output, list):
        return [tensor, *output[1:]]
    return tensor


def _check_sites_belong(model: torch.nn.Module, sites: LayerSites) -> None:
    owned = {id(module) for module in model.modules()}
    for kind, modules in (("attn", sites.attn), ("mlp", sites.mlp)):
        if len(modules) != sites.num_layers:
            raise LayerMapError(
                f"sites.{kind} has {len(modules)} modules for {sites.num_layers} layers"
            )
        for index, module in enumerate(modules):
            if id(module) not in owned:
                raise LayerMapError(f"sites.{kind}[{index}] is not a submodule of the given model")


def _register_all(
    stack: ExitStack, sites: LayerSites, make_hook: Callable[[int, int], _Hook]
) -> None:
    """Register one hook per site, scheduling each removal right after its registration."""
    for layer in range(sites.num_layers):
        for kind, modules in ((ATTN, sites.attn), (MLP, sites.mlp)):
            handle = modules[layer].register_forward_hook(make_hook(kind, layer))
            stack.callback(handle.remove)


class ActivationStore:
    """Per-row residual contributions recorded by :func:`capture_activations`.

    Each site records on its first firing; :meth:`result` checks every site fired exactly once.
    """

    __slots__ = ("_batch_size", "_calls", "_hidden_size", "_num_layers", "_rows")

    def __init__(self, *, batch_size: int, num_layers: int, hidden_size: int) -> None:
        """Create an empty store.

        Args:
            batch_size: Number of rows ``B`` the forward pass must have.
            num_layers: Number of decoder layers ``L``.
            hidden_size: Residual width ``d``.
        """
        self._batch_size = batch_size
        self._num_layers = num_layers
        self._hidden_size = hidden_size
        self._rows: list[list[torch.Tensor | None]] = [[None] * num_layers for _ in range(2)]
        self._calls: list[list[int]] = [[0] * num_layers for _ in range(2)]

    @property
    def batch_size(self) -> int:
        """Number of batch rows ``B``."""
        return self._batch_size

    @property
    def num_layers(self) -> int:
        """Number of decoder layers ``L``."""
        return self._num_layers

    @property
    def hidden_size(self) -> int:
        """Residual width ``d``."""
        return self._hidden_size

    def _fire(self, kind: int, layer: int) -> bool:
        """Count one firing of a site; return whether it is the first (the one recorded)."""
        self._calls[kind][layer] += 1
        return self._calls[kind][layer] == 1

    def _record(self, kind: int, layer: int, rows: torch.Tensor) -> None:
        self._rows[kind][layer] = rows

    def result(self) -> torch.Tensor:
        """Return the recorded contributions.

        Returns:
            Detached float32 CPU tensor ``[B, 2, L, d]`` (dim 1: 0 = attention, 1 = MLP).

        Raises:
            HookError: If a site fired zero times or more than once (no forward pass, or several
                forward passes / generation steps inside one capture), or the forward failed.
        """
        wrong = [
            f"{_KIND_NAMES[kind]}[{layer}] x{self._calls[kind][layer]}"
            for kind in (ATTN, MLP)
            for layer in range(self._num_layers)
            if self._calls[kind][layer] != 1
        ]
        if wrong:
            raise HookError(
                "capture_activations expects exactly one forward pass running every hooked site "
                f"once; sites fired a different number of times: {', '.join(wrong)}"
            )
        per_kind = []
        for kind in (ATTN, MLP):
            rows = [row for row in self._rows[kind] if row is not None]
            if len(rows) != self._num_layers:  # a hook raised on its first firing
                raise HookError(
                    "capture_activations: the forward pass failed before every site was recorded"
                )
            device = rows[0].device  # a model split over devices: gather on the first
            per_kind.append(torch.stack([row.to(device) for row in rows], dim=1))  # [B, L, d]
        attn, mlp = per_kind
        return torch.stack((attn, mlp.to(attn.device)), dim=1).to(
            device="cpu", dtype=torch.float32)


@contextmanager
def capture_activations(
    model: torch.nn.Module, sites: LayerSites, *, positions: torch.Tensor
) -> Iterator[ActivationStore]:
    """Record each layer's attention and MLP residual contributions at one token per row.

    Hooks see the module output after hooks registered earlier, so a capture opened inside
    :func:`inject_context` records the injected contributions. Gradient mode is the caller's.

    Args:
        model: The model ``sites`` was resolved from.
        sites: Hook sites from :func:`participant.layers.resolve_layer_sites`.
        positions: Integer tensor ``[B]``: the token to record per row, each in ``[0, T)`` (for
            right-padded batches, the index of the last non-pad token).

    Yields:
        A store whose :meth:`ActivationStore.result` gives ``[B, 2, L, d]`` float32 on CPU
        after exactly one forward pass.

    Raises:
        TypeError: If ``positions`` is not a 1-D integer tensor.
        ValueError: If ``positions`` is empty or has negative entries.
        LayerMapError: If ``sites`` do not belong to ``model``.
        HookError: During the forward pass, if an output's batch size or width does not match,
            or a position is not below the sequence length.
    """
    if not isinstance(positions, torch.Tensor) or positions.dim() != 1:
        raise TypeError("positions must be a 1-D tensor [batch] of token indices")
    dtype = positions.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(f"positions must be an integer tensor, got {positions.dtype}")
    if positions.numel() == 0:
        raise ValueError("positions must have one entry per batch row, got an empty tensor")
    positions = positions.detach().to(torch.long)
    if bool((positions < 0).any()):
        raise ValueError("positions must be non-negative token indices")
    _check_sites_belong(model, sites)
    batch_size = positions.numel()
    max_position = int(positions.max())
    store = ActivationStore(
        batch_size=batch_size, num_layers=sites.num_layers, hidden_size=sites.hidden_size
    )
    on_device: dict[torch.device, torch.Tensor] = {}

    def make_hook(kind: int, layer: int) -> _Hook:
        site = f"{_KIND_NAMES[kind]}[{layer}]"

        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not store._fire(kind, layer):  # a later forward: only counted, result() reports it
                return
            hidden = _primary(output, site=site)
            batch, tokens, width = hidden.shape
            if batch != batch_size or width != sites.hidden_size:
                raise HookError(
                    f"{site}: output is [{batch}, {tokens}, {width}], expected batch {batch_size} "
                    f"(len(positions)) and hidden size {sites.hidden_size}"
                )
            if max_position >= tokens:
                raise HookError(
                    f"{site}: position {max_position} is out of range for {tokens} tokens"
                )
            index = on_device.get(hidden.device)
            if index is None:
                index = on_device.setdefault(hidden.device, positions.to(hidden.device))
            rows = torch.arange(batch, device=hidden.device)
            picked = hidden[rows, index]  # [B, d]
            # Kept on the activations' device: result() moves all sites in one copy, where
            # a copy per site would stall a GPU's launch queue 2L times per forward pass.
            store._record(kind, layer, picked.detach())

        return hook

    with ExitStack() as stack:
        _register_all(stack, sites, make_hook)
        yield store


def _validate_injection(
    sites: LayerSites, vector: torch.Tensor, coefficients: torch.Tensor, noise_scale: float
) -> None:
    num_layers, width = sites.num_layers, sites.hidden_size
    if not isinstance(vector, torch.Tensor) or not vector.dtype.is_floating_point:
        raise TypeError("vector must be a floating-point tensor [2, L, d]")
    if tuple(vector.shape) != (2, num_layers, width):
        raise ValueError(
            f"vector must have shape (2, {num_layers}, {width}), got {tuple(vector.shape)}"
        )
    if not isinstance(coefficients, torch.Tensor) or not coefficients.dtype.is_floating_point:
        raise TypeError("coefficients must be a floating-point tensor [L, 4] or [B, L, 4]")
    shape = tuple(coefficients.shape)
    if (
        coefficients.dim() not in (2, 3)
        or shape[-2:] != (num_layers, _COEFFICIENT_COLUMNS)
        or shape[0] == 0
    ):
        raise ValueError(
            f"coefficients must have shape ({num_layers}, 4) or (B, {num_layers}, 4) with "
            f"columns (lambda_attn, beta_attn, lambda_mlp, beta_mlp), got {shape}"
        )
    if isinstance(noise_scale, bool) or not isinstance(noise_scale, (int, float)):
        raise TypeError(f"noise_scale must be a float, got {type(noise_scale).__name__}")
    if not math.isfinite(noise_scale) or noise_scale < 0:
        raise ValueError(f"noise_scale must be finite and >= 0, got {noise_scale}")


@contextmanager
def inject_context(
    model: torch.nn.Module,
    sites: LayerSites,
    *,
    vector: torch.Tensor,
    coefficients: torch.Tensor,
    noise_scale: float = 0.0,
    generator: torch.Generator | None = None,
) -> Iterator[None]:
    """Mix a context vector into every layer's attention and MLP contributions at every token.

    For layer ``l`` and sub-block ``k`` (attention, MLP) the hooked output ``out [B, T, d]``
    becomes ``beta_k[l] * out + lambda_k[l] * vector[k, l]``; with ``noise_scale > 0`` it then
    gets ``randn_like(out) * ||out||(dim=-1).detach() * noise_scale`` added, ``out`` being the
    mixed output (I2CL calibration noise). Arithmetic runs in the activation dtype. Gradients
    flow to ``coefficients``, which are re-read on every forward pass (in-place optimiser
    updates take effect inside one ``with``); ``vector`` is a constant. With ``[B, L, 4]``
    coefficients each batch row uses its own row, so one backward pass yields per-example
    gradients. The noise is redrawn on each call, so it does not suit activation checkpointing.

    Args:
        model: The model ``sites`` was resolved from.
        sites: Hook sites from :func:`participant.layers.resolve_layer_sites`.
        vector: Context vector ``[2, L, d]`` (0 = attention, 1 = MLP), any floating dtype;
            converted once per activation dtype / device.
        coefficients: ``[L, 4]`` shared or ``[B, L, 4]`` per example, columns
            ``(lambda_attn, beta_attn, lambda_mlp, beta_mlp)``.
        noise_scale: Relative scale of the Gaussian noise; 0 disables it.
        generator: Optional generator for the noise (drawn on its device, then moved).

    Yields:
        Nothing; the hooks are active inside the ``with`` block and removed on exit, even when
        it raises.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a shape or ``noise_scale`` is invalid.
        LayerMapError: If ``sites`` do not belong to ``model``.
        HookError: During the forward pass, if an output's width or, for per-example
            coefficients, batch size does not match.
    """
    _validate_injection(sites, vector, coefficients, noise_scale)
    _check_sites_belong(model, sites)
    constant = vector.detach()
    per_example = coefficients.dim() == 3
    converted: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def vector_for(like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        cached = converted.get(key)
        if cached is None:
            cached = converted.setdefault(key, constant.to(device=like.device, dtype=like.dtype))
        return cached

    # Inference (nothing needs a gradient through the coefficients, no noise, one shared
    # row): lambda * vector and beta are built once per activation dtype / device and per
    # version of ``coefficients`` (torch bumps ``_version`` on every in-place update), so a
    # hook runs one fused kernel, no indexing op and no host-to-device copy; on a GPU the
    # per-call copy of CPU coefficients stalled every hook (docs/benchmarks.md).
    frozen: dict[tuple[torch.dtype, torch.device, int, bool], tuple[_Rows, _Rows]] = {}

    def frozen_for(like: torch.Tensor) -> tuple[_Rows, _Rows] | None:
        """``lambda * vector`` rows ``[d]`` and ``beta`` scalars per ``[kind][layer]`` on
        ``like``'s device and dtype, or ``None`` where the differentiable path must run."""
        if per_example or noise_scale > 0 or (
                torch.is_grad_enabled() and coefficients.requires_grad):
            return None
        # inference_mode's tensors cannot be saved for a backward pass outside it
        key = (like.dtype, like.device, coefficients._version,
               torch.is_inference_mode_enabled())
        cached = frozen.get(key)
        if cached is None:
            for stale in [k for k in frozen if k[2] != key[2]]:
                del frozen[stale]
            table = coefficients.detach().to(device=like.device, dtype=like.dtype)
            lam, beta = table[:, 0::2].T, table[:, 1::2].T  # [2, L] each
            shifted = lam.unsqueeze(-1) * vector_for(like)  # [2, L, d]
            cached = frozen[key] = ([list(rows.unbind(0)) for rows in shifted.unbind(0)],
                                    [list(rows.unbind(0)) for rows in beta.unbind(0)])
        return cached

    def make_hook(kind: int, layer: int) -> _Hook:
        site = f"{_KIND_NAMES[kind]}[{layer}]"
        column = 2 * kind

        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            hidden = _primary(output, site=site)
            batch = hidden.shape[0]
            if hidden.shape[-1] != sites.hidden_size:
                raise HookError(
                    f"{site}: output width {hidden.shape[-1]} != hidden size {sites.hidden_size}"
                )
            constants = frozen_for(hidden)
            if constants is not None:
                shifted, beta = constants
                return _replace_primary(
                    output, torch.addcmul(shifted[kind][layer], hidden, beta[kind][layer]))
            # Sliced and cast on every call so that each forward builds its own graph.
            pair = coefficients[..., layer, column : column + 2]
            pair = pair.to(device=hidden.device, dtype=hidden.dtype)
            if per_example:
                if pair.shape[0] != batch:
                    raise HookError(
                        f"{site}: per-example coefficients have {pair.shape[0]} rows, "
                        f"batch has {batch}"
                    )
                lam, beta = pair[:, 0].view(batch, 1, 1), pair[:, 1].view(batch, 1, 1)
            else:
                lam, beta = pair[0], pair[1]
            # One fused kernel, the inference path's op too, so both give the same bits.
            mixed = torch.addcmul(lam * vector_for(hidden)[kind, layer], hidden, beta)
            if noise_scale > 0:
                noise_device = generator.device if generator is not None else hidden.device
                noise = torch.randn(
                    mixed.shape, generator=generator, device=noise_device, dtype=mixed.dtype
                ).to(hidden.device)
                scale = mixed.norm(dim=-1, keepdim=True).detach() * noise_scale
                mixed = mixed + noise * scale
            return _replace_primary(output, mixed)

        return hook

    with ExitStack() as stack:
        _register_all(stack, sites, make_hook)
        yield


def default_coefficients(
    num_layers: int, *, lambda_init: float = 0.1, beta_init: float = 1.0
) -> torch.Tensor:
    """Return the I2CL initial coefficients (reference ``init_value = [0.1, 1.0]``, both blocks).

    Args:
        num_layers: Number of decoder layers ``L``.
        lambda_init: Initial context-vector strength ``lambda``.
        beta_init: Initial activation scale ``beta``.

    Returns:
        Float32 tensor ``[L, 4]`` with rows ``(lambda_init, beta_init, lambda_init, beta_init)``.

    Raises:
        ValueError: If ``num_layers`` is not a positive int.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    row = torch.tensor([lambda_init, beta_init, lambda_init, beta_init], dtype=torch.float32)
    return row.repeat(num_layers, 1)
