"""Rotation-searched polar descriptor of breech faces ("bf-polar-phase/1"): the phases kept, the rotation searched.

The polar-FFT descriptor (:func:`~ballistic.retrieval.descriptor.breech_face_descriptor`) keeps the power of
each ring's angular harmonics. Power is rotation-invariant, but it discards the phases: where along a ring
each mark lies, and how the rings line up with one another. Two scans of one breech face share those; two
breech faces of one make share much of the power. This descriptor keeps the phases and searches the rotation
instead of discarding it:

1. the same polar sampling (:func:`~ballistic.retrieval.descriptor.ring_spectra`), but about the firing-pin
   aperture (:func:`~ballistic.retrieval.descriptor.polar_centre`; the outer edge where no aperture is found):
   phases need a centre that sits at the same place of the breech face at every firing, and the primer's outer
   edge moves with the cartridge (about the outer edge, recall@10 of the mates within Fadul was 0.948 / 0.929 in
   two rotation draws, within DFSC 0.897 / 0.824; about the aperture 1.000 / 0.988 and 1.000 / 0.985);
2. per radial band the *sum* of its rings' complex harmonics ``1..n_harmonics`` (the band's mean profile
   along the circle, phases kept; a small centre error blurs it less than it blurs single rings), bands with
   too few measured samples zero, each band scaled to unit norm, the whole to unit norm
   (:func:`polar_phase_coefficients`);
3. a rotation of a surface by ``a`` multiplies harmonic ``m`` by ``exp(-i m a)``, its mirror image
   (rows reversed) conjugates every harmonic, so two scans are compared by the largest real inner product
   of their coefficients over the rotations and the mirror image (:func:`rotation_similarity`, every
   ``360 / n_angles`` degrees by one FFT over the harmonics).

In an inner-product index (FAISS) a scan is stored as its coefficients' real and imaginary parts
(:class:`PolarPhaseDescriptor`, ``dim = 2 n_bands n_harmonics``); a query is expanded into its rotated and
mirrored copies (:meth:`PolarPhaseDescriptor.query_vectors`) and a candidate's score is the best inner product
of any copy with it - the same value :func:`rotation_similarity` gives at that angle step.
:class:`~ballistic.retrieval.search.Retriever` does the expansion for every descriptor that has
``query_vectors``. The row a candidate scored best with names its pose onto the query
(:meth:`PolarPhaseDescriptor.row_pose`: rotation and parity as a registration states them), which the later
stages may search near instead of the full circle (``RetrievalParams.pose_window_deg``).

Nothing is fitted: the bands, harmonics and sampling are the polar-FFT descriptor's own; 128 rotations (2.8
degrees) found the same mates as 512 on the real sets. It is the default descriptor
(:data:`~ballistic.retrieval.registry.DEFAULT_DESCRIPTOR`). Measured with ``ballistic bench retrieval DIR
--labels CSV --descriptor phase,polar --faiss-only --distractors 0,1000,10000 --factory Flat``
(``benchmarks/results/retrieval_phase_*.json``), FAISS-stage recall of the mates, rotation draw 0: 40 Fadul
queries among the 39 other Fadul scans @10 1.000 (polar-FFT 0.850 PCA-whitened, 0.706 raw), among 10 000
synthetic distractors @10 0.988, @100 0.994 (0.606, 0.848); 17 DFSC queries 1.000 (0.956) and 0.706, 0.868
(0.382, 0.471). A query is 256 index rows: 0.38 s (HNSW32) to 0.51 s (Flat) among 10^5 vectors on 2 cores,
against 2-40 ms for one row; IVF keeps too few mates (a mate is no near-duplicate of any row), and fewer rotations
or harmonics lose mates (README, "The descriptor's pose narrows the later stages").
"""
from __future__ import annotations

import hashlib

import numpy as np

