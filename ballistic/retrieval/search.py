"""Candidate retrieval: FAISS shortlist by descriptor, coarse full-circle NCC, then CMC re-ranking.

A query breech face is searched in a national database in three stages:

1. **descriptor** - :func:`ballistic.retrieval.descriptor.breech_face_descriptor` (optionally
   PCA-whitened) searched in a :class:`ballistic.retrieval.index.VectorIndex`: top ``k``
   candidates (cheap, millions of entries per second);
1b. **screen** (``screen_k > 0``) - the same registration as stage 2 at 100 um
   every 8 degrees (~1.5 ms a candidate, on stored coarse thumbnails) keeps the
   best ``screen_k`` of the ``k``;
2. **rotation prior** - each of those ``k`` candidates is registered to the
   query at a coarse spacing (default 50 um) over the full circle (every
   ``prior_step_deg``), translation by masked NCC (FFT, the query's rotated
   stack transformed once per query): :func:`rotation_prior_scores`. This is the
   first step of :func:`ballistic.cartridge.cmc.register.register_global`, about 10 ms a pair;
3. **CMC** - the best ``cmc_k`` of stage 2 are compared with
   :func:`ballistic.cartridge.cmc.pair.compare_pair` (about 0.15 s a pair) in a process pool.

The result lists the ``k`` candidates: the ``cmc_k`` CMC-compared ones first, by
CMC similarity (ties by stage-2 score), then the others by stage-2 score. Every
candidate carries all the scores it got.

Candidates' surfaces come from a ``fetch(id)`` callable returning a
:class:`~ballistic.surface.Surface` (preprocessed breech face) or a
:class:`~ballistic.cartridge.cmc.params.PreparedSurface`. If ``fetch`` accepts a keyword
``spacing_um``, stage 2 asks for a coarse version (``spacing_um=prior spacing``);
stage 3 calls ``fetch(id)`` (a surface at the comparison spacing or finer). With
``workers > 1``, ``fetch`` runs in the worker processes and must be picklable
(a module-level function or an object with a ``__call__``).
"""
from __future__ import annotations

import inspect
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import scipy.fft as sfft

from ballistic.cartridge.cmc.pair import compare_pair
from ballistic.cartridge.cmc.params import CMCParams, PreparedSurface, centre_heights, prepare
from ballistic.cartridge.cmc.register import warp_to_reference
from ballistic.preprocess.filters import resample
from ballistic.retrieval.descriptor import DescriptorModel, PCAWhitener, PolarFFTDescriptor
from ballistic.retrieval.index import VectorIndex
from ballistic.surface import Surface

__all__ = ["RetrievalParams", "Candidate", "RetrievalResult", "RotationPrior", "rotation_prior_scores", "Retriever"]

Fetch = Callable[..., "Surface | PreparedSurface"]


@dataclass(frozen=True)
class RetrievalParams:
    """Settings of the three stages. Lengths in um, angles in degrees.

    k : FAISS candidates per query (stage 1); the result lists this many.
    screen_k : when > 0, a cheaper rotation prior (``screen_spacing_um``, every ``screen_step_deg``;
        ~1.5 ms a candidate at 100 um / 8 degrees) ranks all ``k`` first and only its best
        ``screen_k`` go on to stage 2 (stage "1b").
    cmc_k : candidates compared with CMC (stage 3); 0 skips it. ``cmc_k >= k`` compares all.
    prior : run stage 2; when False, stage 3 takes the top ``cmc_k`` by descriptor score.
    prior_spacing_um, prior_step_deg : stage-2 grid (the full circle every step).
    max_shift_fraction, min_overlap : stage-2 translation window (fraction of the query size)
        and minimum shared area (fraction of the smaller measured area), as in :class:`CMCParams`.
    workers : processes for stages 1b, 2 and 3 (1 = in this process).

    The defaults are the configuration measured by ``ballistic bench retrieval`` (40 real Fadul
    scans among 1e5 synthetic distractors, the JSON it writes).
    """

    k: int = 1000
    cmc_k: int = 10
    screen_k: int = 50
    screen_spacing_um: float = 100.0
    screen_step_deg: float = 8.0
    prior: bool = True
    prior_spacing_um: float = 50.0
    prior_step_deg: float = 4.0
    max_shift_fraction: float = 0.3
    min_overlap: float = 0.4
    workers: int = 2
    cmc: CMCParams = field(default_factory=CMCParams)

    def __post_init__(self) -> None:
        if self.k < 1 or self.cmc_k < 0:
            raise ValueError(f"need k >= 1 and cmc_k >= 0, got k={self.k}, cmc_k={self.cmc_k}")
        if not (self.prior_spacing_um > 0 and 0 < self.prior_step_deg <= 90):
            raise ValueError("prior_spacing_um must be > 0 um and prior_step_deg in (0, 90] degrees")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


