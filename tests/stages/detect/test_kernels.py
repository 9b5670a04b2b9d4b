"""Detection kernels against the whole-image scipy formulations they replace."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from lsstlite.stages.detect import _kernels


def test_find_peaks_are_the_maximum_filter_candidates_with_dips() -> None:
    rng = np.random.default_rng(11)
    ny, nx = 150, 170
    yy, xx = np.mgrid[:ny, :nx]
    snr = rng.normal(0.0, 1.0, (ny, nx))
    for x, y, a in rng.uniform((3, 3, 5), (nx - 3, ny - 3, 80), (40, 3)):
        snr += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    snr[0, 5] = snr[-1, -1] = 50.0  # maxima on the edges
    snr[40, 40] = snr[40, 41] = 30.0  # a tie: both are maxima of their 3×3 boxes
    labels, _ = _kernels.footprint_labels(snr >= 5.0, min_area=1, grow_px=1)
    got = _kernels.find_peaks(snr, labels, min_snr=5.0, min_dip_sigma=4.0)

    # reference: candidates from the whole-image maximum filter, then the dip test
    local_max = snr == ndimage.maximum_filter(snr, size=3, mode="nearest")
    iy, ix = np.nonzero(local_max & (labels > 0) & (snr >= 5.0))
    lab = labels[iy, ix]
    order = np.lexsort((-snr[iy, ix], lab))
    kept: list[tuple[int, int, int]] = []
    for i in order:
        ok = True
        for lj, jy, jx in kept:
            if lj != lab[i]:
                continue
            dy, dx = jy - iy[i], jx - ix[i]
            steps = max(abs(dy), abs(dx))
            line = [
                snr[
                    math.floor(iy[i] + dy * s / steps + 0.5),
                    math.floor(ix[i] + dx * s / steps + 0.5),
                ]
                for s in range(1, steps)
            ]
            if snr[iy[i], ix[i]] - min([snr[iy[i], ix[i]], *line]) < 4.0:
                ok = False
                break
        if ok:
            kept.append((int(lab[i]), int(iy[i]), int(ix[i])))
    assert len(kept) > 30
    np.testing.assert_array_equal(got, np.array(kept, dtype=np.int64))
