"""Polar input of the learned breech-face embedding (numpy only, no torch).

A preprocessed breech face (output of :func:`ballistic.cartridge.breech_face.preprocess_cartridge`,
any scanner, any orientation) becomes a fixed-size polar image about the centre of the
firing-pin aperture (:func:`aperture_centre`; the centre of the outer edge,
:func:`ballistic.retrieval.descriptor.annulus_centre`, where no aperture is found): rings every ``spacing_um``
from ``r_min_um`` to ``r_max_um``, ``n_theta`` angles. Both centres turn with the surface, so a
rotation of the breech face is a circular shift along the angle axis, which the network (circular
along angle, pooled over angle) does not see.

Why the aperture: the firing-pin hole is part of the breech face, so the firearm's marks sit at the
same place relative to it at every firing, while the primer's outer edge (what the annulus centre
follows) moves with the cartridge in the chamber. On the 40 Fadul scans, the best circular-shift
correlation of two polar images (an upper bound of what a rotation-invariant embedding of them can
do) ranks every mate in the top 10 about the aperture centre, 83 % of them about the outer-edge centre.

Two channels: the heights normalised per scan (median removed, divided by a robust
standard deviation, clipped at +-``clip``; 0 where missing) and the measured fraction
(1 measured, 0 missing; bilinear in between).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

# the centres are the library's (one implementation; the rotation-searched polar descriptor uses them too)
from ballistic.retrieval.descriptor import aperture_centre, polar_centre
from ballistic.preprocess.filters import resample
from ballistic.surface import Surface

__all__ = ["PolarGrid", "polar_input", "normalise_heights", "aperture_centre", "polar_centre"]


class PolarGrid:
    """Geometry of the polar input (lengths um).

    Parameters
    ----------
    spacing_um : float
        Cartesian spacing the surface is resampled to, and the ring spacing (default 25).
    r_min_um, r_max_um : float
        Radii of the first and last ring about the aperture centre (default 800 and 2400 um: firing-pin
        apertures are ~0.9-1.4 mm in radius, a 9 mm breech face reaches ~2.2 mm from an off-centre one).
    n_theta : int
        Angles per ring.
    """

    def __init__(self, spacing_um: float = 25.0, r_max_um: float = 2400.0, n_theta: int = 256,
                 r_min_um: float = 800.0) -> None:
        if not (spacing_um > 0 and 0 <= r_min_um and r_max_um > r_min_um + 4 * spacing_um and n_theta >= 16):
            raise ValueError(f"PolarGrid: need spacing_um > 0, 0 <= r_min_um < r_max_um - 4 spacing_um and "
                             f"n_theta >= 16, got {spacing_um}, {r_min_um}, {r_max_um}, {n_theta}")
        self.spacing_um, self.r_max_um, self.n_theta = float(spacing_um), float(r_max_um), int(n_theta)
        self.r_min_um = float(r_min_um)
        self.n_r = int(math.ceil((self.r_max_um - self.r_min_um) / self.spacing_um))
        radii = self.r_min_um / self.spacing_um + np.arange(self.n_r) + 0.5
        theta = np.arange(self.n_theta) * (2.0 * math.pi / self.n_theta)
        self._dx = (radii[:, None] * np.cos(theta)[None, :]).astype(np.float32)
        self._dy = (-radii[:, None] * np.sin(theta)[None, :]).astype(np.float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        return 2, self.n_r, self.n_theta

    def as_dict(self) -> dict:
        return {"spacing_um": self.spacing_um, "r_min_um": self.r_min_um, "r_max_um": self.r_max_um,
                "n_theta": self.n_theta}

    def sample(self, heights: np.ndarray, mask: np.ndarray, cy: float, cx: float, *,
               rotation_rad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Bilinear, mask-aware polar samples of ``heights`` (pixels at this grid's spacing) about (cy, cx).

        ``rotation_rad``: sample as if the surface had been turned by this angle (counter-clockwise);
        training uses it for exact rotations without resampling the Cartesian image.
        """
        z0 = np.where(mask, heights, 0.0).astype(np.float32)
        mf = mask.astype(np.float32)
        if rotation_rad:
            radii = self.r_min_um / self.spacing_um + np.arange(self.n_r) + 0.5
            theta = np.arange(self.n_theta) * (2.0 * math.pi / self.n_theta) - rotation_rad
            dx = (radii[:, None] * np.cos(theta)[None, :]).astype(np.float32)
            dy = (-radii[:, None] * np.sin(theta)[None, :]).astype(np.float32)
        else:
            dx, dy = self._dx, self._dy
        mx, my = dx + np.float32(cx), dy + np.float32(cy)
        zp = cv2.remap(z0, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        mp = cv2.remap(mf, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        ok = mp > 1e-3
        zp = np.where(ok, zp / np.where(ok, mp, 1.0), 0.0)   # mean of the measured neighbours
        return zp, mp


def normalise_heights(heights: np.ndarray, *, clip: float = 4.0) -> np.ndarray:
    """Heights minus their median, divided by a robust std (1.4826 MAD), clipped at +-clip; NaN stays NaN."""
    v = heights[np.isfinite(heights)]
    if v.size < 16:
        return np.full(heights.shape, np.nan)
    med = float(np.median(v))
    scale = 1.4826 * float(np.median(np.abs(v - med)))
    if not scale > 1e-9:
        scale = float(v.std()) or 1.0
    return np.clip((heights - med) / scale, -clip, clip)


def polar_input(surface: Surface, grid: PolarGrid | None = None, *, centre: tuple[float, float] | None = None,
                min_points: int = 64) -> np.ndarray:
    """The network input of one preprocessed breech face.

    Parameters
    ----------
    surface : Surface
        Heights (um), NaN outside the breech face, any spacing and orientation.
    grid : PolarGrid, optional
        Default ``PolarGrid()`` (25 um, 0.8-2.4 mm, 256 angles).
    centre : (cy, cx), optional, keyword-only
        Centre in pixels of ``surface`` resampled to ``grid.spacing_um``; default :func:`polar_centre`.
    min_points : int, keyword-only
        Fewer measured points at the grid spacing raise ``ValueError``.

    Returns
    -------
    ndarray of float32, shape (2, n_r, n_theta)
        Normalised heights (0 where missing) and measured fraction.
    """
    grid = grid or PolarGrid()
    s = resample(surface, spacing_um=grid.spacing_um)
    m = s.mask
    if int(m.sum()) < min_points:
        raise ValueError(f"polar_input: only {int(m.sum())} measured points at {grid.spacing_um} um "
                         f"(need {min_points}); is this a preprocessed breech face (preprocess_cartridge)?")
    cy, cx = polar_centre(s) if centre is None else centre
    zp, mp = grid.sample(normalise_heights(s.heights), m, cy, cx)
    return np.stack([zp * np.minimum(mp, 1.0), np.clip(mp, 0.0, 1.0)]).astype(np.float32)
