"""The one search path: descriptor -> index -> screen (rotation prior) -> re-rank -> search state.

:meth:`Retriever.query` is the only implementation of candidate search in the project: the command line
(``ballistic index search``), the benchmark (``ballistic bench retrieval``), the Ray tests and the
correlation service (:mod:`api.jobs.correlate`) all call it; they differ only in what they hand in:

* the **index**: a :class:`~ballistic.retrieval.index.VectorIndex`, or a
  :class:`~ballistic.retrieval.sharded.ShardedIndex` kept current from a database (the service);
* the **executor** (:mod:`ballistic.retrieval.executor`, chosen by a setting): in this process, a local
  process pool, or Ray tasks on a cluster (the service with ``BALLISTIC_BACKEND=ray``);
* the **descriptor model** (:class:`~ballistic.retrieval.descriptor.DescriptorModel`; its version is
  recorded) and optional whitener;
* ``fetch(id)``: a candidate's surface (``None``: not available yet);
* the **comparison** of the re-rank stage (:class:`PairComparison`; default :class:`CMCComparison`, whose
  ranking score is whatever :func:`~ballistic.cartridge.cmc.pair.compare_pair` reports);
* the **parameters** (:class:`RetrievalParams`).

A query is searched in stages:

1. **descriptor** - the query's descriptor (optionally PCA-whitened) searched in the index: top ``k``
   candidates (cheap, millions of entries per second). A descriptor that searches rotations by query
   expansion (``query_vectors``, e.g. :class:`~ballistic.retrieval.polar_phase.PolarPhaseDescriptor`) sends
   all its copies in one batch and each candidate keeps its best score (:func:`index_queries`,
   :func:`best_per_id`); where it also has ``scan`` and the index holds the vectors as stored (``Flat``,
   ``SQfp16``), the index scores every vector by its best copy in one pass instead
   (:func:`~ballistic.retrieval.polar_phase.rotation_scan`: the same answer, a sixth of the time), and a
   descriptor with ``query_variants`` (the query described about nearby centres) re-scores the vectors the
   query ranks best with them (:func:`query_variants`, :func:`query_scan`);
1b. **screen** (``screen_k > 0``) - the same registration as stage 2 at 100 um
   every 4 degrees, the mirror image too (on stored coarse thumbnails), keeps the
   best ``screen_k`` of the ``k`` (by its NCC and the descriptor score together, ``stage_order``);
2. **rotation prior** - each of those candidates is registered to the
   query at a coarse spacing (default 50 um) over the full circle (every
   ``prior_step_deg``), translation by masked NCC (FFT, the query's rotated
   stack transformed once per query): :func:`rotation_prior_scores`. This is the
   first step of :func:`ballistic.cartridge.cmc.register.register_global` (both parities; the comparison
   steps by its rim rule, this stage by ``prior_step_deg``; about 0.1 s a candidate on one core).
   It runs when there are more candidates than ``cmc_k`` (otherwise it would decide nothing);
3. **re-rank** - the best ``cmc_k`` of stage 2 are compared (:class:`PairComparison`; CMC: about 0.2 s a
   pair on one core) on the executor. Pairs compared before (``known``) are ranked with their stored outcome.

With ``RetrievalParams.pose_window_deg`` and a descriptor that searches rotations (``row_pose``), each
candidate carries the rotation and parity its best index row stands for (``Candidate.descriptor_angle_deg``,
``descriptor_mirrored``), and stages 1b, 2 and 3 search only that window of the circle
(:class:`~ballistic.cartridge.cmc.register.PoseHint`): the rotation the descriptor has already searched is not
searched three times more.

The result lists the ``k`` candidates: the ``cmc_k`` compared ones first, by the comparison's score
(ties by stage-2 score), then the others in the order of the last rotation stage (:func:`order_after_stage`).
Every candidate carries all the scores it
got, and the result names the index state it searched (for a
:class:`~ballistic.retrieval.record.SearchRecord`).

Candidates' surfaces come from a ``fetch(id)`` callable returning a
:class:`~ballistic.surface.Surface` (preprocessed breech face) or a
:class:`~ballistic.cartridge.cmc.params.PreparedSurface`. If ``fetch`` accepts a keyword
``spacing_um``, stage 2 asks for a coarse version (``spacing_um=prior spacing``);
stage 3 calls ``fetch(id)`` (a surface at the comparison spacing or finer). ``fetch`` runs in the
executor's tasks: with a process pool or Ray it must be picklable (a module-level function or an object
with a ``__call__``).
"""
from __future__ import annotations

import functools
import inspect
import itertools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol

import numpy as np

from ballistic.cartridge.cmc.pair import compare_pair
from ballistic.cartridge.cmc.params import CMCParams, PreparedSurface, band_heights, prepare
from ballistic.cartridge.cmc.register import (PoseHint, _ncc_from_spectra, _ncc_spectra, _ncc_window,
                                              _rim_radius_px, warp_to_reference)
from ballistic.preprocess.filters import resample
from ballistic.retrieval.descriptor import DescriptorModel, PCAWhitener, descriptor_version
from ballistic.retrieval.registry import default_descriptor
from ballistic.retrieval.executor import Executor, LocalExecutor
from ballistic.retrieval.index import IndexSearch
from ballistic.retrieval.record import partition_state_id, whitener_id
from ballistic.surface import Surface

__all__ = ["RetrievalParams", "Candidate", "RetrievalResult", "RotationPrior", "rotation_prior_scores",
           "PairComparison", "CMCComparison", "Retriever", "index_queries", "query_scan", "query_variants", "best_per_id",
           "order_after_stage"]

Fetch = Callable[..., "Surface | PreparedSurface"]


