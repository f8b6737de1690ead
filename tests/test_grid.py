"""Property tests of the window grid (``wsiproc.grid``) against the Conv2d formula.

Regressions for PyDmed's sliding window, which stepped by the kernel instead of the stride,
emitted a near-duplicate last column and never read the last pixel row.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wsiproc.errors import ConfigError
from wsiproc.grid import Chunk, Grid, cells_per_chunk, count_windows, plan_chunks

SIZES = st.integers(min_value=0, max_value=5000)
KERNELS = st.integers(min_value=1, max_value=600)
STRIDES = st.integers(min_value=1, max_value=900)  # often larger than the kernel


def conv2d_positions(size: int, kernel: int, stride: int) -> int:
    """Output length of ``torch.nn.Conv2d`` without padding: ``(W - K) // S + 1``, 0 if W < K."""
    return 0 if size < kernel else (size - kernel) // stride + 1


def pad_starts(size: int, kernel: int, stride: int) -> list[int]:
    """Window starts of the ``pad`` border, simulated step by step.

    A window is added while the previous one has not reached the last pixel, and only if it
    starts inside the image (a window wholly in the padding would read nothing).
    """
    starts: list[int] = []
    while size > 0:
        start = len(starts) * stride
        if start >= size or (starts and starts[-1] + kernel >= size):
            break
        starts.append(start)
    return starts


@given(size=SIZES, kernel=KERNELS, stride=STRIDES)
@settings(max_examples=300, deadline=None)
@example(size=1000, kernel=100, stride=100)  # PyDmed emitted 11 columns here, not 10
@example(size=224, kernel=224, stride=224)  # W == K: one window (PyDmed divided by zero)
@example(size=223, kernel=224, stride=1)  # smaller than one window
@example(size=1000, kernel=10, stride=300)  # stride > kernel
def test_valid_border_matches_conv2d_output_size(size, kernel, stride):
    grid = Grid(size, size + 7, kernel, stride, "valid", 1.0)
    assert grid.cols == conv2d_positions(size, kernel, stride)
    assert grid.rows == conv2d_positions(size + 7, kernel, stride)
    # Every valid window lies fully inside the image, and one more step would leave it.
    if grid.cols:
        last_end = (grid.cols - 1) * stride + kernel
        assert last_end <= size < last_end + stride


@given(
    size=st.integers(min_value=1, max_value=120),
    kernel=st.integers(min_value=1, max_value=40),
    stride=st.integers(min_value=1, max_value=50),
)
@settings(max_examples=40, deadline=None)
def test_valid_border_matches_torch_conv2d(size, kernel, stride):
    """The formula above is what torch computes (small sizes: torch runs the convolution)."""
    torch = pytest.importorskip("torch")

    def conv_len(n: int) -> int:
        if n < kernel:
            return 0  # torch refuses a kernel larger than the input: no window fits
        x = torch.zeros(1, 1, n)
        return torch.nn.functional.conv1d(x, torch.zeros(1, 1, kernel), stride=stride).shape[-1]

    grid = Grid(size, size + 3, kernel, stride, "valid", 1.0)
    assert (grid.rows, grid.cols) == (conv_len(size + 3), conv_len(size))


@given(size=st.integers(min_value=1, max_value=3000), kernel=KERNELS, stride=STRIDES)
@settings(max_examples=300, deadline=None)
@example(size=1000, kernel=100, stride=100)
@example(size=11, kernel=1, stride=9)  # stride > kernel: a third window would start at 18
@example(size=150, kernel=20, stride=100)  # stride > kernel: a third window would start at 200
def test_pad_border_windows_start_inside_and_cover_the_last_pixel(size, kernel, stride):
    n = count_windows(size, kernel, stride, "pad")
    starts = [i * stride for i in range(n)]
    # No window starts past the edge (it would be all padding).
    assert all(s < size for s in starts), f"window starting at {starts[-1]} >= size {size}"
    assert starts == pad_starts(size, kernel, stride)
    covered = np.zeros(size, dtype=bool)
    for s in starts:
        covered[s : s + kernel] = True
    if stride <= kernel:
        # Every pixel, including the last row/column, is in some window.
        assert covered.all()
        # And no window is superfluous: dropping the last one leaves pixels uncovered.
        if n > 1:
            assert starts[-2] + kernel < size
    else:
        # Gaps between windows are inherent when stride > kernel; still no window is empty.
        assert covered[starts].all()