from ballistic.errors import DescriptorError
from ballistic.retrieval.descriptor import (_N_BANDS, _N_HARMONICS, _N_THETA, _R_MAX_UM, _check_polar_settings,
                                            radial_bands, ring_spectra, unit_bands)
from ballistic.surface import Surface

__all__ = ["PHASE_DESCRIPTOR_VERSION", "polar_phase_coefficients", "rotation_similarity", "PolarPhaseDescriptor"]

PHASE_DESCRIPTOR_VERSION = "bf-polar-phase/1"


def polar_phase_coefficients(surface: Surface, *, spacing_um: float = 25.0, n_bands: int = _N_BANDS,
                             n_harmonics: int = _N_HARMONICS, n_theta: int = _N_THETA, r_max_um: float = _R_MAX_UM,
                             min_valid: float = 0.1, centre: str = "aperture") -> np.ndarray:
    """Complex angular harmonics of each radial band of a breech face, phases kept.

    Parameters
    ----------
    surface : Surface
        Output of :func:`ballistic.cartridge.breech_face.preprocess_cartridge` (heights um, NaN outside the
        breech face), any orientation.
    spacing_um, n_bands, n_harmonics, n_theta, r_max_um, min_valid : keyword-only
        As :func:`~ballistic.retrieval.descriptor.breech_face_descriptor` (the same defaults).
    centre : {"aperture", "annulus"}, keyword-only
        Centre of the polar grid (:func:`~ballistic.retrieval.descriptor.ring_spectra`).

    Returns
    -------
    ndarray of complex128, shape (n_bands, n_harmonics)
        Harmonic ``m = 1..n_harmonics`` of band ``b`` (the sum over its rings); each band with enough measured
        samples has unit norm, the others are zero; the whole has unit norm.

    Raises
    ------
    DescriptorError
        Bad settings, too few measured points, or no band measured well enough.
    """
    _check_polar_settings(spacing_um=spacing_um, r_max_um=r_max_um, n_harmonics=n_harmonics, n_theta=n_theta,
                          n_bands=n_bands)
    spec, cnt = ring_spectra(surface, spacing_um=spacing_um, n_theta=n_theta, r_max_um=r_max_um, centre=centre)
    band_of, measured = radial_bands(cnt, n_bands=n_bands, n_theta=n_theta)
    C = np.zeros((n_bands, n_harmonics), dtype=np.complex128)
    np.add.at(C, band_of, spec[:, 1:n_harmonics + 1])
    unit_bands(C, measured, min_valid=min_valid, r_max_um=r_max_um, what="polar_phase_coefficients")
    return C / np.linalg.norm(C)


