"""Seeded synthetic firearms and fired cartridge cases, for scale tests and benchmarks only.

Nothing here is evidence of anything: it lets the retrieval stack be exercised
at national-database sizes (millions of entries) where no real data exists,
and gives tests a same-source / different-source ground truth that costs no files.

Model of a breech-face impression (heights in um, on the breech-face annulus), version
:data:`SYNTH_VERSION`:

* **class marks** shared by a make/model (:func:`synthetic_firearm` picks one of
  ``n_models`` models from its seed): broadband parallel or arched filing marks (a dozen
  sinusoids of 60-400 um wavelength, amplitude falling with frequency), the direction and
  strength of the machining anisotropy, firing-pin aperture radius and offset, outer radius,
  the profile of the rims (the surface dips or rises along the aperture edge and the outer
  edge) and, for some models, a notch cut into the aperture edge (firing-pin drag, ejector);
* **individual texture** of each firearm: an isotropic band-limited Gaussian random field
  (amplitude ~ f^-slope, slope 1.2-1.8 per firearm, ISO Gaussian cut-offs 16 and 800 um) plus
  an anisotropic one stretched along the model's machining direction (jittered per firearm),
  and a rim profile modulated along the circle;
* **per firing**: partial contact (a smooth field, with a tilt, that scales the impression
  between ~0.3 and 1.2 and loses the least-marked 5-35 % of the annulus, in contiguous
  regions), an independent primer texture, white measurement noise, a random rotation (full
  circle) and translation, a small jitter of the aperture.

Version 1 (before this one) had an isotropic, too fine texture (little energy at 250-1000 um
wavelengths where the real processed scans have most of theirs), no rims, no notches and
scattered holes instead of contiguous contact loss: easy to tell from real scans by any
descriptor (``models/breech_face/MODEL_CARD.md`` reports how separable they are).

:func:`fire` returns a :class:`~ballistic.surface.Surface` like the processed
Fadul scans (6.25 um, ~545 x 545, annulus, ~70 % NaN, height std ~1.5 um).

Fields are generated in the Fourier domain on a fixed physical canvas, level by
level (50, 25, 12.5, 6.25 um grids, each level drawing only its new, higher
frequencies from its own seeded stream), so a firing generated at a coarse
spacing (the fast path, e.g. 25 um for descriptors of millions of distractors)
is the low-pass version of the same firing at 6.25 um (regenerated for CMC
re-ranking from its seed). Rims and masks are analytic functions of position
and of low-frequency fields, so they agree across levels too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ballistic.surface import Surface

__all__ = ["SyntheticFirearm", "SyntheticCatalogue", "synthetic_firearm", "fire", "SPACINGS_UM", "SYNTH_VERSION"]

#: Version of the generative model (part of every cache key of generated data).
SYNTH_VERSION = "synth/2"

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
    texture_slope: float = 1.5
    aniso_angle_deg: float = 0.0               # direction the machining marks run along
    aniso_ratio: float = 1.0                   # stretch of the anisotropic texture along it
    aniso_amplitude_um: float = 0.0
    rim_aperture_um: float = 0.0               # height of the rim profile at the aperture edge (signed)
    rim_aperture_width_um: float = 60.0
    rim_outer_um: float = 0.0                  # same at the outer edge
    rim_outer_width_um: float = 80.0
    rim_harmonics: tuple[float, ...] = ()      # (a1, b1, a2, b2, ...) modulation of the rims along the circle
    notch: tuple[float, float, float] | None = None   # (angle deg, width um, length um) cut into the aperture


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
    outer = float(mr.uniform(1550.0, 1850.0)) + float(ir.uniform(-20.0, 20.0))
    ap = float(mr.uniform(0.58, 0.76) * outer)
    off_r = float(mr.uniform(0.3, 0.95) * (outer - ap) * 0.85) + float(ir.uniform(-15.0, 15.0))
    off_a = float(mr.uniform(0, 2 * math.pi)) + float(ir.uniform(-0.2, 0.2))
    n_w = 12
    wl = np.sort(mr.uniform(60.0, 400.0, n_w))
    marks = "parallel" if mr.random() < 0.6 else "arched"
    mark_angle = float(mr.uniform(0, 180))
    aniso_angle = (mark_angle + float(mr.choice([0.0, 90.0, mr.uniform(0, 180)])) + float(ir.normal(0, 8))) % 180
    notch = None
    if mr.random() < 0.4:
        notch = (float(mr.uniform(0, 360)) + float(ir.normal(0, 3)), float(mr.uniform(120, 400)),
                 float(mr.uniform(150, 500)))
    rim_a = float(mr.normal(-1.5, 1.5)) + float(ir.normal(0, 0.5))
    rim_o = float(mr.normal(0.5, 1.2)) + float(ir.normal(0, 0.4))
    return SyntheticFirearm(
        seed=int(seed), model=model, outer_radius_um=outer, aperture_radius_um=ap,
        aperture_offset_um=(off_r * math.sin(off_a), off_r * math.cos(off_a)),
        marks=marks, mark_angle_deg=mark_angle,
        mark_wavelengths_um=tuple(float(w) for w in wl),
        mark_phases=tuple(float(p) for p in mr.uniform(0, 2 * math.pi, n_w)),
        mark_amplitude_um=float(mr.uniform(0.15, 0.4)),
        texture_amplitude_um=float(ir.uniform(1.0, 1.4)),
        texture_slope=round(float(ir.uniform(0.8, 1.3)), 2),          # rounded: few distinct field norms
        aniso_angle_deg=float(aniso_angle),
        aniso_ratio=round(float(mr.uniform(3.0, 10.0)), 1),
        aniso_amplitude_um=float(mr.uniform(0.4, 1.2)) * float(ir.uniform(0.7, 1.3)),
        rim_aperture_um=rim_a, rim_aperture_width_um=float(mr.uniform(30.0, 110.0)),
        rim_outer_um=rim_o, rim_outer_width_um=float(mr.uniform(40.0, 150.0)),
        rim_harmonics=tuple(float(v) for v in ir.normal(0, 0.35, 8) / np.repeat(np.arange(1, 5), 2)),
        notch=notch,
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
                slope: float = 1.0, aniso: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Zero-mean Gaussian random field, amplitude ~ f^-slope between ISO Gaussian cut-offs, unit variance at
    6.25 um. ``aniso = (angle_deg, ratio)`` stretches it ``ratio`` times along ``angle_deg`` (image axes,
    rows down)."""
    level = _level(spacing_um)
    n = _N0 << level
    fy, fx = _freq_grid(n, spacing_um)
    H = _filter(_eff_freq(fy, fx, aniso), short_um, long_um, slope)
    C = _spectrum_coeffs(key, level)
    z = np.fft.irfft2(C * H, s=(n, n), norm="forward")
    return z / _field_std(short_um, long_um, slope, aniso[1])


