"""SimCam: the simulated camera of :mod:`lsstlite.sim`, and its raw reader.

SimCam is a small LSST-like imager (0.2″ pixels of 10 µm) whose detectors sit on a grid
with gaps, each read through 2 or 4 amplifiers side by side along x. Everything that a
camera team would measure in the lab (gains, read noise, bias levels, dark current,
nonlinearity, crosstalk, the brighter-fatter kernel, defects, the focal-plane layout and
the optical distortion) is a fixed, deterministic function of (detector, amplifier): it
never depends on the survey seed, so the ISR can use this module as its camera
description without looking at the simulation's truth.

Raw files: one multi-extension FITS per (exposure, detector); an empty primary HDU with
the observation metadata and the (slightly wrong) pointing WCS of the assembled, trimmed
detector, then one ``uint16`` image HDU per amplifier in *readout order*
(``[prescan | data | serial overscan]`` along x). Amplifiers in the right half of a
detector are read from the right, so their pixels are x-flipped relative to the assembled
detector frame and their ``DETSEC`` is written reversed (``[1024:513,1:4096]``).

Three geometries share the same electronics: ``small`` (2 detectors of 512 × 1024,
2 amplifiers), ``ci`` (4 detectors of 2048 × 4096, 4 amplifiers) and ``full``
(8 detectors of 2048 × 4096, 4 amplifiers). The primary header's ``SIMGEOM`` key names
the geometry; :meth:`SimCam.from_header` uses it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import xarray as xr
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from numpy.typing import NDArray

from lsstlite.instruments import Instrument, RawReadError

__all__ = [
    "GEOMETRIES",
    "AmpParams",
    "CameraGeometry",
    "DetectorLayout",
    "Linearity",
    "SimCam",
    "day_obs_from_mjd",
]

#: Seed of every camera constant: the camera is the same whatever the survey seed.
CAMERA_SEED = 7_121_953

#: Pixel scale and pixel size of SimCam.
PIXEL_SCALE_ARCSEC = 0.2
PIXEL_SIZE_UM = 10.0

#: Raw header OBSTYPE → lsstlite ``obs_type``.
OBSTYPE_TO_OBS_TYPE = {"object": "science", "zero": "bias", "dark": "dark", "flat": "flat"}
OBS_TYPE_TO_OBSTYPE = {v: k for k, v in OBSTYPE_TO_OBS_TYPE.items()}

#: Primary-header keys that :meth:`SimCam.read_raw_metadata` needs.
REQUIRED_KEYS = (
    "INSTRUME",
    "EXPNUM",
    "DETECTOR",
    "FILTER",
    "OBSTYPE",
    "EXPTIME",
    "DARKTIME",
    "MJD-OBS",
    "DATE-OBS",
    "RA",
    "DEC",
    "AIRMASS",
    "ROTANGLE",
    "SIMGEOM",
)
#: Amplifier-HDU keys that :meth:`SimCam.read_raw` needs.
REQUIRED_AMP_KEYS = ("EXTNAME", "DATASEC", "BIASSEC", "DETSEC", "GAIN", "RDNOISE", "SATURATE")


#: How far below the level that saturated pixels read (the full well's or the ADC's, bias
#: included) the amplifiers' saturation threshold sits (ADU): the bias moves by up to
#: ~40 ADU from its nominal level between exposures and along rows, read noise by ~25.
SATURATION_MARGIN_ADU = 100


@dataclass(frozen=True)
class CameraGeometry:
    """Sizes of one SimCam configuration (pixels unless stated).

    ``distortion_edge_px`` is the radial optical distortion (ideal minus actual position)
    at the focal-plane corner, ``field_radius`` away from the optical axis.
    """

    name: str
    n_det_x: int
    n_det_y: int
    det_nx: int
    det_ny: int
    n_amps: int
    prescan: int = 8
    overscan: int = 32
    gap_px: int = 60
    distortion_edge_px: float = 25.0

    @property
    def n_detectors(self) -> int:
        return self.n_det_x * self.n_det_y

    @property
    def amp_width(self) -> int:
        return self.det_nx // self.n_amps

    @property
    def raw_amp_width(self) -> int:
        """Width of one amplifier's raw array (prescan + data + overscan)."""
        return self.prescan + self.amp_width + self.overscan

    @property
    def field_radius(self) -> float:
        """Distance (px) from the optical axis to the farthest detector corner (nominal)."""
        half_x = 0.5 * (self.n_det_x * self.det_nx + (self.n_det_x - 1) * self.gap_px)
        half_y = 0.5 * (self.n_det_y * self.det_ny + (self.n_det_y - 1) * self.gap_px)
        return math.hypot(half_x, half_y)