def test_pad_border_with_stride_over_kernel_has_no_window_in_the_padding():
    """count_windows(11, 1, 9, "pad") must be 2 (starts 0 and 9), not 3 (start 18 > 10)."""
    assert count_windows(11, 1, 9, "pad") == 2
    assert Grid(150, 150, 20, 100, "pad", 1.0).cols == 2


@given(size=st.integers(min_value=1, max_value=3000), kernel=KERNELS, stride=KERNELS)
@settings(max_examples=200, deadline=None)
def test_pad_border_covers_last_pixel_row(size, kernel, stride):
    """With stride <= kernel (overlapping or touching windows) the last row is always read."""
    if stride > kernel:
        stride = kernel
    grid = Grid(size + 5, size, kernel, stride, "pad", 1.0)
    last_row_end = (grid.rows - 1) * stride + kernel
    assert last_row_end >= size
    assert (grid.rows - 1) * stride < size
    assert grid.rows >= conv2d_positions(size, kernel, stride)


@given(
    width=st.integers(min_value=0, max_value=3000),
    height=st.integers(min_value=0, max_value=3000),
    kernel=st.integers(min_value=8, max_value=300),
    stride=st.integers(min_value=8, max_value=400),
    border=st.sampled_from(["valid", "pad"]),
    chunk_px=st.integers(min_value=1, max_value=2500),
    tile_px=st.sampled_from([None, 128, 240, 256, 512]),
)
@settings(max_examples=150, deadline=None)
def test_plan_chunks_covers_every_cell_exactly_once(
    width, height, kernel, stride, border, chunk_px, tile_px
):
    grid = Grid(width, height, kernel, stride, border, 1.0)
    chunks = plan_chunks(grid, chunk_px, tile_px)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [(c.row0, c.col0) for c in chunks] == sorted((c.row0, c.col0) for c in chunks)
    counts = np.zeros((grid.rows, grid.cols), dtype=np.int32)
    n = cells_per_chunk(grid, chunk_px, tile_px)
    for c in chunks:
        assert 1 <= c.n_rows <= n and 1 <= c.n_cols <= n
        assert c.row0 + c.n_rows <= grid.rows and c.col0 + c.n_cols <= grid.cols
        counts[c.row0 : c.row0 + c.n_rows, c.col0 : c.col0 + c.n_cols] += 1
        # The chunk's pixel box holds exactly its windows.
        x, y, w, h = c.proc_box(grid)
        assert (x, y) == (c.col0 * stride, c.row0 * stride)
        assert x + w == (c.col0 + c.n_cols - 1) * stride + kernel
        assert y + h == (c.row0 + c.n_rows - 1) * stride + kernel
    assert (counts == 1).all()
    assert sum(c.n_rows * c.n_cols for c in chunks) == grid.rows * grid.cols


def test_chunk_spans_about_chunk_px():
    grid = Grid(5000, 5000, 224, 112, "valid", 1.0)
    n = cells_per_chunk(grid, 2048)
    assert (n - 1) * 112 + 224 <= 2048 < n * 112 + 224
    assert Chunk(0, 0, 0, n, n).proc_box(grid)[2] <= 2048
    assert cells_per_chunk(grid, 10) == 1  # a chunk smaller than a window still holds one


@given(
    cols=st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=50),
    stride=st.integers(min_value=1, max_value=1024),
    kernel=st.integers(min_value=1, max_value=1024),
    scale=st.one_of(
        st.sampled_from([1.0, 2.0, 4.0, 0.5, 1.6, 2.5, 4.0 / 3.0, 16.152751423149905]),
        st.floats(min_value=0.05, max_value=64.0, allow_nan=False, allow_infinity=False),
    ),
)
@settings(max_examples=300, deadline=None)
@example(cols=[3, 1, 0], stride=5, kernel=10, scale=2.5)  # 37.5 -> 38 (half to even), 12.5 -> 12
def test_l0_boxes_round_exact_products_without_drift(cols, stride, kernel, scale):
    grid = Grid(10**9, 10**9, kernel, stride, "valid", scale)
    cols_a = np.array(cols, dtype=np.int64)
    rows_a = cols_a[::-1].copy()
    boxes = grid.l0_boxes(rows_a, cols_a)
    assert boxes.dtype == np.int64 and boxes.shape == (len(cols), 4)
    for (x, y, w, h), r, c in zip(boxes.tolist(), rows_a.tolist(), cols_a.tolist(), strict=True):
        assert x == round((c * stride) * scale)
        assert y == round((r * stride) * scale)
        exact = Fraction(c * stride) * Fraction(scale)
        if Fraction((c * stride) * scale) == exact:  # the double product is exact
            assert x == round(exact)
        assert w == h == round(kernel * scale)
        # No drift: within half a level-0 pixel of the exact position however far the column.
        assert abs(x - c * stride * scale) <= 0.5 + 1e-9 * max(1.0, c * stride * scale)


