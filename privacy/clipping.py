"""Per-example L2 clipping, optionally in a whitened (per-block rescaled) basis."""

from __future__ import annotations

import torch

from .errors import ConfigError


def clip_l2(x: torch.Tensor, *, clip_norm: float) -> torch.Tensor:
    """Scale each row of ``x`` so that its L2 norm is at most ``clip_norm``.

    Args:
        x: ``[N, D]`` one flattened record per row.
        clip_norm: maximum L2 norm of a row (> 0).

    Returns:
        ``[N, D]`` clipped rows; rows already inside the ball are unchanged. The sum
        of the rows then has L2 sensitivity ``clip_norm`` under add/remove-one-record.
    """
    if clip_norm <= 0 or not torch.isfinite(torch.tensor(clip_norm)):
        raise ConfigError(f"clip_norm must be a positive finite number, got {clip_norm}")
    if x.dim() != 2:
        raise ConfigError(f"clip_l2 expects [N, D], got shape {tuple(x.shape)}")
    norms = torch.linalg.vector_norm(x.double(), dim=1, keepdim=True)
    factor = torch.clamp(clip_norm / (norms + 1e-12), max=1.0)
    return (x.double() * factor).to(x.dtype)


def clip_whitened(
    x: torch.Tensor, *, block_scales: torch.Tensor, clip_norm: float
) -> torch.Tensor:
    """Divide every block by its public scale, then clip each record jointly.

    Blocks are the 2 x L (attention, MLP) x layer parts of a context vector; their
    natural magnitudes differ by orders of magnitude, so clipping raw vectors would let
    the largest layers dictate the noise of all others. Rescaling by a public per-block
    scale first gives every layer a noise level proportional to its own size.

    Args:
        x: ``[N, B, d]`` per-record deviations from the public reference.
        block_scales: ``[B]`` positive public scales (computed without private data).
        clip_norm: L2 bound of one record in the whitened basis.

    Returns:
        ``[N, B, d]`` clipped records **in the whitened basis** (multiply by
        ``block_scales[:, None]`` to return to activation units). Their sum has L2
        sensitivity ``clip_norm`` (add/remove one record) in the whitened basis.
    """
    if x.dim() != 3 or block_scales.shape != (x.shape[1],):
        raise ConfigError(
            f"expected x [N, B, d] and block_scales [B], got {tuple(x.shape)} and "
            f"{tuple(block_scales.shape)}"
        )
    if not bool(torch.all(block_scales > 0)):
        raise ConfigError("block_scales must be strictly positive")
    whitened = x.double() / block_scales.double()[None, :, None]
    flat = clip_l2(whitened.reshape(x.shape[0], -1), clip_norm=clip_norm)
    return flat.reshape(x.shape)


def clipped_sum_whitened(
    x: torch.Tensor, *, block_scales: torch.Tensor, clip_norm: float,
    centre: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over records of :func:`clip_whitened`, without materialising the clipped records.

    One float64 working copy of ``x`` is centred and whitened in place; each record's
    clip factor then weights it in a single matrix-vector product. Equal to
    ``clip_whitened(x - centre, ...).sum(0)`` up to float64 rounding, several times faster
    and with one allocation of ``x``'s size instead of four.

    Args:
        x: ``[N, B, d]`` per-record activations (or deviations when ``centre`` is None);
            not modified.
        block_scales: ``[B]`` positive public scales (computed without private data).
        clip_norm: L2 bound of one record in the whitened basis.
        centre: optional public ``[B, d]`` subtracted from every record first.

    Returns:
        ``[B, d]`` float64 sum **in the whitened basis**; its L2 sensitivity under
        add/remove-one-record is ``clip_norm``.
    """
    if clip_norm <= 0 or not torch.isfinite(torch.tensor(clip_norm)):
        raise ConfigError(f"clip_norm must be a positive finite number, got {clip_norm}")
    if x.dim() != 3 or block_scales.shape != (x.shape[1],):
        raise ConfigError(
            f"expected x [N, B, d] and block_scales [B], got {tuple(x.shape)} and "
            f"{tuple(block_scales.shape)}"
        )
    if centre is not None and centre.shape != x.shape[1:]:
        raise ConfigError(f"centre must be {tuple(x.shape[1:])}, got {tuple(centre.shape)}")
    if not bool(torch.all(block_scales > 0)):
        raise ConfigError("block_scales must be strictly positive")
    work = x.to(torch.float64, copy=True)
    if centre is not None:
        work.sub_(centre.double()[None])
    work.div_(block_scales.double()[None, :, None])
    flat = work.reshape(x.shape[0], -1)
    norms = torch.linalg.vector_norm(flat, dim=1)
    factor = torch.clamp(clip_norm / (norms + 1e-12), max=1.0)
    return (factor @ flat).reshape(x.shape[1:])
