"""Benchmark of the repository layer.

Prints a table: raw ingest rate (direct and copy), a 100,000-dataset query by
expression, lazy open of a 16-Mpix exposure, export of one exposure to FITS.
With ``--with-lsst`` it also times the same registry operations with the
real LSST butler (``lsst-daf-butler`` from PyPI) installed in a throwaway
virtualenv, or prints why it could not.

Usage::

    python benchmarks/repo.py [--n-raws 1000] [--n-datasets 100000] [--with-lsst]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from astropy.io import fits

from lsstlite.repo import Butler, export, ingest_raws

GOALS = {
    "ingest direct": ">= 200 files/s",
    "query 100k": "< 1 s",
    "open 16 Mpix": "< 20 ms",
}


class BenchCam:
    """Minimal instrument for the synthetic raws below."""

    name = "BenchCam"

    def read_raw_metadata(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = fits.getheader(path)
        return {
            "instrument": h["INSTRUME"],
            "exposure": int(h["EXPNUM"]),
            "detector": int(h["DETECTOR"]),
            "band": h["BAND"],
            "physical_filter": h["FILTER"],
            "day_obs": int(h["DAYOBS"]),
            "obs_type": "science",
            "mjd": float(h["MJD-OBS"]),
            "exptime": 30.0,
            "ra": 0.0,
            "dec": 0.0,
        }


def make_raws(outdir: Path, n: int, shape: tuple[int, int] = (256, 256)) -> list[Path]:
    """Write ``n`` small raw FITS files (9 detectors per exposure)."""
    paths = []
    outdir.mkdir(parents=True, exist_ok=True)
    data = np.zeros(shape, np.int16)
    for i in range(n):
        e, d = i // 9 + 1, i % 9
        h = fits.Header()
        h.update(
            INSTRUME="BenchCam",
            EXPNUM=e,
            DETECTOR=d,
            BAND="grizy"[e % 5],
            FILTER=f"{'grizy'[e % 5]}_01",
            DAYOBS=20220526,
            **{"MJD-OBS": 59725.0 + e * 1e-3},
        )
        p = outdir / f"raw_{e:05d}_{d}.fits"
        fits.PrimaryHDU(data, h).writeto(p)
        paths.append(p)
    return paths


def bench_ingest(work: Path, n: int) -> dict[str, float]:
    raws = make_raws(work / "raws", n)
    out = {}
    for transfer in ("direct", "copy"):
        butler = Butler.create(work / f"repo_{transfer}")
        t = time.perf_counter()
        report = ingest_raws(butler, work / "raws", transfer=transfer, instrument=BenchCam())
        dt = time.perf_counter() - t
        assert len(report.ingested) == len(raws), report
        out[f"ingest {transfer}"] = len(raws) / dt
    return out


def bench_query(work: Path, n: int) -> dict[str, float]:
    butler = Butler.create(work / "repo_query")
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(
        {
            "dataset_type": "calexp",
            "run": "bulk",
            "instrument": "SimCam",
            "exposure": np.arange(n) // 100,
            "detector": np.arange(n) % 100,
            "band": rng.choice(list("grizy"), n),
        }
    )
    t = time.perf_counter()
    butler._bulk_register(rows)
    build = time.perf_counter() - t
    where = "band = 'r' AND visit IN (10..500) AND detector > 50"
    cold_butler = Butler(work / "repo_query", collections="bulk")
    t = time.perf_counter()
    refs = cold_butler.query_datasets("calexp", where)
    cold = time.perf_counter() - t
    warm = []
    for _ in range(3):
        t = time.perf_counter()
        refs = cold_butler.query_datasets("calexp", where)
        warm.append(time.perf_counter() - t)
    return {
        "bulk register 100k": build,
        "query 100k cold": cold,
        "query 100k": min(warm),
        "query matches": float(len(refs)),
    }


def bench_open_export(work: Path) -> dict[str, float]:
    from lsstlite.data import make_exposure

    butler = Butler.create(work / "repo_img", run="img")
    image = np.random.default_rng(1).normal(size=(4096, 4096)).astype(np.float32)
    did = {"instrument": "SimCam", "exposure": 1, "detector": 0}
    t = time.perf_counter()
    butler.put(make_exposure(image), "calexp", did)
    put = time.perf_counter() - t
    times = []
    for _ in range(7):
        t = time.perf_counter()
        butler.get("calexp", did)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    export(butler, "img", "calexp", None, work / "export")
    exp = time.perf_counter() - t
    return {
        "put 16 Mpix": put,
        "open 16 Mpix": statistics.median(times) * 1e3,
        "export 16 Mpix": exp,
    }


LSST_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from lsst.daf.butler import Butler, DatasetType, Config
    root = sys.argv[1]; n = int(sys.argv[2])
    Butler.makeRepo(root)
    b = Butler.from_config(root, writeable=True, run="bench")
    b.registry.insertDimensionData("instrument", {"name": "Cam", "detector_max": 200,
                                                  "visit_max": 10**6, "exposure_max": 10**6})
    b.registry.insertDimensionData("detector", *[{"instrument": "Cam", "id": d, "full_name": str(d)}
                                                  for d in range(10)])
    dt = DatasetType("psf", ("instrument", "detector"), "StructuredDataDict",
                     universe=b.dimensions)
    b.registry.registerDatasetType(dt)
    t = time.perf_counter()
    for d in range(10):
        b.put({"d": d}, "psf", instrument="Cam", detector=d)
    put = (time.perf_counter() - t) / 10
    t = time.perf_counter()
    refs = list(b.registry.queryDatasets("psf", collections="bench", where="instrument = 'Cam' AND detector > 4"))
    q = time.perf_counter() - t
    t = time.perf_counter()
    b.get("psf", instrument="Cam", detector=3)
    g = time.perf_counter() - t
    print(f"{put*1e3:.2f} {q*1e3:.2f} {g*1e3:.2f}")
    """
)


