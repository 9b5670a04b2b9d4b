"""The demo: the whole flow on a simulated survey, resumable, with a summary against truth.

``lsstlite demo --workdir DIR`` simulates a survey, creates a repository, ingests the raws
and the reference catalog, builds and certifies master calibrations, runs ``drp.yaml``
step1 (ISR, characterisation, calibration), step2 (visit summaries, then the visit
selection as a TAGGED collection), makes a sky map, runs step3 (coadds, multi-band
detection, deblending, measurement, forced photometry, object table) and step4 (forced
photometry of the object table on every calexp: light curves) and exports the results.
It leaves ``DIR/sim`` (inputs and truth), ``DIR/repo`` (the repository; every output is
in the CHAINED collection ``demo/drp``) and ``DIR/export/<dataset_type>/`` (files for
ds9, astropy and pandas) with the colour pictures in ``DIR/export/``. Each step is
skipped when its result is already there, so rerunning resumes.

Collections: ``demo/drp/step1`` … ``demo/drp/step4`` (CHAINED, one per step, each with
its RUN), ``demo/drp/selected`` (TAGGED: the calexps that passed the visit selection,
the only ones step3 sees) and ``demo/drp`` chaining them all.
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
    catalog: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
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
    import numpy as np
    from astropy.io import fits
    from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from lsstlite.instruments import instrument_for_header

    raw = instrument_for_header(fits.getheader(raw_path, 0)).read_raw(raw_path)
    data = np.asarray(raw["image"].values, dtype=float)
    vi = raw.attrs["visit_info"]
    fig = Figure(figsize=(5, 5 * data.shape[0] / data.shape[1] * 0.6 + 1))
    ax = fig.subplots()
    norm = ImageNormalize(data, interval=ZScaleInterval(), stretch=AsinhStretch(0.1))
    ax.imshow(data, origin="lower", cmap="gray", norm=norm, interpolation="nearest")
    for amp in raw.attrs["amplifiers"]:
        y0, y1, x0, x1 = amp["serial_overscan"]
        ax.add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="tab:orange", lw=0.8)
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
    return out


#: Collections of the demo (see the module notes).
OUTPUT = "demo/drp"
CALIB_BUILD = "SimCam/calib/build"
CALIB_COLLECTION = "SimCam/calib"
CALIB_TYPES = ("bias", "dark", "flat", "defects", "fringe")
SKYMAP = "discrete"
SKYMAP_RUN = "skymaps"
#: Patch inner size and border of the demo's sky map, per preset: small patches so that
#: the small survey has several; LSST-like 4000 px patches for the larger surveys.
PATCH_SIZES = {"small": (1000, 50), "ci": (4000, 100), "full": (4000, 100)}


class _Progress:
    """A one-line progress bar of quanta (``[=====     ] 12/41``)."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out, self.width = out, width
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.failed = 0

    def __call__(self, done: int, total: int, outcome: Any) -> None:
        if getattr(outcome, "status", "") in ("failed", "blocked"):
            self.failed += 1
        fill = int(self.width * done / max(total, 1))
        bar = f"    [{'=' * fill}{' ' * (self.width - fill)}] {done}/{total} quanta"
        if self.failed:
            bar += f", {self.failed} failed"
        if self.tty:
            print("\r" + bar, end="" if done < total else "\n", file=self.out, flush=True)
        elif done == total or done % max(total // 4, 1) == 0:
            print(bar, file=self.out, flush=True)


class _Runner:
    """Runs pipeline steps on one local cluster, started only when something must run."""

    def __init__(self, repo: Path, n_workers: int | None, out: TextIO) -> None:
        self.repo, self.n_workers, self.out = repo, n_workers, out
        self._cluster: Any = None
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            import logging

            from distributed import Client

            from lsstlite.pipe.clusters import local_cluster

            # The cluster's own start-up chatter would bury the progress bars.
            logging.getLogger("distributed").setLevel(logging.WARNING)
            self._cluster = local_cluster(
                self.n_workers, dashboard_address=":0", silence_logs=logging.WARNING
            )
            self._client = Client(self._cluster)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._cluster.close()
            self._client = self._cluster = None

    def run(self, pipeline: str, inputs: list[str], output: str) -> str:
        """Run ``pipeline`` into ``output`` (resuming); a note for the step line."""
        from lsstlite.pipe.run import prepare_run, run_pipeline

        _, graph = prepare_run(
            self.repo, pipeline, inputs=inputs, output=output, skip_existing=True, extend_run=True
        )
        todo = sum(1 for q in graph.quanta if not q.skip)
        if todo == 0:
            return f"{len(graph)} quanta already there"
        print(file=self.out)
        report = run_pipeline(
            self.repo,
            pipeline,
            inputs=inputs,
            output=output,
            client=self.client(),
            skip_existing=True,
            extend_run=True,
            progress=_Progress(self.out),
        )
        if not report.ok:
            raise RuntimeError(f"{pipeline} did not complete:\n{report.table()}")
        return f"{todo} quanta run, {len(graph) - todo} already there"


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
        Processes for the simulation and the pipelines (default: all cores).
    out
        Where progress goes (default: stdout).
    """
    stream = out or sys.stdout
    work = Path(workdir).resolve()
    result = DemoResult(work, work / "sim", work / "repo", work / "export")
    runner = _Runner(result.repo, n_workers, stream)
    try:
        _run_steps(result, preset, seed, n_workers, runner, stream)
    finally:
        runner.close()
    result.figures = demo_figures(result)
    print("\nquality against the simulator's truth", file=stream)
    width = max(len(k) for k in result.figures)
    for key, value in result.figures.items():
        print(f"  {key:<{width}}  {value}", file=stream)
    print(
        f"\nsimulation (inputs, truth): {result.sim}"
        f"\nrepository:                 {result.repo} (outputs in collection {OUTPUT!r})"
        f"\nexports:                    {result.export}"
        f"\ncatalog:                    {result.catalog}"
        "\npictures:                   " + ", ".join(str(p) for p in result.pictures),
        file=stream,
    )
    return result


def _run_steps(
    result: DemoResult,
    preset: str,
    seed: int,
    n_workers: int | None,
    runner: _Runner,
    stream: TextIO,
) -> None:
    from lsstlite.repo import Butler, certify, ingest_raws, ingest_refcat
    from lsstlite.sim import simulate_survey

    names = [
        "simulate the survey",
        "create the repository",
        "ingest raws",
        "ingest the reference catalog",
        "picture of a raw",
        "master calibrations",
        "step1: ISR, characterisation, calibration",
        "step2: visit summaries and selection",
        "sky map",
        "step3: coadds and the multi-band catalog",
        "step4: forced photometry on every calexp",
        "export",
    ]
    steps = _Steps(names, stream)
    raws = "SimCam/raw/all"
    step1, step2, step3 = f"{OUTPUT}/step1", f"{OUTPUT}/step2", f"{OUTPUT}/step3"
    step4 = f"{OUTPUT}/step4"
    selected = f"{OUTPUT}/selected"

    def simulate() -> str:
        summary = simulate_survey(result.sim, preset=preset, seed=seed, n_workers=n_workers)
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
        butler = Butler(result.repo, collections=raws)
        refs = butler.query_datasets("raw", where="exposure.obs_type = 'science'")
        assert isinstance(refs, list)
        ref = refs[0]
        name = f"raw_{ref.data_id['exposure']:07d}_{ref.data_id['detector']:03d}.png"
        path = result.export / "raw" / name
        if not path.exists():
            _raw_picture(butler.get(ref), path)
        result.pictures.append(path)
        return str(path)

    def calibs() -> str:
        butler = Butler(result.repo)
        if CALIB_COLLECTION in butler.query_collections(CALIB_COLLECTION):
            return f"{CALIB_COLLECTION} already there"
        note = runner.run("calibs.yaml", [raws], CALIB_BUILD)
        run = next(c for c in butler.get_chain(CALIB_BUILD) if c.startswith(CALIB_BUILD + "/"))
        certify(butler, run, CALIB_COLLECTION, dataset_types=list(CALIB_TYPES))
        return f"{note}; certified into {CALIB_COLLECTION}"

    def run_step1() -> str:
        return runner.run("drp.yaml#step1", [raws, CALIB_COLLECTION, "refcats"], step1)

    def run_step2() -> str:
        from lsstlite.stages.quality import select_visits

        note = runner.run("drp.yaml#step2", [step1], step2)
        butler = Butler(result.repo)
        plot = result.export / "visit_quality.png"
        table = select_visits(butler, [step2], selected, plot=plot)
        result.pictures.append(plot)
        good = table["good_detector"] & table["good_visit"]
        return f"{note}; {int(good.sum())}/{len(table)} detectors selected into {selected}"

    def skymap() -> str:
        from lsstlite.stages.skymap.ops import make_skymap

        butler = Butler(result.repo)
        if SKYMAP_RUN in butler.query_collections(SKYMAP_RUN) and butler.exists(
            "skymap", {"skymap": SKYMAP}, collections=[SKYMAP_RUN]
        ):
            return "already there"
        refs = butler.query_datasets("calexp", collections=[selected])
        assert isinstance(refs, list)
        inner, border = PATCH_SIZES.get(preset, (4000, 100))
        sky = make_skymap(
            "discrete",
            exposures=[butler.get(r) for r in refs],
            name=SKYMAP,
            patch_inner=inner,
            patch_border=border,
        )
        butler.put(sky.to_dict(), "skymap", {"skymap": SKYMAP}, run=SKYMAP_RUN)
        tract = sky.tract(0)
        return f"{SKYMAP!r}: 1 tract, {len(tract.patches())} patches of {inner}² px"

    def run_step3() -> str:
        note = runner.run("drp.yaml#step3", [selected, SKYMAP_RUN], step3)
        butler = Butler(result.repo)
        butler.set_chain(OUTPUT, [step3, step2, step1, selected])
        return note

    def run_step4() -> str:
        # every calexp (step1), not only the selected ones: light curves keep all epochs
        note = runner.run("drp.yaml#step4", [step3, step1], step4)
        butler = Butler(result.repo)
        butler.set_chain(OUTPUT, [step4, step3, step2, step1, selected])
        return note

    def export() -> str:
        return _export(result, runner.client())

    steps.run("simulate the survey", simulate)
    steps.run("create the repository", create)
    steps.run("ingest raws", ingest)
    steps.run("ingest the reference catalog", refcat)
    steps.run("picture of a raw", picture)
    steps.run("master calibrations", calibs)
    steps.run("step1: ISR, characterisation, calibration", run_step1)
    steps.run("step2: visit summaries and selection", run_step2)
    steps.run("sky map", skymap)
    steps.run("step3: coadds and the multi-band catalog", run_step3)
    steps.run("step4: forced photometry on every calexp", run_step4)
    steps.run("export", export)
    result.timings = steps.timings


def _export(result: DemoResult, client: Any) -> str:
    """Files for other tools: calexp/coadd FITS, src/object tables, colour pictures,
    written by the workers of ``client``."""
    from lsstlite.repo import Butler
    from lsstlite.repo._export import export
    from lsstlite.stages.export.ops import export_object_table, export_rgb

    butler = Butler(result.repo)
    counts = {}
    for dataset_type in ("calexp", "src", "coadd", "forced_src"):
        to = result.export / dataset_type
        written = export(butler, OUTPUT, dataset_type, None, to, overwrite=True, client=client)
        counts[dataset_type] = len(written)
    tables = export_object_table(butler, OUTPUT, result.export / "object")
    result.catalog = next(p for p in tables if p.suffix == ".parquet")
    counts["object"] = len(tables)
    coadds = butler.query_datasets("coadd", collections=OUTPUT)
    assert isinstance(coadds, list)
    bands = sorted({str(r.data_id["band"]) for r in coadds})
    patches = sorted(
        {
            (str(r.data_id["skymap"]), int(r.data_id["tract"]), int(r.data_id["patch"]))
            for r in coadds
        }
    )
    paths = [result.export / f"color_{s}_tract{t}_patch{p}.png" for s, t, p in patches]

    futures = [
        client.submit(export_rgb, butler, OUTPUT, sky, tract, patch, bands, path, pure=False)
        for (sky, tract, patch), path in zip(patches, paths, strict=True)
    ]
    client.gather(futures)
    result.pictures.extend(paths)
    counts["png"] = len(patches)
    return ", ".join(f"{n} {k}" for k, n in counts.items())


def demo_figures(result: DemoResult) -> dict[str, str]:
    """Quality figures of the demo's outputs against the simulator's truth."""
    from lsstlite.sim.validate import format_metrics, truth_metrics

    result.metrics = truth_metrics(result.sim, result.repo, OUTPUT)
    return format_metrics(result.metrics)
