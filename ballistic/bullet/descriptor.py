"""Bullets, step 8: a fixed-length, shift-invariant vector of a land or a bullet for the retrieval index."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ballistic.bullet.profile import Signature
from ballistic.errors import BulletError

__all__ = ["bullet_descriptor", "BulletDescriptor", "BULLET_DESCRIPTOR_VERSION", "BULLET_DESCRIPTOR_DIM"]


BULLET_DESCRIPTOR_VERSION = "bullet-spectrum/1"
_DESC_BINS = 32
_DESC_MIN_WAVELENGTH_UM = 10.0
_DESC_MAX_WAVELENGTH_UM = 250.0
#: Length of :func:`bullet_descriptor` with its default settings.
BULLET_DESCRIPTOR_DIM = _DESC_BINS


def _signature_power(sig: Signature, edges_um: np.ndarray) -> np.ndarray:
    z = np.asarray(sig.values, dtype=np.float64)
    m = np.isfinite(z)
    if m.sum() < 16:
        raise BulletError("bullet_descriptor: a signature has fewer than 16 measured samples")
    z = np.where(m, z - z[m].mean(), 0.0) * np.hanning(z.shape[0])
    n = z.shape[0]
    nfft = int(2 ** math.ceil(math.log2(max(n, 2) * 2)))
    P = np.abs(np.fft.rfft(z, nfft)) ** 2
    freq = np.fft.rfftfreq(nfft, d=sig.spacing_um)  # cycles per um
    with np.errstate(divide="ignore"):
        wl = np.where(freq > 0, 1.0 / freq, np.inf)
    out = np.zeros(edges_um.shape[0] - 1)
    for k in range(out.shape[0]):
        hi, lo = edges_um[k], edges_um[k + 1]          # edges descending in wavelength
        sel = (wl <= hi) & (wl > lo)
        if sel.any():
            out[k] = P[sel].mean()
    return out / max(float(m.sum()), 1.0)


def bullet_descriptor(signature: Signature | Sequence[Signature | None], *, n_bins: int = _DESC_BINS,
                      min_wavelength_um: float = _DESC_MIN_WAVELENGTH_UM,
                      max_wavelength_um: float = _DESC_MAX_WAVELENGTH_UM) -> np.ndarray:
    """A fixed-length, shift-invariant vector for the retrieval index.

    The power spectrum of the signature (missing samples set to the mean, Hann
    window), averaged in ``n_bins`` logarithmically spaced wavelength bands
    between ``max_wavelength_um`` and ``min_wavelength_um``; square root, then
    L2-normalised. For a bullet (a sequence of land signatures) the land spectra
    are averaged first, so the vector does not depend on the land order either.

    Limits: the magnitude spectrum discards where each striation is, keeping only
    how rough the land is at each scale; lands of one barrel share it only
    loosely, and different barrels of one make and rifling resemble each other.
    It is a coarse pre-filter that orders candidates for :func:`bullet_score`,
    never evidence of a common source.

    Returns
    -------
    ndarray of float32, shape (n_bins,)
        L2-normalised (a zero vector only if every band is empty).
    """
    if not (0 < min_wavelength_um < max_wavelength_um) or n_bins < 1:
        raise BulletError("bullet_descriptor: need 0 < min_wavelength_um < max_wavelength_um and n_bins >= 1")
    sigs = [signature] if isinstance(signature, Signature) else [s for s in signature if s is not None]
    if not sigs:
        raise BulletError("bullet_descriptor: no signature given")
    edges = np.geomspace(max_wavelength_um, min_wavelength_um, n_bins + 1)
    for s in sigs:
        if not isinstance(s, Signature):
            raise BulletError(f"bullet_descriptor: expected Signature objects, got {type(s).__name__}")
        if 2 * s.spacing_um > min_wavelength_um:
            raise BulletError(f"bullet_descriptor: spacing {s.spacing_um} um cannot resolve "
                              f"min_wavelength_um={min_wavelength_um}; raise it to at least {2 * s.spacing_um}")
    P = np.mean([_signature_power(s, edges) for s in sigs], axis=0)
    v = np.sqrt(P)
    nrm = float(np.linalg.norm(v))
    return (v / nrm if nrm > 0 else v).astype(np.float32)


class BulletDescriptor:
    """:func:`bullet_descriptor` (default settings) as a descriptor model of the retrieval path
    (:class:`ballistic.retrieval.search.Retriever`): a bullet's land signatures -> float32 (``dim``,)."""

    version = BULLET_DESCRIPTOR_VERSION
    name = BULLET_DESCRIPTOR_VERSION
    dim = BULLET_DESCRIPTOR_DIM

    def __call__(self, signatures) -> np.ndarray:
        return np.asarray(bullet_descriptor(signatures), dtype=np.float32)

    def __repr__(self) -> str:
        return f"BulletDescriptor({self.version!r})"
