"""Stage 1: context vectors from demonstrations, the public reference, and the DP release.

Shapes: a context vector is ``[2, L, d]`` (0 = attention, 1 = MLP output of layer l at
the last token of a demonstration run alone); per-record activations are ``[N, 2, L, d]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from privacy.clipping import clipped_sum_whitened
from privacy.noise import add_gaussian_noise, gaussian_std

from .hooks import capture_activations
from .layers import LayerSites
from .model import LoadedModel
from .tasks import TaskSpec


def last_token_activations(
    lm: LoadedModel, sites: LayerSites, texts: list[str], *, batch_size: int = 16,
    progress: bool = False, description: str = "activations",
) -> torch.Tensor:
    """Attention and MLP outputs at each text's last token: ``[N, 2, L, d]`` float32.

    Texts are right-padded in batches; with causal attention the last real token sees
    exactly what it would see if the text ran alone (the I2CL ``split_demon`` setting).
    """
    out = []
    batches = range(0, len(texts), batch_size)
    for start in tqdm(batches, desc=description, disable=not progress, leave=False):
        chunk = texts[start : start + batch_size]
        encoded = lm.encode(chunk, padding=True)
        positions = encoded["attention_mask"].sum(dim=1) - 1
        with torch.no_grad(), capture_activations(lm.model, sites, positions=positions) as store:
            lm.model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
        out.append(store.result())
    return torch.cat(out, dim=0)


@dataclass(frozen=True)
class PublicReference:
    """Computed from public text only (spends no privacy budget).

    Attributes:
        vector: ``[2, L, d]`` mean activation of template-formatted public demonstrations.
        block_scales: ``[2L]`` RMS norm of public demonstrations' deviation from
            ``vector`` per (sub-block, layer): the whitening scales for clipping.
        raw_clip_norm: median whitened norm of the public demonstrations' *raw*
            activations: the clip norm of the ``raw`` clipping mode (a comparison arm).
    """

    vector: torch.Tensor
    block_scales: torch.Tensor
    raw_clip_norm: float = 0.0

    def centred_at_zero(self) -> PublicReference:
        """The same scales around a zero vector (clipping raw activations)."""
        return PublicReference(torch.zeros_like(self.vector), self.block_scales,
                               self.raw_clip_norm)


def public_reference(
    lm: LoadedModel, sites: LayerSites, task: TaskSpec, *, batch_size: int = 16
) -> PublicReference:
    """The task's public reference vector and per-block scales."""
    demos = [
        task.demonstration(text, label)
        for text in task.public_texts for label in range(len(task.labels))
    ]
    acts = last_token_activations(lm, sites, demos, batch_size=batch_size).double()
    mean = acts.mean(dim=0)
    deviation = (acts - mean).reshape(acts.shape[0], 2 * sites.num_layers, -1)
    rms = deviation.norm(dim=2).pow(2).mean(dim=0).sqrt()
    floor = rms[rms > 0].min() if bool((rms > 0).any()) else torch.tensor(1.0)
    scales = torch.clamp(rms, min=float(floor))
    raw = (acts.reshape(acts.shape[0], 2 * sites.num_layers, -1) / scales[None, :, None])
    raw_clip = float(raw.reshape(acts.shape[0], -1).norm(dim=1).median())
    return PublicReference(mean.float(), scales.float(), raw_clip)


def random_vector_like(reference: torch.Tensor, *, seed: int) -> torch.Tensor:
    """A random ``[2, L, d]`` vector with the same per-(sub-block, layer) norms (a control)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(reference.shape, generator=generator, dtype=torch.float64)
    noise = noise / noise.norm(dim=-1, keepdim=True)
    return (noise * reference.double().norm(dim=-1, keepdim=True)).float()


def default_vector_clip_norm(num_blocks: int) -> float:
    """Whitened clip norm: a typical record has norm about sqrt(2L) after whitening."""
    return math.sqrt(num_blocks)


def private_deviation_mean(
    activations: torch.Tensor, reference: PublicReference, *, clip_norm: float | None,
    noise_multiplier: float, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DP mean deviation of a participant's demonstrations from the public reference.

    Mechanism (unit: one record; add/remove-one neighbouring datasets, record count N
    public): each record's deviation ``a_j - r`` is whitened by the public block
    scales and clipped to ``clip_norm``; the sum has L2 sensitivity ``clip_norm``;
    Gaussian noise of std ``noise_multiplier * clip_norm`` is added in the whitened
    basis, which is then un-whitened and divided by N.

    Args:
        activations: ``[N, 2, L, d]`` the participant's demonstrations.
        reference: public reference (vector and block scales).
        clip_norm: whitened L2 bound per record; ``None`` disables clipping (only
            allowed with ``noise_multiplier == 0``, i.e. no privacy).
        noise_multiplier: std / sensitivity; 0 for a non-private release.
        generator: optional seeded generator (tests, experiments).

    Returns:
        ``[2, L, d]`` float64 mean deviation (add ``reference.vector`` to get the vector).
    """
    n, two, layers, width = activations.shape
    whitened_sum = private_whitened_sum(activations, reference, clip_norm=clip_norm,
                                        noise_multiplier=noise_multiplier, generator=generator)
    scales = reference.block_scales.double()
    return (whitened_sum * scales[:, None] / n).reshape(two, layers, width)


def private_whitened_sum(
    activations: torch.Tensor, reference: PublicReference, *, clip_norm: float | None,
    noise_multiplier: float, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The noisy sum inside :func:`private_deviation_mean`, still whitened and not divided:
    ``[2L, d]`` float64, the sum over records of ``(a_j - r) / scale`` clipped to
    ``clip_norm`` (L2 sensitivity ``clip_norm``, add/remove one record) plus Gaussian
    noise of std ``noise_multiplier * clip_norm``. Distributed DP releases this sum (a
    share of the noise, every participant's with the same std) instead of the mean."""
    n, two, layers, width = activations.shape
    records = activations.reshape(n, two * layers, width)
    centre = reference.vector.reshape(two * layers, width)
    scales = reference.block_scales.double()
    if clip_norm is None:
        if noise_multiplier != 0:
            raise ValueError("noise without clipping has no defined sensitivity")
        return ((records.double() - centre.double()) / scales[None, :, None]).sum(dim=0)
    whitened_sum = clipped_sum_whitened(
        records, block_scales=scales, clip_norm=clip_norm, centre=centre)
    std = gaussian_std(noise_multiplier=noise_multiplier, sensitivity=clip_norm)
    return add_gaussian_noise(whitened_sum, std=std, generator=generator)


def aggregate_noise_variance(*, noise_multiplier: float, clip_norm: float,
                             block_scales: torch.Tensor, count_moment: float) -> np.ndarray:
    """Per-coordinate noise variance ``[2L]`` of an average of :func:`private_deviation_mean`
    releases, per (sub-block, layer): ``(noise_multiplier * clip_norm * scale_b)^2 *
    count_moment``, with ``count_moment = sum_k 1/N_k^2 / n^2`` for the unweighted mean of
    n participants' releases and ``n / (sum_k N_k)^2`` for the mean weighted by record
    count (``N_k``: participant k's record count, public). Input of James-Stein shrinkage.
    """
    scales = block_scales.double().numpy()
    return (noise_multiplier * clip_norm * scales) ** 2 * count_moment
