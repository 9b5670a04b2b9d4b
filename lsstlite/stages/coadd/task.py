"""Tasks of the coadd stage: ``AssembleCoaddTask`` and ``DetectCoaddTask``.

Quantum grouping: a coadd quantum is (skymap, tract, patch, band), but its input
``calexp`` has (instrument, exposure, detector), so the standard join cannot form it.
:meth:`AssembleCoaddTask.group_quanta` does the spatial join: every calexp goes to every
patch its footprint overlaps (see :mod:`lsstlite.stages.skymap.planning`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import xarray as xr
from pydantic import Field

from lsstlite.data.skymap import SkyMap
from lsstlite.pipe import Config, Input, Output, PrerequisiteInput, Task, TaskResult
from lsstlite.stages.coadd.ops import (
    DEFAULT_BAD_MASK_PLANES,
    DEFAULT_MASK_PROPAGATION_THRESHOLDS,
    ArtifactConfig,
    coadd_exposures,
)
from lsstlite.stages.detect.ops import detect_sources
from lsstlite.stages.skymap.planning import load_skymap, plan_patch_quanta

__all__ = [
    "ArtifactRejectionConfig",
    "AssembleCoaddConfig",
    "AssembleCoaddTask",
    "DetectCoaddConfig",
    "DetectCoaddTask",
    "patch_of",
]

_DET = ("instrument", "exposure", "detector")
_PATCH_BAND = ("skymap", "tract", "patch", "band")


def patch_of(
    skymap: Mapping[str, Any] | SkyMap, data_id: Mapping[str, Any] | None, label: str
) -> Any:
    """The patch geometry of a quantum's data ID (``tract``, ``patch``)."""
    if data_id is None or "tract" not in data_id or "patch" not in data_id:
        raise ValueError(
            f"{label}: run() needs data_id with tract and patch (the executor passes the "
            f"quantum's data ID); got {data_id!r}"
        )
    sm = skymap if isinstance(skymap, SkyMap) else SkyMap.from_dict(dict(skymap))
    return sm.tract(int(data_id["tract"])).patch(int(data_id["patch"])).geometry


class ArtifactRejectionConfig(Config):
    """CompareWarp artifact rejection (see :class:`lsstlite.stages.coadd.ArtifactConfig`)."""

    model_psf_fwhm_px: float | None = None  # None: 1.3 × the largest input FWHM
    detect_n_sigma: float = 5.0
    template_frac: float = 0.03
    sharp_detect_n_sigma: float = 5.0
    sharp_template_frac: float = 0.3
    max_fraction_epochs: float = 0.4
    max_num_epochs: int = 1
    spatial_threshold: float = 0.5
    grow_px: int = 2
    halo_px: int = 24
    matching_kernel_size: int = 25

    def to_op(self) -> ArtifactConfig:
        return ArtifactConfig(**self.model_dump())


class AssembleCoaddConfig(Config):
    skymap_name: str = Field("discrete", description="sky map used to place calexps on patches")
    method: Literal["compare_warp", "mean", "clipped", "median"] = "compare_warp"
    kernel: Literal["lanczos3", "lanczos4", "lanczos2", "bilinear"] = "lanczos3"
    chunk_size: int = Field(512, description="output chunk side (px)", gt=0)
    bad_mask_planes: list[str] = Field(default_factory=lambda: list(DEFAULT_BAD_MASK_PLANES))
    mask_propagation_thresholds: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: dict(DEFAULT_MASK_PROPAGATION_THRESHOLDS),
        description="input mask plane → weight fraction above which a coadd pixel with "
        "data gets the plane (SAT: a star saturated in some visits)",
    )
    clip_n_sigma: float = 4.0
    clip_amp_frac: float = 0.3
    clip_n_iter: int = 2
    grid_step_px: int = 16
    chunk_cache_mb: int = Field(
        256,
        ge=0,
        description="decoded calexp chunks a worker keeps for the next output chunks that "
        "need them (each leaves after its last reader); 0: every output chunk decodes what "
        "it overlaps, least memory",
    )
    do_sky_correction: bool = Field(
        False,
        description="replace each calexp's per-detector background by its visit's "
        "focal-plane sky_model (from sky_correction) before warping",
    )
    artifacts: ArtifactRejectionConfig = Field(default_factory=lambda: ArtifactRejectionConfig())