def index_queries(descriptor, vector: np.ndarray) -> np.ndarray:
    """The rows a query sends to the index, float32 shape (n, dim): the vector itself, or the copies of a
    descriptor that searches rotations by query expansion (``descriptor.query_vectors``)."""
    v = np.asarray(vector, dtype=np.float32)
    expand = getattr(descriptor, "query_vectors", None)
    if expand is not None and v.ndim == 1:
        return np.asarray(expand(v), dtype=np.float32)
    return v[None, :] if v.ndim == 1 else v


def query_scan(descriptor, variants: np.ndarray | None = None):
    """The ``scan=`` an index gets for a query of ``descriptor``: its ``scan`` (None if it has none), bound to
    the query's centre ``variants`` (:meth:`~ballistic.retrieval.polar_phase.PolarPhaseDescriptor.query_variants`)
    when there are any. Picklable, so a Ray shard runs it too."""
    scan = getattr(descriptor, "scan", None)
    if scan is None or variants is None:
        return scan
    return functools.partial(scan, variants=np.asarray(variants, dtype=np.float32))


def query_variants(descriptor, surface) -> np.ndarray | None:
    """``descriptor.query_variants(surface)`` for a descriptor that has them and a :class:`Surface` query
    (a :class:`PreparedSurface` is not what descriptors describe), else None."""
    qv = getattr(descriptor, "query_variants", None)
    return qv(surface) if qv is not None and isinstance(surface, Surface) else None


def best_per_id(ids: np.ndarray, scores: np.ndarray, *, metric: str = "ip", rows: bool = False):
    """Merge an index's answers to several rows of one query: each id once, with its best score, best first.

    Parameters
    ----------
    ids, scores : ndarray, shape (n_rows, k)
        As an index search returns them (id -1 = no result).
    metric : {"ip", "l2"}, keyword-only
        The index's metric: the best score is the largest inner product or the smallest distance.
    rows : bool, keyword-only
        Also return the query row that gave each id its best score.

    Returns
    -------
    ids : ndarray of int64, shape (n,)
    scores : ndarray of float32, shape (n,)
        Best first (ties by id).
    row : ndarray of int64, shape (n,)
        Only with ``rows``: the row of ``ids``/``scores`` (the query copy) each best came from.
    """
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
    i = np.asarray(ids, dtype=np.int64)
    r = np.repeat(np.arange(i.shape[0]), i.shape[1]) if i.ndim == 2 else np.zeros(i.size, dtype=np.int64)
    i = i.ravel()
    s = np.asarray(scores, dtype=np.float32).ravel()
    ok = i >= 0
    i, s, r = i[ok], s[ok], r[ok]
    order = np.lexsort((r, i, -s if metric == "ip" else s))
    i, s, r = i[order], s[order], r[order]
    _, first = np.unique(i, return_index=True)
    first.sort()
    return (i[first], s[first], r[first]) if rows else (i[first], s[first])


@dataclass(frozen=True)
class RetrievalParams:
    """Settings of the three stages. Lengths in um, angles in degrees.

    k : FAISS candidates per query (stage 1); the result lists this many.
    screen_k : when > 0, a cheaper rotation prior (``screen_spacing_um``, every ``screen_step_deg``)
        ranks all ``k`` first and only its best ``screen_k`` go on to stage 2 (stage "1b").
    screen_step_deg, prior_step_deg : a rotation step must keep half a step's movement at the rim of a
        breech face (~2.5 mm, a large one: the labelled scans' rims measure 1.6-1.9 mm) within about one
        pixel of its stage, or a true pose between two grid
        angles loses its peak to noise: 2 x spacing / radius = 4.6 degrees at 100 um, 2.3 at 50 um
        (the comparison's own prior takes its step from the target's measured rim radius:
        ``register.rotation_step_deg``). The former 8 and 4 degrees lost mates
        among synthetic distractors (40 Fadul queries among 1000: recall@10 0.917, now 0.988 at K = 1000;
        ``benchmarks/results/retrieval_fadul_synth2_1e3_mirror.json``).
    Both rotation stages search the mirror image too when ``cmc.mirror`` (as the comparison does), and
    correlate the comparison's prior band (``cmc.prior_highpass_um``).
    cmc_k : candidates compared with CMC (stage 3); 0 skips it. ``cmc_k >= k`` compares all.
    prior : run stage 2; when False, stage 3 takes the top ``cmc_k`` by descriptor score.
    prior_spacing_um, prior_step_deg : stage-2 grid (the full circle every step).
    max_shift_fraction, min_overlap : stage-2 translation window (fraction of the query size)
        and minimum shared area (fraction of the smaller measured area), as in :class:`CMCParams`.
    workers : processes for stages 1b, 2 and 3 (1 = in this process).
    pose_window_deg : with a descriptor that searches rotations (``row_pose``, e.g.
        :class:`~ballistic.retrieval.polar_phase.PolarPhaseDescriptor`), each candidate arrives with the
        rotation and parity the descriptor found best; stages 1b and 2 then score it only at rotations within
        this many degrees of that pose, and stage 3 registers it near that pose when the comparison
        ``accepts_hint`` (:class:`~ballistic.cartridge.cmc.register.PoseHint`; a CMC outcome is then
        ``search="hinted"``: counts and decision, no model score or likelihood ratio). None: the full circle
        everywhere. The phase descriptor's pose was within 2 degrees of the full registration's on every
        same-source Fadul pair and within 1 degree on 18 of the 19 same-gun DFSC pairs (the 19th: its best phase
        pose is the wrong one, and the hinted comparison finds C = 2 where the full one finds 6).

    stage_order : how the rotation stages (1b, 2) order what they scored: ``"fused"`` (default) by the sum of
        the candidate's robust z-scores (median and MAD over the candidates the stage scored) of its descriptor
        score and its stage NCC - two measures of different errors, neither fitted, both kept; ``"ncc"`` by the
        stage NCC alone (before stop 29). Fused, the screen's top 20 of 200 held more mates in all eight runs
        measured (Fadul and DFSC, two rotation draws, among 10^4 and 10^5 synthetic distractors; e.g. DFSC among
        10^5 0.691 / 0.662 of the mates instead of 0.662 / 0.500, Fadul 0.994 / 0.988 instead of 0.994 / 0.981),
        never fewer (README, "The descriptor's pose narrows the later stages").

    The defaults are the configuration measured by ``ballistic bench retrieval`` (40 real Fadul
    scans among 1e5 synthetic distractors, the JSON it writes).
    """

    k: int = 1000
    cmc_k: int = 10
    screen_k: int = 50
    screen_spacing_um: float = 100.0
    screen_step_deg: float = 4.0
    prior: bool = True
    prior_spacing_um: float = 50.0
    prior_step_deg: float = 2.0
    max_shift_fraction: float = 0.3
    min_overlap: float = 0.4
    workers: int = 2
    cmc: CMCParams = field(default_factory=CMCParams)
    pose_window_deg: float | None = None
    stage_order: str = "fused"

    def __post_init__(self) -> None:
        if self.stage_order not in ("fused", "ncc"):
            raise ValueError(f"stage_order must be 'fused' or 'ncc', got {self.stage_order!r}")
        if self.k < 1 or self.cmc_k < 0:
            raise ValueError(f"need k >= 1 and cmc_k >= 0, got k={self.k}, cmc_k={self.cmc_k}")
        if not (self.prior_spacing_um > 0 and 0 < self.prior_step_deg <= 90):
            raise ValueError("prior_spacing_um must be > 0 um and prior_step_deg in (0, 90] degrees")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.pose_window_deg is not None and not (0.0 < self.pose_window_deg < 180.0):
            raise ValueError(f"pose_window_deg must be in (0, 180) degrees or None, got {self.pose_window_deg}")


