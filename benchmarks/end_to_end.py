"""The whole demo (raw → object table) on a simulated preset, step by step, beside the
AstrOmatic chain on the same calibrated inputs.

    python benchmarks/end_to_end.py [--preset ci] [--jobs 2] [--workdir DIR]

lsstlite: wall time of each demo step and in total; the summed run time of each task's
quanta (from the ``<label>_log`` datasets); the peak resident memory of the driver and of
each Dask worker process (sampled every 0.2 s).

AstrOmatic, where the steps correspond, on the demo's exported calexps (same pixels, same
fitted WCS): ``source-extractor`` + ``psfex`` + ``source-extractor`` with PSF fluxes +
``scamp`` per calexp (``characterize`` + ``calibrate``), ``SWarp`` (clipped mean, Lanczos3)
per band (``assemble_coadd``) and ``source-extractor`` on each coadd (``detect_coadd`` +
``deblend_measure`` + ``forced_photometry``). Needs ``source-extractor psfex scamp swarp``
(Debian packages) on the PATH; without them only lsstlite's table is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parent))
import single_frame

from lsstlite.demo import OUTPUT, run_demo
from lsstlite.repo import Butler


class MemoryMonitor:
    """Peak RSS of this process and of each of its descendants."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for p in [me, *me.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                    name = " ".join(p.cmdline()[:3])[:60]
                except psutil.Error:
                    continue
                if rss > self.peak.get(p.pid, ("", 0))[1]:
                    self.peak[p.pid] = (name, rss)
            time.sleep(self.interval)

    def __enter__(self) -> MemoryMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def task_seconds(repo: Path) -> dict[str, float]:
    """Summed quantum run time per task label in the demo's output collection."""
    butler = Butler(str(repo))
    out: dict[str, float] = {}
    runs = [c for c in butler.query_collections(f"{OUTPUT}/*") if c.count("/") == 3]
    runs += [c for c in butler.query_collections("SimCam/calib/build/*")]
    for dt in butler.query_dataset_types("*_log"):
        refs = butler.query_datasets(dt.name, collections=runs)
        assert isinstance(refs, list)
        if refs:
            out[dt.name.removesuffix("_log")] = sum(float(butler.get(r)["seconds"]) for r in refs)
    return out


def _split_exposure(path: Path, outdir: Path) -> tuple[Path, Path]:
    """IMAGE (with its WCS) and 1/VARIANCE of an exported exposure, as SExtractor wants."""
    outdir.mkdir(parents=True, exist_ok=True)
    with fits.open(path) as hdul:
        image, var = hdul["IMAGE"], hdul["VARIANCE"].data
        weight = np.where(np.isfinite(var) & (var > 0), 1.0 / np.where(var > 0, var, 1), 0.0)
        data = np.where(np.isfinite(image.data), image.data, 0.0).astype(np.float32)
        fits.PrimaryHDU(data, header=image.header).writeto(outdir / "image.fits", overwrite=True)
        fits.PrimaryHDU(weight.astype(np.float32), header=image.header).writeto(
            outdir / "weight.fits", overwrite=True
        )
    return outdir / "image.fits", outdir / "weight.fits"


