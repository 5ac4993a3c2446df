"""The :class:`Surface` type: a height map that carries its own pixel spacing.

Every array in this library that stands for a measured topography travels as a
``Surface`` so that filter cut-offs, cell sizes and translations can be given in
micrometres and converted to pixels at the one place that knows the spacing.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = ["Surface"]


@dataclass(frozen=True, eq=False)
class Surface:
    """A topography (or a 2D intensity image) on a regular grid.

    Parameters
    ----------
    heights : ndarray of float64, shape (ny, nx)
        Heights in micrometres (um). ``NaN`` marks missing or masked-out points;
        it is never a height of zero. Row 0 is the top (north) edge, as in x3p
        files with origin NW.
    spacing_um : float
        Pixel spacing in micrometres, the same along x and y.
    meta : dict
        Free-form provenance (file name, instrument, comment, units seen in the
        file). Never used in computations.
    """

    heights: np.ndarray
    spacing_um: float
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        h = np.asarray(self.heights)
        if h.ndim != 2:
            raise ValueError(f"Surface heights must be 2-D (ny, nx), got shape {h.shape}")
        if not np.issubdtype(h.dtype, np.floating):
            h = h.astype(np.float64)
        elif h.dtype != np.float64:
            h = h.astype(np.float64)
        if not np.isfinite(self.spacing_um) or self.spacing_um <= 0:
            raise ValueError(f"spacing_um must be a positive number of micrometres, got {self.spacing_um!r}")
        # Normalise every NaN flavour (R's NA is a signalling NaN) and infinities to a quiet NaN.
        h = np.where(np.isfinite(h), h, np.nan)
        object.__setattr__(self, "heights", h)
        object.__setattr__(self, "spacing_um", float(self.spacing_um))

    @property
    def shape(self) -> tuple[int, int]:
        return self.heights.shape  # type: ignore[return-value]

    @property
    def mask(self) -> np.ndarray:
        """Boolean array, True where a height was measured (not NaN)."""
        return ~np.isnan(self.heights)

    @property
    def valid_fraction(self) -> float:
        return float(self.mask.mean()) if self.heights.size else 0.0

    @property
    def extent_um(self) -> tuple[float, float]:
        """Physical size (height, width) in micrometres."""
        ny, nx = self.shape
        return ny * self.spacing_um, nx * self.spacing_um

    def with_heights(self, heights: np.ndarray, *, spacing_um: float | None = None, **meta: Any) -> "Surface":
        """Return a new Surface with other heights (and optionally spacing); meta is merged."""
        new_meta = {**self.meta, **meta}
        return replace(self, heights=heights, spacing_um=self.spacing_um if spacing_um is None else spacing_um,
                       meta=new_meta)