@dataclass
class Candidate:
    """One ranked candidate. Scores a stage did not compute are NaN / None."""

    id: int
    rank: int                       # 1-based final rank
    descriptor_score: float         # stage 1 (inner product of whitened descriptors)
    screen_ncc: float = float("nan")  # stage 1b (masked NCC at the screening spacing, best angle)
    prior_ncc: float = float("nan")  # stage 2 (masked NCC at the prior spacing, best angle)
    prior_angle_deg: float = float("nan")
    descriptor_angle_deg: float = float("nan")  # stage 1: the candidate's best rotation onto the query (row_pose)
    descriptor_mirrored: bool | None = None     # ... and its parity
    score: float | None = None      # stage 3: the comparison's ranking score (CMC: similarity)
    cmc_count: int | None = None    # from the comparison's summary (CMC)
    similarity: float | None = None
    identification: bool | None = None
    summary: dict | None = None     # the comparison's flat summary (CMC: PairResult.summary())
    compared: str | None = None     # "now", "earlier" (a known outcome), "unavailable", or the comparison's status
    available: bool | None = None   # False: fetch had no surface for it (never compared)
    outcome: dict | None = field(default=None, repr=False)   # the comparison's whole outcome

    def take(self, outcome: dict, how: str) -> None:
        """Record a comparison outcome (``{"score", "summary", ...}``)."""
        self.outcome = outcome
        sc = outcome.get("score")
        self.score = None if sc is None else float(sc)
        self.compared = how if sc is not None else str(outcome.get("status") or "not compared")
        summ = outcome.get("summary") or {}
        self.summary = summ or None
        if "cmc_count" in summ and summ["cmc_count"] is not None:
            self.cmc_count = int(summ["cmc_count"])
        if summ.get("similarity") is not None:
            self.similarity = float(summ["similarity"])
        if summ.get("identification") is not None:
            self.identification = bool(summ["identification"])

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "outcome"}
        for key in ("descriptor_score", "screen_ncc", "prior_ncc", "prior_angle_deg", "descriptor_angle_deg"):
            d[key] = None if not np.isfinite(d[key]) else round(float(d[key]), 6)
        return d


@dataclass
class RetrievalResult:
    """Ranked candidates with the index state searched.

    ``state_id`` names the exact vector set searched: ``"ids:"`` + SHA-256 over the descriptor version,
    the transform, the partition and the sorted ids present in it
    (:func:`~ballistic.retrieval.record.partition_state_id`); ``max_id`` is the highest of those ids,
    ``n_in_partition`` their number and ``n_eligible`` the same without the excluded ids. ``search`` is the
    index's own answer (database position ``seq`` and each shard's state).
    """

    candidates: list[Candidate]
    seconds: dict[str, float]       # per stage and total (wall clock)
    params: RetrievalParams
    search: IndexSearch | None = field(default=None, repr=False)
    partition: str | None = None
    state_id: str | None = None
    n_in_partition: int = 0
    n_eligible: int = 0
    max_id: int | None = None
    descriptor_version: str | None = None
    transform_id: str | None = None
    algorithm_version: str | None = None

    def ids(self) -> np.ndarray:
        return np.array([c.id for c in self.candidates], dtype=np.int64)

    @property
    def n_scored(self) -> int:
        """Candidates with a comparison score (compared now or known from before)."""
        return sum(1 for c in self.candidates if c.score is not None)

    def shards(self) -> list[dict]:
        """Each shard's database position and snapshot (for the search record)."""
        if self.search is None:
            return []
        return [{"shard": s.shard, "seq": s.seq, "snapshot": s.snapshot} for s in self.search.shards]


# ----------------------------------------------------------------------------------------- stage 2

#: the comparison's default prior band (CMCParams.prior_highpass_um)
_PRIOR_HIGHPASS_UM = CMCParams().prior_highpass_um


