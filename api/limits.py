"""What the service agrees to work on: an upload's work is bounded by what its job will need.

A correlation job holds several float64 copies of the scan grid at its peak (reading, segmentation,
resampling; ``benchmarks/bench_fine_scan_job.py``, address space above the idle worker on a raw Fadul scan
resampled finer: 5.5 copies at 24 M points, 7.5 at 6 M, where fixed costs weigh more; 15-17 before the
breech-face kind test and the firing-pin extraction stopped working at the scan's own spacing), and it
resamples to :data:`JOB_SPACING_UM`, so a coarse grid is *enlarged* first. The memory a job needs is

    need = max(points in the file, points at JOB_SPACING_UM) x 8 bytes x ``job_working_copies``

and it must fit ``job_memory_budget_mb`` (Settings). The largest grid that fits is passed to the
reader as its declared-size limit, so an oversize grid is refused from its header, before anything is
decompressed or allocated (a 486 KB x3p declaring 7900 x 7900 float64 zeros used to pass every limit,
take 27 s to open and drive the server to 8.9 GB). After reading, degenerate surfaces are refused:
no or too few measured points, every height the same (e.g. all zero), a pixel spacing outside
[``min_spacing_um``, ``max_spacing_um``] (usually a unit error in the file).

Every refusal is a :class:`ScanRejected` with the HTTP status and a reason written for the person
uploading, not for a library caller.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from api.settings import Settings

__all__ = ["JOB_SPACING_UM", "ScanRejected", "max_scan_points", "job_bytes", "check_surface", "too_large"]

#: The finest grid a correlation job makes: ``preprocess_cartridge`` / ``preprocess_image`` output spacing
#: (tests/api/test_hardening.py checks that it is the library's default).
JOB_SPACING_UM = 6.25
_BYTES = 8  # float64


@dataclass
class ScanRejected(Exception):
    """An upload the service refuses: ``status`` (413 too large, 422 unusable) and a user-facing ``reason``."""

    status: int
    reason: str

    def __str__(self) -> str:
        return self.reason


def max_scan_points(settings: Settings) -> int:
    """Largest grid (points) the service opens: ``max_pixels`` or what fits the job memory budget."""
    budget = int(settings.job_memory_budget_mb) * 2**20
    return int(max(1, min(settings.max_pixels, budget // int(_BYTES * settings.job_working_copies))))


def job_points(n_points: int, spacing_um: float | None, *, enlarges: bool) -> int:
    """Points of the largest grid a job makes from ``n_points`` at ``spacing_um`` (resampled to
    :data:`JOB_SPACING_UM` when ``enlarges`` and the scan is coarser)."""
    if enlarges and spacing_um is not None and spacing_um > JOB_SPACING_UM:
        return int(np.ceil(n_points * (spacing_um / JOB_SPACING_UM) ** 2))
    return int(n_points)


def job_bytes(settings: Settings, n_points: int) -> int:
    return int(n_points * _BYTES * settings.job_working_copies)


def points_text(n: float) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{int(n):,}"


def too_large(settings: Settings, what: str) -> ScanRejected:
    """413 for a scan over the point limit (``what`` names the scan's size when known)."""
    return ScanRejected(413, f"file too large for this service: {what}; this service processes scans of at most "
                             f"{points_text(max_scan_points(settings))} points (ask the administrator to raise "
                             "BALLISTIC_JOB_MEMORY_BUDGET_MB or BALLISTIC_MAX_PIXELS if such scans are genuine)")


def check_surface(settings: Settings, surface, *, spacing_known: bool, enlarges: bool) -> None:
    """Refuse a degenerate or unworkable surface (:class:`ScanRejected`); returns None when it is usable.

    Parameters
    ----------
    surface : ballistic.surface.Surface
        The scan as read.
    spacing_known : bool
        Whether ``surface.spacing_um`` is a calibrated spacing (x3p; images only with ``spacing_um``).
    enlarges : bool
        Whether the job resamples it to :data:`JOB_SPACING_UM` (cartridge cases; bullets keep their grid).
    """
    h = surface.heights
    ny, nx = h.shape
    sp = float(surface.spacing_um)
    if spacing_known and not (settings.min_spacing_um <= sp <= settings.max_spacing_um):
        raise ScanRejected(422, (
            f"implausible pixel spacing: {sp:.4g} um per point (the scan would measure {nx * sp / 1000:.4g} x "
            f"{ny * sp / 1000:.4g} mm); this service accepts {settings.min_spacing_um:g} to "
            f"{settings.max_spacing_um:g} um. Check the units of the file (x3p stores metres)"))
    need = job_points(h.size, sp if spacing_known else None, enlarges=enlarges)
    if job_bytes(settings, need) > int(settings.job_memory_budget_mb) * 2**20:
        side = f"{int(nx * sp / JOB_SPACING_UM)} x {int(ny * sp / JOB_SPACING_UM)}"
        raise too_large(settings, f"at {sp:.4g} um per point its {nx} x {ny} grid becomes {side} points "
                                  f"({points_text(need)}) at the {JOB_SPACING_UM:g} um the comparison works at")
    valid = int(np.count_nonzero(np.isfinite(h)))
    if valid == 0:
        raise ScanRejected(422, "the scan holds no measured points (every value is missing)")
    if valid < settings.min_measured_points:
        raise ScanRejected(422, (
            f"too few measured points: {valid} of {h.size}; a comparison needs at least "
            f"{settings.min_measured_points}. Upload the full scan of the breech face or land"))
    lo, hi = float(np.nanmin(h)), float(np.nanmax(h))
    if not hi - lo > 1e-6 * max(1.0, abs(lo), abs(hi)):
        raise ScanRejected(422, (
            f"the scan is flat: every measured value is {lo:g}, so there are no marks to compare. "
            "The file holds no topography (an empty or failed export?)"))