GEOMETRIES: dict[str, CameraGeometry] = {
    "small": CameraGeometry("small", 2, 1, 512, 1024, 2, gap_px=40, distortion_edge_px=4.0),
    "ci": CameraGeometry("ci", 2, 2, 2048, 4096, 4, distortion_edge_px=20.0),
    "full": CameraGeometry("full", 4, 2, 2048, 4096, 4, distortion_edge_px=30.0),
}


@dataclass(frozen=True)
class AmpParams:
    """Electronic constants and raw layout of one amplifier.

    Sections are ``[y0, y1, x0, x1]``, 0-based half-open. ``data_section``,
    ``serial_overscan`` and ``prescan`` refer to the amplifier's own raw array (readout
    order); ``detector_section`` to the assembled, trimmed detector frame.
    """

    index: int
    name: str
    gain: float  # e⁻ / ADU
    read_noise: float  # e⁻
    bias_level: float  # ADU (nominal; each exposure adds an offset and a row drift)
    full_well: float  # e⁻
    dark_current: float  # e⁻ / s / pixel
    saturation_adu: float  # raw ADU (bias included) from which a pixel is saturated
    flip_x: bool
    flip_y: bool
    data_section: tuple[int, int, int, int]
    serial_overscan: tuple[int, int, int, int]
    prescan: tuple[int, int, int, int]
    detector_section: tuple[int, int, int, int]


@dataclass(frozen=True)
class Linearity:
    """Nonlinearity of one amplifier: a cubic in electrons, and its inverse in ADU.

    Forward (what the simulator applies): ``e_out = e + c2 e² + c3 e³`` with
    ``forward_coeffs = (c2, c3)`` in e⁻⁻¹ and e⁻⁻². Correction (what an ISR applies to
    bias-subtracted ADU): ``adu_lin = adu + d2 adu² + d3 adu³ + d4 adu⁴`` with
    ``correction_coeffs = (d2, d3, d4)``, a least-squares fit of the exact inverse over
    ``[0, saturation]``, good to ``max_correction_residual`` (relative).
    """

    amp: int
    gain: float
    forward_coeffs: tuple[float, float]
    correction_coeffs: tuple[float, float, float]
    max_correction_residual: float

    def apply(self, electrons: NDArray[np.float64]) -> NDArray[np.float64]:
        """Forward model: measured electrons from true electrons."""
        c2, c3 = self.forward_coeffs
        e = np.asarray(electrons, dtype=np.float64)
        return e + e * e * (c2 + c3 * e)

    def correct(self, adu: NDArray[np.float64]) -> NDArray[np.float64]:
        """Correction: linearised ADU from measured, bias-subtracted ADU."""
        d2, d3, d4 = self.correction_coeffs
        a = np.asarray(adu, dtype=np.float64)
        return a + a * a * (d2 + a * (d3 + a * d4))


