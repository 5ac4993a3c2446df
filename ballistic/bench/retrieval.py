"""Retrieval benchmark: the real Fadul scans hidden among synthetic distractors, descriptors side by side.

``ballistic bench retrieval DIR --labels CSV --descriptor phase,polar,learned --json OUT`` calls
:func:`run_retrieval_bench`:

* the 40 real Fadul breech faces (preprocessed, each rotated by a seeded random
  angle) get ids 0..39; ``N`` synthetic distractors
  (:class:`ballistic.cartridge.synth.SyntheticCatalogue`, two firings per synthetic
  firearm; :func:`distractor_catalogue`) get ids from 1 000 000, each normalised by
  :func:`~ballistic.cartridge.breech_face.preprocess_cartridge` as every submitted scan is
  (:func:`submitted_as_processed`); their descriptors are computed at 25 um (the synthetic
  fast path) in a process pool, every descriptor from the same generated surface, and cached
  on disk (keyed on the descriptor, the generator's version and the normalisation's code);
* each descriptor is one "arm" of the benchmark, run on the same queries and distractors:

  - ``phase`` (the default descriptor): :class:`~ballistic.retrieval.polar_phase.PolarPhaseDescriptor`, raw;
    its FAISS stage searches with the query's rotated and mirrored copies and keeps each candidate's best, as
    the Retriever does (:func:`~ballistic.retrieval.search.index_queries`,
    :func:`~ballistic.retrieval.search.best_per_id`);
  - ``polar``: :class:`~ballistic.retrieval.descriptor.PolarFFTDescriptor`, PCA-whitened
    (:class:`~ballistic.retrieval.descriptor.PCAWhitener` fitted on distractor descriptors only);
  - ``learned`` (registered by ``models/``): raw embeddings. With ``fold_models`` (a folder of
    cross-validation checkpoints, ``python -m models.train --folds DIR``) every query is described
    and searched with the fold model that never saw its firearm (each fold its own index of the 40
    scans and N distractors, all described by that model): the figures are held out. Without it the
    shipped model (trained on every real scan) answers every query and the summary says so
    (``queries_held_out: false``);

* every Fadul scan queries the index (its own entry excluded) through
  :class:`~ballistic.retrieval.search.Retriever`; its mates are the other scans of the
  same slide (2 to 4 each). Distractors needed by the rotation stages come from stored coarse views (or are
  regenerated from their id); those the comparison needs from stored prepared views, as the service keeps them
  (:class:`BenchFetch`, ``views``).

Reported per arm and ``N``: recall@1/10/100 of the mates after re-ranking, the FAISS
stage's own recall at several K, stage 2's recall at ``cmc_k``, query latency
p50/p95 (from the preprocessed query: descriptor, search, fetching candidates,
both re-ranking stages); how realistic the distractors are for that descriptor (real-vs-synthetic
separability, how often a distractor outscores the real non-mates); the FAISS-stage recall
projected to ``10 N`` distractors from the exact counts of distractors above each mate. At the
largest ``N`` the whole pipeline is rerun for each K of ``k_sweep``.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ballistic.bench.draws import draw_seeds, heading, spread
from ballistic.cartridge.synth import SYNTH_VERSION as _SYNTH_VERSION
from ballistic.cartridge.breech_face import submitted_as_processed
from ballistic.cartridge.cmc.params import CMCParams, PreparedSurface, load_or_prepare, prepare, prepared_key
from ballistic.cartridge.synth import SyntheticCatalogue
from ballistic.io.atomic import atomic_write, atomic_write_bytes
from ballistic.retrieval.descriptor import DescriptorModel, PCAWhitener
from ballistic.retrieval.index import VectorIndex
from ballistic.retrieval.registry import load_descriptor
from ballistic.retrieval.search import (RetrievalParams, Retriever, best_per_id, index_queries, order_after_stage,
                                       query_scan, query_variants)
from ballistic.surface import Surface

__all__ = ["BenchFetch", "bench_index", "mates_of", "mate_recall", "distractor_catalogue", "submitted_as_processed",
           "distractor_descriptors", "distractor_thumbnails", "run_retrieval_bench", "real_synthetic_separability", "load_rotated_scans",
           "aggregate_retrieval_draws", "format_retrieval_draws", "run_retrieval_draws"]

DISTRACTOR_ID0 = 1_000_000


class BenchFetch:
    """Picklable ``fetch``: real surfaces by id; synthetic distractors from stored thumbnails (coarse height
    maps, as a service would keep them beside the descriptors: ``thumbs`` one array at ``thumb_spacing_um``, or
    ``{spacing_um: array}``; a request at a spacing gets the coarsest stored one that is not coarser) or
    regenerated from their id.

    With ``views_dir`` a request at full resolution (the comparison's) gets the candidate's prepared comparison
    views (:func:`~ballistic.cartridge.cmc.params.prepare` with ``params``), as the service stores them beside
    each exhibit when it is submitted and loads them for a search (:class:`api.jobs.fetch.StoredSurfaces`): a
    distractor's from ``views_dir/<id>.npz`` (made, and stored there, the first time it is asked for), a real
    scan's prepared once per process. Without it the candidate is regenerated (a distractor, ~0.05 s at
    12.5 um) and prepared by every comparison, which a service does not do.
    """

    def __init__(self, real: dict[int, Surface], catalogue: SyntheticCatalogue, *,
                 thumbs: np.ndarray | dict[float, np.ndarray] | None = None,
                 thumb_spacing_um: float = 100.0, views_dir: str | Path | None = None,
                 params: CMCParams | None = None) -> None:
        self.real = real
        self.catalogue = catalogue
        self.thumbs = {} if thumbs is None else dict(thumbs) if isinstance(thumbs, dict) else \
            {float(thumb_spacing_um): thumbs}
        self.views_dir = None if views_dir is None else Path(views_dir)
        self.params = params or CMCParams()
        self._real_views: dict[int, PreparedSurface] = {}
        if self.views_dir is not None:
            self.views_dir.mkdir(parents=True, exist_ok=True)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_real_views": {}}      # each process prepares its own

    def __call__(self, id: int, spacing_um: float | None = None) -> Surface | PreparedSurface:
        id = int(id)
        if spacing_um is None and self.views_dir is not None:
            return self._views(id)
        if id in self.real:
            return self.real[id]
        j = id - self.catalogue.id_offset
        fit = [s for s in self.thumbs if spacing_um is not None and s <= spacing_um + 1e-9
               and 0 <= j < len(self.thumbs[s])]
        if fit:
            s = max(fit)
            return Surface(self.thumbs[s][j].astype(np.float64), s)
        return self.catalogue(id, spacing_um=spacing_um)

    def _views(self, id: int) -> PreparedSurface:
        if id in self.real:
            if id not in self._real_views:
                self._real_views[id] = prepare(self.real[id], self.params)
            return self._real_views[id]
        return load_or_prepare(self.views_dir / f"{id}.npz", lambda: self.catalogue(id), self.params)


def distractor_catalogue() -> SyntheticCatalogue:
    """The benchmark's synthetic distractors (two firings per firearm, seeds from 0, ids from
    :data:`DISTRACTOR_ID0`), each normalised as a submitted scan is (:func:`submitted_as_processed`)."""
    return SyntheticCatalogue(id_offset=DISTRACTOR_ID0, firings_per_firearm=2, firearm_offset=0, spacing_um=12.5,
                              preprocess=submitted_as_processed)


def _distractor_key(*parts) -> str:
    """Cache key of distractor data: the parts, the synthetic generator's version and the normalisation's
    code (:func:`~ballistic.cartridge.normalise.normalisation_key`)."""
    from ballistic.cartridge.normalise import normalisation_key

    return hashlib.sha256("|".join(map(str, (*parts, _SYNTH_VERSION, normalisation_key()))).encode()).hexdigest()[:16]


_THUMB = 40


def _thumb_size(spacing_um: float) -> int:
    """Pixels of a thumbnail's side: the same 4 mm field at every spacing (40 at 100 um)."""
    return int(round(_THUMB * 100.0 / float(spacing_um)))