@dataclass
class Candidate:
    """One ranked candidate. Scores a stage did not compute are NaN / None."""

    id: int
    rank: int                       # 1-based final rank
    descriptor_score: float         # stage 1 (inner product of whitened descriptors)
    screen_ncc: float = float("nan")  # stage 1b (masked NCC at the screening spacing, best angle)
    prior_ncc: float = float("nan")  # stage 2 (masked NCC at the prior spacing, best angle)
    prior_angle_deg: float = float("nan")
    cmc_count: int | None = None    # stage 3
    similarity: float | None = None
    identification: bool | None = None
    summary: dict | None = None     # PairResult.summary() of the CMC comparison

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        for key in ("descriptor_score", "screen_ncc", "prior_ncc", "prior_angle_deg"):
            d[key] = None if not np.isfinite(d[key]) else round(float(d[key]), 6)
        return d


@dataclass
class RetrievalResult:
    candidates: list[Candidate]
    seconds: dict[str, float]       # per stage and total (wall clock)
    params: RetrievalParams

    def ids(self) -> np.ndarray:
        return np.array([c.id for c in self.candidates], dtype=np.int64)


# ----------------------------------------------------------------------------------------- stage 2

class RotationPrior:
    """The query side of the stage-2 registration: its rotated stack, Fourier-transformed once.

    Parameters
    ----------
    query : Surface or PreparedSurface
        Preprocessed breech face. A PreparedSurface's ``prior`` view is used
        when it is at ``spacing_um``.
    spacing_um : float, keyword-only
    step_deg : float, keyword-only
        Rotations tried: ``0, step, 2 step, ... < 360``.
    max_shift_fraction : float, keyword-only
        Translations searched: +- this fraction of the query's size.
    canvas_um : float, optional, keyword-only
        Side of the square canvas candidates are centred on; default just holds the
        query (candidates' outer rims beyond it are cut).
    """

    def __init__(self, query: Surface | PreparedSurface, *, spacing_um: float = 50.0, step_deg: float = 4.0,
                 max_shift_fraction: float = 0.3, min_overlap: float = 0.4, canvas_um: float | None = None) -> None:
        h = _heights_at(query, spacing_um)
        self.spacing_um = float(spacing_um)
        self.angles = np.arange(0.0, 360.0, float(step_deg))
        ny, nx = h.shape
        # canvas: the disc holding every measured point of the query (breech faces are annuli, so a
        # rotation about the centre stays inside it), at least the query's box and canvas_um
        yy, xx = np.nonzero(np.isfinite(h))
        rad = float(np.hypot(yy - (ny - 1) / 2.0, xx - (nx - 1) / 2.0).max()) if yy.size else 1.0
        self.N = max(int(2 * math.ceil(rad) + 3), ny, nx, int(math.ceil((canvas_um or 0.0) / spacing_um)))
        self.max_shift = max(1, int(max_shift_fraction * max(ny, nx)))
        self.min_overlap = float(min_overlap)
        self.L = sfft.next_fast_len(self.N + self.max_shift, real=True)
        st = np.stack([warp_to_reference(h, a, 0.0, 0.0, (self.N, self.N)) for a in self.angles])
        m = np.isfinite(st)
        g = np.where(m, st, 0.0).astype(np.float32)
        s = (self.L, self.L)
        self._Gg = np.conj(sfft.rfft2(g, s=s))
        self._Gg2 = np.conj(sfft.rfft2(g * g, s=s))
        self._Gm = np.conj(sfft.rfft2(m.astype(np.float32), s=s))
        self._count = int(np.isfinite(h).sum())
        r = np.r_[0:self.max_shift + 1, self.L - self.max_shift:self.L]
        self._sel = (slice(None), r[:, None], r[None, :])

    def score(self, candidate: Surface | PreparedSurface | np.ndarray) -> tuple[float, float]:
        """Best masked NCC over rotations and translations, and its angle (degrees).

        ``candidate``: a Surface / PreparedSurface, or heights (um) already at
        ``spacing_um``. Returns ``(-inf, nan)`` when nothing overlaps enough.
        """
        return tuple(self.score_many([candidate])[0])  # type: ignore[return-value]

    def score_many(self, candidates, *, batch: int = 1) -> np.ndarray:
        """:meth:`score` for many candidates (``batch`` per transform; larger batches were slower at
        50 um, memory-bound). Returns (n, 2): ncc, angle."""
        hs = [c if isinstance(c, np.ndarray) else _heights_at(c, self.spacing_um) for c in candidates]
        out = np.empty((len(hs), 2))
        for lo in range(0, len(hs), batch):
            out[lo:lo + batch] = self._score_batch(hs[lo:lo + batch])
        return out

    def _score_batch(self, hs: list[np.ndarray]) -> np.ndarray:
        N = self.N
        f = np.full((len(hs), N, N), np.nan, dtype=np.float32)
        for b, h in enumerate(hs):
            ny, nx = h.shape
            if ny > N or nx > N:     # larger than the canvas: keep the centre
                oy, ox = max(0, (ny - N) // 2), max(0, (nx - N) // 2)
                h = h[oy:oy + N, ox:ox + N]
                ny, nx = h.shape
            oy, ox = (N - ny) // 2, (N - nx) // 2
            f[b, oy:oy + ny, ox:ox + nx] = h
        fm = np.isfinite(f)
        f0 = np.where(fm, f, 0.0).astype(np.float32)
        s = (self.L, self.L)
        ax = (-2, -1)
        Ff, Ff2, Fm = (sfft.rfft2(x, s=s, axes=ax)[:, None] for x in (f0, f0 * f0, fm.astype(np.float32)))
        sel = (slice(None),) + self._sel

        def inv(x):
            return sfft.irfft2(x, s=s, axes=ax)[sel]

        n = np.rint(inv(Fm * self._Gm))                       # (B, angles, shifts, shifts)
        sf, sg = inv(Ff * self._Gm), inv(Fm * self._Gg)
        sff, sgg, sfg = inv(Ff2 * self._Gm), inv(Fm * self._Gg2), inv(Ff * self._Gg)
        cnt = fm.sum(axis=(1, 2))
        mo = np.maximum(16.0, self.min_overlap * np.minimum(cnt, self._count))[:, None, None, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            nn = np.maximum(n, 1.0)
            cov = sfg - sf * sg / nn
            den = np.sqrt(np.maximum(sff - sf * sf / nn, 0.0) * np.maximum(sgg - sg * sg / nn, 0.0))
            c = np.where((n >= mo) & (den > 1e-6 * np.maximum(np.sqrt(np.abs(sff * sgg)), 1e-30)), cov / den,
                         -np.inf)
        per_angle = c.reshape(len(hs), len(self.angles), -1).max(axis=2)
        k = per_angle.argmax(axis=1)
        best = per_angle[np.arange(len(hs)), k]
        ang = np.where(np.isfinite(best), self.angles[k], np.nan)
        return np.stack([np.where(np.isfinite(best), np.minimum(best, 1.0), -np.inf), ang], axis=1)


def _heights_at(x: Surface | PreparedSurface, spacing_um: float) -> np.ndarray:
    if isinstance(x, PreparedSurface):
        # the prior view is at CMCParams.prior_spacing_um (not stored): infer it from the view sizes
        prior_sp = x.spacing_um * x.fine.shape[0] / max(1, x.prior.shape[0])
        if abs(prior_sp - spacing_um) / spacing_um < 0.05:
            return x.prior
        return centre_heights(resample(Surface(x.fine, x.spacing_um), spacing_um=spacing_um).heights)
    if isinstance(x, Surface):
        if x.spacing_um > spacing_um * 1.0001:
            raise ValueError(f"candidate surface is at {x.spacing_um} um, coarser than the {spacing_um} um the "
                             "rotation prior needs; fetch a finer version")
        return centre_heights(resample(x, spacing_um=spacing_um).heights)
    raise TypeError(f"expected a Surface or PreparedSurface, got {type(x).__name__}")


def rotation_prior_scores(query: Surface | PreparedSurface, candidates: Iterable[Surface | PreparedSurface], *,
                          spacing_um: float = 50.0, step_deg: float = 4.0, max_shift_fraction: float = 0.3,
                          min_overlap: float = 0.4) -> np.ndarray:
    """Stage-2 score of each candidate against ``query``: best masked NCC over the full circle.

    Returns
    -------
    ndarray of float64, shape (n, 2)
        ``(ncc, angle_deg)`` per candidate (``-inf, nan`` where nothing overlaps enough).
    """
    rp = RotationPrior(query, spacing_um=spacing_um, step_deg=step_deg, max_shift_fraction=max_shift_fraction,
                       min_overlap=min_overlap)
    out = [rp.score(c) for c in candidates]
    return np.array(out, dtype=np.float64).reshape(-1, 2)


# ----------------------------------------------------------------------------------------- workers

_W: dict[str, Any] = {}


def _accepts_spacing(fetch: Fetch) -> bool:
    try:
        return "spacing_um" in inspect.signature(fetch).parameters
    except (TypeError, ValueError):
        return False


def _w_init(fetch: Fetch) -> None:
    _W["fetch"] = fetch
    _W["spacing"] = _accepts_spacing(fetch)
    _W["prior"] = (None, None)


def _fetch_coarse(i: int, spacing_um: float):
    f = _W["fetch"]
    return f(int(i), spacing_um=spacing_um) if _W["spacing"] else f(int(i))


def _w_prior(args) -> list[tuple[int, float, float]]:
    token, query, rp_kwargs, ids = args
    key, rp = _W["prior"]
    token = (token, tuple(sorted(rp_kwargs.items())))
    if key != token:
        rp = RotationPrior(query, **rp_kwargs)
        _W["prior"] = (token, rp)
    sc = rp.score_many([_fetch_coarse(i, rp.spacing_um) for i in ids])
    return [(int(i), float(v), float(a)) for i, (v, a) in zip(ids, sc)]


def _w_cmc(args) -> tuple[int, dict]:
    query, i, params = args
    cand = _W["fetch"](int(i))
    r = compare_pair(query, cand, params)
    return int(i), r.summary()


# ----------------------------------------------------------------------------------------- retriever

class Retriever:
    """Three-stage search of a query breech face in a :class:`VectorIndex`.

    Parameters
    ----------
    index : VectorIndex
        Holds (whitened) descriptors under stable ids.
    fetch : callable
        ``fetch(id) -> Surface | PreparedSurface`` of a candidate (see module docs).
    descriptor : DescriptorModel, keyword-only
        Must be the one the index was built with.
    whitener : PCAWhitener, optional, keyword-only
        Applied to the query descriptor when the index holds whitened vectors.
    params : RetrievalParams, keyword-only

    Use as a context manager (or call :meth:`close`) to stop the worker processes.
    """

    def __init__(self, index: VectorIndex, fetch: Fetch, *, descriptor: DescriptorModel | None = None,
                 whitener: PCAWhitener | None = None, params: RetrievalParams | None = None) -> None:
        self.index = index
        self.fetch = fetch
        self.descriptor = descriptor or PolarFFTDescriptor()
        self.whitener = whitener
        self.params = params or RetrievalParams()
        dim = whitener.out_dim if whitener is not None else self.descriptor.dim
        if dim != index.dim:
            raise ValueError(f"index holds {index.dim}-d vectors but the descriptor{' + whitener' if whitener else ''} "
                             f"gives {dim}-d; use the whitener/descriptor the index was built with")
        self._pool: ProcessPoolExecutor | None = None
        self._token = 0
        _w_init(fetch)   # in-process use (workers == 1)

    def _executor(self) -> ProcessPoolExecutor | None:
        if self.params.workers <= 1:
            return None
        if self._pool is None:
            import multiprocessing as mp
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
            self._pool = ProcessPoolExecutor(self.params.workers, mp_context=ctx, initializer=_w_init,
                                             initargs=(self.fetch,))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self, surface: Surface) -> np.ndarray:
        """Query vector as stored in the index (descriptor, then whitener)."""
        v = self.descriptor(surface)
        return self.whitener.transform(v) if self.whitener is not None else v

    def _rotation_stage(self, pool, surface, ids, spacing_um, step_deg, p) -> list[tuple[int, float, float]]:
        """Score ``ids`` with a RotationPrior at (spacing_um, step_deg), in the pool when there is one."""
        rp_kwargs = dict(spacing_um=spacing_um, step_deg=step_deg, max_shift_fraction=p.max_shift_fraction,
                         min_overlap=p.min_overlap)
        # send the query at the stage's spacing: workers rebuild its rotated stack from a few KB
        q = resample(surface, spacing_um=spacing_um) \
            if isinstance(surface, Surface) and surface.spacing_um < spacing_um else surface
        n_chunks = max(1, min(len(ids), 4 * p.workers))
        chunks = [ids[j::n_chunks] for j in range(n_chunks)]
        tasks = [((id(self), self._token), q, rp_kwargs, c) for c in chunks]
        results = list(pool.map(_w_prior, tasks)) if pool else [_w_prior(tk) for tk in tasks]
        return [r for res in results for r in res]

    def query(self, surface: Surface | PreparedSurface, *, partition: str | None = "any", exclude: Iterable[int] = (),
              params: RetrievalParams | None = None, vector: np.ndarray | None = None) -> RetrievalResult:
        """Rank database candidates for one preprocessed query breech face.

        Parameters
        ----------
        surface : Surface or PreparedSurface
            The query (output of preprocess_cartridge), any orientation. A
            PreparedSurface needs ``vector``.
        partition : str or None, keyword-only
            Index partition to search (``None``: all).
        exclude : iterable of int, keyword-only
            Ids never returned (e.g. the query's own entry).
        params : RetrievalParams, optional, keyword-only
            Overrides the retriever's settings for this query (``workers`` is fixed).
        vector : ndarray, optional, keyword-only
            Precomputed query vector (as stored in the index).

        Returns
        -------
        RetrievalResult
        """
        p = params or self.params
        t0 = time.perf_counter()
        sec: dict[str, float] = {}
        excl = set(int(i) for i in exclude)
        if vector is None:
            if not isinstance(surface, Surface):
                raise TypeError("query(): pass the query Surface, or a PreparedSurface together with vector=")
            vector = self.describe(surface)
        sec["descriptor"] = time.perf_counter() - t0
        t = time.perf_counter()
        scores, ids = self.index.search(np.asarray(vector, dtype=np.float32)[None, :] if np.ndim(vector) == 1
                                        else vector, p.k + len(excl), partition=partition)
        keep = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0 and int(i) not in excl][:p.k]
        sec["index"] = time.perf_counter() - t
        cands = {i: Candidate(i, 0, s) for i, s in keep}
        order = [i for i, _ in keep]
        pool = self._executor()
        self._token += 1
        if p.screen_k and len(order) > p.screen_k:
            t = time.perf_counter()
            res = self._rotation_stage(pool, surface, order, p.screen_spacing_um, p.screen_step_deg, p)
            for i, ncc, _ in res:
                cands[i].screen_ncc = ncc
            order.sort(key=lambda i: -_finite(cands[i].screen_ncc))
            sec["screen"] = time.perf_counter() - t
        if p.prior and order:
            t = time.perf_counter()
            head = order[:p.screen_k] if p.screen_k else order
            for i, ncc, ang in self._rotation_stage(pool, surface, head, p.prior_spacing_um, p.prior_step_deg, p):
                cands[i].prior_ncc, cands[i].prior_angle_deg = ncc, ang
            head.sort(key=lambda i: -_finite(cands[i].prior_ncc))
            order = head + order[len(head):]
            sec["prior"] = time.perf_counter() - t
        top = order[:p.cmc_k]
        if top:
            t = time.perf_counter()
            qprep = surface if isinstance(surface, PreparedSurface) else prepare(surface, p.cmc)
            tasks = [(qprep, i, p.cmc) for i in top]
            results = list(pool.map(_w_cmc, tasks)) if pool else [_w_cmc(tk) for tk in tasks]
            for i, summ in results:
                c = cands[i]
                c.cmc_count, c.similarity = int(summ["cmc_count"]), float(summ["similarity"])
                c.identification, c.summary = bool(summ["identification"]), summ
            top.sort(key=lambda i: (-cands[i].similarity, -_finite(cands[i].prior_ncc), -cands[i].descriptor_score))
            sec["cmc"] = time.perf_counter() - t
        final = top + order[len(top):]
        out = []
        for r, i in enumerate(final, 1):
            cands[i].rank = r
            out.append(cands[i])
        sec["total"] = time.perf_counter() - t0
        return RetrievalResult(out, sec, p)


def _finite(x: float) -> float:
    return float(x) if np.isfinite(x) else -np.inf