def test_l0_boxes_do_not_accumulate_stride_steps():
    """Stepping x += stride*scale drifts; l0_boxes computes every column from scratch."""
    scale = 0.1 * 3  # not exactly representable
    grid = Grid(10**7, 10**7, 7, 7, "valid", scale)
    cols = np.arange(0, 200_000, 997, dtype=np.int64)
    xs = grid.l0_boxes(np.zeros_like(cols), cols)[:, 0]
    assert xs.tolist() == [round(int(c) * 7 * scale) for c in cols]
    assert np.all(np.diff(xs) >= math.floor(997 * 7 * scale))


def test_windows_step_by_stride_not_kernel():
    """PyDmed regression: windows start at multiples of the stride."""
    grid = Grid(1000, 700, 100, 50, "valid", 1.0)
    assert (grid.rows, grid.cols) == (13, 19)
    boxes = grid.l0_boxes(np.zeros(grid.cols, np.int64), np.arange(grid.cols))
    assert boxes[:, 0].tolist() == list(range(0, 901, 50))
    assert len(set(boxes[:, 0].tolist())) == grid.cols  # no duplicate last column


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"kernel_px": 0}, "kernel-size"),
        ({"stride_px": 0}, "stride"),
        ({"border": "same"}, "border"),
    ],
)
def test_grid_rejects_bad_parameters(kwargs, key):
    params = {
        "proc_width": 100,
        "proc_height": 100,
        "kernel_px": 10,
        "stride_px": 10,
        "border": "valid",
        "scale": 1.0,
        **kwargs,
    }
    with pytest.raises(ConfigError) as err:
        Grid(**params)
    assert err.value.key == key
    assert "\n" not in str(err.value)


def test_tile_aligned_chunks_start_on_tile_boundaries():
    """224-px windows on 256-px tiles: chunks of 8 windows span exactly 7 tiles."""
    grid = Grid(20000, 15000, 224, 224, "valid", 1.0)
    chunks = plan_chunks(grid, 2048, tile_px=256)
    assert all(c.proc_box(grid)[0] % 256 == 0 and c.proc_box(grid)[1] % 256 == 0 for c in chunks)
    assert cells_per_chunk(grid, 2048, tile_px=256) == 8
    # No aligned count within half the default size: keep the default.
    odd = Grid(20000, 15000, 100, 97, "valid", 1.0)
    assert cells_per_chunk(odd, 2048, tile_px=256) == cells_per_chunk(odd, 2048)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    seed=st.integers(0, 2**31),
    scale=st.sampled_from([1.0, 2.5, 7.0, 16.0]),
)
def test_window_tissue_fractions_equal_the_mean_of_the_mask_under_each_box(h, w, seed, scale):
    """The integral-image fractions equal a brute-force count: the nearest mask pixels under
    each box (at least one), parts outside the mask counted as glass."""
    from wsiproc.tissue import window_tissue_fractions

    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < rng.random()
    boxes = np.column_stack(
        [
            rng.integers(-20, int(w * scale) + 20, 30),
            rng.integers(-20, int(h * scale) + 20, 30),
            rng.integers(1, int(max(h, w) * scale) + 1, 30),
            rng.integers(1, int(max(h, w) * scale) + 1, 30),
        ]
    )
    got = window_tissue_fractions(mask, scale, scale, boxes)
    for (x, y, bw, bh), fraction in zip(boxes.tolist(), got.tolist(), strict=True):
        ix0, iy0 = math.floor(x / scale + 0.5), math.floor(y / scale + 0.5)
        ix1 = max(math.floor((x + bw) / scale + 0.5), ix0 + 1)
        iy1 = max(math.floor((y + bh) / scale + 0.5), iy0 + 1)
        inside = mask[max(iy0, 0) : max(iy1, 0), max(ix0, 0) : max(ix1, 0)].sum()
        assert fraction == pytest.approx(inside / ((ix1 - ix0) * (iy1 - iy0)), abs=1e-6)