def _thumb_range(args) -> np.ndarray:
    from ballistic.cartridge.cmc.params import centre_heights
    from ballistic.preprocess.filters import resample
    catalogue, spacing, lo, hi = args
    size = _thumb_size(spacing)
    out = np.full((hi - lo, size, size), np.nan, dtype=np.float16)
    for k, i in enumerate(range(lo, hi)):
        s = catalogue(i, spacing_um=min(50.0, spacing))
        h = centre_heights(resample(s, spacing_um=spacing).heights)[:size, :size]      # resample: as is at 50
        oy, ox = (size - h.shape[0]) // 2, (size - h.shape[1]) // 2
        out[k, oy:oy + h.shape[0], ox:ox + h.shape[1]] = h
    return out


def distractor_thumbnails(n: int, *, catalogue: SyntheticCatalogue, spacing_um: float = 100.0, workers: int = 2,
                          batch: int = 2000, cache_dir: str | Path | None = None) -> np.ndarray:
    """Coarse height maps (float16, NaN-padded to a 4 mm square at ``spacing_um``: 40 x 40 at 100 um) of the first
    n distractors."""
    key = _distractor_key(repr(catalogue), spacing_um, _thumb_size(spacing_um))
    f = None if cache_dir is None else Path(cache_dir) / f"thumbs-{key}-{n}.npy"
    if f is not None and f.exists():
        return np.load(f)
    ranges = [(catalogue, spacing_um, lo, min(lo + batch, catalogue.id_offset + n))
              for lo in range(catalogue.id_offset, catalogue.id_offset + n, batch)]
    if workers > 1 and len(ranges) > 1:
        with ProcessPoolExecutor(workers) as ex:
            T = np.concatenate(list(ex.map(_thumb_range, ranges)))
    else:
        T = np.concatenate([_thumb_range(r) for r in ranges])
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(f, lambda fh: np.save(fh, T))
    return T


_WD: dict = {}


def _worker_descriptor(spec: tuple[str, tuple]) -> DescriptorModel:
    """Descriptor of a (name, options) spec, loaded once per process."""
    if spec not in _WD:
        _WD[spec] = load_descriptor(spec[0], **dict(spec[1]))
    return _WD[spec]


def _describe_range(args) -> list[np.ndarray]:
    catalogue, specs, lo, hi = args
    surfaces = [catalogue(i, spacing_um=25.0) for i in range(lo, hi)]
    return _describe_all([_worker_descriptor(s) for s in specs], surfaces)


