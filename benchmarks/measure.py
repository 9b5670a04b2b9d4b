"""Benchmark: detection + deblending + measurement of a synthetic coadd vs SExtractor, photutils.

Run ``python benchmarks/measure.py [--size 4096] [--no-cmodel]``; prints a table of wall
times (total and per object) and the ratios to ``source-extractor`` and photutils on the
same image (written to a temporary FITS file). No timing is asserted.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsstlite.stages.detect.ops import detect_sources, mark_detected, merge_detections
from lsstlite.stages.measure.ops import deblend_measure
from tests.stages._coadds import render_coadd, truth_catalog

SEX_PARAMS = ["NUMBER", "X_IMAGE", "Y_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO", "FLUX_APER",
              "X2_IMAGE", "Y2_IMAGE", "XY_IMAGE", "FLAGS"]  # fmt: skip


def run_sextractor(path: Path, workdir: Path, fwhm_arcsec: float) -> tuple[float, int]:
    exe = shutil.which("source-extractor")
    if exe is None:
        return float("nan"), 0
    (workdir / "bench.param").write_text("\n".join(SEX_PARAMS) + "\n")
    (workdir / "bench.conv").write_text("CONV NORM\n1 2 1\n2 4 2\n1 2 1\n")
    cat = workdir / "sex.cat"
    cmd = [exe, str(path), "-c", "/dev/null", "-PARAMETERS_NAME", "bench.param",
           "-FILTER_NAME", "bench.conv", "-CATALOG_NAME", str(cat), "-CATALOG_TYPE", "ASCII",
           "-DETECT_THRESH", "3", "-DETECT_MINAREA", "5", "-PHOT_APERTURES", "12",
           "-PIXEL_SCALE", "0.2", "-SEEING_FWHM", str(fwhm_arcsec), "-VERBOSE_TYPE", "QUIET",
           "-CHECKIMAGE_TYPE", "NONE", "-BACK_SIZE", "128"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=workdir, check=True)
    dt = time.perf_counter() - t0
    n = sum(1 for line in cat.read_text().splitlines() if not line.startswith("#"))
    return dt, n


def run_photutils(image: np.ndarray, sigma: float, fwhm_px: float) -> tuple[float, int]:
    try:
        from photutils.segmentation import (
            SourceCatalog,
            deblend_sources,
            detect_sources,
            make_2dgaussian_kernel,
        )
    except ImportError:
        return float("nan"), 0
    from astropy.convolution import convolve

    t0 = time.perf_counter()
    kernel = make_2dgaussian_kernel(fwhm_px, size=2 * int(2 * fwhm_px) + 1)
    conv = convolve(image, kernel)
    seg = detect_sources(conv, 3.0 * sigma, n_pixels=5)
    try:  # photutils' deblender needs scikit-image
        seg = deblend_sources(conv, seg, n_pixels=5, progress_bar=False)
    except ImportError:
        print("photutils: scikit-image missing, timing without deblend_sources")
    cat = SourceCatalog(image, seg, convolved_data=conv, error=np.full_like(image, sigma))
    cat.circular_photometry(12.0)
    _ = cat.kron_flux, cat.covariance_xx, cat.x_centroid
    return time.perf_counter() - t0, len(cat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--no-cmodel", action="store_true")
    args = parser.parse_args()
    truth = truth_catalog(("r", "i"))
    shape = (args.size, args.size)
    # The small preset's truth covers ~400″; tile it over the image by shifting positions.
    side = 395.0 / 3600.0
    n_tiles = int(np.ceil(args.size * 0.2 / 3600.0 / side))
    tiles = []
    for a in range(n_tiles):
        for b in range(n_tiles):
            t = truth.copy()
            t["ra"] = t["ra"] + (a - (n_tiles - 1) / 2) * side / np.cos(np.radians(2.0))
            t["dec"] = t["dec"] + (b - (n_tiles - 1) / 2) * side
            tiles.append(t)
    import pandas as pd

    catalog = pd.concat(tiles, ignore_index=True)
    t0 = time.perf_counter()
    coadd = render_coadd(catalog, "i", shape=shape, seed=1)
    print(f"rendered {shape} with {len(catalog)} truth objects in {time.perf_counter() - t0:.1f} s")
    rows = []
    t0 = time.perf_counter()
    det, seg = detect_sources(coadd)
    coadd = mark_detected(coadd, seg)
    merged = merge_detections([det], [coadd], priority=["i"])
    t_det = time.perf_counter() - t0
    t0 = time.perf_counter()
    meas = deblend_measure(coadd, merged, do_cmodel=not args.no_cmodel)
    t_meas = time.perf_counter() - t0
    rows.append(("lsstlite detect+merge", t_det, len(merged)))
    rows.append(("lsstlite deblend+measure", t_meas, len(meas)))
    rows.append(("lsstlite total", t_det + t_meas, len(meas)))
    image = np.asarray(coadd["image"].values, dtype=np.float32)
    sigma = float(np.sqrt(np.median(coadd["variance"].values)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "coadd.fits"
        fits.PrimaryHDU(image).writeto(path)
        rows.append(("source-extractor", *run_sextractor(path, Path(tmp), 0.72)))
    rows.append(("photutils", *run_photutils(image.astype(float), sigma, 3.6)))
    total = t_det + t_meas
    print(f"{'code':28s} {'wall s':>9s} {'objects':>8s} {'ms/object':>10s} {'lsstlite/this':>14s}")
    for name, dt, n in rows:
        per = 1e3 * dt / n if n else float("nan")
        print(f"{name:28s} {dt:9.2f} {n:8d} {per:10.3f} {total / dt:14.2f}")


if __name__ == "__main__":
    main()
