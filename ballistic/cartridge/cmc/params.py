"""Settings of the CMC comparison and the surfaces it prepares from them.

:class:`CMCParams` holds every tuning value of the method (lengths in um, angles in
degrees); :func:`prepare` resamples a preprocessed breech face to the three spacings
the comparison uses (full-circle prior, coarse, comparison) and centres each view, so
that a surface compared with many others is prepared once (:class:`PreparedSurface`).
"""
from __future__ import annotations

import functools
import json
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ballistic.errors import PreparedViewsError
from ballistic.io.atomic import atomic_write
from ballistic.preprocess.filters import gaussian_lowpass, resample
from ballistic.surface import Surface

__all__ = ["CMCParams", "PreparedSurface", "prepare", "band_heights", "mirrored", "centre_heights",
           "PREPARED_FORMAT", "prepared_key", "save_prepared", "load_prepared", "load_or_prepare"]


@dataclass(frozen=True)
class CMCParams:
    """Tuning of the comparison. Lengths in um, angles in degrees."""

    spacing_um: float = 12.5            # comparison spacing (cells, fine registration)
    coarse_spacing_um: float = 25.0     # coarse registration
    prior_spacing_um: float = 50.0      # full-circle rotation prior
    # The prior's angle step must resolve its own correlation peak: half a step may move the rim of the
    # target by at most a fraction of a prior pixel, or a true pose between two grid angles loses its peak
    # to noise and registration fails or not depending on the scans' orientation (4 degree steps: DFSC pairs
    # failed at 6 to 12 of 18 orientations). None: the step from the target's measured rim radius
    # (register.rotation_step_deg: 2.5 degrees for a 1.7 mm breech face at 50 um, 1.7 for 2.5 mm). A step
    # given here is lowered to the largest that divides the circle (2.517 -> 360 / 144 = 2.5).
    prior_step_deg: float | None = None
    # 3/4 pixel: at one pixel (3.5 degrees on the labelled sets' 1.6-1.9 mm rims) the weak true pose of a
    # cross-kit DFSC pair fell out of the screen in one rotation draw of three (chosen on those pairs)
    prior_rim_shift_px: float = 0.75
    # The rotation prior sees the marks, not the residual form: wavelengths above ~1 mm are mostly the
    # near-symmetric residual shape of the primer and the annulus' radial profile; they correlate with a scan
    # and with its mirror image at many angles and can out-peak a weak true pose.
    prior_highpass_um: float | None = 1000.0
    # The coarse, fine and cell views keep wavelengths up to highpass_um: 500 um is the long cut-off of the
    # field's standard band-pass (cmcR's 16-500 um Gaussian), so a scan filtered that way upstream and a raw
    # one (normalised with a 2 mm form cut-off) compare on the same band; None keeps the whole normalised band.
    highpass_um: float | None = 500.0
    grid: int = 8                       # cells per side
    min_cell_valid: float = 0.15        # a cell needs this fraction of measured points
    # The prior at 50 um ranks a weak true pose below noise peaks on some scan pairs (other kits, other
    # pipelines): the best prior_screen_per_parity distinct peaks of each parity are re-scored at the coarse
    # spacing (one angle, translation +- one prior pixel), which tells true from false far better, and only the
    # best prior_candidates of that screen are refined.
    prior_screen_per_parity: int = 8    # rotation-prior peaks of each parity screened at the coarse spacing
    prior_candidates: int = 3           # screened peaks refined
    coarse_halfwidth_deg: float = 3.0   # refine each prior peak over +- this ...
    coarse_step_deg: float = 1.5        # ... in these steps (coarse spacing)
    fine_step_deg: float = 0.75         # then over +- half a coarse step at comparison spacing
    cell_angles_deg: tuple[float, ...] = (-6.0, -3.0, 0.0, 3.0, 6.0)  # around the global angle
    region_scale: float = 2.0           # target region side / cell side
    min_overlap: float = 0.4            # global registration
    max_shift_fraction: float = 0.3     # centre offsets searched, fraction of the reference size: overlap / smaller valid area
    cell_min_overlap: float = 0.5       # cell: shared points / cell valid points
    corr_threshold: float = 0.5         # CMC: cell correlation at least this
    translation_threshold_um: float = 25.0   # two pixels at 12.5 um
    angle_threshold_deg: float = 6.0
    high_cmc_tau: int = 1
    decision_threshold: int = 6         # C >= 6 -> identification (Song 2013)
    mirror: bool = True                 # also try the target mirrored (top-bottom): exporters disagree on the y axis

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class PreparedSurface:
    """A surface resampled, centred and cached for repeated comparison."""

    fine: np.ndarray          # heights at params.spacing_um, zero-mean, NaN outside
    coarse: np.ndarray        # heights at params.coarse_spacing_um
    prior: np.ndarray         # heights at params.prior_spacing_um (full-circle rotation search)
    spacing_um: float
    coarse_spacing_um: float
    name: str = ""
    prior_spacing_um: float = CMCParams.prior_spacing_um            # what ``prior`` is: heights at this ...
    prior_highpass_um: float | None = CMCParams.prior_highpass_um   # ... without wavelengths above this
    highpass_um: float | None = CMCParams.highpass_um               # ``fine`` and ``coarse``: the same