class RotationPrior:
    """The query side of the stage-2 registration: its rotated stack, Fourier-transformed once.

    The view correlated is the comparison's prior view (:func:`~ballistic.cartridge.cmc.params.band_heights`:
    ``spacing_um``, wavelengths above ``highpass_um`` removed), so a candidate ranks here as its comparison's
    rotation prior would see it.

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
    mirror : bool, keyword-only
        Also try the query's mirror image (rows reversed); the score is the better parity's, the angle
        that of the (mirrored) query.
    highpass_um : float or None, keyword-only
        Longest wavelength kept (um; None: the whole band); pass the comparison's ``prior_highpass_um``.
    """

    def __init__(self, query: Surface | PreparedSurface, *, spacing_um: float = 50.0, step_deg: float = 2.0,
                 max_shift_fraction: float = 0.3, min_overlap: float = 0.4, canvas_um: float | None = None,
                 mirror: bool = True, highpass_um: float | None = _PRIOR_HIGHPASS_UM) -> None:
        self.highpass_um = highpass_um
        h = _heights_at(query, spacing_um, highpass_um)
        self.spacing_um = float(spacing_um)
        self.angles = np.arange(0.0, 360.0, float(step_deg))
        self.mirror = bool(mirror)
        ny, nx = h.shape
        # canvas: the disc holding every measured point of the query (breech faces are annuli, so a
        # rotation about the centre stays inside it), at least the query's box and canvas_um
        rad = _rim_radius_px(h)
        rad = rad if np.isfinite(rad) else 1.0
        self.N = max(int(2 * math.ceil(rad) + 3), ny, nx, int(math.ceil((canvas_um or 0.0) / spacing_um)))
        self.max_shift = max(1, int(max_shift_fraction * max(ny, nx)))
        self.min_overlap = float(min_overlap)
        # the query's rotated stack is the moving side of the comparison's masked NCC, transformed once
        views = (h, h[::-1]) if self.mirror else (h,)
        st = np.stack([warp_to_reference(v, a, 0.0, 0.0, (self.N, self.N)) for v in views for a in self.angles])
        m = self.max_shift
        self._window, self._shape = _ncc_window((self.N, self.N), (self.N, self.N), (-m, m, -m, m))
        self._spectra = _ncc_spectra(st, self._shape, np.float32, conj=True)
        self._count = int(np.isfinite(h).sum())

    def score(self, candidate: Surface | PreparedSurface | np.ndarray) -> tuple[float, float]:
        """Best masked NCC (uncentred, :func:`~ballistic.cartridge.cmc.register.masked_ncc`) over rotations and
        translations, and its angle (degrees).

        ``candidate``: a Surface / PreparedSurface, or heights (um) already at
        ``spacing_um``. Returns ``(-inf, nan)`` when nothing overlaps enough.
        """
        return tuple(self.score_many([candidate])[0])  # type: ignore[return-value]

    def score_many(self, candidates, *, batch: int = 1, hints=None) -> np.ndarray:
        """:meth:`score` for many candidates (``batch`` per transform; larger batches were slower at
        50 um, memory-bound). Returns (n, 2): ncc, angle.

        ``hints``: optional sequence of :class:`~ballistic.cartridge.cmc.register.PoseHint` (or None) per
        candidate, each the candidate's pose onto the query as a registration states it; a hinted candidate is
        scored only at the query rotations within the hint's window, in its parity (the query's rotation by
        ``-angle``, or by ``angle`` for a mirrored pose)."""
        hs = [c if isinstance(c, np.ndarray) else _heights_at(c, self.spacing_um, self.highpass_um)
              for c in candidates]
        out = np.empty((len(hs), 2))
        if hints is not None:
            if len(hints) != len(hs):
                raise ValueError(f"score_many: {len(hints)} hints for {len(hs)} candidates")
            every = np.arange(self._spectra[0].shape[0])
            rows = [every if hint is None else self._hint_rows(hint) for hint in hints]
            # a hinted candidate meets only a few rows of the query's stack: the (candidate, row) pairs of many
            # candidates go through the transforms together, a bounded number at a time
            lo = 0
            while lo < len(hs):
                hi, n_pairs = lo + 1, len(rows[lo])
                while hi < len(hs) and n_pairs + len(rows[hi]) <= self._PAIRS_PER_BATCH:
                    n_pairs += len(rows[hi])
                    hi += 1
                out[lo:hi] = self._score_batch(hs[lo:hi], rows=rows[lo:hi])
                lo = hi
            return out
        for lo in range(0, len(hs), batch):
            out[lo:lo + batch] = self._score_batch(hs[lo:lo + batch])
        return out

    #: (candidate, query row) pairs transformed at once by a hinted :meth:`score_many`
    _PAIRS_PER_BATCH = 64

    def _hint_rows(self, hint) -> np.ndarray:
        """Rows of the query's rotated stack within a hint's window (parity-major: mirrored rows follow)."""
        if hint.mirrored and not self.mirror:
            return np.empty(0, dtype=np.int64)
        # rotating the candidate by a onto the query is rotating the query by -a onto the candidate; a mirror
        # image turns the other way
        a = float(hint.angle_deg) if hint.mirrored else -float(hint.angle_deg)
        return hint.window(self.angles, centre_deg=a) + (len(self.angles) if hint.mirrored else 0)

    def _score_batch(self, hs: list[np.ndarray], rows: list[np.ndarray] | None = None) -> np.ndarray:
        """Best (ncc, angle) of each of ``hs`` over every row of the query's stack, or over ``rows[b]`` (indices
        into the stack, possibly none) for candidate ``b``."""
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
        fs = _ncc_spectra(f, self._shape, np.float32)
        cnt = np.isfinite(f).sum(axis=(1, 2))
        mo = np.maximum(16.0, self.min_overlap * np.minimum(cnt, self._count))
        # uncentred, as the comparison's own rotation prior: zero-mean band-passed views, 4 transforms instead of 6
        if rows is None:
            # every candidate against every row: (B, rows, shifts, shifts)
            c, n = _ncc_from_spectra(tuple(a[:, None] for a in fs), self._spectra, self._shape, self._window, 16,
                                     centred=False)
            c = np.where((n >= mo[:, None, None, None]) & np.isfinite(c), c, -np.inf)
            per_angle = c.reshape(len(hs), c.shape[1], -1).max(axis=2)
            k = per_angle.argmax(axis=1)
            best = per_angle[np.arange(len(hs)), k]
            row = k
        else:
            # the listed (candidate, row) pairs only, candidate by candidate: (pairs, shifts, shifts)
            cand = np.concatenate([np.full(len(r), b, dtype=np.int64) for b, r in enumerate(rows)])
            pair_rows = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
            best, row = np.full(len(hs), -np.inf), np.zeros(len(hs), dtype=np.int64)
            if cand.size:
                c, n = _ncc_from_spectra(tuple(a[cand] for a in fs), tuple(a[pair_rows] for a in self._spectra),
                                         self._shape, self._window, 16, centred=False)
                c = np.where((n >= mo[cand][:, None, None]) & np.isfinite(c), c, -np.inf)
                per_pair = c.reshape(len(cand), -1).max(axis=1)
                sizes = np.array([len(r) for r in rows])
                for b, (lo, hi) in enumerate(zip(np.cumsum(sizes) - sizes, np.cumsum(sizes))):
                    if hi > lo:         # its best row (the first of equal maxima, as above)
                        j = lo + int(per_pair[lo:hi].argmax())
                        best[b], row[b] = per_pair[j], pair_rows[j]
        ang = np.where(np.isfinite(best), self.angles[row % len(self.angles)], np.nan)
        return np.stack([np.where(np.isfinite(best), np.minimum(best, 1.0), -np.inf), ang], axis=1)


