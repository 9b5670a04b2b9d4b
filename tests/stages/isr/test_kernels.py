"""ISR kernels against dense numpy formulations of the same equations."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lsstlite.instruments.simcam import SimCam
from lsstlite.stages.isr import _kernels


def _dense_bf(image: np.ndarray, kernel: np.ndarray, threshold: float, radius: int, n_iter: int):
    """``I ← I_obs − ½ ∇·(I ∇(K ∗ I))`` on every pixel near a bright one, whole arrays."""
    obs = image.astype(np.float64)
    active = ndimage.maximum_filter(obs > threshold, size=2 * radius + 1, mode="constant")
    work = np.where(np.isfinite(obs), obs, 0.0)
    cur = work
    for _ in range(n_iter):
        phi = ndimage.convolve(cur, kernel, mode="constant")
        flux_x = 0.5 * (cur[:, 1:] + cur[:, :-1]) * (phi[:, 1:] - phi[:, :-1])  # x+½ faces
        flux_y = 0.5 * (cur[1:] + cur[:-1]) * (phi[1:] - phi[:-1])
        div = np.zeros_like(cur)
        div[:, :-1] += flux_x
        div[:, 1:] -= flux_x
        div[:-1] += flux_y
        div[1:] -= flux_y
        cur = work - np.where(active, 0.5 * div, 0.0)
    return np.where(active, cur, obs).astype(np.float32)


def test_bf_correct_equals_the_dense_correction() -> None:
    rng = np.random.default_rng(12)
    ny, nx = 90, 110
    yy, xx = np.mgrid[:ny, :nx]
    image = rng.normal(1000.0, 30.0, (ny, nx))
    for x, y, f in [(20, 30, 8e5), (21, 60, 3e5), (105, 88, 6e5), (60, 2, 2e5)]:  # + edges
        image += f / (2 * np.pi * 4.0) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)
    image = image.astype(np.float32)
    image[31, 25] = np.nan  # a non-finite pixel inside an active region counts as 0
    kernel = SimCam().bf_kernel()
    got = _kernels.bf_correct(image, kernel, threshold=1e4, radius=6, n_iter=2)
    want = _dense_bf(image, kernel, 1e4, 6, 2)
    changed = ~np.isclose(got, image, rtol=0, atol=1e-3, equal_nan=True)
    assert changed.sum() > 300  # the correction did something
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-3)
    quiet = image.copy()
    _kernels.bf_correct_inplace(quiet, kernel, threshold=1e9, radius=6, n_iter=2)
    np.testing.assert_array_equal(quiet, image)  # nothing above threshold: unchanged


def test_bf_bands_equal_the_whole_image() -> None:
    """Correcting the bands of rows around bright pixels one by one gives the whole image's
    correction bit for bit: stars near each other (bands that merge), apart (bands that do
    not), on the edges, and a NaN; and a superset of bright rows changes nothing."""
    rng = np.random.default_rng(5)
    ny, nx = 400, 120
    yy, xx = np.mgrid[:ny, :nx]
    image = rng.normal(1000.0, 30.0, (ny, nx))
    stars = [(20, 1, 8e5), (60, 40, 3e5), (62, 75, 4e5), (30, 180, 6e5), (100, 230, 5e5)]
    stars += [(5, 290, 2e5), (90, 398, 7e5)]
    # one band of three stars whose rows overlap in a chain; the first and the last share
    # columns but are rows apart: one range of columns cut in two along y
    stars += [(20, 320, 5e5), (80, 340, 5e5), (22, 360, 5e5)]
    for x, y, f in stars:
        image += f / (2 * np.pi * 4.0) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)
    image = image.astype(np.float32)
    image[42, 58] = np.nan
    kernel = SimCam().bf_kernel()
    whole = image.copy()
    _kernels._bf_sparse(whole, whole, kernel.astype(np.float64), 1e4, 6, 2)
    banded = image.copy()
    _kernels.bf_correct_inplace(banded, kernel, threshold=1e4, radius=6, n_iter=2)
    margin = _kernels.bf_margin(kernel, 6)
    bright = _kernels._rows_above(image, 1e4)
    bands = _kernels.row_bands(bright, margin)
    assert 3 <= len(bands) < len(stars)  # some bands merged, some did not
    boxes = _kernels.bright_boxes(image, bright, 1e4, margin)
    chain = [b for b in boxes if b[0] >= 305 and b[1] <= 375]
    assert len(chain) == 3 and len({b[0] for b in chain}) == 3  # cut along x, then y
    assert not np.array_equal(whole, image)
    np.testing.assert_array_equal(banded, whole)
    superset = image.copy()
    rows = np.zeros(ny, bool)
    rows[::7] = True
    rows |= _kernels._rows_above(image, 1e4)
    _kernels.bf_correct_inplace(
        superset, kernel, threshold=1e4, radius=6, n_iter=2, row_bright=rows
    )
    np.testing.assert_array_equal(superset, whole)


def test_row_medians_equal_numpy_median() -> None:
    """The sorting-network medians are ``np.median`` exactly: odd and even widths, widths
    that are not powers of two, row counts that are not multiples of the network's lanes,
    uint16 (sorted as such, padded with its largest value, which values may equal), int16,
    float32 and float64 pixels, ties, and NaNs."""
    rng = np.random.default_rng(3)
    for trial in range(280):
        n, rows = int(rng.integers(1, 70)), int(rng.integers(1, 90))
        kind = trial % 7
        if kind == 0:
            block = rng.integers(0, 5, (rows, n + 3)).astype(np.uint16)  # many ties
        elif kind == 5:
            block = rng.integers(65530, 65536, (rows, n + 3)).astype(np.uint16)
        elif kind == 6:
            block = rng.integers(-(2**15), 2**15, (rows, n + 3)).astype(np.int16)
        elif kind == 1:
            block = rng.normal(0, 1, (rows, n + 3)).astype(np.float32)
        elif kind == 2:
            block = np.full((rows, n + 3), 7, np.float32)
        elif kind == 3:
            block = rng.normal(0, 1, (rows, n + 3))
        else:
            block = rng.normal(0, 1, (rows, n + 3)).astype(np.float32)
            block[rng.random(block.shape) < 0.02] = np.nan
        x0s, x1s = np.array([1, 0]), np.array([1 + n, 3])
        got = _kernels.row_medians(block, x0s, x1s)
        for a in range(2):
            want = np.median(block[:, x0s[a] : x1s[a]].astype(np.float64), axis=1)
            np.testing.assert_array_equal(got[a], want.astype(np.float32), err_msg=str(trial))


def test_fused_crosstalk_any_number_of_sources() -> None:
    """The fused kernel's crosstalk, eight sources per pass, equals the step-by-step
    correction for 16 amplifiers (two passes, half of them read reversed) with a sparse
    matrix (victims with 0 to 15 sources), and for no crosstalk at all."""
    from lsstlite.stages.isr import ops
    from lsstlite.stages.isr._synthetic import geometry, simcam_raw

    cam = SimCam(geometry(40, 16 * 24, 16))
    rng = np.random.default_rng(8)
    electrons = rng.uniform(0, 5e4, (40, 16 * 24))
    raw = simcam_raw(electrons, cam, 0, read_noise=True)
    xt = cam.crosstalk_matrix(0) * (rng.random((16, 16)) < 0.6)
    xt[:, 3] = 0.0  # a victim without sources
    xt[np.arange(16) != 5, 5] = 2e-3  # one with all fifteen
    np.fill_diagonal(xt, 0.0)
    levels = ops.overscan_levels(raw)
    geo = ops._readout_geometry(raw)
    assert geo["flip"].any() and not geo["flip"].all()
    assert _kernels.crosstalk_groups(xt)[0].shape[1] == 2
    flags = np.array([True, True, False, False, False, False, False])
    empty = np.zeros((0, 0), np.float32)
    for matrix in (xt, None):
        got = _kernels.isr_fused(
            np.asarray(raw["image"].values),
            np.asarray(levels.values),
            geo["raw_x0"],
            geo["det_x0"],
            geo["flip"],
            geo["width"],
            16 * 24,
            geo["gain"],
            geo["read_noise"],
            geo["saturation"],
            np.zeros((16, 3)),
            np.zeros((16, 16)) if matrix is None else matrix,
            empty,
            empty,
            0.0,
            empty,
            flags if matrix is not None else np.array([True] + [False] * 6),
            ops._mask_bits_array()[:3],
        )
        step = ops.subtract_overscan(raw, levels=levels)
        if matrix is not None:
            step = ops.correct_crosstalk(step, matrix)
        want = ops.apply_gain(ops.assemble(step))
        np.testing.assert_allclose(got[0], want["image"].values, rtol=2e-6, atol=2e-3)


def test_fused_flags_bright_amplifiers_and_boxes_use_them() -> None:
    """``row_bright`` has bit ``a`` set in the rows where amplifier ``a`` (as placed at
    ``det_x0[a]``) has a pixel above the threshold before the flat or an unusable flat
    pixel, and no other; the boxes found from those bits, scanning only the flagged
    amplifiers' columns, are the ones a scan of whole rows finds. The mask keeps no trace
    of the bit the kernel borrows."""
    from lsstlite.stages.isr import ops
    from lsstlite.stages.isr._synthetic import geometry, simcam_raw

    nx = 8 * 32
    cam = SimCam(geometry(60, nx, 8))
    electrons = np.full((60, nx), 500.0)
    electrons[10, 40] = 3e4  # amplifier at columns 32-63
    electrons[30, 200] = electrons[30, 70] = 3e4  # two amplifiers in one row
    electrons[45, 33:35] = 3e4  # two pixels, one amplifier
    raw = simcam_raw(electrons, cam, 0, read_noise=False)
    geo = ops._readout_geometry(raw)
    assert geo["flip"].any()
    levels = np.asarray(ops.overscan_levels(raw).values)
    flat = np.ones((60, nx), np.float32)
    flat[50, 250] = 0.0  # an unusable flat pixel flags its amplifier too
    flags = np.array([True, False, False, False, False, True, True])
    bits = ops._mask_bits_array()[:3]
    row_bright = np.full(60, -1, np.int64)
    out = _kernels.isr_fused(
        np.asarray(raw["image"].values), levels, geo["raw_x0"], geo["det_x0"], geo["flip"],
        geo["width"], nx, geo["gain"], geo["read_noise"], geo["saturation"], np.zeros((8, 3)),
        np.zeros((8, 8)), np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), 0.0,
        flat, flags, bits, bright=1e4, row_bright=row_bright,
    )  # fmt: skip
    amp_at = {int(x0) // 32: a for a, x0 in enumerate(geo["det_x0"])}  # column block → a
    want = np.zeros(60, np.int64)
    for y, x in ((10, 40), (30, 200), (30, 70), (45, 33), (50, 250)):
        want[y] |= 1 << amp_at[x // 32]
    np.testing.assert_array_equal(row_bright, want)
    assert (out[2].view(np.int32) >= 0).all()  # bit 31 given back
    image = out[0] * 1.0
    for margin in (2, 9):
        whole = _kernels.bright_boxes(image, row_bright != 0, 1e4, margin, flat=flat)
        spans = (np.asarray(geo["det_x0"], np.int64), int(geo["width"]))
        by_amp = _kernels.bright_boxes(image, row_bright, 1e4, margin, flat=flat, columns=spans)
        assert by_amp == whole and len(whole) >= 4


def test_finish_rows_interpolation_equals_the_row_walk() -> None:
    """The chunked interpolation of :func:`finish_rows` equals the plain walk of
    :func:`interpolate_rows`: runs of every length (beyond ``max_width`` too), runs across
    64-pixel chunk edges, at the row ends, and a row width that is not a multiple of 64."""
    rng = np.random.default_rng(4)
    ny, nx, bad, intrp = 60, 64 * 5 + 17, 4, 8
    img = rng.normal(100, 5, (ny, nx)).astype(np.float32)
    var = rng.uniform(1, 2, (ny, nx)).astype(np.float32)
    mask = np.zeros((ny, nx), np.int32)
    for y in range(ny):
        for _ in range(int(rng.integers(0, 6))):
            x0 = int(rng.integers(0, nx))
            mask[y, x0 : x0 + int(rng.integers(1, 40))] |= bad
    mask[1, 60:70] |= bad  # across a chunk edge
    mask[2, :5] |= bad  # at the row's ends
    mask[2, nx - 3 :] |= bad
    mask[3, 100:200] |= bad  # longer than max_width
    mask[4, 5] |= 2  # another plane: not interpolated
    want = _kernels.interpolate_rows(img, var, mask, bad, intrp, 32)
    got_img, got_var, got_mask = img.copy(), var.copy(), mask.copy()
    row_bits = _kernels.row_bits_of(got_mask)
    no_boxes = np.zeros((0, 4), np.int64)
    _kernels.finish_rows(
        got_img, got_var, got_mask, row_bits, 0, ny, 1, 0, bad, intrp, 32, no_boxes
    )
    assert ((want[2] & intrp) != 0).sum() > 100
    np.testing.assert_array_equal(got_mask, want[2])
    np.testing.assert_array_equal(got_img, want[0])
    np.testing.assert_array_equal(got_var, want[1])


def test_finish_rows_interpolates_defect_boxes_outside_row_bits() -> None:
    """Defect boxes need not be in ``row_bits``: the rows they cross are interpolated
    through the boxes only, and the result equals the plain walk of the whole mask. Boxes
    overlapping, touching other flagged pixels (one run across both), at the row's ends,
    wider than ``max_width``, partly outside the rows done, and rows whose own bits are
    set (visited whole)."""
    rng = np.random.default_rng(5)
    ny, nx, bad, sat, intrp = 80, 300, 4, 1, 8
    img = rng.normal(100, 5, (ny, nx)).astype(np.float32)
    var = rng.uniform(1, 2, (ny, nx)).astype(np.float32)
    mask = np.zeros((ny, nx), np.int32)
    mask[10, 40:43] |= sat  # flagged pixels in row_bits
    mask[30, 100] |= sat  # next to the box at column 101: one run of 4
    boxes = np.array(
        [
            [20, 0, 1, ny],  # a bad column down the whole plane
            [21, 5, 2, 10],  # overlapping it: one run of 3
            [101, 25, 3, 10],  # touching the SAT pixel in row 30
            [0, 40, 2, 5],  # at the row's start: not interpolated
            [nx - 1, 40, 1, 5],  # at its end
            [150, 50, 40, 3],  # wider than max_width
            [200, -5, 2, 10],  # partly above the plane
            [250, 70, 1, 20],  # partly below it
        ],
        np.int64,
    )
    ys, xs = np.mgrid[:ny, :nx]
    for x0, y0, w, h in boxes:
        mask[(ys >= y0) & (ys < y0 + h) & (xs >= x0) & (xs < x0 + w)] |= bad
    want = _kernels.interpolate_rows(img, var, mask, bad | sat, intrp, 32)
    top, rows = 3, ny - 6  # a block's core rows: the others are not interpolated
    for y in [*range(top), *range(top + rows, ny)]:
        want[0][y], want[1][y], want[2][y] = img[y], var[y], mask[y]
    got_img, got_var, got_mask = img.copy(), var.copy(), mask.copy()
    row_bits = _kernels.row_bits_of(mask & sat)  # the boxes' bit not in it
    _kernels.finish_rows(
        got_img, got_var, got_mask, row_bits, top, rows, 16, 0, bad | sat, intrp, 32, boxes
    )
    assert ((want[2] & intrp) != 0).sum() > 100
    assert want[2][30, 100] & intrp and want[2][40, 0] & intrp == 0
    np.testing.assert_array_equal(got_mask, want[2])
    np.testing.assert_array_equal(got_img, want[0])
    np.testing.assert_array_equal(got_var, want[1])


def test_fill_defects_matches_the_interpolation_along_rows() -> None:
    """Brighter-fatter's filled-in defects in a box are the row interpolation's values
    (:func:`interpolate_rows`: runs of at most ``max_width`` with a pixel on both sides),
    the runs found over the whole row though the box is narrower; and a neighbour whose
    flat is not usable needs the value from ``redo``."""
    rng = np.random.default_rng(4)
    ny, nx, max_width = 40, 120, 5
    image = rng.normal(1000, 30, (ny, nx)).astype(np.float32)
    bad = rng.random((ny, nx)) < 0.15
    bad[:, 0] |= rng.random(ny) < 0.5  # runs on the left edge: left alone
    bad[3, 40:50] = True  # too long
    mask = bad.astype(np.int32) * 4
    want, _, _ = _kernels.interpolate_rows(image, image, mask, 4, 8, max_width)
    no = np.zeros((0, 0), np.float32)
    for y0, y1, x0, x1 in ((0, ny, 0, nx), (5, 30, 0, 17), (2, 9, 44, 61), (10, 40, 100, 120)):
        wx0, wx1 = max(x0 - max_width - 1, 0), min(x1 + max_width + 1, nx)
        member, found = _kernels.defect_members(
            mask, 4, np.zeros((0, 4), np.int64), y0, y1, wx0, wx1
        )
        assert found
        box = np.ascontiguousarray(image[y0:y1, x0:x1])
        got, ok = _kernels.fill_defects(box, member, wx0, x0, image[y0:y1], no, no, max_width)
        assert ok
        np.testing.assert_array_equal(got, want[y0:y1, x0:x1])
    # the same from boxes: one bad column, one 2-wide, and the too-long run
    boxes = np.array([[20, 0, 1, ny], [31, 0, 2, ny], [40, 3, 10, 1]], np.int64)
    member, _ = _kernels.defect_members(np.zeros((0, 0), np.int32), 0, boxes, 0, ny, 0, nx)
    as_mask = member.astype(np.int32) * 4
    want, _, _ = _kernels.interpolate_rows(image, image, as_mask, 4, 8, max_width)
    got, ok = _kernels.fill_defects(image.copy(), member, 0, 0, image, no, no, max_width)
    assert ok
    np.testing.assert_array_equal(got, want)
    assert (got[:, 20] != image[:, 20]).all() and (got[3, 40:50] == image[3, 40:50]).all()
    # with a flat: the values before it either side; one is not usable, then redo's
    flat = rng.normal(1, 0.01, (ny, nx)).astype(np.float32)
    flat[7, 19] = 0.0
    post = (image / np.where(flat == 0, 1, flat)).astype(np.float32)
    got, ok = _kernels.fill_defects(image.copy(), member, 0, 0, post, flat, no, max_width)
    assert not ok
    redo = image.copy()
    got, ok = _kernels.fill_defects(image.copy(), member, 0, 0, post, flat, redo, max_width)
    assert ok
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_fill_width_bounds_the_filled_runs() -> None:
    """BF's boxes reach ``fill_width − 1`` further: the widest run a defect table can make
    (its columns merged, whatever the rows), or the longest run of the mask that is
    filled (runs longer than ``max_width`` are not)."""
    boxes = np.array([[10, 0, 1, 5], [11, 3, 2, 2], [30, 0, 4, 1]], np.int64)
    assert _kernels.fill_width(boxes, None, 0, 32) == 4
    assert _kernels.fill_width(boxes, None, 0, 3) == 3
    assert _kernels.fill_width(boxes, None, 0, 0) == 0
    assert _kernels.fill_width(np.zeros((0, 4), np.int64), None, 0, 32) == 0
    mask = np.zeros((3, 100), np.int32)
    mask[0, 5:7] = 4
    mask[1, 20:25] = 4
    mask[2, 50:90] = 4  # 40 long: not filled
    assert _kernels.fill_width(None, mask, 4, 32) == 5
    assert _kernels.fill_width(None, mask, 4, 41) == 40
    assert _kernels.fill_width(None, mask, 8, 32) == 0
    kernel = np.ones((17, 17))
    assert _kernels.bf_margin(kernel, 12, 5) == _kernels.bf_margin(kernel, 12) + 4 == 26