def centre_heights(h: np.ndarray) -> np.ndarray:
    """A float64 C-contiguous copy of ``h`` minus the mean of its finite values (NaN stays NaN)."""
    out = np.array(h, dtype=np.float64, copy=True)
    m = np.isfinite(out)
    if m.any():
        out[m] -= out[m].mean()
    return np.ascontiguousarray(out)


def band_heights(surface: Surface, *, spacing_um: float, highpass_um: float | None) -> np.ndarray:
    """Heights (um) at ``spacing_um`` without wavelengths above ``highpass_um`` (ISO 16610-21 Gaussian,
    NaN-aware; None: the whole band), centred: every view a comparison correlates.

    :func:`prepare` makes the coarse and fine views with ``CMCParams.highpass_um`` and the rotation prior's
    with ``CMCParams.prior_highpass_um``; the retrieval screen
    (:class:`ballistic.retrieval.search.RotationPrior`) makes its views with the latter too, so both
    correlate the same band.

    Returns
    -------
    ndarray of float64, shape (ny, nx) at ``spacing_um``; NaN where not measured.
    """
    s = resample(surface, spacing_um=spacing_um)
    if highpass_um:
        form = gaussian_lowpass(s, cutoff_um=highpass_um, min_weight=1e-3).heights
        s = s.with_heights(s.heights - form)
    return centre_heights(s.heights)


def prepare(surface: Surface, params: CMCParams | None = None, *, name: str = "") -> PreparedSurface:
    """Resample a preprocessed breech-face surface for comparison and cache its views.

    Parameters
    ----------
    surface : Surface
        Output of :func:`ballistic.cartridge.breech_face.preprocess_cartridge` (heights um).
    params : CMCParams, optional

    Returns
    -------
    PreparedSurface
    """
    p = params or CMCParams()
    if surface.valid_fraction == 0:
        raise ValueError("prepare: the surface has no valid points; preprocess it first")
    fine = band_heights(surface, spacing_um=p.spacing_um, highpass_um=p.highpass_um)
    coarse = band_heights(surface, spacing_um=p.coarse_spacing_um, highpass_um=p.highpass_um)
    if np.isfinite(fine).sum() < 4 * p.grid * p.grid:
        raise ValueError(f"prepare: only {np.isfinite(fine).sum()} valid points at {p.spacing_um} um; "
                         "the scan is too small or too sparse to compare")
    prior = band_heights(surface, spacing_um=p.prior_spacing_um, highpass_um=p.prior_highpass_um)
    return PreparedSurface(fine, coarse, prior, p.spacing_um, p.coarse_spacing_um,
                           name or str(surface.meta.get("source", "")), p.prior_spacing_um, p.prior_highpass_um,
                           p.highpass_um)


PREPARED_FORMAT = "ballistic-prepared/1"
_VIEWS = ("fine", "coarse", "prior")


@functools.lru_cache(maxsize=16)
def prepared_key(params: CMCParams | None = None) -> str:
    """A key (hex) of what :func:`prepare` makes from a surface: the file format, the parameters it uses and a
    digest of the code it runs (this module, the filters, :class:`~ballistic.surface.Surface`), so views
    stored by older code or other settings are never served as current ones.
    """
    import hashlib

    from ballistic.io.digest import source_digest

    p = params or CMCParams()
    used = {k: getattr(p, k) for k in ("spacing_um", "coarse_spacing_um", "prior_spacing_um", "prior_highpass_um",
                                       "highpass_um", "grid")}
    h = hashlib.sha256()
    for part in (PREPARED_FORMAT, json.dumps(used, sort_keys=True),
                 source_digest("preprocess/*.py", "cartridge/cmc/params.py", "surface.py")):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _stamp(source: str | os.PathLike | None) -> list[int] | None:
    """(size, mtime in ns) of the file the views were made from: a rewritten source makes them stale."""
    if source is None:
        return None
    st = os.stat(source)
    return [int(st.st_size), int(st.st_mtime_ns)]