def _describe_all(descs, surfaces) -> list[np.ndarray]:
    """Every descriptor of every surface; descriptors sharing an ``input_key`` (same network input, other
    weights) compute their inputs once and embed them with ``embed_inputs``."""
    out, inputs = [], {}
    for d in descs:
        key = getattr(d, "input_key", None)
        if key is not None:
            if key not in inputs:
                inputs[key] = np.stack([d.inputs(s) for s in surfaces])
            out.append(np.asarray(d.embed_inputs(inputs[key]), dtype=np.float32))
        else:
            many = getattr(d, "describe_many", None)
            out.append(np.asarray(many(surfaces) if many else np.stack([d(s) for s in surfaces]), dtype=np.float32))
    return out


def _spec(descriptor) -> tuple[str, tuple]:
    """(registry name, options) that rebuild ``descriptor`` in a worker process."""
    if isinstance(descriptor, tuple):
        return descriptor
    if descriptor.name.startswith("bf-polar-fft/"):
        return ("polar", tuple(sorted(getattr(descriptor, "kwargs", {}).items())))
    if descriptor.name.startswith("bf-polar-phase/"):
        return ("phase", tuple(sorted({**descriptor.kwargs, "n_rotations": descriptor.n_rotations,
                                       "mirror": descriptor.mirror, **descriptor.jitter}.items())))
    w = getattr(descriptor, "weights_path", None)
    return ("learned", (("threads", 1),) + ((("weights", str(w)),) if w else ()))


