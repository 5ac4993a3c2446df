"""Seeded synthetic firearms and fired cartridge cases, for scale tests and benchmarks only.

Nothing here is evidence of anything: it lets the retrieval stack be exercised
at national-database sizes (millions of entries) where no real data exists,
and gives tests a same-source / different-source ground truth that costs no files.

Model of a breech-face impression (heights in um, on the breech-face annulus):

* **class marks** shared by a make/model (:func:`synthetic_firearm` picks one of
  ``n_models`` models from its seed): parallel or arched filing marks (a few
  sinusoids of 100-300 um wavelength), firing-pin aperture radius and offset,
  outer radius of the impression;
* **individual texture** of each firearm: a band-limited Gaussian random field
  (power ~ f^-2 between 16 and 500 um wavelength, like the Gaussian band-pass of
  the processed scans);
* **per firing**: which part of the face made contact (a low-frequency random
  mask), an independent primer texture, white measurement noise, a random
  rotation (full circle) and translation, a small jitter of the aperture.

:func:`fire` returns a :class:`~ballistic.surface.Surface` like the processed
Fadul scans (6.25 um, ~545 x 545, annulus, ~70 % NaN, height std ~1.5 um).

Fields are generated in the Fourier domain on a fixed physical canvas, level by
level (50, 25, 12.5, 6.25 um grids, each level drawing only its new, higher
frequencies from its own seeded stream), so a firing generated at a coarse
spacing (the fast path, e.g. 25 um for descriptors of millions of distractors)
is the low-pass version of the same firing at 6.25 um (regenerated for CMC
re-ranking from its seed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ballistic.surface import Surface

__all__ = ["SyntheticFirearm", "SyntheticCatalogue", "synthetic_firearm", "fire", "SPACINGS_UM"]

_CANVAS_UM = 4000.0
_BASE_SPACING_UM = 50.0
_N0 = int(_CANVAS_UM / _BASE_SPACING_UM)        # 80 pixels at 50 um
#: Spacings (um) :func:`fire` can generate (one Fourier level each).
SPACINGS_UM = (50.0, 25.0, 12.5, 6.25)


@dataclass(frozen=True)
class SyntheticFirearm:
    """Parameters of one synthetic firearm (all lengths um, angles degrees).

    ``model`` identifies the make/model whose class marks it shares; ``seed``
    its individual texture.
    """

    seed: int
    model: int
    outer_radius_um: float
    aperture_radius_um: float
    aperture_offset_um: tuple[float, float]    # (dy, dx) of the aperture centre from the face centre
    marks: str                                 # "parallel" or "arched"
    mark_angle_deg: float
    mark_wavelengths_um: tuple[float, ...]
    mark_phases: tuple[float, ...]
    mark_amplitude_um: float
    texture_amplitude_um: float


def synthetic_firearm(seed: int, *, model: int | None = None, n_models: int = 20) -> SyntheticFirearm:
    """A seeded synthetic firearm.

    Parameters
    ----------
    seed : int
        Non-negative; the same seed always gives the same firearm.
    model : int, optional, keyword-only
        Make/model (class marks, aperture); default ``seed % n_models``.
    n_models : int, keyword-only
        Number of models the default choice cycles through.
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    model = int(seed) % n_models if model is None else int(model)
    mr = np.random.default_rng([7001, model])          # class: shared by the model
    ir = np.random.default_rng([7002, int(seed)])      # individual
    outer = float(mr.uniform(1600.0, 1760.0))
    ap = float(mr.uniform(0.62, 0.78) * outer)
    off_r = float(mr.uniform(0.2, 0.9) * (outer - ap)) + float(ir.uniform(-15.0, 15.0))
    off_a = float(mr.uniform(0, 2 * math.pi)) + float(ir.uniform(-0.2, 0.2))
    n_w = 3
    return SyntheticFirearm(
        seed=int(seed), model=model, outer_radius_um=outer, aperture_radius_um=ap,
        aperture_offset_um=(off_r * math.sin(off_a), off_r * math.cos(off_a)),
        marks="parallel" if mr.random() < 0.6 else "arched",
        mark_angle_deg=float(mr.uniform(0, 180)),
        mark_wavelengths_um=tuple(float(w) for w in mr.uniform(100.0, 300.0, n_w)),
        mark_phases=tuple(float(p) for p in mr.uniform(0, 2 * math.pi, n_w)),
        mark_amplitude_um=float(mr.uniform(0.1, 0.3)),
        texture_amplitude_um=float(ir.uniform(1.2, 1.6)),
    )