def bench_lsst(work: Path) -> dict[str, float] | str:
    venv = work / "lsst-venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        pip = venv / "bin" / "pip"
        subprocess.run(
            [str(pip), "install", "-q", "lsst-daf-butler"],
            check=True,
            capture_output=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        last = detail.decode(errors="replace").strip().splitlines()[-1:] if detail else []
        return f"could not install lsst-daf-butler: {exc} {' '.join(last)}"
    script = work / "lsst_bench.py"
    script.write_text(LSST_SCRIPT)
    try:
        res = subprocess.run(
            [str(venv / "bin" / "python"), str(script), str(work / "lsst_repo"), "10"],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.SubprocessError as exc:
        err = getattr(exc, "stderr", "") or ""
        return f"lsst-daf-butler benchmark failed: {err.strip().splitlines()[-1:] or exc}"
    put, query, get = (float(x) for x in res.stdout.split()[-3:])
    return {"lsst put (ms)": put, "lsst query (ms)": query, "lsst get (ms)": get}


def bench_lsstlite_small(work: Path) -> dict[str, float]:
    """The same small operations as the LSST script, for comparison."""
    b = Butler.create(work / "repo_small", run="bench")
    t = time.perf_counter()
    for d in range(10):
        b.put({"d": d}, "psf", instrument="Cam", exposure=1, detector=d)
    put = (time.perf_counter() - t) / 10
    t = time.perf_counter()
    b.query_datasets("psf", "detector > 4")
    q = time.perf_counter() - t
    t = time.perf_counter()
    b.get("psf", instrument="Cam", exposure=1, detector=3)
    g = time.perf_counter() - t
    return {
        "lsstlite put (ms)": put * 1e3,
        "lsstlite query (ms)": q * 1e3,
        "lsstlite get (ms)": g * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-raws", type=int, default=1000)
    parser.add_argument("--n-datasets", type=int, default=100_000)
    parser.add_argument("--with-lsst", action="store_true")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        rows: list[tuple[str, str, str]] = []
        res = bench_ingest(work, args.n_raws)
        for k in ("ingest direct", "ingest copy"):
            rows.append((f"{k} ({args.n_raws} raws)", f"{res[k]:.0f} files/s", GOALS.get(k, "")))
        res = bench_query(work, args.n_datasets)
        rows.append((f"bulk register {args.n_datasets}", f"{res['bulk register 100k']:.2f} s", ""))
        rows.append(("query by expression, cold", f"{res['query 100k cold']:.3f} s", ""))
        rows.append(
            (
                f"query {args.n_datasets} by expression ({res['query matches']:.0f} hits)",
                f"{res['query 100k']:.3f} s",
                GOALS["query 100k"],
            )
        )
        res = bench_open_export(work)
        rows.append(("put 16 Mpix exposure", f"{res['put 16 Mpix']:.2f} s", ""))
        rows.append(
            ("open 16 Mpix exposure (lazy)", f"{res['open 16 Mpix']:.1f} ms", GOALS["open 16 Mpix"])
        )
        rows.append(("export 16 Mpix exposure to FITS", f"{res['export 16 Mpix']:.2f} s", ""))
        if args.with_lsst:
            small = bench_lsstlite_small(work)
            rows += [(k, f"{v:.2f}", "") for k, v in small.items()]
            lsst = bench_lsst(work)
            if isinstance(lsst, str):
                rows.append(("lsst-daf-butler comparison", "skipped", lsst[:200]))
            else:
                rows += [(k, f"{v:.2f}", "") for k, v in lsst.items()]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        print(f"{'measure'.ljust(w0)}  {'result'.ljust(w1)}  goal")
        for name, value, goal in rows:
            print(f"{name.ljust(w0)}  {value.ljust(w1)}  {goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
