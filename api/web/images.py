"""Pictures for examiners: shaded relief of an exhibit's scan and of a candidate pair in one frame.

Everything is drawn from the evidence store (the original, or the preprocessed surface the
correlation job wrote) with :mod:`ballistic.viz.render` and cached as PNG under
``<evidence>/derived/web/`` (write to a temporary name, then rename; a cached file is never
changed, its name carries the render version).

The pair view reuses :func:`ballistic.viz.explain.aligned_target` with the registration *stored* with
the candidate (nothing is compared again): the candidate is warped into the reference frame on a
grid of half the comparison spacing, so the explanation's cells (in comparison-spacing pixels of
the reference) land at ``CELL_SCALE`` times their coordinates.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

__all__ = ["RENDER_VERSION", "CELL_SCALE", "relief_png", "pair_pngs", "display_spacing", "shade_view"]

RENDER_VERSION = "r1"
#: display grid = comparison spacing / CELL_SCALE
CELL_SCALE = 2
#: shaded relief: light from the upper left, 45 degrees up, slopes exaggerated 5x (band-passed breech
#: faces have slopes of a few per cent), contrast stretched between the 1st and 99th percentiles
LIGHT = dict(azimuth_deg=315.0, altitude_deg=45.0, z_factor=5.0)
MAX_SIDE = 1200  # originals are shown at most this many pixels wide

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _stretch(img: np.ndarray) -> tuple[float, float]:
    m = np.isfinite(img)
    if not m.any():
        return 0.0, 1.0
    lo, hi = np.percentile(img[m], [1, 99])
    return float(lo), float(max(hi, lo + 1e-9))


def shade_view(surface, *, is_image: bool, z_factor: float | None = None) -> np.ndarray:
    """Intensities in [0, 1] (NaN = missing): a hillshade of a topography, or a 2D image as it is."""
    from ballistic.viz.render import shade

    if is_image:
        v = np.asarray(surface.heights, dtype=np.float64)
    else:
        kw = dict(LIGHT)
        if z_factor is not None:
            kw["z_factor"] = z_factor
        v = shade(surface, **kw)
    lo, hi = _stretch(v)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(v), np.clip((v - lo) / (hi - lo), 0, 1), np.nan)


def _write_png(path: Path, values: np.ndarray) -> None:
    from ballistic.io.atomic import atomic_write_bytes
    from ballistic.viz.render import to_png_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, to_png_bytes(values, missing="white", vmin=0.0, vmax=1.0))


def _cache_dir(rt) -> Path:
    return Path(rt.store.root) / "derived" / "web"


def _read(rt, path: Path):
    from ballistic.io.x3p import read_x3p

    return read_x3p(path, max_points=rt.settings.max_pixels)


def relief_png(rt, exhibit, view: str) -> Path | None:
    """PNG of an exhibit: ``processed`` (the surface that was compared) or ``original`` (as measured,
    plane removed). None when that surface does not exist yet."""
    is_image = exhibit.media_type != "x3p"
    if view == "processed":
        if not exhibit.derived_path:
            return None
        out = _cache_dir(rt) / f"exhibit-{exhibit.id}-processed-{exhibit.original_sha256[:16]}-{RENDER_VERSION}.png"
    elif view == "original":
        out = _cache_dir(rt) / f"exhibit-{exhibit.id}-original-{exhibit.original_sha256[:16]}-{RENDER_VERSION}.png"
    else:
        raise ValueError(f"unknown view {view!r}")
    if out.is_file():
        return out
    with _lock(str(out)):
        if out.is_file():
            return out
        if view == "processed":
            surf = _read(rt, rt.store.resolve(exhibit.derived_path))
            values = shade_view(surf, is_image=is_image)
        else:
            from api.limits import max_scan_points
            from ballistic.preprocess.filters import remove_trend, resample

            surf = rt.store.read_original(exhibit.original_sha256, exhibit.media_type, exhibit.spacing_um,
                                          max_points=max_scan_points(rt.settings))
            side = max(surf.shape)
            if side > MAX_SIDE:
                surf = resample(surf, spacing_um=surf.spacing_um * side / MAX_SIDE)
            if not is_image:
                try:
                    surf = remove_trend(surf)
                except Exception:  # a scan too sparse for a plane fit is shown as it is
                    pass
            values = shade_view(surf, is_image=is_image, z_factor=1.0)
        _write_png(out, values)
    return out


def display_spacing(explanation: dict | None) -> float:
    s = float(((explanation or {}).get("params") or {}).get("spacing_um") or 12.5)
    return s / CELL_SCALE


def direction_registration(candidate, direction: str) -> dict:
    """The registration of one direction of the stored comparison (``forward``: a -> b)."""
    ex = candidate.explanation or {}
    reg = (ex.get(direction) or {}).get("registration")
    if reg is None and direction == "forward":
        reg = candidate.registration
    if reg is None:
        raise LookupError(f"candidate {candidate.id} has no {direction} registration")
    return reg


def pair_pngs(rt, candidate, direction: str) -> tuple[Path, Path] | None:
    """(reference PNG, aligned candidate PNG) on one grid; ``forward`` takes exhibit a as the
    reference, ``backward`` exhibit b. None when a preprocessed surface is missing."""
    if direction not in ("forward", "backward"):
        raise ValueError(f"unknown direction {direction!r}")
    ref_ex, tgt_ex = ((candidate.exhibit_a, candidate.exhibit_b) if direction == "forward"
                      else (candidate.exhibit_b, candidate.exhibit_a))
    if not ref_ex.derived_path or not tgt_ex.derived_path:
        return None
    tag = re.sub(r"[^A-Za-z0-9._-]", "_", candidate.algorithm_version or "")
    base = _cache_dir(rt) / f"candidate-{candidate.id}-{direction}-{tag}-{RENDER_VERSION}"
    ref_png, tgt_png = Path(f"{base}-reference.png"), Path(f"{base}-aligned.png")
    if ref_png.is_file() and tgt_png.is_file():
        return ref_png, tgt_png
    with _lock(str(base)):
        if ref_png.is_file() and tgt_png.is_file():
            return ref_png, tgt_png
        from ballistic.viz.explain import aligned_target

        reg = direction_registration(candidate, direction)
        ds = display_spacing(candidate.explanation)
        ref_s = _read(rt, rt.store.resolve(ref_ex.derived_path))
        tgt_s = _read(rt, rt.store.resolve(tgt_ex.derived_path))
        # only .params.spacing_um and .registration are read: the stored registration, at the display grid
        stored = SimpleNamespace(params=SimpleNamespace(spacing_um=ds),
                                 registration=SimpleNamespace(angle_deg=float(reg["angle_deg"]),
                                                              dy_um=float(reg["dy_um"]), dx_um=float(reg["dx_um"]),
                                                              mirrored=bool(reg.get("mirrored", False))))
        ref, tgt = aligned_target(ref_s, tgt_s, stored, direction=direction)
        is_image = ref_ex.media_type != "x3p"
        from ballistic.surface import Surface

        _write_png(ref_png, shade_view(Surface(ref, ds), is_image=is_image))
        _write_png(tgt_png, shade_view(Surface(tgt, ds), is_image=tgt_ex.media_type != "x3p"))
    return ref_png, tgt_png
