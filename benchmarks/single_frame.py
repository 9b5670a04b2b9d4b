"""Single-frame processing time on one 4096 × 4096 detector, one core, versus
SExtractor + PSFEx (+ SCAMP).

The image is rendered with the simulator (``ci`` preset sky and observing conditions,
a 4096 × 4096 SimCam detector at 0.2″/px, 1–2″ header pointing error), with Poisson and
read noise and the survey's cosmic rays. Both sides get the same image, variance (as a
weight map) and reference catalog; times are wall-clock on one thread.

Usage::

    python benchmarks/single_frame.py [--workdir DIR] [--no-astromatic]

Each side runs ``--repeat`` times (default 3), in turn, and each step's best time is
printed (the machine is shared). Prints a table. Needs ``source-extractor``, ``psfex`` and ``scamp`` on the PATH for the
comparison (Debian: ``apt-get install source-extractor psfex scamp``).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from astropy.io import fits  # noqa: E402

SIZE = 4096
SEED = 3


def make_image(workdir: Path) -> tuple[Any, pd.DataFrame]:
    """The benchmark exposure (cached as FITS in ``workdir``) and its reference catalog."""
    import lsstlite.data as lld
    from lsstlite.instruments.simcam import CameraGeometry, SimCam
    from lsstlite.sim.artifacts import cosmic_rays
    from lsstlite.sim.config import PRESETS
    from lsstlite.sim.observe import header_wcs, make_visits
    from lsstlite.sim.refcat import make_refcat
    from lsstlite.sim.render import render_true_image
    from lsstlite.sim.sky import make_catalog

    config = PRESETS["ci"]
    camera = SimCam(CameraGeometry("bench", 1, 1, SIZE, SIZE, 4, distortion_edge_px=20.0))
    visit = make_visits(config, SEED)[0]
    path = workdir / "image.fits"
    refcat_path = workdir / "refcat.parquet"
    catalog = None
    if not path.exists():
        catalog = make_catalog(config, SEED)
        true = render_true_image(catalog, visit, camera, 0)
        crs = cosmic_rays(config, SEED, visit.exposure, 0, visit.darktime, camera)
        np.add.at(true, (crs["y"].to_numpy(), crs["x"].to_numpy()), crs["electrons"].to_numpy())
        rng = np.random.default_rng(SEED)
        image = rng.poisson(true).astype(np.float32) + rng.normal(0, 6.0, true.shape).astype(
            np.float32
        )
        header = header_wcs(visit, camera, 0).to_header(relax=True)
        header["BAND"] = visit.band
        fits.PrimaryHDU(image, header=header).writeto(path, overwrite=True)
        weight = 1.0 / (np.clip(image, 0, None) + 36.0)
        fits.PrimaryHDU(weight.astype(np.float32)).writeto(workdir / "weight.fits", overwrite=True)
    if not refcat_path.exists():
        catalog = make_catalog(config, SEED) if catalog is None else catalog
        make_refcat(catalog, config, SEED).to_parquet(refcat_path)
    with fits.open(path) as hdul:
        image = np.asarray(hdul[0].data, dtype=np.float32)
        header = hdul[0].header
    cards = {
        k: v
        for k, v in header.items()
        if k not in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BAND", "")
    }
    exposure = lld.make_exposure(
        image,
        variance=np.clip(image, 0, None) + 36.0,
        wcs=cards,
        visit_info={
            "instrument": "SimCam",
            "exposure": visit.exposure,
            "detector": 0,
            "band": visit.band,
        },
    )
    return exposure, pd.read_parquet(refcat_path)


def warm_up(exposure: Any, refcat: pd.DataFrame) -> float:
    """Compile (or load) the numba kernels on a cut-out; returns the seconds it took."""
    from lsstlite.stages.calibrate import calibrate_exposure
    from lsstlite.stages.characterize import characterize_exposure

    t0 = time.perf_counter()
    warm = characterize_exposure(exposure.lsst.cutout(0, 0, 1024, 1024))
    calibrate_exposure(warm.exposure, warm.sources, refcat)
    return time.perf_counter() - t0


def run_lsstlite(exposure: Any, refcat: pd.DataFrame) -> dict[str, float]:
    """Time characterisation and calibration (after :func:`warm_up`)."""
    from lsstlite.stages.calibrate import calibrate_exposure
    from lsstlite.stages.characterize import characterize_exposure

    t0 = time.perf_counter()
    char = characterize_exposure(exposure)
    t1 = time.perf_counter()
    cal = calibrate_exposure(char.exposure, char.sources, refcat)
    t2 = time.perf_counter()
    meta = {**char.metadata, **cal.metadata}
    return {
        "characterize_s": t1 - t0,
        "calibrate_s": t2 - t1,
        "total_s": t2 - t0,
        "n_sources": float(len(cal.src)),
        "n_psf_stars": float(meta["n_psf_stars"]),
        "astrometry_rms_mas": float(meta["astrometry_rms_mas"]),
    }


_SE_PARAMS = """NUMBER
X_IMAGE
Y_IMAGE
XWIN_IMAGE
YWIN_IMAGE
ERRAWIN_IMAGE
ERRBWIN_IMAGE
ERRTHETAWIN_IMAGE
X_WORLD
Y_WORLD
FLUX_APER(4)
FLUXERR_APER(4)
FLUX_AUTO
FLUXERR_AUTO
MAG_AUTO
MAGERR_AUTO
FLUX_RADIUS
ELONGATION
SNR_WIN
FLAGS
FLAGS_WEIGHT
VIGNET(25,25)
"""

_SE_PSF_PARAMS = """NUMBER
XWIN_IMAGE
YWIN_IMAGE
FLUX_APER(4)
FLUX_AUTO
FLUX_PSF
FLUXERR_PSF
FLAGS
"""


def _se_config(workdir: Path) -> list[str]:
    conv = Path("/usr/share/source-extractor/gauss_4.0_7x7.conv")
    nnw = Path("/usr/share/source-extractor/default.nnw")
    args = [
        "-DETECT_THRESH",
        "5",
        "-ANALYSIS_THRESH",
        "5",
        "-DETECT_MINAREA",
        "5",
        "-WEIGHT_TYPE",
        "MAP_WEIGHT",
        "-WEIGHT_IMAGE",
        str(workdir / "weight.fits"),
        "-PHOT_APERTURES",
        "6,10,16,24",
        "-BACK_SIZE",
        "128",
        "-SATUR_LEVEL",
        "1e9",
        "-GAIN",
        "1.0",
        "-PIXEL_SCALE",
        "0",
        "-SEEING_FWHM",
        "0.9",
        "-VERBOSE_TYPE",
        "QUIET",
        "-CHECKIMAGE_TYPE",
        "NONE",
        "-WRITE_XML",
        "N",
    ]
    if conv.exists():
        args += ["-FILTER_NAME", str(conv)]
    if nnw.exists():
        args += ["-STARNNW_NAME", str(nnw)]
    return args


def _write_ldac_refcat(refcat: pd.DataFrame, band: str, path: Path) -> None:
    mag = 31.4 - 2.5 * np.log10(refcat[f"{band}_flux"].to_numpy())
    err_deg = refcat["ra_err"].to_numpy() / 3.6e6
    cols = [
        fits.Column(name="X_WORLD", format="1D", unit="deg", array=refcat["ra"].to_numpy()),
        fits.Column(name="Y_WORLD", format="1D", unit="deg", array=refcat["dec"].to_numpy()),
        fits.Column(name="ERRA_WORLD", format="1E", unit="deg", array=np.maximum(err_deg, 1e-8)),
        fits.Column(name="ERRB_WORLD", format="1E", unit="deg", array=np.maximum(err_deg, 1e-8)),
        fits.Column(name="MAG", format="1E", unit="mag", array=mag),
        fits.Column(name="MAGERR", format="1E", unit="mag", array=np.full(len(mag), 0.01)),
        fits.Column(name="OBSDATE", format="1D", unit="yr", array=np.full(len(mag), 2026.0)),
    ]
    head = fits.Header()
    head["NAXIS"] = 2
    imhead = fits.BinTableHDU.from_columns(
        [
            fits.Column(
                name="Field Header Card", format=f"{len(head.tostring())}A", array=[head.tostring()]
            )
        ],
        name="LDAC_IMHEAD",
    )
    objects = fits.BinTableHDU.from_columns(cols, name="LDAC_OBJECTS")
    fits.HDUList([fits.PrimaryHDU(), imhead, objects]).writeto(path, overwrite=True)


def run_astromatic(workdir: Path, refcat: pd.DataFrame, band: str) -> dict[str, float]:
    """SExtractor (LDAC, vignettes) → PSFEx → SExtractor with PSF fluxes → SCAMP."""
    out: dict[str, float] = {}
    (workdir / "se.param").write_text(_SE_PARAMS)
    (workdir / "se_psf.param").write_text(_SE_PSF_PARAMS)
    base = _se_config(workdir)
    image = str(workdir / "image.fits")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def timed(name: str, cmd: list[str]) -> None:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
        out[name] = time.perf_counter() - t0
        if proc.returncode != 0:
            out[name] = float("nan")
            print(f"{name} failed: {proc.stderr[-500:]}")

    timed(
        "sextractor_s",
        [
            "source-extractor",
            image,
            *base,
            "-CATALOG_NAME",
            "se.ldac",
            "-CATALOG_TYPE",
            "FITS_LDAC",
            "-PARAMETERS_NAME",
            "se.param",
        ],
    )
    timed(
        "psfex_s",
        [
            "psfex",
            "se.ldac",
            "-PSF_SIZE",
            "25,25",
            "-PSFVAR_DEGREES",
            "2",
            "-PSF_SAMPLING",
            "1.0",
            "-CHECKPLOT_TYPE",
            "NONE",
            "-CHECKIMAGE_TYPE",
            "NONE",
            "-WRITE_XML",
            "N",
            "-VERBOSE_TYPE",
            "QUIET",
            "-NTHREADS",
            "1",
        ],
    )
    timed(
        "sextractor_psf_s",
        [
            "source-extractor",
            image,
            *base,
            "-CATALOG_NAME",
            "se_psf.cat",
            "-CATALOG_TYPE",
            "FITS_1.0",
            "-PARAMETERS_NAME",
            "se_psf.param",
            "-PSF_NAME",
            "se.psf",
        ],
    )
    _write_ldac_refcat(refcat, band, workdir / "ref.cat")
    timed(
        "scamp_s",
        [
            "scamp",
            "se.ldac",
            "-ASTREF_CATALOG",
            "FILE",
            "-ASTREFCAT_NAME",
            "ref.cat",
            "-ASTREFMAG_KEY",
            "MAG",
            "-ASTREFMAGERR_KEY",
            "MAGERR",
            "-ASTREFCENT_KEYS",
            "X_WORLD,Y_WORLD",
            "-ASTREFERR_KEYS",
            "ERRA_WORLD,ERRB_WORLD",
            "-DISTORT_DEGREES",
            "3",
            "-CHECKPLOT_TYPE",
            "NONE",
            "-WRITE_XML",
            "N",
            "-SOLVE_PHOTOM",
            "N",
            "-VERBOSE_TYPE",
            "QUIET",
            "-NTHREADS",
            "1",
            "-POSITION_MAXERR",
            "0.2",
            "-CROSSID_RADIUS",
            "2",
        ],
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="where the image is cached")
    parser.add_argument("--no-astromatic", action="store_true", help="skip SExtractor & co.")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each side, interleaved; best is shown"
    )
    args = parser.parse_args()
    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "lsstlite_bench_single_frame")
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    exposure, refcat = make_image(workdir)
    print(f"image {SIZE}×{SIZE} ready in {time.perf_counter() - t0:.1f} s ({workdir})")
    t_warm = warm_up(exposure, refcat)
    tools = all(shutil.which(t) for t in ("source-extractor", "psfex", "scamp"))
    astromatic = tools and not args.no_astromatic
    # The machine is shared: both sides run in turn and each step's best time is kept.
    runs: list[dict[str, float]] = []
    their_runs: list[dict[str, float]] = []
    for _ in range(max(args.repeat, 1)):
        runs.append(run_lsstlite(exposure, refcat))
        if astromatic:
            their_runs.append(run_astromatic(workdir, refcat, exposure.attrs["visit_info"]["band"]))
    ours = {k: min(r[k] for r in runs) for k in runs[0]}
    rows = [
        ("lsstlite characterize", ours["characterize_s"]),
        ("lsstlite calibrate", ours["calibrate_s"]),
        ("lsstlite total", ours["total_s"]),
    ]
    theirs: dict[str, float] = {}
    if their_runs:
        theirs = {k: min(r[k] for r in their_runs) for k in their_runs[0]}
        se_psfex = theirs["sextractor_s"] + theirs["psfex_s"]
        rows += [(k.removesuffix("_s").replace("_", " "), v) for k, v in theirs.items()]
        rows += [
            ("SExtractor + PSFEx", se_psfex),
            ("SExtractor + PSFEx + SE(PSF) + SCAMP", sum(theirs.values())),
        ]
    print(f"best of {len(runs)} interleaved runs per side")
    print(f"{'step':45s} {'seconds':>9s}")
    for name, seconds in rows:
        print(f"{name:45s} {seconds:9.2f}")
    print(
        f"(numba warm-up on a 1024² cut-out, not counted: {t_warm:.1f} s; "
        f"{int(ours['n_sources'])} sources, {int(ours['n_psf_stars'])} PSF stars, "
        f"astrometric fit rms {ours['astrometry_rms_mas']:.1f} mas)"
    )
    if theirs:
        se_psfex = theirs["sextractor_s"] + theirs["psfex_s"]
        print(f"ratio lsstlite total / (SExtractor + PSFEx): {ours['total_s'] / se_psfex:.2f}")
        print(
            f"ratio lsstlite total / (SExtractor + PSFEx + SE(PSF) + SCAMP): "
            f"{ours['total_s'] / sum(theirs.values()):.2f}"
        )


if __name__ == "__main__":
    main()
