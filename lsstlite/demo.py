"""The demo: the whole flow on a simulated survey, resumable, with a summary against truth.

``lsstlite demo --workdir DIR`` leaves ``DIR/sim`` (inputs and truth), ``DIR/repo`` (the
repository) and ``DIR/export/<dataset_type>/`` (files for ds9, astropy and pandas). Each
step is skipped when its result is already there, so rerunning resumes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """Where the demo put things, and what it measured."""

    workdir: Path
    sim: Path
    repo: Path
    export: Path
    pictures: list[Path] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class _Steps:
    """Numbered steps with timings, printed as they go."""

    def __init__(self, names: list[str], out: TextIO) -> None:
        self.names = names
        self.out = out
        self.timings: dict[str, float] = {}

    def run(self, name: str, func: Callable[[], str | None]) -> None:
        i = self.names.index(name) + 1
        print(f"[{i}/{len(self.names)}] {name} ...", end="", file=self.out, flush=True)
        start = time.perf_counter()
        note = func()
        self.timings[name] = time.perf_counter() - start
        print(
            f" done in {self.timings[name]:.1f} s" + (f" ({note})" if note else ""),
            file=self.out,
            flush=True,
        )


def _raw_picture(raw_path: str, out: Path) -> Path:
    """A PNG of one raw frame (all amplifiers with their overscans), zscale + asinh."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from astropy.io import fits
    from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval

    from lsstlite.instruments import instrument_for_header

    raw = instrument_for_header(fits.getheader(raw_path, 0)).read_raw(raw_path)
    data = np.asarray(raw["image"].values, dtype=float)
    vi = raw.attrs["visit_info"]
    fig, ax = plt.subplots(figsize=(5, 5 * data.shape[0] / data.shape[1] * 0.6 + 1))
    norm = ImageNormalize(data, interval=ZScaleInterval(), stretch=AsinhStretch(0.1))
    ax.imshow(data, origin="lower", cmap="gray", norm=norm, interpolation="nearest")
    for amp in raw.attrs["amplifiers"]:
        y0, y1, x0, x1 = amp["serial_overscan"]
        ax.add_patch(
            plt.Rectangle(
                (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="tab:orange", lw=0.8
            )
        )
    ax.set_title(
        f"raw {vi['instrument']} exposure {vi['exposure']} detector {vi['detector']} "
        f"({vi['physical_filter']}, ADU; overscans boxed)",
        fontsize=8,
    )
    ax.set_xlabel("x [pixel, untrimmed]")
    ax.set_ylabel("y [pixel]")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def run_demo(
    workdir: str | Path = "lsstlite-demo",
    *,
    preset: str = "small",
    seed: int = 1,
    n_workers: int | None = None,
    out: TextIO | None = None,
) -> DemoResult:
    """Run the demo into ``workdir`` (resuming whatever is already done).

    Parameters
    ----------
    workdir
        Directory for ``sim/``, ``repo/`` and ``export/``.
    preset
        Simulated survey preset: ``small`` (default), ``ci`` or ``full``.
    seed
        Random seed of the simulation.
    n_workers
        Processes for the simulation (default: all cores).
    out
        Where progress goes (default: stdout).
    """
    import pandas as pd

    from lsstlite.repo import Butler, ingest_raws, ingest_refcat
    from lsstlite.sim import simulate_survey

    stream = out or sys.stdout
    work = Path(workdir).resolve()
    result = DemoResult(work, work / "sim", work / "repo", work / "export")
    names = [
        "simulate the survey",
        "create the repository",
        "ingest raws",
        "ingest the reference catalog",
        "picture of a raw",
    ]
    steps = _Steps(names, stream)
    state: dict[str, Any] = {}

    def simulate() -> str:
        summary = simulate_survey(result.sim, preset=preset, seed=seed, n_workers=n_workers)
        state["summary"] = summary
        return f"{summary.n_science_raws} science + {summary.n_calib_raws} calibration raws" + (
            ", reused" if summary.resumed else ""
        )

    def create() -> str:
        Butler.create(result.repo, exist_ok=True)
        return str(result.repo)

    def ingest() -> str:
        report = ingest_raws(Butler(result.repo), result.sim / "raw", transfer="direct")
        if report.failed:
            raise RuntimeError(f"could not ingest {len(report.failed)} raws: {report.failed[:3]}")
        return f"{len(report.ingested)} new, {len(report.skipped)} already there"

    def refcat() -> str:
        butler = Butler(result.repo)
        if "refcats/sim" in butler.query_collections("refcats/*"):
            return "already there"
        ingest_refcat(butler, result.sim / "refcat" / "refcat.parquet", name="sim")
        return "refcats/sim"

    def picture() -> str:
        butler = Butler(result.repo, collections="SimCam/raw/all")
        refs = butler.query_datasets("raw", where="exposure.obs_type = 'science'")
        assert isinstance(refs, list)
        ref = refs[0]
        name = f"raw_{ref.data_id['exposure']:07d}_{ref.data_id['detector']:03d}.png"
        result.pictures.append(_raw_picture(butler.get(ref), result.export / "raw" / name))
        return str(result.pictures[-1])

    steps.run("simulate the survey", simulate)
    steps.run("create the repository", create)
    steps.run("ingest raws", ingest)
    steps.run("ingest the reference catalog", refcat)
    steps.run("picture of a raw", picture)
    result.timings = steps.timings

    truth = pd.read_parquet(result.sim / "truth" / "exposures.parquet")
    objects = pd.read_parquet(result.sim / "truth" / "objects.parquet")
    ref = pd.read_parquet(result.sim / "refcat" / "refcat.parquet")
    butler = Butler(result.repo)
    raws = butler.query_datasets("raw", collections="SimCam/raw/all", as_frame=True)
    assert isinstance(raws, pd.DataFrame)
    by_type = (
        raws["exposure.obs_type"].value_counts().to_dict() if "exposure.obs_type" in raws else {}
    )
    result.figures = {
        "raws in the repository": ", ".join(f"{n} {t}" for t, n in sorted(by_type.items())),
        "bands": ", ".join(sorted(truth["band"].unique())),
        "visits × detectors": f"{truth['visit'].nunique()} × {truth['detector'].nunique()}",
        "true seeing FWHM": f"{truth['psf_fwhm_arcsec'].min():.2f}–{truth['psf_fwhm_arcsec'].max():.2f} arcsec",
        "true objects": f"{len(objects)} ({int(objects['is_star'].sum())} stars)",
        "reference stars": str(len(ref)),
    }
    print("\nsummary", file=stream)
    width = max(len(k) for k in result.figures)
    for key, value in result.figures.items():
        print(f"  {key:<{width}}  {value}", file=stream)
    print(
        f"\nsimulation: {result.sim}\nrepository: {result.repo}\npictures:   "
        + ", ".join(str(p) for p in result.pictures),
        file=stream,
    )
    return result