def _heights_at(x: Surface | PreparedSurface, spacing_um: float, highpass_um: float | None) -> np.ndarray:
    if isinstance(x, PreparedSurface):
        if x.prior_highpass_um == highpass_um:
            if abs(x.prior_spacing_um - spacing_um) < 1e-9:
                return x.prior
            if spacing_um > x.prior_spacing_um:       # a coarser stage: from the prior view, same band
                return band_heights(Surface(x.prior, x.prior_spacing_um), spacing_um=spacing_um,
                                    highpass_um=highpass_um)
        # else from the comparison view (its band ends at x.highpass_um)
        return band_heights(Surface(x.fine, x.spacing_um), spacing_um=spacing_um, highpass_um=highpass_um)
    if isinstance(x, Surface):
        if x.spacing_um > spacing_um * 1.0001:
            raise ValueError(f"candidate surface is at {x.spacing_um} um, coarser than the {spacing_um} um the "
                             "rotation prior needs; fetch a finer version")
        # the band a PreparedSurface's prior view has, so that a Surface and a PreparedSurface score alike
        return band_heights(x, spacing_um=spacing_um, highpass_um=highpass_um)
    raise TypeError(f"expected a Surface or PreparedSurface, got {type(x).__name__}")


def rotation_prior_scores(query: Surface | PreparedSurface, candidates: Iterable[Surface | PreparedSurface], *,
                          spacing_um: float = 50.0, step_deg: float = 2.0, max_shift_fraction: float = 0.3,
                          min_overlap: float = 0.4, mirror: bool = True,
                          highpass_um: float | None = _PRIOR_HIGHPASS_UM) -> np.ndarray:
    """Stage-2 score of each candidate against ``query``: best masked NCC over the full circle.

    Returns
    -------
    ndarray of float64, shape (n, 2)
        ``(ncc, angle_deg)`` per candidate (``-inf, nan`` where nothing overlaps enough).
    """
    rp = RotationPrior(query, spacing_um=spacing_um, step_deg=step_deg, max_shift_fraction=max_shift_fraction,
                       min_overlap=min_overlap, mirror=mirror, highpass_um=highpass_um)
    out = [rp.score(c) for c in candidates]
    return np.array(out, dtype=np.float64).reshape(-1, 2)


# ----------------------------------------------------------------------------------------- comparisons
class PairComparison(Protocol):
    """How the re-rank stage compares the query with a candidate (default: :class:`CMCComparison`).

    ``prepare(query)`` runs once per search, in the calling process; ``__call__(query, candidate)`` runs in
    the executor's tasks (with ``hint=``, a :class:`~ballistic.cartridge.cmc.register.PoseHint`, when
    ``RetrievalParams.pose_window_deg`` is set, the descriptor gave the candidate a pose and the comparison's
    ``accepts_hint`` is true) (a picklable object) and returns a JSON-ready outcome dict whose ``"score"`` is
    the ranking score (higher first; ``None``: not comparable, with a ``"status"`` saying why) and whose
    ``"summary"`` is a flat record. ``version`` names the algorithm (recorded with every search).
    """

    version: str

    def prepare(self, query): ...

    def __call__(self, query, candidate, *, hint=None) -> dict: ...