class AssembleCoaddTask(Task):
    """Warp the calexps overlapping a patch and combine them into the patch's coadd."""

    ConfigClass = AssembleCoaddConfig
    config: AssembleCoaddConfig
    dimensions = _PATCH_BAND
    inputs = {
        "calexps": Input("calexp", _DET, multiple=True, doc="calibrated exposures"),
        "backgrounds": Input(
            "background", _DET, multiple=True, doc="per-detector backgrounds (sky correction)"
        ),
        "sky_models": Input(
            "sky_model",
            ("instrument", "visit"),
            storage_class="Json",
            multiple=True,
            doc="focal-plane sky of each visit (sky correction)",
        ),
        "skymap": PrerequisiteInput("skymap", ("skymap",), storage_class="Json"),
    }
    outputs = {"coadd": Output("coadd", _PATCH_BAND, doc="coadd with CoaddPsf and inputs")}

    def active_inputs(self) -> dict[str, Any]:
        skip = () if self.config.do_sky_correction else ("backgrounds", "sky_models")
        return {n: c for n, c in self.inputs.items() if n not in skip}

    def group_quanta(
        self,
        records: Mapping[str, list[dict[str, Any]]],
        *,
        butler: Any,
        collections: Sequence[str],
    ) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, list[dict[str, Any]]]]]:
        """Calexps × the patches they overlap, per band (the spatial join)."""
        skymap = load_skymap(butler, self.config.skymap_name, collections)
        plans = plan_patch_quanta(
            records["calexps"],
            input_name="calexps",
            skymap=skymap,
            butler=butler,
            collections=collections,
            split_by=("band",),
        )
        if self.config.do_sky_correction:
            # each quantum also reads its calexps' backgrounds and their visits' sky models
            backs = {
                (r["instrument"], r["exposure"], r["detector"]): r for r in records["backgrounds"]
            }
            skies = {(r["instrument"], r["exposure"]): r for r in records["sky_models"]}
            for _, _, inputs in plans:
                calexps = inputs["calexps"]
                inputs["backgrounds"] = [
                    backs[k]
                    for k in ((r["instrument"], r["exposure"], r["detector"]) for r in calexps)
                    if k in backs
                ]
                visits = dict.fromkeys((r["instrument"], r["exposure"]) for r in calexps)
                inputs["sky_models"] = [skies[v] for v in visits if v in skies]
        return plans

    def run(  # type: ignore[override]
        self,
        calexps: list[xr.Dataset],
        skymap: dict[str, Any],
        backgrounds: list[xr.Dataset] | None = None,
        sky_models: list[dict[str, Any]] | None = None,
        data_id: Mapping[str, Any] | None = None,
    ) -> TaskResult:
        cfg = self.config
        if cfg.do_sky_correction:
            calexps = sky_corrected(calexps, backgrounds or [], sky_models or [], self.label)
        coadd = coadd_exposures(
            calexps,
            patch_of(skymap, data_id, self.label),
            method=cfg.method,
            kernel=cfg.kernel,
            chunks=(cfg.chunk_size, cfg.chunk_size),
            bad_mask_planes=tuple(cfg.bad_mask_planes),
            mask_propagation_thresholds=cfg.mask_propagation_thresholds,
            clip_n_sigma=cfg.clip_n_sigma,
            clip_amp_frac=cfg.clip_amp_frac,
            clip_n_iter=cfg.clip_n_iter,
            artifacts=cfg.artifacts.to_op(),
            grid_step_px=cfg.grid_step_px,
            chunk_cache_bytes=cfg.chunk_cache_mb * 2**20,
        )
        return TaskResult(coadd=coadd)


def sky_corrected(
    calexps: Sequence[xr.Dataset],
    backgrounds: Sequence[xr.Dataset],
    sky_models: Sequence[Mapping[str, Any]],
    label: str = "assemble_coadd",
) -> list[xr.Dataset]:
    """Each calexp with its background restored and its visit's focal-plane sky removed.

    Raises
    ------
    LookupError
        Naming the calexp whose background or visit sky model is missing.
    """
    from lsstlite.stages.skycorr import SkyModel, apply_sky_model, pair_backgrounds

    models = {}
    for m in sky_models:
        sky = SkyModel.from_dict(dict(m))
        models[sky.visit] = sky
    out = []
    for calexp, back in zip(calexps, pair_backgrounds(calexps, backgrounds), strict=True):
        vi = calexp.attrs.get("visit_info") or {}
        key = None if vi.get("exposure") is None else int(vi["exposure"])
        if key not in models:
            raise LookupError(
                f"{label}: no sky_model for visit {vi.get('exposure')} (detector "
                f"{vi.get('detector')}); run sky_correction (drp.yaml#step2) first or set "
                f"{label}.do_sky_correction=false"
            )
        out.append(apply_sky_model(calexp, models[key], back))
    return out


class DetectCoaddConfig(Config):
    """Detection on a coadd (see :func:`lsstlite.stages.detect.ops.detect_sources`)."""

    n_sigma: float = Field(5.0, gt=0, description="threshold on the PSF-matched S/N")
    min_area: int = Field(5, ge=1, description="minimum footprint area before growing (px)")
    grow_px: int = Field(2, ge=0, description="footprints grown by this radius (px)")
    peak_smoothing_px: float = Field(0.5, gt=0, description="smoothing σ of peak finding")
    min_dip_sigma: float = Field(4.0, ge=0, description="dip (σ) separating two peaks")
    subtract_background: bool = True
    background_box_px: int = Field(128, ge=16, description="background mesh (px)")


class DetectCoaddTask(Task):
    """Detect sources on a coadd (DMTN-023 ``detectCoaddSources``): the ``coadd_det``
    peak table of :data:`lsstlite.data.objects.DETECTION_COLUMNS`, footprints included."""

    ConfigClass = DetectCoaddConfig
    config: DetectCoaddConfig
    dimensions = _PATCH_BAND
    inputs = {"coadd": Input("coadd", _PATCH_BAND)}
    outputs = {"detections": Output("coadd_det", _PATCH_BAND, storage_class="Table")}

    def run(self, coadd: xr.Dataset) -> TaskResult:  # type: ignore[override]
        table, _ = detect_sources(coadd, **self.config.model_dump())
        return TaskResult(detections=table)