@dataclass(frozen=True)
class DetectorLayout:
    """Where a detector sits on the focal plane (focal-plane pixels, optical axis at 0).

    Focal-plane position of detector pixel ``(x, y)``:
    ``R(rotation) @ (x - cx, y - cy) + (x_center, y_center)`` with ``(cx, cy)`` the
    detector's central pixel position ``((nx - 1) / 2, (ny - 1) / 2)``.
    """

    detector: int
    name: str
    x_center: float
    y_center: float
    rotation_deg: float
    nx: int
    ny: int

    @property
    def rotation_matrix(self) -> NDArray[np.float64]:
        t = math.radians(self.rotation_deg)
        return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])

    def to_focal_plane(
        self, x: NDArray[np.float64], y: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Focal-plane coordinates (px from the optical axis) of detector pixels."""
        r = self.rotation_matrix
        dx = np.asarray(x, dtype=np.float64) - (self.nx - 1) / 2.0
        dy = np.asarray(y, dtype=np.float64) - (self.ny - 1) / 2.0
        return (
            r[0, 0] * dx + r[0, 1] * dy + self.x_center,
            r[1, 0] * dx + r[1, 1] * dy + self.y_center,
        )

    @property
    def optical_axis_pixel(self) -> tuple[float, float]:
        """0-based detector pixel position of the optical axis (the WCS's CRPIX - 1)."""
        r = self.rotation_matrix
        off = r.T @ np.array([-self.x_center, -self.y_center])
        return (float(off[0] + (self.nx - 1) / 2.0), float(off[1] + (self.ny - 1) / 2.0))


def day_obs_from_mjd(mjd: float) -> int:
    """Observing day ``YYYYMMDD``: the UTC date 12 h earlier (Rubin's convention)."""
    t = _dt.datetime(1858, 11, 17) + _dt.timedelta(days=mjd - 0.5)
    return int(t.strftime("%Y%m%d"))


def _section(y0: int, y1: int, x0: int, x1: int, *, reverse_x: bool = False) -> str:
    """IRAF section string ``[x1:x2,y1:y2]`` (1-based, inclusive) of a 0-based box."""
    xa, xb = (x1, x0 + 1) if reverse_x else (x0 + 1, x1)
    return f"[{xa}:{xb},{y0 + 1}:{y1}]"


_SECTION_RE = re.compile(r"^\[(\d+):(\d+),(\d+):(\d+)\]$")


def parse_section(text: str) -> tuple[tuple[int, int, int, int], bool, bool]:
    """Parse an IRAF section: ``([y0, y1, x0, x1] 0-based half-open, flip_x, flip_y)``."""
    m = _SECTION_RE.match(text.strip())
    if m is None:
        raise ValueError(f"not an IRAF section: {text!r}")
    xa, xb, ya, yb = (int(g) for g in m.groups())
    return ((min(ya, yb) - 1, max(ya, yb), min(xa, xb) - 1, max(xa, xb)), xa > xb, ya > yb)


class SimCam(Instrument):
    """The simulated camera.

    Parameters
    ----------
    geometry
        ``"small"``, ``"ci"``, ``"full"`` (default) or a :class:`CameraGeometry`.
    """

    name: ClassVar[str] = "SimCam"
    filter_to_band: ClassVar[Mapping[str, str]] = {
        "SIM-g": "g",
        "SIM-r": "r",
        "SIM-i": "i",
        "SIM-z": "z",
    }

    def __init__(self, geometry: str | CameraGeometry = "full") -> None:
        if isinstance(geometry, str):
            if geometry not in GEOMETRIES:
                raise KeyError(f"unknown SimCam geometry {geometry!r}; known: {sorted(GEOMETRIES)}")
            geometry = GEOMETRIES[geometry]
        self.geometry = geometry

    def __repr__(self) -> str:
        return f"SimCam(geometry={self.geometry.name!r})"

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> SimCam:
        return cls(str(header.get("SIMGEOM", "full")))

    # -- camera constants -------------------------------------------------------------

    @staticmethod
    def _rng(*key: int) -> np.random.Generator:
        return np.random.default_rng([CAMERA_SEED, *key])

    @property
    def detectors(self) -> list[int]:
        return list(range(self.geometry.n_detectors))

    def _check_detector(self, detector: int) -> None:
        if detector not in range(self.geometry.n_detectors):
            raise ValueError(
                f"SimCam ({self.geometry.name}) has detectors 0..{self.geometry.n_detectors - 1}, "
                f"got {detector}"
            )

    def detector_name(self, detector: int) -> str:
        g = self.geometry
        return f"R{detector // g.n_det_x}{detector % g.n_det_x}"

    def layout(self, detector: int) -> DetectorLayout:
        """Position and rotation of a detector on the focal plane."""
        self._check_detector(detector)
        g = self.geometry
        col, row = detector % g.n_det_x, detector // g.n_det_x
        rng = self._rng(detector, 1)
        # Mounting tolerances: a couple of pixels and a few hundredths of a degree.
        dx, dy = rng.uniform(-3.0, 3.0, size=2)
        rot = float(rng.uniform(-0.05, 0.05))
        return DetectorLayout(
            detector=detector,
            name=self.detector_name(detector),
            x_center=(col - (g.n_det_x - 1) / 2.0) * (g.det_nx + g.gap_px) + float(dx),
            y_center=(row - (g.n_det_y - 1) / 2.0) * (g.det_ny + g.gap_px) + float(dy),
            rotation_deg=rot,
            nx=g.det_nx,
            ny=g.det_ny,
        )

    def distortion(
        self, fx: NDArray[np.float64], fy: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Optical distortion: ideal minus actual focal-plane position (px) at ``(fx, fy)``.

        A cubic radial term reaching ``distortion_edge_px`` at the focal-plane corner plus a
        quadratic non-radial term 5% as large (a decentred element).
        """
        g = self.geometry
        r_fp = g.field_radius
        k = g.distortion_edge_px / r_fp**3
        c = 0.05 * g.distortion_edge_px / r_fp**2
        r2 = fx * fx + fy * fy
        return (k * fx * r2 + c * (fx * fx - fy * fy), k * fy * r2 + c * 2.0 * fx * fy)

    def amplifier_parameters(self, detector: int) -> list[AmpParams]:
        """Electronic constants and raw layout of every amplifier of a detector."""
        self._check_detector(detector)
        g = self.geometry
        amps = []
        w, ny = g.amp_width, g.det_ny
        for i in range(g.n_amps):
            rng = self._rng(detector, 100 + i)
            gain = float(rng.uniform(1.2, 1.8))
            read_noise = float(rng.uniform(5.0, 7.0))
            bias = float(rng.uniform(1000.0, 3000.0))
            full_well = float(rng.uniform(95_000.0, 105_000.0))
            dark = float(rng.uniform(0.002, 0.01))
            lin = self._linearity_forward(detector, i)
            sat_signal = (full_well + full_well**2 * (lin[0] + lin[1] * full_well)) / gain
            # Low-gain amplifiers reach the ADC's 65535 before the full well. A saturated
            # pixel reads that level give or take the exposure's bias offset and row
            # drift (tens of ADU) and the read noise: the threshold sits below by
            # SATURATION_MARGIN_ADU, as a camera team sets it (flagging a pixel within
            # ~0.2% of the limit is harmless; missing a saturated one is not).
            level = min(math.floor(bias + sat_signal), 65535)
            saturation = float(level - SATURATION_MARGIN_ADU)
            flip_x = i >= g.n_amps // 2
            amps.append(
                AmpParams(
                    index=i,
                    name=f"C{i:02d}",
                    gain=gain,
                    read_noise=read_noise,
                    bias_level=bias,
                    full_well=full_well,
                    dark_current=dark,
                    saturation_adu=saturation,
                    flip_x=flip_x,
                    flip_y=False,
                    data_section=(0, ny, g.prescan, g.prescan + w),
                    serial_overscan=(0, ny, g.prescan + w, g.raw_amp_width),
                    prescan=(0, ny, 0, g.prescan),
                    detector_section=(0, ny, i * w, (i + 1) * w),
                )
            )
        return amps

    def _linearity_forward(self, detector: int, amp: int) -> tuple[float, float]:
        rng = self._rng(detector, 200 + amp)
        # Relative deficit at 100 ke⁻: c2·1e5 + c3·1e10, 2–4% in total.
        c2 = -float(rng.uniform(0.015, 0.025)) / 1e5
        c3 = -float(rng.uniform(0.005, 0.015)) / 1e10
        return (c2, c3)

    def linearity(self, detector: int) -> list[Linearity]:
        """Nonlinearity of every amplifier: forward coefficients and the ADU correction."""
        out = []
        for amp in self.amplifier_parameters(detector):
            c2, c3 = self._linearity_forward(detector, amp.index)
            e_true = np.linspace(0.0, 1.05 * amp.full_well, 400)
            e_meas = e_true + e_true**2 * (c2 + c3 * e_true)
            a_meas, a_true = e_meas / amp.gain, e_true / amp.gain
            design = np.stack([a_meas**2, a_meas**3, a_meas**4], axis=1)
            coeffs, *_ = np.linalg.lstsq(design, a_true - a_meas, rcond=None)
            fit = a_meas + design @ coeffs
            resid = float(np.max(np.abs(fit[1:] - a_true[1:]) / a_true[1:]))
            out.append(
                Linearity(
                    amp=amp.index,
                    gain=amp.gain,
                    forward_coeffs=(c2, c3),
                    correction_coeffs=(float(coeffs[0]), float(coeffs[1]), float(coeffs[2])),
                    max_correction_residual=resid,
                )
            )
        return out

    def crosstalk_matrix(self, detector: int) -> NDArray[np.float64]:
        """Crosstalk coefficients ``C[source, victim]`` (zero diagonal).

        The victim amplifier's signal (ADU) gains ``C[source, victim]`` times the source
        amplifier's signal (ADU, bias removed) at the same position *in readout order*,
        so ghosts appear mirrored between amplifiers read from opposite sides.
        """
        n = self.geometry.n_amps
        rng = self._rng(detector, 300)
        c = rng.uniform(1e-4, 1e-3, size=(n, n))
        np.fill_diagonal(c, 0.0)
        return c

    def bf_kernel(self) -> NDArray[np.float64]:
        """Brighter-fatter kernel ``K`` (9 × 9, pixels) of the forward model.

        Charge moves as ``ΔI = ½ ∇·(I ∇(K ∗ I))`` (electrons): accumulated charge pushes
        later charge away, so bright stars grow. ``K`` is positive and peaked; its amplitude
        makes a star with a 90 ke⁻ peak ~1.5% larger (square root of Gaussian-weighted
        second moments) than a faint one.
        """
        y, x = np.mgrid[-4:5, -4:5].astype(np.float64)
        r2 = x * x + y * y
        return BF_KERNEL_AMPLITUDE / (1.0 + r2 / 1.5)

    def defects(self, detector: int) -> list[dict[str, Any]]:
        """Bad pixels of a detector (truth), assembled frame, 0-based.

        Each defect is ``{"kind", "x0", "y0", "width", "height"}``; kinds are
        ``bad_column`` (dead: ~5% response, part of a column), ``hot_box`` (a few-pixel box
        with a dark current of ~1 e⁻/s) and ``hot_pixel`` (single pixel, 0.5–20 e⁻/s).
        """
        self._check_detector(detector)
        g = self.geometry
        rng = self._rng(detector, 400)
        out: list[dict[str, Any]] = []
        for _ in range(3):
            length = int(rng.integers(g.det_ny // 8, g.det_ny // 2))
            y0 = int(rng.integers(0, g.det_ny - length))
            out.append(
                {
                    "kind": "bad_column",
                    "x0": int(rng.integers(10, g.det_nx - 10)),
                    "y0": y0,
                    "width": 1,
                    "height": length,
                }
            )
        for _ in range(2):
            w, h = (int(v) for v in rng.integers(2, 6, size=2))
            out.append(
                {
                    "kind": "hot_box",
                    "x0": int(rng.integers(10, g.det_nx - 10)),
                    "y0": int(rng.integers(10, g.det_ny - 10)),
                    "width": w,
                    "height": h,
                }
            )
        for _ in range(8):
            out.append(
                {
                    "kind": "hot_pixel",
                    "x0": int(rng.integers(0, g.det_nx)),
                    "y0": int(rng.integers(0, g.det_ny)),
                    "width": 1,
                    "height": 1,
                }
            )
        return out

    def hot_pixel_rates(self, detector: int) -> list[float]:
        """Dark current (e⁻/s) of each ``hot_pixel`` defect, in :meth:`defects` order."""
        rng = self._rng(detector, 401)
        n_hot = sum(d["kind"] == "hot_pixel" for d in self.defects(detector))
        return [float(v) for v in 10 ** rng.uniform(np.log10(0.5), np.log10(20.0), size=n_hot)]

    @cached_property
    def constants_json(self) -> str:
        """Every camera constant as JSON (written to ``truth/camera.json``)."""
        dets = {}
        for d in self.detectors:
            dets[str(d)] = {
                "layout": asdict(self.layout(d)),
                "amplifiers": [asdict(a) for a in self.amplifier_parameters(d)],
                "linearity": [asdict(lin) for lin in self.linearity(d)],
                "crosstalk_source_victim": self.crosstalk_matrix(d).tolist(),
                "defects": self.defects(d),
                "hot_pixel_rates": self.hot_pixel_rates(d),
            }
        return json.dumps(
            {
                "instrument": self.name,
                "geometry": asdict(self.geometry),
                "pixel_scale_arcsec": PIXEL_SCALE_ARCSEC,
                "pixel_size_um": PIXEL_SIZE_UM,
                "bf_kernel": self.bf_kernel().tolist(),
                "detectors": dets,
            },
            indent=1,
            sort_keys=True,
        )

    # -- raw headers ------------------------------------------------------------------

    def amp_header_cards(self, detector: int, amp: AmpParams) -> list[tuple[str, Any, str]]:
        """FITS cards of one amplifier HDU."""
        g = self.geometry
        ny, nw = g.det_ny, g.amp_width
        y0, y1, x0, x1 = amp.detector_section
        return [
            ("EXTNAME", f"AMP{amp.index}", "amplifier HDU"),
            ("AMPNAME", amp.name, "amplifier name"),
            ("CCDNUM", detector, "detector number"),
            ("DATASEC", _section(0, ny, g.prescan, g.prescan + nw), "data section (raw)"),
            ("TRIMSEC", _section(0, ny, g.prescan, g.prescan + nw), "trim section (raw)"),
            ("BIASSEC", _section(0, ny, g.prescan + nw, g.raw_amp_width), "serial overscan"),
            ("PRESEC", _section(0, ny, 0, g.prescan), "serial prescan"),
            ("DETSEC", _section(y0, y1, x0, x1, reverse_x=amp.flip_x), "section in detector"),
            ("CCDSEC", _section(y0, y1, x0, x1, reverse_x=amp.flip_x), "section in CCD"),
            ("GAIN", round(amp.gain, 6), "[e-/ADU] nominal gain"),
            ("RDNOISE", round(amp.read_noise, 6), "[e-] read noise"),
            ("SATURATE", amp.saturation_adu, "[ADU] saturation level (raw, bias included)"),
        ]

    # -- reading ----------------------------------------------------------------------

    def read_raw_metadata(self, path: str | Path) -> dict[str, Any]:
        """Observation metadata from a raw file's primary header.

        Raises
        ------
        RawReadError
            If the file is not readable FITS or misses a required key.
        """
        header = _read_primary_header(path)
        return _metadata_from_header(self, header, path)

    def read_raw(self, path: str | Path) -> xr.Dataset:
        """The untrimmed raw frame: amplifier HDUs side by side in readout order.

        Returns
        -------
        xarray.Dataset
            ``image`` (float32, ``("y", "x")``), each amplifier's whole raw array
            (prescan, data, serial overscan) placed left to right as read — *not* flipped:
            an amplifier with ``flip_x`` must have its data section reversed along x when
            it is copied into ``detector_section``. Attrs: ``amplifiers`` (list of dicts,
            sections ``[y0, y1, x0, x1]`` 0-based half-open in this untrimmed frame except
            ``detector_section``, in the assembled trimmed frame), ``visit_info``, ``wcs``
            (FITS cards of the header's pointing WCS, assembled trimmed frame), ``header``
            and ``filename``.

        Raises
        ------
        RawReadError
            If the file is truncated, not FITS, or misses a required key.
        """
        path = Path(path)
        with _open_fits(path) as hdul:
            header = hdul[0].header
            meta = _metadata_from_header(self, header, path)
            blocks: list[NDArray[np.float32]] = []
            amplifiers: list[dict[str, Any]] = []
            x_offset = 0
            for k, hdu in enumerate(hdul[1:], start=1):
                h = hdu.header
                for key in REQUIRED_AMP_KEYS:
                    if key not in h:
                        raise RawReadError(
                            f"raw file '{path}': missing required header key {key!r} in HDU {k}"
                        )
                data = hdu.data
                if data is None or data.ndim != 2:
                    raise RawReadError(f"raw file '{path}': HDU {k} has no 2-D image")
                ny, nx = data.shape
                try:
                    dsec, _, _ = parse_section(h["DATASEC"])
                    bsec, _, _ = parse_section(h["BIASSEC"])
                    psec, _, _ = parse_section(h.get("PRESEC", f"[1:{dsec[2]},1:{ny}]"))
                    detsec, flip_x, flip_y = parse_section(h["DETSEC"])
                except ValueError as exc:
                    raise RawReadError(f"raw file '{path}': HDU {k}: {exc}") from None

                def shift(s: tuple[int, int, int, int], off: int = x_offset) -> list[int]:
                    return [s[0], s[1], s[2] + off, s[3] + off]

                amplifiers.append(
                    {
                        "name": str(h.get("AMPNAME", h["EXTNAME"])),
                        "bbox_raw": [0, ny, x_offset, x_offset + nx],
                        "data_section": shift(dsec),
                        "serial_overscan": shift(bsec),
                        "prescan": shift(psec),
                        "detector_section": list(detsec),
                        "flip_x": flip_x,
                        "flip_y": flip_y,
                        "gain": float(h["GAIN"]),
                        "read_noise": float(h["RDNOISE"]),
                        "saturation_adu": float(h["SATURATE"]),
                    }
                )
                blocks.append(np.asarray(data, dtype=np.float32))
                x_offset += nx
            if not blocks:
                raise RawReadError(f"raw file '{path}': no amplifier HDUs")
            image = np.concatenate(blocks, axis=1)
            wcs_cards = {k: _plain(v) for k, v in header.items() if _is_wcs_key(k)}
            header_dict = {
                k: _plain(v) for k, v in header.items() if k not in ("COMMENT", "HISTORY", "")
            }
        visit_info = {
            "instrument": meta["instrument"],
            "exposure": meta["exposure"],
            "visit": meta["exposure"],
            "detector": meta["detector"],
            "band": meta["band"],
            "physical_filter": meta["physical_filter"],
            "obs_type": meta["obs_type"],
            "exptime": meta["exptime"],
            "darktime": meta["darktime"],
            "mjd": meta["mjd"],
            "date_obs": meta["date_obs"],
            "airmass": meta["airmass"],
            "boresight_ra": meta["ra"],
            "boresight_dec": meta["dec"],
            "rot_angle": meta["rot_angle"],
            "day_obs": meta["day_obs"],
        }
        return xr.Dataset(
            {"image": (("y", "x"), image)},
            attrs={
                "amplifiers": amplifiers,
                "visit_info": visit_info,
                "wcs": wcs_cards,
                "header": header_dict,
                "filename": str(path),
            },
        )


#: Amplitude of the brighter-fatter kernel: a 0.8″ star with a 90 ke⁻ peak is 1.5% larger
#: (square root of Gaussian-weighted second moments) than a faint one.
BF_KERNEL_AMPLITUDE = 9.0e-7

_WCS_PREFIXES = (
    "CTYPE",
    "CRVAL",
    "CRPIX",
    "CD1_",
    "CD2_",
    "PC1_",
    "PC2_",
    "CDELT",
    "CUNIT",
    "A_",
    "B_",
    "AP_",
    "BP_",
    "RADESYS",
    "EQUINOX",
    "LONPOLE",
    "LATPOLE",
)


def _is_wcs_key(key: str) -> bool:
    return key.startswith(_WCS_PREFIXES)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


_FITS_ERRORS = (OSError, ValueError, TypeError, IndexError, KeyError, Warning)


@contextmanager
def _open_fits(path: Path) -> Iterator[fits.HDUList]:
    """Open a FITS file fully (headers and data); any failure becomes RawReadError.

    We open the file ourselves: when astropy fails half-way through a truncated file it
    leaves its own file handle open.
    """
    if not path.exists():
        raise FileNotFoundError(f"raw file '{path}' does not exist")
    with open(path, "rb") as fh:
        try:
            with warnings.catch_warnings():
                # astropy only *warns* about truncated files; promote that to an error
                # (astropy's category only: the filter is process-wide, other threads run).
                warnings.simplefilter("error", AstropyUserWarning)
                hdul = fits.open(fh, memmap=False, lazy_load_hdus=False)
                for hdu in hdul:
                    naxis = hdu.header.get("NAXIS", 0)
                    if naxis > 0:
                        expected = tuple(hdu.header[f"NAXIS{i}"] for i in range(naxis, 0, -1))
                        if hdu.data is None or hdu.data.shape != expected:
                            raise ValueError(f"HDU data shape does not match NAXIS {expected}")
        except _FITS_ERRORS as exc:
            raise RawReadError(
                f"raw file '{path}': not a complete FITS file ({type(exc).__name__}: {exc})"
            ) from None
        try:
            yield hdul
        finally:
            hdul.close()


def _read_primary_header(path: str | Path) -> fits.Header:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"raw file '{path}' does not exist")
    with open(path, "rb") as fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", AstropyUserWarning)
                return fits.Header.fromfile(fh)
        except _FITS_ERRORS as exc:
            raise RawReadError(
                f"raw file '{path}': not a readable FITS file ({type(exc).__name__}: {exc})"
            ) from None


def _metadata_from_header(
    instrument: SimCam, header: fits.Header, path: str | Path
) -> dict[str, Any]:
    for key in REQUIRED_KEYS:
        if key not in header:
            raise RawReadError(f"raw file '{path}': missing required header key {key!r} in HDU 0")
    if str(header["INSTRUME"]).strip() != instrument.name:
        raise RawReadError(
            f"raw file '{path}': INSTRUME is {header['INSTRUME']!r}, not {instrument.name!r}"
        )
    obstype = str(header["OBSTYPE"]).strip().lower()
    if obstype not in OBSTYPE_TO_OBS_TYPE:
        raise RawReadError(
            f"raw file '{path}': unknown OBSTYPE {obstype!r}; expected one of "
            f"{sorted(OBSTYPE_TO_OBS_TYPE)}"
        )
    physical_filter = str(header["FILTER"]).strip()
    try:
        band = instrument.band_for_filter(physical_filter)
    except KeyError as exc:
        raise RawReadError(f"raw file '{path}': {exc.args[0]}") from None

    def number(key: str, kind: type = float) -> Any:
        value = header[key]
        try:
            out = kind(value)
            if kind is int and isinstance(value, float) and out != value:  # not 3.5
                raise ValueError
        except (TypeError, ValueError):
            raise RawReadError(
                f"raw file '{path}': {key} = {value!r} is not "
                + ("a whole number" if kind is int else "a number")
            ) from None
        if kind is float and not math.isfinite(out):
            raise RawReadError(f"raw file '{path}': {key} = {value!r} is not finite")
        return out

    detector = number("DETECTOR", int)
    if detector not in instrument.detectors:
        raise RawReadError(
            f"raw file '{path}': DETECTOR = {detector}, but SimCam ({instrument.geometry.name}) "
            f"has detectors {instrument.detectors[0]}..{instrument.detectors[-1]}"
        )
    for key in ("EXPTIME", "DARKTIME"):
        if number(key) < 0:
            raise RawReadError(f"raw file '{path}': {key} = {header[key]!r} is negative")
    mjd = number("MJD-OBS")
    return {
        "instrument": instrument.name,
        "exposure": number("EXPNUM", int),
        "detector": detector,
        "band": band,
        "physical_filter": physical_filter,
        "day_obs": day_obs_from_mjd(mjd),
        "obs_type": OBSTYPE_TO_OBS_TYPE[obstype],
        "mjd": mjd,
        "date_obs": str(header["DATE-OBS"]),
        "exptime": number("EXPTIME"),
        "darktime": number("DARKTIME"),
        "ra": number("RA"),
        "dec": number("DEC"),
        "airmass": number("AIRMASS"),
        "rot_angle": number("ROTANGLE"),
        "geometry": str(header["SIMGEOM"]),
    }