@dataclass(frozen=True)
class CMCComparison:
    """:func:`~ballistic.cartridge.cmc.pair.compare_pair` as the re-rank stage.

    The ranking score is the comparison's own: ``PairResult.score`` when it has one, else its CMC
    ``similarity`` (count + mean correlation of the congruent cells); the outcome carries the exact
    ``similarity``, ``cmc_count`` and ``identification`` besides the rounded summary. With ``details`` it also
    carries the full result (``"detail"``: ``PairResult.to_dict()``, every cell of both directions) and the
    registration, for a caller that stores and explains them.
    """

    params: CMCParams = field(default_factory=CMCParams)
    details: bool = False
    #: take the retrieval's pose hints (a faster comparison without model score or LR); False: always the
    #: full-circle comparison, e.g. where the outcome is stored and shown with its likelihood ratio
    accepts_hint: bool = True

    @property
    def version(self) -> str:
        from ballistic.cartridge.cmc.pair import ALGORITHM_VERSION
        return ALGORITHM_VERSION

    def prepare(self, query):
        return query if isinstance(query, PreparedSurface) else prepare(query, self.params)

    def __call__(self, query, candidate, *, hint=None) -> dict:
        r = compare_pair(query, candidate, self.params, hint=hint)
        out = {"score": float(getattr(r, "score", r.similarity)), "summary": r.summary(),
               "similarity": float(r.similarity), "cmc_count": int(r.cmc_count),
               "identification": bool(r.identification)}
        if self.details:
            reg = r.registration
            out["detail"] = r.to_dict()
            out["registration"] = {"angle_deg": float(reg.angle_deg), "dy_um": float(reg.dy_um),
                                   "dx_um": float(reg.dx_um), "ncc": float(reg.ncc)}
        return out


# ----------------------------------------------------------------------------------------- tasks
# Module-level task functions run by the executor (this process, a forked pool or Ray tasks):
# ``fn(context, task)`` with the search's ``fetch`` as the context.

_PRIOR_CACHE: dict[str, Any] = {"key": None, "prior": None}


def _accepts_spacing(fetch: Fetch) -> bool:
    try:
        return "spacing_um" in inspect.signature(fetch).parameters
    except (TypeError, ValueError):
        return False


def _fetch_coarse(fetch: Fetch, i: int, spacing_um: float):
    return fetch(int(i), spacing_um=spacing_um) if _accepts_spacing(fetch) else fetch(int(i))


def _task_prior(fetch: Fetch, task) -> list[tuple[int, float, float, bool]]:
    """Rotation-prior scores of a chunk of candidates: ``(id, ncc, angle, available)``."""
    token, query, rp_kwargs, ids, hints = task
    key = (token, tuple(sorted(rp_kwargs.items())))
    rp = _PRIOR_CACHE["prior"]
    if _PRIOR_CACHE["key"] != key:       # the query's rotated stack, built once per search and process
        rp = RotationPrior(query, **rp_kwargs)
        _PRIOR_CACHE.update(key=key, prior=rp)
    got = [(int(i), _fetch_coarse(fetch, i, rp.spacing_um)) for i in ids]
    have = [(i, c, h) for (i, c), h in zip(got, hints) if c is not None]
    sc = rp.score_many([c for _, c, _ in have], hints=None if all(h is None for *_, h in have) else
                       [h for *_, h in have]) if have else np.empty((0, 2))
    out = {i: (i, float(v), float(a), True) for (i, _, _), (v, a) in zip(have, sc)}
    return [out.get(i, (i, float("nan"), float("nan"), False)) for i, _ in got]


def _task_compare(fetch: Fetch, task) -> tuple[int, dict | None]:
    """One pair comparison: ``(id, outcome)``, ``outcome=None`` when the candidate is not available."""
    query, i, compare, *hint = task
    cand = fetch(int(i))
    if cand is None:
        return int(i), None
    return int(i), compare(query, cand, hint=hint[0]) if hint and hint[0] is not None else compare(query, cand)


# ----------------------------------------------------------------------------------------- retriever
_SEARCH_TOKENS = itertools.count(1)