def _as_coefficients(x, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim < 2 or not np.iscomplexobj(a):
        raise DescriptorError(f"rotation_similarity: {what} must be complex coefficients of shape (..., n_bands, "
                              f"n_harmonics) (polar_phase_coefficients), got {a.dtype} {a.shape}")
    return a


def rotation_similarity(query: np.ndarray, candidates: np.ndarray, *, mirror: bool = True,
                        n_angles: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Largest inner product of two breech faces' coefficients over rotations (and the mirror image).

    ``S(a) = Re sum_b sum_m Q[b, m] conj(C[b, m] exp(-i m a))`` is the inner product of the query with the
    candidate rotated by ``a`` (counter-clockwise as displayed); it is evaluated at ``a = 360 k / n_angles``
    degrees by one inverse FFT over the harmonics, and with ``mirror`` for the candidate's mirror image too.

    Parameters
    ----------
    query : ndarray of complex, shape (n_bands, n_harmonics)
        :func:`polar_phase_coefficients` of the query.
    candidates : ndarray of complex, shape (n, n_bands, n_harmonics) or (n_bands, n_harmonics)
        The same of each candidate.
    mirror : bool, keyword-only
        Also try each candidate's mirror image (x3p exporters disagree on the direction of the y axis).
    n_angles : int, keyword-only
        Rotations searched over the circle; must exceed ``n_harmonics``.

    Returns
    -------
    score : ndarray of float, shape (n,)
        The largest ``S`` (in [-1, 1] for unit-norm coefficients).
    angle_deg : ndarray of float, shape (n,)
        The rotation of the candidate (degrees, counter-clockwise as displayed, in [0, 360)) that gives it.
    mirrored : ndarray of bool, shape (n,)
        True where the candidate's mirror image (rows reversed) scored best.
    """
    Q = _as_coefficients(query, "query")
    C = _as_coefficients(candidates, "candidates")
    single = C.ndim == 2
    C = C[None] if single else C
    if Q.shape != C.shape[1:]:
        raise DescriptorError(f"rotation_similarity: query {Q.shape} and candidates {C.shape[1:]} differ in "
                              "(n_bands, n_harmonics); describe both with the same settings")
    n_h = Q.shape[1]
    if int(n_angles) <= n_h:
        raise DescriptorError(f"rotation_similarity: n_angles ({n_angles}) must exceed the harmonics ({n_h})")
    best, angle, flip = _rotation_max(Q, C, int(n_angles), bool(mirror))
    if single:
        return best[:1], angle[:1], flip[:1]
    return best, angle, flip


def _rotation_max(Q: np.ndarray, C: np.ndarray, n_angles: int, mirror: bool):
    """Per candidate: max over the sampled rotations (and the mirror) of S, its angle and parity."""
    n_h = Q.shape[1]
    full = np.zeros((C.shape[0], n_angles), dtype=np.complex128)
    best = np.full(C.shape[0], -np.inf)
    angle = np.zeros(C.shape[0])
    flip = np.zeros(C.shape[0], dtype=bool)
    for parity in ((False, True) if mirror else (False,)):
        # the mirror image's coefficients are conj(C): Q conj(conj(C)) = Q C
        full[:, 1:n_h + 1] = np.einsum("bm,nbm->nm", Q, C if parity else np.conj(C))
        S = np.fft.ifft(full, axis=1).real * n_angles
        k = S.argmax(axis=1)
        v = S[np.arange(len(k)), k]
        better = v > best
        best = np.where(better, v, best)
        angle = np.where(better, k * (360.0 / n_angles), angle)
        flip = np.where(better, parity, flip)
    return best, angle, flip


class PolarPhaseDescriptor:
    """:class:`~ballistic.retrieval.descriptor.DescriptorModel` of :func:`polar_phase_coefficients` for an
    inner-product index, searched over rotations by query expansion.

    ``__call__`` gives the stored vector: the coefficients' real and imaginary parts interleaved, float32,
    unit norm, ``dim = 2 n_bands n_harmonics`` (1280 with the defaults). Its plain inner product with another
    is the similarity at one orientation only; :meth:`query_vectors` gives the query's copies rotated every
    ``360 / n_rotations`` degrees (and mirrored), and the best inner product of any copy with a stored vector
    is :func:`rotation_similarity` at that step. :class:`~ballistic.retrieval.search.Retriever` searches with
    the copies and keeps each candidate's best; never index these vectors through a PCA whitener (it would mix
    the harmonics that the expansion rotates separately).
    """

    def __init__(self, *, spacing_um: float = 25.0, n_bands: int = _N_BANDS, n_harmonics: int = _N_HARMONICS,
                 n_theta: int = _N_THETA, r_max_um: float = _R_MAX_UM, min_valid: float = 0.1,
                 centre: str = "aperture", n_rotations: int = 128, mirror: bool = True) -> None:
        if int(n_rotations) <= n_harmonics:
            raise DescriptorError(f"n_rotations ({n_rotations}) must exceed n_harmonics ({n_harmonics})")
        self.kwargs = dict(spacing_um=float(spacing_um), n_bands=int(n_bands), n_harmonics=int(n_harmonics),
                           n_theta=int(n_theta), r_max_um=float(r_max_um), min_valid=float(min_valid),
                           centre=str(centre))
        self.n_rotations = int(n_rotations)
        self.mirror = bool(mirror)
        self.dim = 2 * self.kwargs["n_bands"] * self.kwargs["n_harmonics"]
        opts = "&".join(f"{k}={v:g}" if not isinstance(v, str) else f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        # the expansion changes the scores, not the stored vectors, but an index names what answered it
        self.name = f"{PHASE_DESCRIPTOR_VERSION}?{opts}&n_rotations={self.n_rotations}&mirror={int(self.mirror)}"
        # what a database records (descriptor_version, at most 100 characters): the version and a digest of the
        # whole name, so any other setting is another version and triggers a re-index
        self.version = f"{PHASE_DESCRIPTOR_VERSION}?{hashlib.sha256(self.name.encode()).hexdigest()[:16]}"

    def coefficients(self, surface: Surface) -> np.ndarray:
        """:func:`polar_phase_coefficients` with this descriptor's settings."""
        return polar_phase_coefficients(surface, **self.kwargs)

    def __call__(self, surface: Surface) -> np.ndarray:
        C = self.coefficients(surface)
        return np.stack([C.real, C.imag], axis=-1).astype(np.float32).ravel()

    def query_vectors(self, vector: np.ndarray) -> np.ndarray:
        """The stored-format ``vector`` rotated every ``360 / n_rotations`` degrees, then (``mirror``) the same
        for its mirror image: float32, shape (n_rotations or 2 n_rotations, dim).

        Row ``k`` scores a stored candidate rotated by ``360 k / n_rotations`` degrees; row ``n_rotations + k``
        its mirror image rotated so.
        """
        v = np.asarray(vector, dtype=np.float64)
        if v.shape != (self.dim,):
            raise DescriptorError(f"query_vectors: expected a ({self.dim},) vector of this descriptor, got {v.shape}")
        nb, nh = self.kwargs["n_bands"], self.kwargs["n_harmonics"]
        Q = (v[0::2] + 1j * v[1::2]).reshape(nb, nh)
        a = np.arange(self.n_rotations) * (2.0 * np.pi / self.n_rotations)
        # Re sum Q e^{i m a} conj(C) = Re sum Q conj(C e^{-i m a}); the mirror: conj(Q e^{i m a})
        rot = Q[None] * np.exp(1j * np.outer(a, np.arange(1, nh + 1)))[:, None, :]
        rows = np.concatenate([rot, np.conj(rot)]) if self.mirror else rot
        return np.stack([rows.real, rows.imag], axis=-1).reshape(len(rows), self.dim).astype(np.float32)

    def row_pose(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """The pose each row of :meth:`query_vectors` stands for, as a registration states it.

        Parameters
        ----------
        rows : array_like of int
            Row numbers of :meth:`query_vectors` (e.g. the row a candidate scored best with).

        Returns
        -------
        angle_deg : ndarray of float, shape like ``rows``
            Rotation of the candidate onto the query (degrees, counter-clockwise as displayed, in [0, 360)):
            :attr:`~ballistic.cartridge.cmc.register.Registration.angle_deg` of the comparison of the query
            (reference) with the candidate (target), to within the row step (``360 / n_rotations``) and the
            descriptor's own error.
        mirrored : ndarray of bool
            True for the mirror-image rows (the candidate mirrored, as ``Registration.mirrored``).
        """
        r = np.asarray(rows, dtype=np.int64)
        n = self.n_rotations * (2 if self.mirror else 1)
        if r.size and (r.min() < 0 or r.max() >= n):
            raise DescriptorError(f"row_pose: rows must be in [0, {n}) (the rows of query_vectors), got "
                                  f"{int(r.min())}..{int(r.max())}")
        return (r % self.n_rotations) * (360.0 / self.n_rotations), r >= self.n_rotations

    def __repr__(self) -> str:
        return f"PolarPhaseDescriptor({self.name})"
