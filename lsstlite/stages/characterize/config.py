"""Configuration of image characterisation (frozen, typed, JSON round trips)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lsstlite.pipe import Config

__all__ = [
    "BackgroundConfig",
    "CharacterizeConfig",
    "CosmicRayConfig",
    "DetectionConfig",
    "MeasurementConfig",
    "PsfConfig",
    "StarSelectionConfig",
]


class BackgroundConfig(Config):
    """Sky background on a mesh (SExtractor algorithm via sep): clipped mode per cell,
    median-filtered cells, bicubic-spline interpolation."""

    mesh_size: int = Field(default=128, gt=4, description="side of a mesh cell (pixels)")
    filter_size: int = Field(default=3, ge=1, description="median filter over cells (cells)")
    filter_threshold: float = Field(default=0.0, description="filter only cells differing by more")
    mask_grow_px: int = Field(default=3, ge=0, description="growth of detection masks (2nd pass)")
    mask_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA", "CR", "STREAK")


class DetectionConfig(Config):
    """Thresholded detection with footprints (sep/SExtractor)."""

    threshold: float = Field(
        default=5.0, gt=0, description="threshold in σ of the (filtered) image"
    )
    threshold_type: Literal["pixel", "global"] = Field(
        default="pixel", description="σ from the variance plane, or the background's global rms"
    )
    min_area: int = Field(default=5, ge=1, description="minimum footprint area (pixels)")
    filter_type: Literal["matched", "conv", "none"] = "matched"
    filter_kernel: list[list[float]] | None = Field(
        default=None, description="explicit smoothing kernel; default a Gaussian of the PSF FWHM"
    )
    find_peaks: bool = Field(
        default=True, description="add prominent filtered-image peaks that sep left merged"
    )
    deblend_n_thresh: int = 32
    deblend_cont: float = 0.005
    clean: bool = Field(
        default=False, description="SExtractor CLEAN (merges faint neighbours of bright sources)"
    )
    clean_param: float = 1.0
    pixel_stack: int = Field(
        default=300_000,
        description="sep pixel-stack size (informational: sep 1.4 sets it globally)",
    )


class CosmicRayConfig(Config):
    """Cosmic rays: pixels sharper than the PSF allows, grown, masked and interpolated."""

    do_repair: bool = True
    n_sigma: float = Field(default=5.0, description="seed threshold above background (σ)")
    cond: float = Field(
        default=1.2, description="sharpness margin over the sharpest PSF-like source"
    )
    k_noise: float = Field(default=5.0, description="significance of the sharpness excess (σ)")
    k_grow: float = Field(default=3.0, description="growth threshold above the local median (σ)")
    n_grow: int = Field(default=3, ge=0, description="growth passes")


class StarSelectionConfig(Config):
    """PSF-star candidates: bright, unflagged, isolated, on the stellar locus."""

    min_snr: float = Field(default=20.0, description="minimum S/N of ap_flux_12")
    size_tolerance: float = Field(default=0.12, description="|T / T_locus - 1| allowed")
    max_neighbour_fraction: float = Field(
        default=0.005, description="flux of other footprints inside the stamp / star flux"
    )
    reserve_fraction: float = Field(default=0.1, ge=0, lt=1, description="held out for validation")
    max_stars: int = Field(default=300, ge=1, description="brightest candidates kept")


class PsfConfig(Config):
    """PSF model: PSFEx-like pixel basis, or analytic Moffat when stars are scarce."""

    model: Literal["pixel", "moffat"] = "pixel"
    spatial_degree: int = Field(default=2, ge=0, le=4)
    stars_per_term: int = Field(default=5, ge=1, description="stars needed per polynomial term")
    min_pixel_stars: int = Field(default=15, ge=1, description="fewer: analytic fallback")
    step: float | None = Field(
        default=None, gt=0, le=1, description="grid step (pixels); default 1 (0.5 needs many stars)"
    )
    size_fwhm: float = Field(default=3.0, description="model half-size in FWHM")
    min_size: int = 15
    max_size: int = 31
    n_reject_iter: int = 2
    reject_chi2: float = Field(
        default=4.0, description="reject stars with χ²/dof above this × median"
    )


class MeasurementConfig(Config):
    """Source measurement: centroids, apertures, Kron, PSF flux, moments, corrections."""

    blended_window: Literal["psf", "light"] = Field(
        default="psf",
        description="centroid window of deblended sources: the PSF's, or SExtractor's",
    )
    kron_factor: float = 2.5
    kron_min_radius: float = 3.5
    ap_corr_radius: int = Field(
        default=12, description="aperture (one of AP_RADII) PSF fluxes match"
    )
    ap_corr_min_snr: float = 100.0
    ap_corr_degree: int = Field(
        default=2, ge=0, le=3, description="polynomial degree of the aperture-correction map (x, y)"
    )
    do_wing_correction: bool = Field(
        default=True, description="scale PSF fluxes to total flux with the Moffat wings"
    )


class CharacterizeConfig(Config):
    """Everything :func:`lsstlite.stages.characterize.characterize_exposure` does."""

    background: BackgroundConfig = BackgroundConfig()
    detection: DetectionConfig = DetectionConfig()
    cosmic_rays: CosmicRayConfig = CosmicRayConfig()
    star_selection: StarSelectionConfig = StarSelectionConfig()
    psf: PsfConfig = PsfConfig()
    measurement: MeasurementConfig = MeasurementConfig()
    bright_threshold: float = Field(default=20.0, description="σ of the first, PSF-size detection")