class Retriever:
    """The one search path: descriptor -> index -> screen (rotation prior) -> re-rank -> search state.

    Used unchanged by ``ballistic index search``, ``ballistic bench retrieval``, the Ray tests and the
    correlation service (:mod:`api.jobs`), which differ only in the index, the executor, ``fetch``, the
    comparison and the parameters they hand in.

    Parameters
    ----------
    index : VectorIndex or ShardedIndex
        Holds (whitened) descriptors under stable ids; anything with ``query(Q, k, partition=, members=)``
        returning an :class:`~ballistic.retrieval.index.IndexSearch`.
    fetch : callable
        ``fetch(id) -> Surface | PreparedSurface | None`` of a candidate (see module docs); ``None`` means not
        available yet (listed, never compared). Runs in the executor's tasks: picklable unless in-process.
    descriptor : DescriptorModel, keyword-only
        Must be the one the index was built with (default :func:`~ballistic.retrieval.registry.default_descriptor`); its version is
        recorded (:func:`~ballistic.retrieval.descriptor.descriptor_version`).
    whitener : PCAWhitener, optional, keyword-only
        Applied to the query descriptor when the index holds whitened vectors.
    params : RetrievalParams, keyword-only
    executor : Executor, optional, keyword-only
        Where the screens and comparisons run (:mod:`ballistic.retrieval.executor`): default a
        :class:`~ballistic.retrieval.executor.LocalExecutor` of ``params.workers`` (owned and closed here).
        Pass the sharded index's executor to run the re-ranking on the same Ray cluster.
    compare : PairComparison, optional, keyword-only
        The re-rank stage (default :class:`CMCComparison` with ``params.cmc``).
    transform_id : str, optional, keyword-only
        Names the vector transform in the state id (default ``"raw"`` or ``"pca:<hash>"`` of the whitener).

    Use as a context manager (or call :meth:`close`) to stop an executor it made.
    """

    def __init__(self, index, fetch: Fetch, *, descriptor: DescriptorModel | None = None,
                 whitener: PCAWhitener | None = None, params: RetrievalParams | None = None,
                 executor: Executor | None = None, compare: PairComparison | None = None,
                 transform_id: str | None = None) -> None:
        self.index = index
        self.fetch = fetch
        self.descriptor = descriptor or default_descriptor()
        self.whitener = whitener
        self.params = params or RetrievalParams()
        self.compare = compare
        if whitener is not None and hasattr(self.descriptor, "query_vectors"):
            raise ValueError(f"{self.descriptor.name} searches rotations by query expansion; its vectors cannot "
                             "be whitened (index it raw)")
        dim = whitener.out_dim if whitener is not None else self.descriptor.dim
        if dim != index.dim:
            raise ValueError(f"index holds {index.dim}-d vectors but the descriptor{' + whitener' if whitener else ''} "
                             f"gives {dim}-d; use the whitener/descriptor the index was built with")
        self.descriptor_version = descriptor_version(self.descriptor)
        self.transform_id = transform_id or ("raw" if whitener is None else "pca:" + whitener_id(whitener))
        self._own_executor = executor is None
        self.executor = executor if executor is not None else LocalExecutor(self.params.workers)

    def close(self) -> None:
        """Stop the executor when this retriever made it (a shared one is its owner's to close)."""
        if self._own_executor:
            self.executor.close()

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self, surface) -> np.ndarray:
        """Query vector as stored in the index (descriptor, then whitener)."""
        v = self.descriptor(surface)
        return self.whitener.transform(v) if self.whitener is not None else v

    def _rotation_stage(self, surface, ids, spacing_um, step_deg, p, token, stop, hints):
        """Score ``ids`` with a RotationPrior at (spacing_um, step_deg) on the executor (each id near its
        ``hints[id]`` pose when it has one)."""
        rp_kwargs = dict(spacing_um=spacing_um, step_deg=step_deg, max_shift_fraction=p.max_shift_fraction,
                         min_overlap=p.min_overlap, mirror=p.cmc.mirror, highpass_um=p.cmc.prior_highpass_um)
        # send the query at the stage's spacing: workers rebuild its rotated stack from a few KB
        q = resample(surface, spacing_um=spacing_um) \
            if isinstance(surface, Surface) and surface.spacing_um < spacing_um else surface
        n_chunks = max(1, min(len(ids), 4 * self.executor.slots))
        chunks = [ids[j::n_chunks] for j in range(n_chunks)]
        tasks = [(token, q, rp_kwargs, c, [hints.get(i) for i in c]) for c in chunks]
        results = self.executor.map(_task_prior, tasks, context=self.fetch, stop=stop)
        return [r for res in results for r in res]

    def query(self, surface, *, partition: str | None = "any", exclude: Iterable[int] = (),
              params: RetrievalParams | None = None, vector: np.ndarray | None = None,
              variants: np.ndarray | None = None,
              known: Mapping[int, dict] | Callable[[int], dict | None] | None = None,
              stop: threading.Event | None = None) -> RetrievalResult:
        """Rank database candidates for one preprocessed query.

        Parameters
        ----------
        surface : Surface or PreparedSurface (or what ``compare`` takes)
            The query (output of preprocess_cartridge), any orientation. Without ``vector`` it must be
            what the descriptor describes.
        partition : str or None, keyword-only
            Index partition to search (``None``: all).
        exclude : iterable of int, keyword-only
            Ids never returned (e.g. the query's own entry).
        params : RetrievalParams, optional, keyword-only
            Overrides the retriever's settings for this query (``workers`` is the executor's).
        vector : ndarray, optional, keyword-only
            Precomputed query vector (as stored in the index).
        variants : ndarray, optional, keyword-only
            Precomputed centre variants of the query (``descriptor.query_variants``, stored format); computed
            here when the descriptor has them, ``surface`` is a :class:`Surface` and no whitener is used.
        known : mapping or callable, optional, keyword-only
            Outcomes of pairs compared before (``id -> {"score", "summary"...}`` or ``id -> outcome or
            None``): such candidates are screened and ranked with that outcome, never compared again.
        stop : threading.Event, optional, keyword-only
            Once set, the search raises :class:`~ballistic.errors.SearchCancelled`.

        Returns
        -------
        RetrievalResult
            The ``k`` candidates: the ``cmc_k`` re-ranked ones first by their comparison score (ties by
            the rotation prior, then the descriptor), then the rest by the screen's order; with the state
            of the index searched.
        """
        p = params or self.params
        compare = self.compare or CMCComparison(p.cmc)
        use_hint = bool(getattr(compare, "accepts_hint", False))
        t0 = time.perf_counter()
        sec: dict[str, float] = {}
        excl = set(int(i) for i in exclude)
        if vector is None and isinstance(surface, PreparedSurface):
            raise TypeError("query(): pass the query Surface, or a PreparedSurface together with vector=")
        if variants is None and self.whitener is None and (vector is None or np.ndim(vector) == 1):
            variants = query_variants(self.descriptor, surface)
        if vector is None:          # row 0 of the variants is the stored-format vector itself: described once
            vector = variants[0] if variants is not None and self.whitener is None else self.describe(surface)
        sec["descriptor"] = time.perf_counter() - t0
        t = time.perf_counter()
        # a descriptor that can score its query copies over stored vectors itself does so where the index
        # holds them as stored (Flat, SQfp16): the same answer as the copies' row search, for a fraction of its
        # cost, and there the query's centre variants re-score the stored vectors it scores best
        scan = query_scan(self.descriptor, variants) if np.ndim(vector) == 1 else None
        found = self.index.query(index_queries(self.descriptor, vector), p.k + len(excl), partition=partition,
                                 members=True, **({} if scan is None else {"scan": scan}))
        row_pose = getattr(self.descriptor, "row_pose", None)
        ids, scores, rows = best_per_id(found.ids, found.scores, metric=getattr(self.index, "metric", "ip"),
                                        rows=True)
        ang, mir = row_pose(rows) if row_pose is not None and np.ndim(vector) == 1 else \
            (np.full(len(ids), np.nan), np.full(len(ids), None))
        keep = [(int(i), float(s), float(a), m) for i, s, a, m in zip(ids, scores, ang, mir) if int(i) not in excl]
        keep = keep[:p.k]
        sec["index"] = time.perf_counter() - t
        cands = {i: Candidate(i, 0, s, descriptor_angle_deg=a, descriptor_mirrored=None if m is None else bool(m))
                 for i, s, a, m in keep}
        order = [i for i, *_ in keep]
        # the descriptor's pose of each candidate narrows the rotation stages when asked to
        hints = {} if p.pose_window_deg is None else {
            i: PoseHint(a, bool(m), float(p.pose_window_deg)) for i, _, a, m in keep if np.isfinite(a)}
        prior_cache = {}
        if known is not None:
            look = known.get if isinstance(known, Mapping) else known
            for i in order:
                o = look(i)
                if o is not None:
                    prior_cache[i] = o
        token = next(_SEARCH_TOKENS)
        if p.screen_k and len(order) > p.screen_k:
            t = time.perf_counter()
            res = self._rotation_stage(surface, order, p.screen_spacing_um, p.screen_step_deg, p, token, stop,
                                       hints)
            for i, ncc, _, ok in res:
                cands[i].screen_ncc = ncc
                cands[i].available = ok
            order = order_after_stage(order, cands, "screen_ncc", p.stage_order)
            sec["screen"] = time.perf_counter() - t
        # the prior decides what the comparison sees: it runs when there is more to choose from than cmc_k
        if p.prior and order and (len(order) > p.cmc_k or not p.cmc_k):
            t = time.perf_counter()
            head = order[:p.screen_k] if p.screen_k else order
            res = self._rotation_stage(surface, head, p.prior_spacing_um, p.prior_step_deg, p, token, stop, hints)
            for i, ncc, ang, ok in res:
                cands[i].prior_ncc, cands[i].prior_angle_deg = ncc, ang
                cands[i].available = ok
            head = order_after_stage(head, cands, "prior_ncc", p.stage_order)
            order = head + order[len(head):]
            sec["prior"] = time.perf_counter() - t
        top = order[:p.cmc_k]
        if top:
            t = time.perf_counter()
            for i in top:
                if i in prior_cache:
                    cands[i].take(prior_cache[i], "earlier")
            todo = [i for i in top if i not in prior_cache and cands[i].available is not False]
            for i in top:
                if cands[i].available is False:
                    cands[i].compared = "unavailable"
            if todo:
                qprep = compare.prepare(surface)
                tasks = [(qprep, i, compare, hints.get(i) if use_hint else None) for i in todo]
                for i, outcome in self.executor.map(_task_compare, tasks, context=self.fetch, stop=stop):
                    if outcome is None:
                        cands[i].available, cands[i].compared = False, "unavailable"
                    else:
                        cands[i].take(outcome, "now")
            top.sort(key=lambda i: (-_finite(cands[i].score), -_finite(cands[i].prior_ncc),
                                    -cands[i].descriptor_score))
            sec["cmc"] = time.perf_counter() - t
        final = top + order[len(top):]
        out = []
        for r, i in enumerate(final, 1):
            cands[i].rank = r
            out.append(cands[i])
        members = found.members if found.members is not None else np.empty(0, np.int64)
        sec["total"] = time.perf_counter() - t0
        return RetrievalResult(out, sec, p, search=found, partition=partition,
                               state_id=partition_state_id(self.descriptor_version, self.transform_id, partition,
                                                           members),
                               n_in_partition=int(members.size),
                               n_eligible=int(members.size - np.isin(list(excl), members).sum()),
                               max_id=int(members.max()) if members.size else None,
                               descriptor_version=self.descriptor_version, transform_id=self.transform_id,
                               algorithm_version=compare.version if not (hints and use_hint) else
                               f"{compare.version}+pose-window={p.pose_window_deg:g}")