def _eff_freq(fy: np.ndarray, fx: np.ndarray, aniso: tuple[float, float]) -> np.ndarray:
    angle, ratio = aniso
    if ratio == 1.0:
        return np.hypot(fy, fx)
    a = math.radians(angle)
    along = fx * math.cos(a) + fy * math.sin(a)
    across = -fx * math.sin(a) + fy * math.cos(a)
    return np.hypot(along * ratio, across)


_ISO = math.sqrt(math.log(2.0) / math.pi)      # ISO 16610-21 Gaussian: 50 % transmission at the cut-off


def _filter(f: np.ndarray, short_um: float, long_um: float, slope: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        H = np.where(f > 0, f, np.inf) ** (-slope)
    H = H * np.exp(-math.pi * (_ISO * short_um * f) ** 2) * (1.0 - np.exp(-math.pi * (_ISO * long_um * f) ** 2))
    H[0, 0] = 0.0
    return H


_STD_CACHE: dict = {}


def _field_std(short_um: float, long_um: float, slope: float, ratio: float = 1.0) -> float:
    k = (round(short_um, 3), round(long_um, 3), round(slope, 4), round(ratio, 4))
    if k not in _STD_CACHE:
        if len(_STD_CACHE) > 100_000:
            _STD_CACHE.clear()
        lv = len(SPACINGS_UM) - 1
        n = _N0 << lv
        fy, fx = _freq_grid(n, SPACINGS_UM[lv])
        H = _filter(_eff_freq(fy, fx, (0.0, ratio)), short_um, long_um, slope)
        w = np.full(H.shape, 2.0)
        w[:, 0] = 1.0
        w[:, -1] = 1.0
        # E|C|^2 = 2 for the complex white coefficients; rfft symmetry doubles interior columns
        _STD_CACHE[k] = float(np.sqrt((w * 2.0 * H ** 2).sum()))
    return _STD_CACHE[k]


def _class_marks(fa: SyntheticFirearm, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Filing marks at face positions (um): a 1-D profile across the marks, tabulated every 1 um."""
    a = math.radians(fa.mark_angle_deg)
    if fa.marks == "parallel":
        u = xx * math.cos(a) + yy * math.sin(a)
    else:   # arcs about a centre far outside the face
        u = np.hypot(yy - 6000.0 * math.sin(a), xx - 6000.0 * math.cos(a))
    lo, hi = math.floor(float(u.min())) - 1, math.ceil(float(u.max())) + 1
    uu = np.arange(lo, hi + 1, dtype=np.float64)
    prof = np.zeros_like(uu)
    amps = np.asarray(fa.mark_wavelengths_um) / max(fa.mark_wavelengths_um)     # amplitude ~ wavelength
    for w, p, am in zip(fa.mark_wavelengths_um, fa.mark_phases, amps):
        prof += am * np.sin(2 * math.pi * uu / w + p)
    prof *= fa.mark_amplitude_um / math.sqrt(float((amps ** 2).sum()) / 2.0)
    return np.interp(u.ravel(), uu, prof).reshape(u.shape)


def _rim_modulation(fa: SyntheticFirearm, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """1 + sum_k a_k cos(k phi) + b_k sin(k phi), phi = angle of (y, x) about the face centre."""
    r = np.hypot(y, x)
    e = np.where(r > 0, (x + 1j * y) / np.where(r > 0, r, 1.0), 1.0)    # exp(i phi)
    m = np.ones(y.shape)
    ek = np.ones(y.shape, dtype=np.complex128)
    h = fa.rim_harmonics
    for k in range(len(h) // 2):
        ek = ek * e
        m += h[2 * k] * ek.real + h[2 * k + 1] * ek.imag
    return m


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
        Fraction of the annulus that made no contact (NaN); default random in [0.02, 0.32], mostly small.

    Returns
    -------
    Surface
        Heights in um, NaN outside the measured breech face; ``meta`` records the
        firearm, model, firing seed and pose.
    """
    _level(spacing_um)                      # checks the spacing is one the fields are generated at
    rng = np.random.default_rng([7003, firearm.seed, int(seed)])
    rot = float(rng.uniform(0, 360)) if rotation_deg is None else float(rotation_deg)
    t = rng.uniform(-60.0, 60.0, 2)
    ty, tx = (float(t[0]), float(t[1])) if translation_um is None else map(float, translation_um)
    loss = 0.02 + 0.3 * float(rng.uniform(0, 1)) ** 2 if contact_loss is None else float(contact_loss)
    jitter = rng.normal(0.0, 12.0, 2)
    crop_r = firearm.outer_radius_um + float(rng.uniform(-25.0, 25.0))
    tilt_a, tilt = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.0, 3.0))
    contact_gain, rim_gain = float(rng.uniform(0.1, 0.35)), float(rng.uniform(0.7, 1.3))
    ap_jitter = float(rng.uniform(-15.0, 15.0))

    # Physical layout (um). Canvas pixel j sits at j * spacing (the Fourier fields are periodic over
    # _CANVAS_UM); the face centre is the canvas centre. Output pixel p covers [p, p + 1) * spacing - H, so a
    # coarse pixel is exactly the block of finer pixels it averages (the fast path matches resample()).
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
    tex = firearm.texture_amplitude_um * _band_field((7004, firearm.seed), spacing_um, slope=firearm.texture_slope)
    if firearm.aniso_amplitude_um:
        tex = tex + firearm.aniso_amplitude_um * _band_field(
            (7007, firearm.seed), spacing_um, slope=firearm.texture_slope,
            aniso=(firearm.aniso_angle_deg, firearm.aniso_ratio))
    z = _sample(tex.astype(np.float32), (fy_ + C) / spacing_um, (fx_ + C) / spacing_um) \
        + _class_marks(firearm, fy_, fx_)
    # geometry in the face frame: aperture (with a per-firing jitter), outer edge, rims, notch
    r = np.hypot(fy_, fx_)
    ay, ax = firearm.aperture_offset_um
    ay, ax = ay + jitter[0], ax + jitter[1]
    ap_r = firearm.aperture_radius_um + ap_jitter
    d_ap = np.hypot(fy_ - ay, fx_ - ax) - ap_r                   # > 0 on the face
    d_out = crop_r - r
    inside = (d_out >= 0) & (d_ap >= 0)
    mod = _rim_modulation(firearm, fy_, fx_)
    rim = rim_gain * mod * (firearm.rim_aperture_um * np.exp(-np.maximum(d_ap, 0) / firearm.rim_aperture_width_um)
                            + firearm.rim_outer_um * np.exp(-np.maximum(d_out, 0) / firearm.rim_outer_width_um))
    if firearm.notch is not None:
        na, nw, nl = firearm.notch
        u = (math.cos(math.radians(na)), math.sin(math.radians(na)))
        along = (fx_ - ax) * u[0] + (fy_ - ay) * u[1]
        across = -(fx_ - ax) * u[1] + (fy_ - ay) * u[0]
        inside &= ~((np.abs(across) < nw / 2) & (along > 0) & (along < ap_r + nl))
    # per-firing fields live in the image frame
    iy, ix = np.meshgrid((g + C) / spacing_um, (g + C) / spacing_um, indexing="ij")
    primer = _sample(_band_field((7005, firearm.seed, int(seed)), spacing_um).astype(np.float32), iy, ix)
    contact = _sample(_band_field((7006, firearm.seed, int(seed)), spacing_um, short_um=1500.0, long_um=4000.0,
                                  slope=0.5).astype(np.float32), iy, ix)
    contact = contact + tilt * (px * math.cos(tilt_a) + py * math.sin(tilt_a)) / firearm.outer_radius_um
    if inside.any():
        cv = contact[inside]
        cn = (contact - float(cv.mean())) / max(float(cv.std()), 1e-9)
        amp = np.clip(1.0 + contact_gain * cn, 0.3, 1.3)       # partial contact: a weaker impression
        if loss > 0:
            inside &= contact >= np.quantile(cv, loss)          # ... lost where weakest
    else:
        amp = np.ones_like(contact)
    noise = rng.standard_normal((m_out, m_out)) * (noise_um * 6.25 / spacing_um)   # pixel averages when coarse
    h = np.where(inside, amp * (z + rim) + primer_amplitude_um * primer + noise, np.nan)
    return Surface(h, spacing_um, {"source": f"synthetic:{firearm.seed}:{int(seed)}", "synthetic_firearm":
                                   firearm.seed, "synthetic_model": firearm.model, "synthetic_firing": int(seed),
                                   "rotation_deg": rot, "translation_um": (ty, tx), "synth_version": SYNTH_VERSION})


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
    preprocess : callable, optional, keyword-only
        Applied to every generated surface before it is returned (``Surface -> Surface``, at the
        surface's spacing), e.g. the normalisation a submitted scan goes through, so distractors
        are stored as a service stores exhibits. A module-level function (the catalogue is pickled
        into worker processes); its qualified name is part of ``repr`` and so of cache keys.
    """

    def __init__(self, *, id_offset: int = 0, firings_per_firearm: int = 2, firearm_offset: int = 0,
                 spacing_um: float = 12.5, n_models: int = 20, preprocess=None) -> None:
        if firings_per_firearm < 1:
            raise ValueError("firings_per_firearm must be >= 1")
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"preprocess must be a callable Surface -> Surface or None, got {preprocess!r}")
        _level(spacing_um)
        self.id_offset, self.per, self.firearm_offset = int(id_offset), int(firings_per_firearm), int(firearm_offset)
        self.spacing_um, self.n_models = float(spacing_um), int(n_models)
        self.preprocess = preprocess

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
        return s if self.preprocess is None else self.preprocess(s)

    def __repr__(self) -> str:
        pp = "" if self.preprocess is None else \
            f", preprocess={getattr(self.preprocess, '__module__', '?')}.{getattr(self.preprocess, '__qualname__', '?')}"
        return (f"SyntheticCatalogue(id_offset={self.id_offset}, firings_per_firearm={self.per}, "
                f"firearm_offset={self.firearm_offset}, spacing_um={self.spacing_um}{pp})")


def _snap(spacing_um: float) -> float:
    """Finest generated spacing that is not coarser than ``spacing_um``."""
    ok = [s for s in SPACINGS_UM if s <= spacing_um + 1e-9]
    return max(ok) if ok else SPACINGS_UM[-1]
