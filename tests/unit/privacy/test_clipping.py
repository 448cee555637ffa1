"""Property tests for :mod:`privacy.clipping` (per-record L2 clipping)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from privacy.clipping import clip_l2, clip_whitened, clipped_sum_whitened
from privacy.errors import ConfigError

REL = 1e-9  # float64 slack on the clipping bound

SETTINGS = settings(max_examples=50, deadline=None)

# Zero or a magnitude in [1e-6, 1e6]: squares neither underflow nor overflow, so the
# float64 norm is exact enough to reason about.
_magnitudes = st.floats(min_value=1e-6, max_value=1e6)
finite = st.one_of(st.just(0.0), _magnitudes, _magnitudes.map(lambda v: -v))
clip_norms = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def matrices(draw: st.DrawFn) -> torch.Tensor:
    n = draw(st.integers(min_value=1, max_value=8))
    d = draw(st.integers(min_value=1, max_value=16))
    return torch.from_numpy(draw(arrays(np.float64, (n, d), elements=finite)))


@st.composite
def records(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    n = draw(st.integers(min_value=1, max_value=6))
    b = draw(st.integers(min_value=1, max_value=4))
    d = draw(st.integers(min_value=1, max_value=6))
    x = draw(arrays(np.float64, (n, b, d), elements=finite))
    scales = draw(
        arrays(np.float64, (b,), elements=st.floats(min_value=1e-3, max_value=1e3))
    )
    return torch.from_numpy(x), torch.from_numpy(scales)


def _row_norms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.double(), dim=1)


# --------------------------------------------------------------------------- clip_l2


@SETTINGS
@given(x=matrices(), clip_norm=clip_norms)
def test_clip_l2_rows_within_ball(x: torch.Tensor, clip_norm: float) -> None:
    out = clip_l2(x, clip_norm=clip_norm)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert bool(torch.all(_row_norms(out) <= clip_norm * (1 + REL)))


@SETTINGS
@given(x=matrices(), clip_norm=clip_norms)
def test_clip_l2_rows_outside_land_on_sphere(x: torch.Tensor, clip_norm: float) -> None:
    norms_in = _row_norms(x)
    norms_out = _row_norms(clip_l2(x, clip_norm=clip_norm))
    outside = norms_in > clip_norm * (1 + 1e-6)
    assert torch.allclose(
        norms_out[outside], torch.full_like(norms_out[outside], clip_norm), rtol=1e-9, atol=0
    )


@SETTINGS
@given(
    x=matrices(),
    clip_norm=clip_norms,
    radii=st.lists(st.floats(min_value=0.0, max_value=0.999), min_size=8, max_size=8),
)
def test_clip_l2_rows_inside_ball_unchanged(
    x: torch.Tensor, clip_norm: float, radii: list[float]
) -> None:
    # Rescale every (non-zero) row to a norm strictly inside the ball.
    norms = _row_norms(x)[:, None]
    target = torch.tensor(radii[: x.shape[0]], dtype=torch.float64)[:, None] * clip_norm
    inside = torch.where(norms > 0, x / norms.clamp_min(1e-300) * target, x)
    assert bool(torch.all(_row_norms(inside) < clip_norm))
    out = clip_l2(inside, clip_norm=clip_norm)
    assert torch.equal(out, inside)


@SETTINGS
@given(x=matrices(), clip_norm=clip_norms)
def test_clip_l2_preserves_direction(x: torch.Tensor, clip_norm: float) -> None:
    out = clip_l2(x, clip_norm=clip_norm)
    norms_in = _row_norms(x)
    norms_out = _row_norms(out)
    nonzero = norms_in > 0
    # out = a * x with 0 < a <= 1 for every non-zero row.
    factor = norms_out[nonzero] / norms_in[nonzero]
    assert bool(torch.all(factor > 0))
    assert bool(torch.all(factor <= 1 + REL))
    expected = x[nonzero] * factor[:, None]
    assert torch.allclose(out[nonzero], expected, rtol=1e-9, atol=1e-12 * clip_norm)
    # Zero rows stay zero.
    zero_rows = torch.all(x == 0, dim=1)
    assert bool(torch.all(out[zero_rows] == 0))


@SETTINGS
@given(x=matrices(), clip_norm=clip_norms)
def test_clip_l2_sum_sensitivity(x: torch.Tensor, clip_norm: float) -> None:
    out = clip_l2(x, clip_norm=clip_norm)
    total = out.sum(dim=0)
    for i in range(out.shape[0]):
        without = torch.cat([out[:i], out[i + 1 :]]).sum(dim=0)
        diff = float(torch.linalg.vector_norm(total - without))
        assert diff <= clip_norm * (1 + REL) + 1e-12 * clip_norm * out.shape[0]


def test_clip_l2_does_not_mutate_input() -> None:
    x = torch.full((3, 4), 10.0, dtype=torch.float64)
    before = x.clone()
    clip_l2(x, clip_norm=1.0)
    assert torch.equal(x, before)


def test_clip_l2_float32_bound_up_to_float32_rounding() -> None:
    # The clip is computed in float64 and cast back: for float32 inputs the bound holds
    # only up to float32 rounding (see report; about 3e-8 relative in practice).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 37, generator=g) * 100
    out = clip_l2(x, clip_norm=1.5)
    assert out.dtype == torch.float32
    assert bool(torch.all(_row_norms(out) <= 1.5 * (1 + 4 * torch.finfo(torch.float32).eps)))


def test_clip_l2_known_values() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=torch.float64)
    out = clip_l2(x, clip_norm=1.0)
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8], dtype=torch.float64), rtol=1e-9)
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[2], x[2])


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_clip_l2_rejects_bad_clip_norm(clip_norm: float) -> None:
    with pytest.raises(ConfigError):
        clip_l2(torch.ones(2, 3), clip_norm=clip_norm)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), ()])
def test_clip_l2_rejects_non_matrix(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError):
        clip_l2(torch.ones(shape), clip_norm=1.0)


# --------------------------------------------------------------------- clip_whitened


@SETTINGS
@given(data=records(), clip_norm=clip_norms)
def test_clip_whitened_records_within_ball(
    data: tuple[torch.Tensor, torch.Tensor], clip_norm: float
) -> None:
    x, scales = data
    out = clip_whitened(x, block_scales=scales, clip_norm=clip_norm)
    assert out.shape == x.shape
    norms = _row_norms(out.reshape(x.shape[0], -1))
    assert bool(torch.all(norms <= clip_norm * (1 + REL)))


@SETTINGS
@given(data=records(), clip_norm=clip_norms)
def test_clip_whitened_sum_sensitivity(
    data: tuple[torch.Tensor, torch.Tensor], clip_norm: float
) -> None:
    x, scales = data
    out = clip_whitened(x, block_scales=scales, clip_norm=clip_norm)
    total = out.sum(dim=0)
    n = out.shape[0]
    for i in range(n):
        without = torch.cat([out[:i], out[i + 1 :]]).sum(dim=0)
        diff = float(torch.linalg.vector_norm((total - without).reshape(-1)))
        assert diff <= clip_norm * (1 + REL) + 1e-12 * clip_norm * n


@SETTINGS
@given(data=records(), clip_norm=clip_norms)
def test_clip_whitened_is_clip_of_whitened_and_direction_preserved(
    data: tuple[torch.Tensor, torch.Tensor], clip_norm: float
) -> None:
    x, scales = data
    out = clip_whitened(x, block_scales=scales, clip_norm=clip_norm)
    whitened = x / scales[None, :, None]
    flat_w = whitened.reshape(x.shape[0], -1)
    flat_o = out.reshape(x.shape[0], -1)
    norms_w = _row_norms(flat_w)
    nonzero = norms_w > 0
    factor = _row_norms(flat_o)[nonzero] / norms_w[nonzero]
    assert bool(torch.all(factor <= 1 + REL))
    assert torch.allclose(
        flat_o[nonzero], flat_w[nonzero] * factor[:, None], rtol=1e-9, atol=1e-12 * clip_norm
    )
    inside = norms_w < clip_norm * 0.999
    assert torch.allclose(flat_o[inside], flat_w[inside], rtol=1e-12, atol=0)


@SETTINGS
@given(
    data=records(),
    clip_norm=clip_norms,
    s=st.floats(min_value=1e-2, max_value=1e2),
)
def test_clip_whitened_scale_equivariant(
    data: tuple[torch.Tensor, torch.Tensor], clip_norm: float, s: float
) -> None:
    x, scales = data
    a = clip_whitened(x, block_scales=scales, clip_norm=clip_norm)
    b = clip_whitened(x * s, block_scales=scales * s, clip_norm=clip_norm)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12 * clip_norm)


def test_clip_whitened_equalises_blocks() -> None:
    # Block 0 is 1000x larger than block 1 in raw units, but its scale is 1000x too.
    x = torch.zeros(1, 2, 3, dtype=torch.float64)
    x[0, 0] = 1000.0
    x[0, 1] = 1.0
    out = clip_whitened(x, block_scales=torch.tensor([1000.0, 1.0]), clip_norm=1.0)
    assert torch.allclose(out[0, 0], out[0, 1], rtol=1e-12)
    assert math.isclose(float(torch.linalg.vector_norm(out)), 1.0, rel_tol=1e-9)


@pytest.mark.parametrize(
    ("shape", "scales"),
    [
        ((2, 3), torch.ones(3)),  # not [N, B, d]
        ((2, 3, 4, 1), torch.ones(3)),
        ((2, 3, 4), torch.ones(4)),  # wrong number of scales
        ((2, 3, 4), torch.ones(3, 1)),
        ((2, 3, 4), torch.tensor([1.0, 0.0, 1.0])),  # non-positive
        ((2, 3, 4), torch.tensor([1.0, -2.0, 1.0])),
        ((2, 3, 4), torch.tensor([1.0, math.nan, 1.0])),
    ],
)
def test_clip_whitened_rejects_bad_shapes_and_scales(
    shape: tuple[int, ...], scales: torch.Tensor
) -> None:
    with pytest.raises(ConfigError):
        clip_whitened(torch.ones(shape), block_scales=scales, clip_norm=1.0)


@pytest.mark.parametrize("clip_norm", [0.0, -0.5, math.nan, math.inf])
def test_clip_whitened_rejects_bad_clip_norm(clip_norm: float) -> None:
    with pytest.raises(ConfigError):
        clip_whitened(torch.ones(2, 3, 4), block_scales=torch.ones(3), clip_norm=clip_norm)


# --------------------------------------------------------------------------- clipped_sum_whitened


@SETTINGS
@given(data=records(), clip_norm=clip_norms, centred=st.booleans())
def test_clipped_sum_is_the_sum_of_clipped_records(
    data: tuple[torch.Tensor, torch.Tensor], clip_norm: float, centred: bool
) -> None:
    x, scales = data
    centre = torch.linspace(-2.0, 3.0, x[0].numel(), dtype=torch.float64).reshape(x.shape[1:])
    before = x.clone()
    total = clipped_sum_whitened(
        x, block_scales=scales, clip_norm=clip_norm, centre=centre if centred else None)
    assert torch.equal(x, before)  # the input is not modified
    expected = clip_whitened(
        x - centre if centred else x, block_scales=scales, clip_norm=clip_norm).sum(0)
    assert total.dtype == torch.float64 and total.shape == x.shape[1:]
    # Same clip factors; only the order of the float64 sum differs.
    bound = clip_norm * x.shape[0]
    torch.testing.assert_close(total, expected, rtol=1e-9, atol=1e-12 * bound)
    # Sensitivity: dropping one record moves the sum by at most clip_norm.
    for i in range(x.shape[0]):
        rest = torch.cat([x[:i], x[i + 1:]])
        if rest.shape[0] == 0:
            without = torch.zeros_like(total)
        else:
            without = clipped_sum_whitened(
                rest, block_scales=scales, clip_norm=clip_norm,
                centre=centre if centred else None)
        diff = float(torch.linalg.vector_norm((total - without).reshape(-1)))
        assert diff <= clip_norm * (1 + REL) + 1e-12 * bound


def test_clipped_sum_takes_float32_records() -> None:
    x = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0)) * 10
    scales = torch.tensor([1.0, 2.0, 0.5])
    total = clipped_sum_whitened(x, block_scales=scales, clip_norm=1.5)
    expected = clip_whitened(x.double(), block_scales=scales, clip_norm=1.5).sum(0)
    assert total.dtype == torch.float64
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "scales", "centre"),
    [
        ((2, 3), torch.ones(3), None),
        ((2, 3, 4), torch.ones(2), None),
        ((2, 3, 4), torch.tensor([1.0, 0.0, 1.0]), None),
        ((2, 3, 4), torch.ones(3), torch.zeros(3, 5)),
    ],
)
def test_clipped_sum_rejects_bad_shapes(
    shape: tuple[int, ...], scales: torch.Tensor, centre: torch.Tensor | None
) -> None:
    with pytest.raises(ConfigError):
        clipped_sum_whitened(torch.ones(shape), block_scales=scales, clip_norm=1.0, centre=centre)
    with pytest.raises(ConfigError):
        clipped_sum_whitened(torch.ones(2, 3, 4), block_scales=torch.ones(3), clip_norm=-1.0)
