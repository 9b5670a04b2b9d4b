"""Small tasks for testing the execution layer (no science)."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from lsstlite.pipe import Config, Input, Output, PrerequisiteInput, Task, TaskResult

DET = ("instrument", "exposure", "detector")


class ScaleConfig(Config):
    factor: float = 2.0
    fail_detector: int = -1


class ScaleTask(Task):
    """Multiply an image by a factor; fails on one detector when told to."""

    ConfigClass = ScaleConfig
    dimensions = DET
    inputs = {"image": Input("toy_image", DET)}
    outputs = {"scaled": Output("toy_scaled", DET)}

    def run(self, image: xr.Dataset) -> TaskResult:
        if image.attrs["visit_info"]["detector"] == self.config.fail_detector:
            raise RuntimeError(f"detector {self.config.fail_detector} is broken on purpose")
        out = image.copy()
        out["image"] = image["image"] * np.float32(self.config.factor)
        return TaskResult(scaled=out)


class SumTask(Task):
    """Sum the scaled images of all detectors of an exposure."""

    dimensions = ("instrument", "exposure")
    inputs = {"images": Input("toy_scaled", DET, multiple=True)}
    outputs = {"total": Output("toy_sum", ("instrument", "exposure"), storage_class="Json")}

    def run(self, images: list[xr.Dataset]) -> TaskResult:
        total = float(sum(float(im["image"].sum()) for im in images))
        return TaskResult(total={"sum": total, "n": len(images)})


class NeedsFlatTask(Task):
    """Needs a calibration that nobody certified."""

    dimensions = DET
    inputs = {
        "image": Input("toy_image", DET),
        "flat": PrerequisiteInput(
            "toy_flat", ("instrument", "detector", "physical_filter"), calibration=True
        ),
    }
    outputs = {"flattened": Output("toy_flattened", DET)}

    def run(self, image: xr.Dataset, flat: Any) -> TaskResult:
        return TaskResult(flattened=image)


class SlowConfig(Config):
    sleep_s: float = 0.2


class SlowTask(Task):
    """Like ScaleTask but takes a while (for killing things mid-run)."""

    ConfigClass = SlowConfig
    dimensions = DET
    inputs = {"image": Input("toy_image", DET)}
    outputs = {"slow": Output("toy_slow", DET)}

    def run(self, image: xr.Dataset) -> TaskResult:
        import time

        time.sleep(self.config.sleep_s)
        out = image.copy()
        out["image"] = image["image"] + np.float32(1.0)
        return TaskResult(slow=out)


def make_toy_repo(root: str, *, n_exposures: int = 3, n_detectors: int = 4) -> None:
    """A repository with ``toy_image`` exposures in run ``toy/raw`` and exposure records."""
    import lsstlite.data as lld
    from lsstlite.repo import Butler
    from lsstlite.repo._dataset_types import DatasetType

    butler = Butler.create(root, run="toy/raw")
    butler.register_dataset_type(DatasetType("toy_image", DET, "Exposure"))
    butler.register_exposures(
        [
            {
                "instrument": "Toy",
                "exposure": e,
                "band": "r" if e % 2 else "i",
                "physical_filter": "T-r" if e % 2 else "T-i",
                "mjd": 60000.0 + e,
                "day_obs": 20230101 + e,
            }
            for e in range(n_exposures)
        ]
    )
    rng = np.random.default_rng(5)
    for e in range(n_exposures):
        for det in range(n_detectors):
            img = lld.make_exposure(
                rng.normal(e * 10 + det, 1.0, (32, 48)).astype(np.float32),
                visit_info={"instrument": "Toy", "exposure": e, "detector": det},
            )
            butler.put(img, "toy_image", {"instrument": "Toy", "exposure": e, "detector": det})


class StackTask(Task):
    """Stack every image of one detector and filter (as a master flat is built)."""

    dimensions = ("instrument", "detector", "physical_filter")
    inputs = {"images": Input("toy_image", DET, multiple=True, where="band = 'i'")}
    outputs = {
        "stack": Output(
            "toy_stack", ("instrument", "detector", "physical_filter"), storage_class="Json"
        )
    }

    def run(self, images: list[xr.Dataset]) -> TaskResult:
        return TaskResult(
            stack={
                "n": len(images),
                "exposures": sorted(im.attrs["visit_info"]["exposure"] for im in images),
            }
        )


class TractTask(Task):
    """A spatial join in miniature: detectors 0–1 lie in tract 0, detectors 2–3 in tract 1."""

    dimensions = ("skymap", "tract")
    inputs = {"images": Input("toy_image", DET, multiple=True)}
    outputs = {"summary": Output("toy_tract", ("skymap", "tract"), storage_class="Json")}

    def group_quanta(self, records, *, butler, collections):  # type: ignore[no-untyped-def]
        plans: dict[int, list[dict[str, Any]]] = {}
        for rec in records["images"]:
            plans.setdefault(rec["detector"] // 2, []).append(rec)
        return [
            ({"skymap": "toy", "tract": t}, {}, {"images": recs})
            for t, recs in sorted(plans.items())
        ]

    def run(self, images: list[xr.Dataset]) -> TaskResult:
        return TaskResult(summary={"n": len(images)})


class RawStatsConfig(Config):
    fail_exposure: int = -1


class RawStatsTask(Task):
    """Sum the pixels of one raw frame (read through its instrument); fails on one exposure."""

    ConfigClass = RawStatsConfig
    dimensions = DET
    inputs = {"raw": Input("raw", DET, storage_class="Raw", where="exposure.obs_type = 'science'")}
    outputs = {"stats": Output("raw_stats", DET, storage_class="Json")}

    def run(self, raw: str) -> TaskResult:
        from astropy.io import fits

        from lsstlite.instruments import instrument_for_header

        frame = instrument_for_header(fits.getheader(raw, 0)).read_raw(raw)
        if frame.attrs["visit_info"]["exposure"] == self.config.fail_exposure:
            raise ValueError(f"exposure {self.config.fail_exposure} rejected on purpose")
        return TaskResult(stats={"sum": float(frame["image"].values.astype(np.float64).sum())})


class RawVisitSumTask(Task):
    """Add up the detector sums of one visit."""

    dimensions = ("instrument", "exposure")
    inputs = {"stats": Input("raw_stats", DET, storage_class="Json", multiple=True)}
    outputs = {"total": Output("raw_visit_sum", ("instrument", "exposure"), storage_class="Json")}

    def run(self, stats: list[dict[str, float]]) -> TaskResult:
        return TaskResult(total={"sum": sum(s["sum"] for s in stats), "n": len(stats)})


class NeedsMasterFlatTask(Task):
    """Needs a master flat, which nobody has certified in the input collections."""

    dimensions = DET
    inputs = {
        "raw": Input("raw", DET, storage_class="Raw", where="exposure.obs_type = 'science'"),
        "flat": PrerequisiteInput(
            "flat", ("instrument", "detector", "physical_filter"), calibration=True
        ),
    }
    outputs = {"stats": Output("raw_stats", DET, storage_class="Json")}

    def run(self, raw: str, flat: Any) -> TaskResult:
        return TaskResult(stats={})


class NeedsRefcatTask(Task):
    """Downstream of :class:`NeedsMasterFlatTask`: needs a reference catalog too."""

    dimensions = ("instrument", "exposure")
    inputs = {
        "stats": Input("raw_stats", DET, storage_class="Json", multiple=True),
        "refcat": PrerequisiteInput("refcat", (), storage_class="Table"),
    }
    outputs = {
        "total": Output("raw_visit_refcat", ("instrument", "exposure"), storage_class="Json")
    }

    def run(self, stats: list[dict[str, float]], refcat: Any) -> TaskResult:
        return TaskResult(total={"n": len(stats)})