def save_prepared(prepared: PreparedSurface, path: str | os.PathLike, *, params: CMCParams | None = None,
                  source: str | os.PathLike | None = None) -> Path:
    """Store a prepared surface's views (float64, exact) in one compressed ``.npz`` file, atomically.

    A service keeps this beside each preprocessed scan so that a candidate of a search is loaded in about
    2.5 ms instead of being read and prepared again (31 ms, medians of the real sets;
    ``benchmarks/bench_prepared_views.py``);
    the file is about a third of the size of the scan's x3p (the views are mostly NaN outside the breech face).

    Parameters
    ----------
    prepared : PreparedSurface
        Made by :func:`prepare` with ``params``.
    path : path-like
        Destination file (its folder must exist); replaced atomically.
    params : CMCParams, optional
        The parameters ``prepared`` was made with (default: the defaults); recorded as :func:`prepared_key`.
    source : path-like, optional
        The file ``prepared`` was made from; its size and modification time are recorded, and
        :func:`load_prepared` refuses the views once that file has changed.

    Returns
    -------
    Path
    """
    meta = {"format": PREPARED_FORMAT, "key": prepared_key(params), "source": _stamp(source),
            "name": prepared.name, "spacing_um": prepared.spacing_um, "coarse_spacing_um": prepared.coarse_spacing_um,
            "prior_spacing_um": prepared.prior_spacing_um, "prior_highpass_um": prepared.prior_highpass_um,
            "highpass_um": prepared.highpass_um}
    arrays = {v: np.ascontiguousarray(getattr(prepared, v), dtype=np.float64) for v in _VIEWS}
    return atomic_write(path, lambda fh: np.savez_compressed(fh, meta=np.array(json.dumps(meta)), **arrays))


def load_prepared(path: str | os.PathLike, params: CMCParams | None = None, *,
                  source: str | os.PathLike | None = None, name: str | None = None) -> PreparedSurface:
    """The prepared surface :func:`save_prepared` stored, exactly as :func:`prepare` made it.

    Parameters
    ----------
    path : path-like
    params : CMCParams, optional
        The parameters the caller compares with (default: the defaults); views made with others are refused.
    source : path-like, optional
        The file the views must have been made from, unchanged since.
    name : str, optional
        Name to give the surface (default: the stored one).

    Raises
    ------
    FileNotFoundError
        No such file.
    PreparedViewsError
        The file is damaged, of another format, made with other parameters or code, or from another version
        of ``source``: prepare the surface again (and store it again).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != PREPARED_FORMAT:
                raise PreparedViewsError(f"{path}: format {meta.get('format')!r}, not {PREPARED_FORMAT!r}; "
                                         "prepare the surface again")
            if meta.get("key") != prepared_key(params):
                raise PreparedViewsError(f"{path}: views made with other comparison settings or code; "
                                         "prepare the surface again")
            if source is not None and meta.get("source") != _stamp(source):
                raise PreparedViewsError(f"{path}: {source} changed since the views were made from it; "
                                         "prepare the surface again")
            views = {v: np.ascontiguousarray(z[v]) for v in _VIEWS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise PreparedViewsError(f"{path}: not a readable prepared-views file ({e}); prepare the surface "
                                 "again") from None
    if any(a.ndim != 2 or a.dtype != np.float64 for a in views.values()):
        raise PreparedViewsError(f"{path}: views are not 2-D float64 arrays; prepare the surface again")
    return PreparedSurface(views["fine"], views["coarse"], views["prior"], float(meta["spacing_um"]),
                           float(meta["coarse_spacing_um"]), meta["name"] if name is None else name,
                           float(meta["prior_spacing_um"]), meta["prior_highpass_um"], meta["highpass_um"])


def load_or_prepare(path: str | os.PathLike, read, params: CMCParams | None = None, *,
                    source: str | os.PathLike | None = None, name: str | None = None) -> PreparedSurface:
    """The prepared views stored at ``path`` (:func:`load_prepared`), else ``prepare(read())`` stored there
    (:func:`save_prepared`) for the next time.

    Views that are missing, damaged, made with other settings or code, or from an older ``source`` are made
    again; a folder that cannot be written is only read (the views are made every time).

    Parameters
    ----------
    path : path-like
        The views' file.
    read : callable
        ``read() -> Surface``: the preprocessed surface, called only when the views must be made.
    params : CMCParams, optional
    source, name : optional, keyword-only
        As :func:`load_prepared` (``name`` also names a surface prepared here).

    Returns
    -------
    PreparedSurface
    """
    try:
        return load_prepared(path, params, source=source, name=name)
    except (FileNotFoundError, PreparedViewsError):
        pass
    prepared = prepare(read(), params, name=name or "")
    try:
        save_prepared(prepared, path, params=params, source=source)
    except OSError:          # a read-only store (a worker that may only read): no views kept
        pass
    return prepared


def mirrored(prepared: PreparedSurface) -> PreparedSurface:
    """The same surface flipped top-bottom (rows reversed), every cached view."""
    return PreparedSurface(np.ascontiguousarray(prepared.fine[::-1]), np.ascontiguousarray(prepared.coarse[::-1]),
                           np.ascontiguousarray(prepared.prior[::-1]), prepared.spacing_um,
                           prepared.coarse_spacing_um, prepared.name, prepared.prior_spacing_um,
                           prepared.prior_highpass_um, prepared.highpass_um)