def _finite(x) -> float:
    return float(x) if x is not None and np.isfinite(x) else -np.inf


def _robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD) over the finite values (the standard deviation where the MAD is 0, 0 where
    both are); non-finite values stay -inf."""
    z = np.full(x.shape, -np.inf)
    ok = np.isfinite(x)
    if ok.any():
        v = x[ok]
        med = float(np.median(v))
        scale = 1.4826 * float(np.median(np.abs(v - med))) or float(v.std())
        z[ok] = (v - med) / scale if scale > 0 else 0.0
    return z


def order_after_stage(ids: list[int], cands: dict[int, Candidate], attr: str, how: str = "fused") -> list[int]:
    """Candidates best first after a rotation stage (:class:`RetrievalParams` ``stage_order``).

    Parameters
    ----------
    ids : list of int
        The candidates the stage scored, in their earlier order.
    cands : dict of int -> Candidate
        Their records (``descriptor_score`` and the stage's NCC).
    attr : {"screen_ncc", "prior_ncc"}
        The stage's NCC.
    how : {"fused", "ncc"}
        ``"ncc"``: by the NCC; ``"fused"``: by the sum of the robust z-scores (over ``ids``) of the descriptor
        score and the NCC.

    Returns
    -------
    list of int
        ``ids`` reordered; a candidate the stage could not score (NaN) last; ties keep the earlier order.
    """
    ncc = np.array([_finite(getattr(cands[i], attr)) for i in ids])
    if how == "ncc":
        key = ncc
    else:
        key = _robust_z(np.array([_finite(cands[i].descriptor_score) for i in ids])) + _robust_z(ncc)
        key = np.where(np.isfinite(ncc), key, -np.inf)
    return [ids[j] for j in np.argsort(-key, kind="stable")]