def distractor_descriptors(n: int, *, catalogue: SyntheticCatalogue, descriptor=None, descriptors=None,
                           workers: int = 2, batch: int = 500, cache_dir: str | Path | None = None,
                           progress: bool = True):
    """Descriptors (float32, shape (n, dim)) of distractors ``catalogue.id_offset + 0..n-1`` at 25 um.

    ``descriptor``: one descriptor, returns one array; ``descriptors``: several (each generated surface
    is described by all of them), returns a list. Computed in batches in a process pool (each worker loads
    the descriptors by registry name); cached per descriptor as ``.npy`` in ``cache_dir`` (a larger cached
    set serves any smaller ``n``).
    """
    single = descriptors is None
    descs = [descriptor] if single else list(descriptors)
    keys = [_distractor_key(d.name, repr(catalogue)) for d in descs]
    results: list[np.ndarray | None] = [None] * len(descs)
    cached: list[np.ndarray | None] = [None] * len(descs)
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for j, key in enumerate(keys):
            best = None
            for f in cache_dir.glob(f"distractors-{key}-*.npy"):
                m = int(f.stem.rsplit("-", 1)[1])
                if best is None or m > best[0]:
                    best = (m, f)
            if best is not None:
                cached[j] = np.load(best[1], mmap_mode="r")
                if best[0] >= n:
                    results[j] = np.ascontiguousarray(cached[j][:n])
    todo = [j for j in range(len(descs)) if results[j] is None]
    if todo:
        have = min(0 if cached[j] is None else cached[j].shape[0] for j in todo)
        lo0 = catalogue.id_offset + have
        specs = tuple(_spec(descs[j]) for j in todo)
        ranges = [(catalogue, specs, lo, min(lo + batch, catalogue.id_offset + n))
                  for lo in range(lo0, catalogue.id_offset + n, batch)]
        parts: list[list[np.ndarray]] = [[np.asarray(cached[j][:have])] if have else [] for j in todo]
        t0 = time.perf_counter()
        if workers > 1 and len(ranges) > 1:
            with ProcessPoolExecutor(workers) as ex:
                for k, arrs in enumerate(ex.map(_describe_range, ranges)):
                    for p, a in zip(parts, arrs):
                        p.append(a)
                    if progress and (k + 1) % 10 == 0:
                        print(f"  distractor descriptors: {have + (k + 1) * batch}/{n} "
                              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        else:
            for r in ranges:
                for p, a in zip(parts, _describe_range(r)):
                    p.append(a)
        for j, p in zip(todo, parts):
            X = np.concatenate(p).astype(np.float32)
            results[j] = X
            if cache_dir is not None:
                atomic_write(cache_dir / f"distractors-{keys[j]}-{n}.npy", lambda fh, X=X: np.save(fh, X))
    return results[0] if single else results


def load_rotated_scans(directory, labels, *, seed: int) -> tuple[list[str], np.ndarray, dict[int, Surface]]:
    """Names, sources and preprocessed surfaces (ids 0..n-1, in the labels' order) of a labelled folder,
    each rotated by a seeded random angle over the full circle (at the preprocessed spacing) and cropped."""
    from ballistic.bench.cartridge import read_labels
    from ballistic.cartridge.breech_face import preprocess_cartridge
    from ballistic.io.x3p import read_x3p
    from ballistic.preprocess.filters import crop_to_mask, rotate
    scans = read_labels(directory, labels)
    rng = np.random.default_rng(seed)
    real = {}
    for i, sc in enumerate(scans):
        s = preprocess_cartridge(read_x3p(sc.path))
        s = crop_to_mask(rotate(s, float(rng.uniform(0.0, 360.0))))
        real[i] = s.with_heights(s.heights, source=sc.name)
    return [sc.name for sc in scans], np.array([sc.source for sc in scans]), real


def mates_of(src: np.ndarray, i: int) -> np.ndarray:
    """Positions of the scans of ``src[i]``'s source other than ``i`` itself (a query's mates)."""
    return np.flatnonzero((src == src[i]) & (np.arange(len(src)) != i))


def mate_recall(ranked: np.ndarray, mates: np.ndarray, k: int) -> float:
    """Fraction of ``mates`` among the first ``k`` of ``ranked``."""
    return float(np.isin(mates, ranked[:k]).mean())


def bench_index(real: np.ndarray, distractors: np.ndarray, **index_kwargs) -> VectorIndex:
    """A :class:`VectorIndex` of the real scans' vectors (ids ``0..``) and the distractors' (ids from
    :data:`DISTRACTOR_ID0`), added in chunks, trained when its factory needs it."""
    idx = VectorIndex(real.shape[1], **index_kwargs)
    idx.add(np.arange(len(real)), real)
    for lo in range(0, len(distractors), 50_000):
        hi = min(len(distractors), lo + 50_000)
        idx.add(DISTRACTOR_ID0 + np.arange(lo, hi), distractors[lo:hi])
    if idx.needs_training and not idx.is_trained:
        idx.train()
    return idx


def _pct(x, q) -> float:
    return float(np.percentile(np.asarray(x, dtype=np.float64), q)) if len(x) else float("nan")


def _query_rows(retriever: Retriever, real: dict[int, Surface], src: np.ndarray, params: RetrievalParams,
                queries, vectors: dict[int, np.ndarray]) -> list[dict]:
    """End-to-end search of each query (its own entry excluded): recalls, stage recalls, latency."""
    rows = []
    for i in queries:
        mates = mates_of(src, i)
        res = retriever.query(real[i], exclude=[i], params=params, vector=None)
        ids = res.ids()
        row = {f"recall@{kk}": mate_recall(ids, mates, kk) for kk in (1, 10, 100)}
        row["top1"] = bool(ids.size and ids[0] in mates)
        if params.prior and params.cmc_k:
            sc = {c.id: c.prior_ncc for c in res.candidates if np.isfinite(c.prior_ncc)}
            row["stage2"] = mate_recall(np.array(sorted(sc, key=lambda j: -sc[j])), mates, params.cmc_k)
        if params.screen_k and params.screen_k < len(ids):
            # what the screen passed on: its candidates in the order the stage gave them
            by_id = {c.id: c for c in res.candidates}
            passed = order_after_stage([c.id for c in res.candidates if np.isfinite(c.screen_ncc)], by_id,
                                       "screen_ncc", params.stage_order)
            row["screen"] = mate_recall(np.array(passed), mates, params.screen_k)
        row["seconds"] = dict(res.seconds)
        rows.append(row)
    return rows


def _aggregate(rows: list[dict], params: RetrievalParams) -> dict:
    out = {f"recall@{k}": round(float(np.mean([r[f"recall@{k}"] for r in rows])), 4) for k in (1, 10, 100)}
    out["top1_is_mate"] = round(float(np.mean([r["top1"] for r in rows])), 4)
    out["queries_all_mates_in_top10"] = int(sum(r["recall@10"] == 1.0 for r in rows))
    if any("stage2" in r for r in rows):
        out[f"stage2_recall@{params.cmc_k}"] = round(float(np.mean([r["stage2"] for r in rows if "stage2" in r])), 4)
    if any("screen" in r for r in rows):
        out[f"screen_recall@{params.screen_k}"] = round(float(np.mean([r["screen"] for r in rows if "screen" in r])),
                                                        4)
    lat = [r["seconds"]["total"] for r in rows]
    out["latency_p50_s"] = round(_pct(lat, 50), 3)
    out["latency_p95_s"] = round(_pct(lat, 95), 3)
    keys = sorted({k for r in rows for k in r["seconds"]})
    out["latency_mean_by_stage_s"] = {k: round(float(np.mean([r["seconds"].get(k, 0.0) for r in rows])), 4)
                                      for k in keys}
    return out


def real_synthetic_separability(E_real: np.ndarray, E_synth: np.ndarray, *, seed: int = 0) -> dict:
    """How easily real and synthetic descriptors are told apart (a check that distractors are not trivial).

    * ``linear_auc``: 5-fold cross-validated AUC of a logistic regression real-vs-synthetic on the
      vectors (0.5: indistinguishable; 1.0: a hyperplane separates them);
    * ``nn_synthetic_fraction``: among each real vector's 10 nearest neighbours in a pool of all the real
      ones and as many synthetic ones, the fraction that is synthetic (about 0.5 when well mixed, 0 apart).
    """
    from ballistic.cartridge.score.model import fit_logistic
    from ballistic.stats.metrics import roc_auc

    rng = np.random.default_rng(seed)
    Er, Es = np.asarray(E_real, np.float64), np.asarray(E_synth, np.float64)
    X = np.concatenate([Er, Es])
    y = np.r_[np.ones(len(Er)), np.zeros(len(Es))]
    perm = rng.permutation(len(X))
    scores = np.empty(len(X))
    for f in np.array_split(perm, 5):
        tr = np.setdiff1d(perm, f)
        coef, intercept, mean, scale = fit_logistic(X[tr], y[tr] == 1)
        scores[f] = ((X[f] - mean) / scale) @ coef + intercept
    m = min(len(Er), len(Es))
    P = np.concatenate([Er, Es[rng.choice(len(Es), m, replace=False)]])
    S = Er @ P.T
    S[np.arange(len(Er)), np.arange(len(Er))] = -np.inf
    nn = np.argsort(-S, axis=1)[:, :10]
    return {"linear_auc": round(float(roc_auc(scores, y == 1)), 4),
            "nn_synthetic_fraction": round(float((nn >= len(Er)).mean()), 4), "real": len(Er), "synthetic": len(Es)}


def _arms(names, fold_models, src: np.ndarray, study: str) -> list[dict]:
    """One arm per descriptor name: its models and which queries each answers.

    With ``fold_models`` the learned arm answers each query with the one fold model that held out its
    firearm; when the folds hold out only some firearms, every arm (polar too) is queried with those
    scans only, so the arms stay comparable and no query was seen in training.
    """
    all_q = list(range(len(src)))
    folds = []
    if fold_models and "learned" in names:
        for f in sorted(Path(fold_models).glob("*.pt")):
            d = load_descriptor("learned", weights=str(f))
            held = set(getattr(d, "meta", {}).get("held_out", []))
            q = [i for i in all_q if f"{study}:{src[i]}" in held]
            if q:
                folds.append({"descriptor": d, "queries": q, "whiten": False, "weights": f.name})
        covered = sorted(i for m in folds for i in m["queries"])
        if not covered:
            raise ValueError(f"no fold model in {fold_models} holds out a firearm of {study!r}")
        if len(set(covered)) != len(covered):
            raise ValueError(f"fold models in {fold_models} hold out a firearm of {study!r} more than once")
        all_q = covered
    arms = []
    for name in names:
        if name == "learned" and folds:
            arms.append({"name": name, "models": folds, "queries_held_out": True})
        else:
            d = load_descriptor(name)
            # the built-in descriptors fit nothing on real scans: every query is held out
            arms.append({"name": name, "models": [{"descriptor": d, "queries": all_q,
                                                   "whiten": name == "polar", "weights": None}],
                         "queries_held_out": name in ("polar", "phase")})
    return arms


def run_retrieval_bench(directory, labels, *, json_out, distractors=(1000, 10_000, 100_000), k: int = 1000,
                        cmc_k: int = 10, screen_k: int = 50, k_sweep=(100, 250, 500, 1000), factory: str = "HNSW32",
                        whiten_dim: int = 128, whiten_sample: int = 20_000, workers: int = 2, seed: int = 0,
                        cache_dir=None, ef_search: int = 128, nprobe: int = 32, k_factor: int = 8,
                        faiss_ks=(10, 25, 50, 100, 200, 500, 1000), descriptors=("polar",), fold_models=None,
                        study: str | None = None, e2e: bool = True, screen_step_deg: float | None = None,
                        prior_step_deg: float | None = None, prior: bool = True,
                        pose_window_deg: float | None = None, thumb_spacings=(100.0,),
                        stored_views: bool = True) -> dict:
    """Run the benchmark for each descriptor (side by side), print tables, write JSON; returns the summary.

    ``descriptors``: registry names (``"polar"``, ``"learned"``); ``fold_models``: folder of the learned
    descriptor's cross-validation checkpoints (module notes); ``study``: prefix of the firearm ids in
    those checkpoints (default the folder name of ``directory``, e.g. ``fadul``); ``e2e=False`` runs the
    FAISS stage only; ``screen_step_deg`` / ``prior_step_deg`` override the rotation steps of
    :class:`~ballistic.retrieval.search.RetrievalParams` (default: its own); ``prior`` and ``pose_window_deg``
    are its ``prior`` and ``pose_window_deg``; ``thumb_spacings``: the spacings (um) at which the distractors'
    coarse height maps are stored for the rotation stages (:class:`BenchFetch`; 100: the screen's; adding 50
    serves the prior's too, as a service that kept a 50 um view of every exhibit would); ``stored_views``: the
    comparison loads each candidate's prepared views, as the service does (:class:`BenchFetch` ``views_dir``, a
    folder of ``cache_dir``; a distractor's are made and stored the first time it is a candidate, and the
    summary says how many a run made), else regenerates and prepares it at every comparison.
    """
    t_start = time.time()
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or json_out.parent / "cache"
    catalogue = distractor_catalogue()
    names, src, real = load_rotated_scans(directory, labels, seed=seed)
    study = study or Path(directory).name
    arms = _arms(descriptors, fold_models, src, study)
    n_max = max(distractors)
    models = [m for a in arms for m in a["models"]]
    t = time.perf_counter()
    Ds = distractor_descriptors(n_max, catalogue=catalogue, descriptors=[m["descriptor"] for m in models],
                                workers=workers, cache_dir=cache_dir)
    t_desc = time.perf_counter() - t
    t = time.perf_counter()
    thumbs = {float(s): distractor_thumbnails(n_max, catalogue=catalogue, spacing_um=float(s), workers=workers,
                                              cache_dir=cache_dir)
              for s in thumb_spacings} if ((screen_k or prior) and e2e) else None
    t_thumb = time.perf_counter() - t
    steps = {k_: v for k_, v in (("screen_step_deg", screen_step_deg), ("prior_step_deg", prior_step_deg))
             if v is not None}
    base = RetrievalParams(k=k, cmc_k=cmc_k, screen_k=screen_k, workers=workers, prior=prior,
                           pose_window_deg=pose_window_deg, **steps)
    views_dir = Path(cache_dir) / f"views-{_distractor_key('views', prepared_key(base.cmc))}" \
        if stored_views and e2e else None
    views_before = len(list(views_dir.glob("*.npz"))) if views_dir is not None and views_dir.is_dir() else 0
    fetch = BenchFetch(real, catalogue, thumbs=thumbs, views_dir=views_dir, params=base.cmc)
    summary: dict = {
        "benchmark": "retrieval", "queries": len(arms[0]["models"][0]["queries"]) if len(arms[0]["models"]) == 1
        else sum(len(m["queries"]) for m in arms[0]["models"]), "scans": len(names),
        "synthetic_distractors": _SYNTH_VERSION,
        "mates_per_query_mean": round(float(np.mean([(src == v).sum() - 1 for v in src])), 3),
        "factory": factory, "index_settings": {"ef_search": ef_search, "nprobe": nprobe, "k_factor": k_factor},
        "thumb_spacings_um": sorted(thumbs) if thumbs else [],
        "candidate_views": "stored" if views_dir is not None else "regenerated",
        "params": {kk: v for kk, v in asdict(base).items() if kk != "cmc"},
        "distractor_descriptor_seconds": round(t_desc, 1), "distractor_thumbnail_seconds": round(t_thumb, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "arms": {},
    }
    print(f"descriptors of {n_max} distractors ({len(models)} models) in {t_desc:.0f} s, thumbnails in "
          f"{t_thumb:.0f} s", flush=True)
    for arm in arms:
        summary["arms"][arm["name"]] = _run_arm(arm, [Ds[models.index(m)] for m in arm["models"]], real, src,
                                                fetch, base, distractors=distractors, factory=factory,
                                                whiten_dim=whiten_dim, whiten_sample=whiten_sample,
                                                ef_search=ef_search, nprobe=nprobe, k_factor=k_factor,
                                                faiss_ks=faiss_ks, k_sweep=k_sweep, e2e=e2e, seed=seed)
    if views_dir is not None:      # views a service would have stored when the exhibits were submitted
        summary["distractor_views_made_this_run"] = len(list(views_dir.glob("*.npz"))) - views_before
    summary["wall_seconds"] = round(time.time() - t_start, 1)
    for name, a in summary["arms"].items():
        _print_table(name, a, k)
    atomic_write_bytes(json_out, json.dumps(summary, indent=2).encode())
    return summary


def _exact_scores(descriptor, rows: np.ndarray, variants: np.ndarray | None, stored: np.ndarray,
                  k: int) -> np.ndarray:
    """Every stored vector's score as an index stage asked for ``k`` gives it (float64, shape (n,)): the best
    inner product of the query's rows, or the descriptor's own scan of the whole store (its centre variants
    re-scoring the vectors they would re-score for ``k``)."""
    scan = getattr(descriptor, "scan", None)
    if scan is None:
        return (stored @ rows.T).max(axis=1)
    extra = {} if variants is None else {"variants": variants, "variant_k": descriptor.variant_rows(len(stored), k)}
    s, pos, _ = scan(rows, stored, len(stored), **extra)
    out = np.full(len(stored), -np.inf)
    out[pos] = s
    return out


def _run_arm(arm: dict, Ds: list[np.ndarray], real: dict[int, Surface], src: np.ndarray, fetch: BenchFetch,
             base: RetrievalParams, *, distractors, factory, whiten_dim, whiten_sample, ef_search, nprobe, k_factor,
             faiss_ks, k_sweep, e2e: bool, seed: int) -> dict:
    n_q = len(src)
    n_max = max(distractors)
    prepared = []
    Qs = _describe_all([m["descriptor"] for m in arm["models"]], [real[i] for i in range(n_q)])
    for m, D, Q in zip(arm["models"], Ds, Qs):
        d = m["descriptor"]
        w = PCAWhitener.fit(D[:min(whiten_sample, len(D))], dim=whiten_dim, descriptor=d.name) if m["whiten"]             else None
        Wd, Wq = (w.transform(D), w.transform(Q)) if w is not None else (D, Q)
        prepared.append((m, w, Wd, Wq))
    first = arm["models"][0]["descriptor"]
    out: dict = {"descriptor": first.name if len(arm["models"]) == 1 else
                 sorted({m["descriptor"].name for m in arm["models"]}),
                 "models": [{"name": m["descriptor"].name, "weights": m["weights"], "queries": len(m["queries"])}
                            for m in arm["models"]],
                 "queries_held_out": arm["queries_held_out"],
                 "whitener_dim": prepared[0][1].out_dim if prepared[0][1] is not None else None,
                 "whitener_fit_on": "synthetic distractors only" if prepared[0][1] is not None else None,
                 "per_n": {}, "k_sweep": {}}
    for n in sorted(distractors):
        t = time.perf_counter()
        fr = {kk: [] for kk in faiss_ks}
        best_rank, synth_top10, rows, proj, realism = [], [], [], [], []
        retrs = []
        for m, w, Wd, Wq in prepared:
            idx = bench_index(Wq, Wd[:n], factory=factory, ef_search=ef_search, nprobe=nprobe, k_factor=k_factor)
            kmax = max(faiss_ks)
            qs = m["queries"]
            d = m["descriptor"]
            sent = {i: index_queries(d, Wq[i]) for i in qs}    # what the Retriever sends: 1 row, or the copies
            # and the query's centre variants where the descriptor has them (never through a whitener)
            var = {i: query_variants(d, real[i]) if w is None else None for i in qs}
            if hasattr(d, "query_vectors"):        # rotation search by query expansion, as the Retriever does
                I = [best_per_id(*idx.search(sent[i], kmax + 1, scan=query_scan(d, var[i]))[::-1],
                                 metric=idx.metric)[0][:kmax + 1] for i in qs]
            else:
                _, I = idx.search(Wq[qs], kmax + 1)
            both = np.concatenate([Wq, Wd[:n]])        # what the index holds: the real scans, then the distractors
            for row, i in zip(I, qs):
                ids = row[(row != i) & (row >= 0)]
                mates = mates_of(src, i)
                for kk in faiss_ks:
                    fr[kk].append(mate_recall(ids, mates, kk))
                pos = np.flatnonzero(np.isin(ids, mates))
                best_rank.append(int(pos[0]) + 1 if pos.size else kmax + 1)
                synth_top10.append(int((ids[:10] >= DISTRACTOR_ID0).sum()))
                # exact scores: distractors above each mate (projection to 10 n), and how the distractors
                # compare with the real non-mates
                sc = _exact_scores(d, sent[i], var[i], both, kmax + 1)
                sr, sd = sc[:len(Wq)], sc[len(Wq):]
                nonm = np.flatnonzero((src != src[i]))
                for mt in mates:
                    above_d = int((sd > sr[mt]).sum())
                    above_r = int((sr[np.r_[nonm, mates[mates != mt]]] > sr[mt]).sum())
                    proj.append((above_d, above_r))
                med_nm = float(np.median(sr[nonm]))
                realism.append((float((sd > med_nm).mean()), float((sd > sr[nonm].max()).mean())))
            retrs.append(Retriever(idx, fetch, descriptor=m["descriptor"], whitener=w, params=base) if e2e else None)
        t_build = time.perf_counter() - t
        res: dict = {"distractors": n, "index_build_and_faiss_s": round(t_build, 2),
                     "index_bytes_per_vector": round(idx.faiss_nbytes() / max(1, len(idx)), 1),
                     "faiss_recall": {f"@{kk}": round(float(np.mean(v)), 4) for kk, v in fr.items()},
                     "faiss_best_mate_rank_median": float(np.median(best_rank)),
                     "faiss_synthetic_in_top10_mean": round(float(np.mean(synth_top10)), 2)}
        P = np.array(proj, dtype=np.float64)
        for mult in (10,):
            res[f"faiss_recall_projected_{mult}x"] = {
                f"@{kk}": round(float(np.mean(_poisson_cdf_below(mult * P[:, 0], kk - P[:, 1]))), 4)
                for kk in faiss_ks}
        R = np.array(realism)
        res["distractors_vs_real_nonmates"] = {
            "fraction_above_median_real_nonmate": round(float(R[:, 0].mean()), 5),
            "fraction_above_best_real_nonmate": round(float(R[:, 1].mean()), 7)}
        if e2e:
            for (m, *_), r in zip(prepared, retrs):
                rows += _query_rows(r, real, src, base, m["queries"], {})
            res.update(_aggregate(rows, base))
        res["loadavg_1min"] = round(os.getloadavg()[0], 2)      # other work on the machine inflates latency
        out["per_n"][str(n)] = res
        msg = f"{arm['name']:>8} N={n:>7}: FAISS @10 {res['faiss_recall']['@10']:.3f} @100 " \
              f"{res['faiss_recall'].get('@100', float('nan')):.3f} @1000 {res['faiss_recall'].get('@1000', float('nan')):.3f}"
        if e2e:
            msg += f" | recall@10 {res['recall@10']:.3f} p50 {res['latency_p50_s']:.2f} s"
        print(msg, flush=True)
        if n == n_max:
            if not hasattr(first, "query_vectors"):     # orientation-bound vectors (phase) say nothing here
                E_real = np.concatenate([Wq for *_, Wq in prepared[:1]])
                E_syn = prepared[0][2][np.random.default_rng(seed).choice(n, min(n, 2000), replace=False)]
                out["real_synthetic_separability"] = real_synthetic_separability(E_real, E_syn, seed=seed)
            if e2e:
                for kk in k_sweep:
                    p2 = replace(base, k=kk, screen_k=min(base.screen_k, kk))
                    r2 = res if kk == base.k else _aggregate(
                        [row for (m, *_), r in zip(prepared, retrs) for row in
                         _query_rows(r, real, src, p2, m["queries"], {})], p2)
                    out["k_sweep"][str(kk)] = {key: r2[key] for key in
                                               ("recall@1", "recall@10", "recall@100", "top1_is_mate",
                                                "latency_p50_s", "latency_p95_s")}
                    print(f"   K={kk:>4}: recall@10 {r2['recall@10']:.3f}  p50 {r2['latency_p50_s']:.2f} s", flush=True)
        for r in retrs:
            if r is not None:
                r.close()
    return out


def _poisson_cdf_below(lam: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """P(X < limit) for X ~ Poisson(lam), elementwise (limit <= 0 gives 0)."""
    from scipy.stats import poisson

    lim = np.ceil(np.asarray(limit, dtype=np.float64)) - 1          # X <= lim
    return np.where(lim < 0, 0.0, poisson.cdf(np.maximum(lim, 0), np.maximum(lam, 1e-12)))


def _print_table(name: str, s: dict, k: int) -> None:
    print()
    print(f"[{name}] {s['descriptor'] if isinstance(s['descriptor'], str) else ', '.join(s['descriptor'])}"
          f"  (queries held out from training: {s['queries_held_out']})")
    print(f"{'distractors':>11} | {'R@1':>5} {'R@10':>5} {'R@100':>5} | {'FAISS@10':>8} {'@100':>6} "
          f"{'@' + str(k):>6} | {'screen':>6} {'stage2':>6} | {'p50 s':>6} {'p95 s':>6}")
    nan = float("nan")
    for n, r in s["per_n"].items():
        fr = r["faiss_recall"]
        st2 = next((v for key, v in r.items() if key.startswith("stage2_recall")), nan)
        scr = next((v for key, v in r.items() if key.startswith("screen_recall")), nan)
        print(f"{n:>11} | {r.get('recall@1', nan):5.3f} {r.get('recall@10', nan):5.3f} {r.get('recall@100', nan):5.3f} | "
              f"{fr.get('@10', nan):8.3f} {fr.get('@100', nan):6.3f} "
              f"{fr.get('@' + str(k), nan):6.3f} | {scr:6.3f} {st2:6.3f} | "
              f"{r.get('latency_p50_s', nan):6.2f} {r.get('latency_p95_s', nan):6.2f}")
    if s["k_sweep"]:
        print("K sweep (largest N):", ", ".join(f"K={kk}: R@10 {v['recall@10']:.3f} p50 {v['latency_p50_s']:.2f}s"
                                                 for kk, v in s["k_sweep"].items()))
    last = s["per_n"][max(s["per_n"], key=int)]
    print(f"distractor realism: separability {s.get('real_synthetic_separability')}; "
          f"{last['distractors_vs_real_nonmates']}; FAISS projected to 10x: {last['faiss_recall_projected_10x']}")


# --------------------------------------------------------------------------- rotation draws
#: end-to-end figures of one draw summarised over draws (where the draw ran the re-ranking stages)
_E2E_FIGURES = ("recall@1", "recall@10", "recall@100", "top1_is_mate", "latency_p50_s", "latency_p95_s")


def aggregate_retrieval_draws(draws: dict[int, dict]) -> dict:
    """Each arm's figures over rotation draws (:mod:`ballistic.bench.draws`).

    Parameters
    ----------
    draws : dict
        ``{seed: run_retrieval_bench(...)}`` summaries of one benchmark run per draw (same arms and distractor
        counts).

    Returns
    -------
    dict
        ``arms[arm][n]``: ``faiss_recall`` and ``faiss_recall_projected_10x`` per ``@K``, and the end-to-end
        figures of :data:`_E2E_FIGURES` where the draws have them, each as :func:`~ballistic.bench.draws.spread`
        (mean, min, max, per draw in ascending seed order); ``seeds``.
    """
    if not draws:
        raise ValueError("aggregate_retrieval_draws: no draws given")
    seeds = sorted(draws)
    first = draws[seeds[0]]["arms"]
    arms: dict = {}
    for arm, a in first.items():
        arms[arm] = {}
        for n in a["per_n"]:
            per = [draws[s]["arms"].get(arm, {}).get("per_n", {}).get(n) for s in seeds]
            per = [p for p in per if p]
            out: dict = {"draws": len(per)}
            for key in ("faiss_recall", "faiss_recall_projected_10x"):
                ks = per[0].get(key, {})
                out[key] = {k: spread(p.get(key, {}).get(k) for p in per) for k in ks}
            for f in _E2E_FIGURES:
                sp = spread(p.get(f) for p in per)
                if sp is not None:
                    out[f] = sp
            arms[arm][n] = out
    return {"seeds": seeds, "arms": arms}


def format_retrieval_draws(agg: dict, *, ks=("@10", "@100", "@200", "@1000")) -> str:
    """Table of :func:`aggregate_retrieval_draws`: FAISS-stage recall (mean and worst draw) at ``ks``, the 10x
    projection at the largest, and recall@10 after re-ranking where run."""
    lines = [heading(agg["seeds"])]
    for arm, per_n in agg["arms"].items():
        head = f"{'arm':<8}{'distractors':>12}" + "".join(f"{'FAISS' + k:>14}" for k in ks) + \
            f"{'proj.10x' + ks[-1]:>16}{'R@10 e2e':>14}"
        lines += [head, "-" * len(head)]
        for n, o in per_n.items():
            def cell(sp):
                return f"{sp['mean']:.3f} ({sp['min']:.3f})" if sp else "-"
            fr, pr = o["faiss_recall"], o["faiss_recall_projected_10x"]
            lines.append(f"{arm:<8}{n:>12}" + "".join(f"{cell(fr.get(k)):>14}" for k in ks) +
                         f"{cell(pr.get(ks[-1])):>16}{cell(o.get('recall@10')):>14}")
    lines.append("cells: mean over draws (worst draw)")
    return "\n".join(lines)


def run_retrieval_draws(directory, labels, *, seeds, json_out, **bench) -> dict:
    """:func:`run_retrieval_bench` once per rotation draw (each draw's summary beside ``json_out`` as
    ``<stem>_seed<S>.json``), then :func:`aggregate_retrieval_draws` of them: printed, and written to
    ``json_out`` with the per-draw files named. ``bench``: every other argument of :func:`run_retrieval_bench`."""
    seeds = draw_seeds(seeds, caller="run_retrieval_draws")
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    draws, files = {}, {}
    for s in seeds:
        files[s] = json_out.with_name(f"{json_out.stem}_seed{s}.json")
        draws[s] = run_retrieval_bench(directory, labels, json_out=files[s], seed=s, **bench)
    agg = aggregate_retrieval_draws(draws)
    head = {k: draws[seeds[0]].get(k) for k in ("benchmark", "queries", "scans", "synthetic_distractors",
                                                "mates_per_query_mean", "factory", "params")}
    summary = {**head, **agg, "per_draw_files": {str(s): str(f) for s, f in files.items()}}
    print(format_retrieval_draws(agg), flush=True)
    atomic_write_bytes(json_out, json.dumps(summary, indent=2).encode())
    return summary