def _level(spacing_um: float) -> int:
    for lv, s in enumerate(SPACINGS_UM):
        if abs(spacing_um - s) < 1e-9:
            return lv
    raise ValueError(f"synthetic surfaces are generated at {SPACINGS_UM} um; got spacing_um={spacing_um} "
                     "(resample the result with ballistic.preprocess.filters.resample for other spacings)")


def _freq_grid(n: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    fy = np.fft.fftfreq(n, d=spacing)[:, None]
    fx = np.fft.rfftfreq(n, d=spacing)[None, :]
    return fy, fx


def _spectrum_coeffs(key: tuple[int, ...], level: int) -> np.ndarray:
    """White complex coefficients on the rfft2 grid of ``level``; lower levels' frequencies reused."""
    n = _N0 << level
    C = None
    for lv in range(level + 1):
        nl = _N0 << lv
        rng = np.random.default_rng([*key, lv])
        block = rng.standard_normal((nl, nl // 2 + 1, 2)).view(np.complex128)[..., 0]
        if C is None:
            C = block
            continue
        # keep previous (lower-frequency) coefficients where they exist
        prev, pn = C, nl // 2
        C = block
        h = pn // 2                                  # prev covers |iy| < h (+ its Nyquist row) and ix <= h
        C[:h, :h + 1] = prev[:h, :h + 1]
        C[-h:, :h + 1] = prev[-h:, :h + 1]
    assert C.shape == (n, n // 2 + 1)
    return C


def _band_field(key: tuple[int, ...], spacing_um: float, *, short_um: float = 16.0, long_um: float = 500.0,
                slope: float = 1.0) -> np.ndarray:
    """Zero-mean Gaussian random field, amplitude ~ f^-slope between the cut-offs, unit variance at 6.25 um."""
    level = _level(spacing_um)
    n = _N0 << level
    fy, fx = _freq_grid(n, spacing_um)
    f = np.hypot(fy, fx)
    H = _filter(f, short_um, long_um, slope)
    C = _spectrum_coeffs(key, level)
    z = np.fft.irfft2(C * H, s=(n, n), norm="forward")
    return z / _field_std(short_um, long_um, slope)


def _filter(f: np.ndarray, short_um: float, long_um: float, slope: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        H = np.where(f > 0, f, np.inf) ** (-slope)
    H = H * np.exp(-0.5 * (f * short_um / 2.0) ** 2) * (1.0 - np.exp(-0.5 * (f * long_um / 2.0) ** 2))
    H[0, 0] = 0.0
    return H


_STD_CACHE: dict = {}


def _field_std(short_um: float, long_um: float, slope: float) -> float:
    k = (short_um, long_um, slope)
    if k not in _STD_CACHE:
        lv = len(SPACINGS_UM) - 1
        n = _N0 << lv
        fy, fx = _freq_grid(n, SPACINGS_UM[lv])
        H = _filter(np.hypot(fy, fx), short_um, long_um, slope)
        w = np.full(H.shape, 2.0)
        w[:, 0] = 1.0
        w[:, -1] = 1.0
        # E|C|^2 = 2 for the complex white coefficients; rfft symmetry doubles interior columns
        _STD_CACHE[k] = float(np.sqrt((w * 2.0 * H ** 2).sum()))
    return _STD_CACHE[k]


def _class_marks(fa: SyntheticFirearm, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    a = math.radians(fa.mark_angle_deg)
    if fa.marks == "parallel":
        u = xx * math.cos(a) + yy * math.sin(a)
    else:   # arcs about a centre far outside the face
        u = np.hypot(yy - 6000.0 * math.sin(a), xx - 6000.0 * math.cos(a))
    z = np.zeros_like(yy)
    for w, p in zip(fa.mark_wavelengths_um, fa.mark_phases):
        z += np.sin(2 * math.pi * u / w + p)
    return fa.mark_amplitude_um * z / math.sqrt(len(fa.mark_wavelengths_um) / 2.0)


def fire(firearm: SyntheticFirearm, seed: int, *, spacing_um: float = 6.25, rotation_deg: float | None = None,
         translation_um: tuple[float, float] | None = None, primer_amplitude_um: float = 0.55,
         noise_um: float = 0.25, contact_loss: float | None = None) -> Surface:
    """One fired cartridge case of ``firearm``: a processed breech-face surface.

    Parameters
    ----------
    firearm : SyntheticFirearm
    seed : int
        Firing seed (contact, primer texture, noise, pose).
    spacing_um : float, keyword-only
        One of :data:`SPACINGS_UM`. 6.25 um is like the processed Fadul scans; 25 um
        is the fast path (~16x fewer pixels), the low-pass version of the same firing.
    rotation_deg : float, optional, keyword-only
        Counter-clockwise rotation of the breech face in the image; default random
        over the full circle.
    translation_um : (dy, dx), optional, keyword-only
        Offset of the face centre from the image centre, um; default random (+-60 um).
    primer_amplitude_um, noise_um : float, keyword-only
        Std (um) of the per-firing primer texture and of the white noise.
    contact_loss : float, optional, keyword-only
        Fraction of the annulus that made no contact (NaN); default random in [0.05, 0.25].

    Returns
    -------
    Surface
        Heights in um, NaN outside the measured breech face; ``meta`` records the
        firearm, model, firing seed and pose.
    """
    level = _level(spacing_um)
    rng = np.random.default_rng([7003, firearm.seed, int(seed)])
    rot = float(rng.uniform(0, 360)) if rotation_deg is None else float(rotation_deg)
    t = rng.uniform(-60.0, 60.0, 2)
    ty, tx = (float(t[0]), float(t[1])) if translation_um is None else map(float, translation_um)
    loss = float(rng.uniform(0.05, 0.25)) if contact_loss is None else float(contact_loss)
    jitter = rng.normal(0.0, 12.0, 2)
    crop_r = firearm.outer_radius_um + float(rng.uniform(-25.0, 25.0))

    # Physical layout (um). Canvas pixel j sits at j * spacing (the Fourier fields are periodic over
    # _CANVAS_UM); the face centre is the canvas centre. Output pixel p covers [p, p + 1) * spacing - H, so a
    # coarse pixel is exactly the block of finer pixels it averages (the fast path matches resample()).
    n = _N0 << level
    C = _CANVAS_UM / 2.0
    H = math.ceil((firearm.outer_radius_um + 70.0) / _BASE_SPACING_UM) * _BASE_SPACING_UM
    m_out = int(round(2.0 * H / spacing_um))
    g = (np.arange(m_out) + 0.5) * spacing_um - H
    py, px = np.meshgrid(g - ty, g - tx, indexing="ij")          # image position relative to the face centre
    a = math.radians(rot)
    ca, sa = math.cos(a), math.sin(a)
    # the face turned counter-clockwise as displayed (rows point down): image = R(a) face
    fx_ = ca * px - sa * py
    fy_ = sa * px + ca * py
    tex = firearm.texture_amplitude_um * _band_field((7004, firearm.seed), spacing_um)
    yy, xx = (np.mgrid[0:n, 0:n].astype(np.float64) * spacing_um - C)
    face = (tex + _class_marks(firearm, yy, xx)).astype(np.float32)
    z = _sample(face, (fy_ + C) / spacing_um, (fx_ + C) / spacing_um)
    r = np.hypot(fy_, fx_)
    ay, ax = firearm.aperture_offset_um
    ap_r = firearm.aperture_radius_um + float(rng.uniform(-15.0, 15.0))
    inside = (r <= crop_r) & (np.hypot(fy_ - ay - jitter[0], fx_ - ax - jitter[1]) >= ap_r)
    # per-firing fields live in the image frame
    iy, ix = np.meshgrid((g + C) / spacing_um, (g + C) / spacing_um, indexing="ij")
    primer = _sample(_band_field((7005, firearm.seed, int(seed)), spacing_um).astype(np.float32), iy, ix)
    contact = _sample(_band_field((7006, firearm.seed, int(seed)), spacing_um, short_um=1000.0, long_um=4000.0,
                                  slope=0.5).astype(np.float32), iy, ix)
    if loss > 0 and inside.any():
        inside &= contact >= np.quantile(contact[inside], loss)
    noise = rng.standard_normal((m_out, m_out)) * (noise_um * 6.25 / spacing_um)   # pixel averages when coarse
    h = np.where(inside, z + primer_amplitude_um * primer + noise, np.nan)
    return Surface(h, spacing_um, {"source": f"synthetic:{firearm.seed}:{int(seed)}", "synthetic_firearm":
                                   firearm.seed, "synthetic_model": firearm.model, "synthetic_firing": int(seed),
                                   "rotation_deg": rot, "translation_um": (ty, tx)})


def _sample(field: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear samples of a periodic field at fractional (row, col) pixel positions."""
    return cv2.remap(field, cols.astype(np.float32), rows.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_WRAP).astype(np.float64)


class SyntheticCatalogue:
    """Deterministic database of synthetic firings addressed by integer id (a picklable ``fetch``).

    Id ``id_offset + i`` is firing ``i`` of firearm ``i // firings_per_firearm``
    (firearm seed ``firearm_offset + i // firings_per_firearm``), so every firearm
    has ``firings_per_firearm`` entries, as a real database of casings would.

    Parameters
    ----------
    id_offset : int, keyword-only
        First id (keeps synthetic ids away from real ones).
    firings_per_firearm : int, keyword-only
    firearm_offset : int, keyword-only
        Seed of the first firearm.
    spacing_um : float, keyword-only
        Spacing returned by ``fetch(id)`` when none is asked for (12.5 um is the
        CMC comparison spacing; 6.25 um like the processed scans).
    """

    def __init__(self, *, id_offset: int = 0, firings_per_firearm: int = 2, firearm_offset: int = 0,
                 spacing_um: float = 12.5, n_models: int = 20) -> None:
        if firings_per_firearm < 1:
            raise ValueError("firings_per_firearm must be >= 1")
        _level(spacing_um)
        self.id_offset, self.per, self.firearm_offset = int(id_offset), int(firings_per_firearm), int(firearm_offset)
        self.spacing_um, self.n_models = float(spacing_um), int(n_models)

    def source(self, id: int) -> tuple[int, int]:
        """(firearm seed, firing seed) of an id."""
        i = int(id) - self.id_offset
        if i < 0:
            raise KeyError(f"id {id} is below this catalogue's id_offset {self.id_offset}")
        return self.firearm_offset + i // self.per, i

    def __contains__(self, id: int) -> bool:
        return int(id) >= self.id_offset

    def __call__(self, id: int, spacing_um: float | None = None) -> Surface:
        fa, fi = self.source(id)
        firearm = synthetic_firearm(fa, n_models=self.n_models)
        s = fire(firearm, fi, spacing_um=self.spacing_um if spacing_um is None else _snap(spacing_um))
        return s

    def __repr__(self) -> str:
        return (f"SyntheticCatalogue(id_offset={self.id_offset}, firings_per_firearm={self.per}, "
                f"firearm_offset={self.firearm_offset}, spacing_um={self.spacing_um})")


def _snap(spacing_um: float) -> float:
    """Finest generated spacing that is not coarser than ``spacing_um``."""
    ok = [s for s in SPACINGS_UM if s <= spacing_um + 1e-9]
    return max(ok) if ok else SPACINGS_UM[-1]
