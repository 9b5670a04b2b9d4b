"""The ``ds.lsst`` accessor: the common questions one asks of an exposure."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import xarray as xr
from astropy.wcs import WCS

from lsstlite.data.exposure import PhotoCalib, VisitInfo
from lsstlite.data.masks import mask_bits, mask_planes
from lsstlite.data.psf import PsfModel, psf_from_dict
from lsstlite.data.wcs import wcs_from_cards

__all__ = ["ExposureAccessor"]


@xr.register_dataset_accessor("lsst")
class ExposureAccessor:
    """Exposure helpers: ``ds.lsst.wcs``, ``ds.lsst.mask_planes``, ``ds.lsst.plot()``, ..."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    # -- metadata -------------------------------------------------------------------------
    @property
    def wcs(self) -> WCS:
        """The astropy WCS (parent pixel frame). Raises ``AttributeError`` if there is none.

        A new object each call: astropy's WCS is not thread-safe, so never share one
        across Dask tasks.
        """
        cards = self._ds.attrs.get("wcs")
        if not cards:
            raise AttributeError("this exposure has no WCS (attrs['wcs'] is missing)")
        return wcs_from_cards(cards)

    @property
    def mask_planes(self) -> dict[str, int]:
        """Plane name → bit."""
        return mask_planes(self._ds)

    @property
    def visit_info(self) -> VisitInfo | None:
        vi = self._ds.attrs.get("visit_info")
        return VisitInfo(**vi) if vi else None

    @property
    def psf(self) -> PsfModel | None:
        data = self._ds.attrs.get("psf")
        return psf_from_dict(data) if data else None

    @property
    def photo_calib(self) -> PhotoCalib | None:
        data = self._ds.attrs.get("photo_calib")
        return PhotoCalib(**data) if data else None

    @property
    def xy0(self) -> tuple[int, int]:
        """Parent-frame pixel index ``(x0, y0)`` of the first pixel."""
        return int(self._ds["x"].values[0]), int(self._ds["y"].values[0])

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` half-open, parent frame."""
        x0, y0 = self.xy0
        return x0, y0, x0 + self._ds.sizes["x"], y0 + self._ds.sizes["y"]

    # -- masks and coordinates ------------------------------------------------------------
    def mask_of(self, *names: str) -> xr.DataArray:
        """Boolean (lazy if the exposure is) where any of the named planes is set."""
        bits = mask_bits(self.mask_planes, names)
        return (self._ds["mask"] & bits) != 0

    def pixel_to_sky(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """RA, Dec (degrees) of parent-frame 0-based pixel positions."""
        ra, dec = self.wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
        return np.asarray(ra), np.asarray(dec)

    def sky_to_pixel(self, ra: Any, dec: Any) -> tuple[np.ndarray, np.ndarray]:
        """Parent-frame 0-based pixel positions of RA, Dec (degrees)."""
        x, y = self.wcs.all_world2pix(
            np.asarray(ra, float), np.asarray(dec, float), 0, tolerance=1e-8, maxiter=50
        )
        return np.asarray(x), np.asarray(y)

    def cutout(self, x0: int, y0: int, x1: int, y1: int) -> xr.Dataset:
        """Sub-exposure over the parent-frame box ``[x0, x1) × [y0, y1)`` (lazy)."""
        return self._ds.sel(x=slice(x0, x1 - 1), y=slice(y0, y1 - 1))

    # -- output ---------------------------------------------------------------------------
    def to_fits(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write multi-extension FITS (see :func:`lsstlite.data.write_exposure_fits`)."""
        from lsstlite.data.io import write_exposure_fits

        write_exposure_fits(self._ds, path, overwrite=overwrite)

    def to_zarr(self, store: Any, **kwargs: Any) -> None:
        """Write to zarr (see :func:`lsstlite.data.write_exposure_zarr`)."""
        from lsstlite.data.io import write_exposure_zarr

        write_exposure_zarr(self._ds, store, **kwargs)

    def plot(
        self,
        var: str = "image",
        *,
        ax: Any = None,
        stretch: str = "asinh",
        show_mask: str | list[str] | None = None,
        title: str | None = None,
        cmap: str = "gray",
        colorbar: bool = True,
    ) -> Any:
        """Show a plane with an astronomical stretch (zscale limits, asinh or linear).

        Parameters
        ----------
        var
            ``"image"``, ``"variance"`` or ``"mask"``.
        stretch
            ``"asinh"`` (default), ``"linear"``, ``"log"`` or ``"sqrt"``.
        show_mask
            Plane name(s) to overlay in translucent colour.

        Returns
        -------
        matplotlib.axes.Axes
        """
        import matplotlib.pyplot as plt
        from astropy.visualization import (
            AsinhStretch,
            ImageNormalize,
            LinearStretch,
            LogStretch,
            SqrtStretch,
            ZScaleInterval,
        )

        stretches = {
            "asinh": AsinhStretch(0.1),
            "linear": LinearStretch(),
            "log": LogStretch(),
            "sqrt": SqrtStretch(),
        }
        if stretch not in stretches:
            raise ValueError(f"stretch must be one of {sorted(stretches)}, got {stretch!r}")
        data = np.asarray(self._ds[var].values, dtype=float)
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 6 * data.shape[0] / max(data.shape[1], 1)))
        x0, y0, x1, y1 = self.bbox
        extent = (x0 - 0.5, x1 - 0.5, y0 - 0.5, y1 - 0.5)
        if var == "mask":
            im = ax.imshow(
                data, origin="lower", extent=extent, cmap="tab20", interpolation="nearest"
            )
        else:
            finite = np.isfinite(data)
            norm = ImageNormalize(
                data[finite] if finite.any() else data,
                interval=ZScaleInterval(),
                stretch=stretches[stretch],
            )
            im = ax.imshow(
                data, origin="lower", extent=extent, cmap=cmap, norm=norm, interpolation="nearest"
            )
        if show_mask:
            names = [show_mask] if isinstance(show_mask, str) else list(show_mask)
            overlay = np.asarray(self.mask_of(*names).values)
            rgba = np.zeros((*overlay.shape, 4))
            rgba[overlay] = (1.0, 0.2, 0.2, 0.5)
            ax.imshow(rgba, origin="lower", extent=extent, interpolation="nearest")
        if colorbar:
            ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        vi = self._ds.attrs.get("visit_info") or {}
        if title is None and vi:
            title = " ".join(
                f"{k}={vi[k]}"
                for k in ("instrument", "exposure", "detector", "band")
                if vi.get(k) is not None
            )
        if title:
            ax.set_title(title)
        ax.set_xlabel("x [pixel]")
        ax.set_ylabel("y [pixel]")
        return ax