def run_astromatic(
    workdir: Path, export: Path, refcat: pd.DataFrame, band_of_visit: dict[int, str]
) -> dict[str, float]:
    """The AstrOmatic chain on the exported calexps and coadds; seconds per step."""
    out: dict[str, float] = defaultdict(float)
    by_band: dict[str, list[tuple[Path, Path]]] = defaultdict(list)
    for path in sorted((export / "calexp").glob("*.fits")):
        # export names carry the data ID: calexp_instrument-SimCam_exposure-101_detector-0
        visit = int(path.stem.split("exposure-")[1].split("_")[0])
        band = band_of_visit[visit]
        d = workdir / "calexp" / path.stem
        image, weight = _split_exposure(path, d)
        by_band[band].append((image, weight))
        times = single_frame.run_astromatic(d, refcat, band)
        out["sextractor+psfex+scamp (single frames)"] += sum(
            v for v in times.values() if np.isfinite(v)
        )
    for band, files in by_band.items():
        t0 = time.perf_counter()
        subprocess.run(
            [
                "SWarp",
                *[str(f[0]) for f in files],
                "-WEIGHT_TYPE",
                "MAP_WEIGHT",
                "-WEIGHT_IMAGE",
                ",".join(str(f[1]) for f in files),
                "-COMBINE_TYPE",
                "CLIPPED",
                "-RESAMPLING_TYPE",
                "LANCZOS3",
                "-SUBTRACT_BACK",
                "N",
                "-NTHREADS",
                "2",
                "-IMAGEOUT_NAME",
                str(workdir / f"swarp_{band}.fits"),
                "-WEIGHTOUT_NAME",
                str(workdir / f"swarp_{band}.weight.fits"),
                "-WRITE_XML",
                "N",
                "-VERBOSE_TYPE",
                "QUIET",
            ],
            cwd=workdir,
            capture_output=True,
            check=True,
        )
        out["SWarp (coadds)"] += time.perf_counter() - t0
    (workdir / "se.param").write_text(single_frame._SE_PARAMS)
    for path in sorted((export / "coadd").glob("*.fits")):
        d = workdir / "coadd" / path.stem
        _split_exposure(path, d)
        (d / "se.param").write_text(single_frame._SE_PARAMS)
        t0 = time.perf_counter()
        subprocess.run(
            [
                "source-extractor",
                str(d / "image.fits"),
                *single_frame._se_config(d),
                "-CATALOG_NAME",
                "coadd.cat",
                "-CATALOG_TYPE",
                "FITS_1.0",
                "-PARAMETERS_NAME",
                "se.param",
            ],
            cwd=d,
            capture_output=True,
            check=True,
        )
        out["source-extractor (coadds)"] += time.perf_counter() - t0
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ci")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/lsstlite-end-to-end")
    args = parser.parse_args()
    work = Path(args.workdir)
    t0 = time.perf_counter()
    with MemoryMonitor() as mem:
        result = run_demo(work / "demo", preset=args.preset, n_workers=args.jobs)
    total = time.perf_counter() - t0

    print(f"\nlsstlite demo, preset {args.preset!r}, {args.jobs} worker processes")
    print(f"{'step':<46}{'wall s':>9}")
    for step, seconds in result.timings.items():
        print(f"{step:<46}{seconds:>9.1f}")
    print(f"{'total (incl. the truth figures)':<46}{total:>9.1f}")

    print(f"\n{'task (summed quantum run time)':<46}{'s':>9}")
    tasks = task_seconds(result.repo)
    for label, seconds in tasks.items():
        print(f"{label:<46}{seconds:>9.1f}")

    print(f"\n{'process':<64}{'peak RSS MB':>12}")
    for _pid, (name, rss) in sorted(mem.peak.items(), key=lambda kv: -kv[1][1])[:6]:
        print(f"{name:<64}{rss / 2**20:>12.0f}")

    tools = ("source-extractor", "psfex", "scamp", "SWarp")
    if not all(shutil.which(t) for t in tools):
        print(f"\n{tools} not all installed: AstrOmatic comparison skipped")
        return
    refcat = pd.read_parquet(result.sim / "refcat" / "refcat.parquet")
    astro_dir = work / "astromatic"
    if astro_dir.exists():
        shutil.rmtree(astro_dir)
    astro_dir.mkdir(parents=True)
    os.environ["OMP_NUM_THREADS"] = "1"
    truth = pd.read_parquet(result.sim / "truth" / "exposures.parquet")
    band_of_visit = {int(v): str(b) for v, b in zip(truth["visit"], truth["band"], strict=True)}
    theirs = run_astromatic(astro_dir, result.export, refcat, band_of_visit)
    ours = {
        "sextractor+psfex+scamp (single frames)": tasks.get("characterize", 0)
        + tasks.get("calibrate", 0),
        "SWarp (coadds)": tasks.get("assemble_coadd", 0),
        "source-extractor (coadds)": tasks.get("detect_coadd", 0)
        + tasks.get("deblend_measure", 0)
        + tasks.get("forced_photometry", 0),
    }
    names = {
        "sextractor+psfex+scamp (single frames)": "characterize + calibrate",
        "SWarp (coadds)": "assemble_coadd",
        "source-extractor (coadds)": "detect + deblend/measure + forced",
    }
    print(f"\n{'step (same inputs)':<40}{'AstrOmatic s':>14}{'lsstlite s':>12}{'ratio':>8}")
    for key, seconds in theirs.items():
        print(
            f"{key + ' vs ' + names[key]:<40}"[:40]
            + f"{seconds:>14.1f}{ours[key]:>12.1f}{ours[key] / seconds:>8.2f}"
        )
    print(
        "\n(lsstlite seconds are summed per-quantum wall times on 2 worker processes; "
        "AstrOmatic tools ran one at a time, SWarp with 2 threads)"
    )


if __name__ == "__main__":
    main()
