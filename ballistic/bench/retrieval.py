"""Retrieval benchmark: the real Fadul scans hidden among synthetic distractors.

``ballistic bench retrieval DIR --labels CSV --json OUT`` calls :func:`run_retrieval_bench`:

* the 40 real Fadul breech faces (preprocessed, each rotated by a seeded random
  angle) get ids 0..39; ``N`` synthetic distractors
  (:class:`ballistic.cartridge.synth.SyntheticCatalogue`, two firings per synthetic
  firearm) get ids from 1 000 000; their descriptors are computed at 25 um
  (the synthetic fast path) in a process pool and cached on disk;
* a :class:`~ballistic.retrieval.descriptor.PCAWhitener` is fitted on distractor descriptors
  only (never on the Fadul queries), the index is built with the chosen FAISS
  factory;
* every Fadul scan queries the index (its own entry excluded) through
  :class:`~ballistic.retrieval.search.Retriever`; its mates are the other scans of the
  same slide (2 to 4 each). Distractors needed by stages 2-3 are regenerated from their id.

Reported per ``N``: recall@1/10/100 of the mates after re-ranking, the FAISS
stage's own recall at several K, stage 2's recall at ``cmc_k``, query latency
p50/p95 (from the preprocessed query: descriptor, search, fetching candidates,
both re-ranking stages). At the largest ``N`` the whole pipeline is rerun for
each K of ``k_sweep`` to show how recall and latency depend on K.
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

from ballistic.cartridge.synth import SyntheticCatalogue
from ballistic.io.atomic import atomic_write, atomic_write_bytes
from ballistic.retrieval.descriptor import PCAWhitener, PolarFFTDescriptor
from ballistic.retrieval.index import VectorIndex
from ballistic.retrieval.search import RetrievalParams, Retriever
from ballistic.surface import Surface

__all__ = ["BenchFetch", "distractor_descriptors", "distractor_thumbnails", "run_retrieval_bench"]

DISTRACTOR_ID0 = 1_000_000
_SYNTH_VERSION = "synth/1"


class BenchFetch:
    """Picklable ``fetch``: real surfaces by id; synthetic distractors from stored thumbnails (at
    ``thumb_spacing_um`` and coarser, as a service would keep them beside the descriptors) or
    regenerated from their id."""

    def __init__(self, real: dict[int, Surface], catalogue: SyntheticCatalogue, *,
                 thumbs: np.ndarray | None = None, thumb_spacing_um: float = 100.0) -> None:
        self.real = real
        self.catalogue = catalogue
        self.thumbs = thumbs
        self.thumb_spacing_um = thumb_spacing_um

    def __call__(self, id: int, spacing_um: float | None = None) -> Surface:
        if int(id) in self.real:
            return self.real[int(id)]
        j = int(id) - self.catalogue.id_offset
        if self.thumbs is not None and spacing_um is not None and spacing_um >= self.thumb_spacing_um - 1e-9 \
                and 0 <= j < len(self.thumbs):
            return Surface(self.thumbs[j].astype(np.float64), self.thumb_spacing_um)
        return self.catalogue(int(id), spacing_um=spacing_um)


_THUMB = 40


def _thumb_range(args) -> np.ndarray:
    from ballistic.cartridge.cmc.params import centre_heights
    from ballistic.preprocess.filters import resample
    catalogue, spacing, lo, hi = args
    out = np.full((hi - lo, _THUMB, _THUMB), np.nan, dtype=np.float16)
    for k, i in enumerate(range(lo, hi)):
        h = centre_heights(resample(catalogue(i, spacing_um=50.0), spacing_um=spacing).heights)[:_THUMB, :_THUMB]
        oy, ox = (_THUMB - h.shape[0]) // 2, (_THUMB - h.shape[1]) // 2
        out[k, oy:oy + h.shape[0], ox:ox + h.shape[1]] = h
    return out


def distractor_thumbnails(n: int, *, catalogue: SyntheticCatalogue, spacing_um: float = 100.0, workers: int = 2,
                          batch: int = 2000, cache_dir: str | Path | None = None) -> np.ndarray:
    """Coarse height maps (float16, NaN-padded to 40 x 40 at ``spacing_um``) of the first n distractors."""
    key = hashlib.sha256(f"{catalogue!r}|{spacing_um}|{_THUMB}|{_SYNTH_VERSION}".encode()).hexdigest()[:16]
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


def _describe_range(args) -> np.ndarray:
    catalogue, descriptor, lo, hi = args
    return np.stack([descriptor(catalogue(i, spacing_um=25.0)) for i in range(lo, hi)])


def distractor_descriptors(n: int, *, catalogue: SyntheticCatalogue, descriptor: PolarFFTDescriptor,
                           workers: int = 2, batch: int = 1000, cache_dir: str | Path | None = None,
                           progress: bool = True) -> np.ndarray:
    """Descriptors (float32, shape (n, dim)) of distractors ``catalogue.id_offset + 0..n-1`` at 25 um.

    Computed in batches in a process pool; cached as ``.npy`` in ``cache_dir`` (a
    larger cached set serves any smaller ``n``).
    """
    key = hashlib.sha256(f"{descriptor.name}|{catalogue!r}|{_SYNTH_VERSION}".encode()).hexdigest()[:16]
    cached = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        best = None
        for f in cache_dir.glob(f"distractors-{key}-*.npy"):
            m = int(f.stem.rsplit("-", 1)[1])
            if best is None or m > best[0]:
                best = (m, f)
        if best is not None:
            cached = np.load(best[1], mmap_mode="r")
            if best[0] >= n:
                return np.ascontiguousarray(cached[:n])
    have = 0 if cached is None else cached.shape[0]
    lo0 = catalogue.id_offset + have
    ranges = [(catalogue, descriptor, lo, min(lo + batch, catalogue.id_offset + n))
              for lo in range(lo0, catalogue.id_offset + n, batch)]
    parts = [np.asarray(cached)] if cached is not None else []
    t0 = time.perf_counter()
    if workers > 1 and len(ranges) > 1:
        with ProcessPoolExecutor(workers) as ex:
            for j, arr in enumerate(ex.map(_describe_range, ranges)):
                parts.append(arr)
                if progress and (j + 1) % 10 == 0:
                    print(f"  distractor descriptors: {have + (j + 1) * batch}/{n} "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    else:
        parts += [_describe_range(r) for r in ranges]
    X = np.concatenate(parts).astype(np.float32)
    if cache_dir is not None:
        atomic_write(cache_dir / f"distractors-{key}-{n}.npy", lambda fh: np.save(fh, X))
    return X


def _load_fadul(directory, labels, *, seed: int) -> tuple[list[str], np.ndarray, dict[int, Surface]]:
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


def _recall(ranked: np.ndarray, mates: np.ndarray, k: int) -> float:
    return float(np.isin(mates, ranked[:k]).mean())


def _pct(x, q) -> float:
    return float(np.percentile(np.asarray(x, dtype=np.float64), q)) if len(x) else float("nan")


def _run_queries(retriever: Retriever, real: dict[int, Surface], src: np.ndarray, vectors: np.ndarray,
                 params: RetrievalParams) -> dict:
    rec = {1: [], 10: [], 100: []}
    top1, prior_rec, screen_rec, lat, stage = [], [], [], [], {}
    for i in range(len(src)):
        mates = np.flatnonzero((src == src[i]) & (np.arange(len(src)) != i))
        res = retriever.query(real[i], exclude=[i], params=params)
        ids = res.ids()
        for k in rec:
            rec[k].append(_recall(ids, mates, k))
        top1.append(bool(ids.size and ids[0] in mates))
        if params.prior and params.cmc_k:
            sc = {c.id: c.prior_ncc for c in res.candidates if np.isfinite(c.prior_ncc)}
            prior_rec.append(_recall(np.array(sorted(sc, key=lambda j: -sc[j])), mates, params.cmc_k))
        if params.screen_k and params.screen_k < len(ids):
            sc = {c.id: c.screen_ncc for c in res.candidates if np.isfinite(c.screen_ncc)}
            screen_rec.append(_recall(np.array(sorted(sc, key=lambda j: -sc[j])), mates, params.screen_k))
        lat.append(res.seconds["total"])
        for key, v in res.seconds.items():
            stage.setdefault(key, []).append(v)
    out = {f"recall@{k}": round(float(np.mean(v)), 4) for k, v in rec.items()}
    out["top1_is_mate"] = round(float(np.mean(top1)), 4)
    out["queries_all_mates_in_top10"] = int(sum(r == 1.0 for r in rec[10]))
    if prior_rec:
        out[f"stage2_recall@{params.cmc_k}"] = round(float(np.mean(prior_rec)), 4)
    if screen_rec:
        out[f"screen_recall@{params.screen_k}"] = round(float(np.mean(screen_rec)), 4)
    out["latency_p50_s"] = round(_pct(lat, 50), 3)
    out["latency_p95_s"] = round(_pct(lat, 95), 3)
    out["latency_mean_by_stage_s"] = {k: round(float(np.mean(v)), 4) for k, v in stage.items()}
    return out


def run_retrieval_bench(directory, labels, *, json_out, distractors=(1000, 10_000, 100_000), k: int = 1000,
                        cmc_k: int = 10, screen_k: int = 50, k_sweep=(100, 250, 500, 1000), factory: str = "HNSW32",
                        whiten_dim: int = 128, whiten_sample: int = 20_000, workers: int = 2, seed: int = 0,
                        cache_dir=None, ef_search: int = 128, nprobe: int = 32, k_factor: int = 8,
                        faiss_ks=(10, 25, 50, 100, 200, 500, 1000)) -> dict:
    """Run the benchmark, print a table, write JSON to ``json_out``; returns the summary dict."""
    t_start = time.time()
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    descriptor = PolarFFTDescriptor()
    catalogue = SyntheticCatalogue(id_offset=DISTRACTOR_ID0, firings_per_firearm=2, firearm_offset=0,
                                   spacing_um=12.5)
    names, src, real = _load_fadul(directory, labels, seed=seed)
    n_max = max(distractors)
    t = time.perf_counter()
    D = distractor_descriptors(n_max, catalogue=catalogue, descriptor=descriptor, workers=workers,
                               cache_dir=cache_dir or json_out.parent / "cache")
    t_desc = time.perf_counter() - t
    t = time.perf_counter()
    thumbs = distractor_thumbnails(n_max, catalogue=catalogue, workers=workers,
                                   cache_dir=cache_dir or json_out.parent / "cache") if screen_k else None
    t_thumb = time.perf_counter() - t
    Q = np.stack([descriptor(real[i]) for i in range(len(names))])
    w = PCAWhitener.fit(D[:min(whiten_sample, len(D))], dim=whiten_dim, descriptor=descriptor.name)
    Wd, Wq = w.transform(D), w.transform(Q)
    fetch = BenchFetch(real, catalogue, thumbs=thumbs)
    base = RetrievalParams(k=k, cmc_k=cmc_k, screen_k=screen_k, workers=workers)
    summary: dict = {
        "benchmark": "retrieval", "queries": len(names),
        "mates_per_query_mean": round(float(np.mean([(src == v).sum() - 1 for v in src])), 3),
        "descriptor": descriptor.name, "whitener_dim": w.out_dim, "whitener_fit_on": "synthetic distractors only",
        "factory": factory, "index_settings": {"ef_search": ef_search, "nprobe": nprobe, "k_factor": k_factor},
        "params": {kk: v for kk, v in asdict(base).items() if kk != "cmc"},
        "distractor_descriptor_seconds": round(t_desc, 1), "distractor_thumbnail_seconds": round(t_thumb, 1),
        "machine": {"cpus": os.cpu_count(),
                                                                       "platform": platform.platform()},
        "per_n": {}, "k_sweep": {},
    }
    print(f"descriptors: {n_max} distractors in {t_desc:.0f} s, thumbnails in {t_thumb:.0f} s; whitened "
          f"{descriptor.dim} -> {w.out_dim}", flush=True)
    retr = None
    for n in sorted(distractors):
        t = time.perf_counter()
        idx = VectorIndex(w.out_dim, factory=factory, ef_search=ef_search, nprobe=nprobe, k_factor=k_factor)
        idx.add(np.arange(len(names)), Wq)
        for lo in range(0, n, 50_000):
            hi = min(n, lo + 50_000)
            idx.add(DISTRACTOR_ID0 + np.arange(lo, hi), Wd[lo:hi])
        if idx.needs_training and not idx.is_trained:
            idx.train()
        t_build = time.perf_counter() - t
        # FAISS stage alone
        kmax = max(faiss_ks)
        _, I = idx.search(Wq, kmax + 1)
        fr = {kk: [] for kk in faiss_ks}
        best_rank, synth_top10 = [], []
        for i in range(len(names)):
            ids = I[i][(I[i] != i) & (I[i] >= 0)]
            mates = np.flatnonzero((src == src[i]) & (np.arange(len(src)) != i))
            for kk in faiss_ks:
                fr[kk].append(_recall(ids, mates, kk))
            pos = np.flatnonzero(np.isin(ids, mates))
            best_rank.append(int(pos[0]) + 1 if pos.size else kmax + 1)
            synth_top10.append(int((ids[:10] >= DISTRACTOR_ID0).sum()))
        if retr is not None:
            retr.close()
        retr = Retriever(idx, fetch, descriptor=descriptor, whitener=w, params=base)
        res = _run_queries(retr, real, src, Wq, base)
        res.update({"distractors": n, "index_build_s": round(t_build, 2), "k": k, "screen_k": screen_k,
                    "faiss_recall": {f"@{kk}": round(float(np.mean(v)), 4) for kk, v in fr.items()},
                    "faiss_best_mate_rank_median": float(np.median(best_rank)),
                    "faiss_synthetic_in_top10_mean": round(float(np.mean(synth_top10)), 2)})
        res["loadavg_1min"] = round(os.getloadavg()[0], 2)      # other work on the machine inflates latency
        summary["per_n"][str(n)] = res
        print(f"N={n:>7}: recall@1 {res['recall@1']:.3f} @10 {res['recall@10']:.3f} @100 {res['recall@100']:.3f} | "
              f"FAISS @{k} {res['faiss_recall'].get('@' + str(k), float('nan')):.3f} | p50 {res['latency_p50_s']:.2f} s "
              f"p95 {res['latency_p95_s']:.2f} s", flush=True)
        if n == n_max:
            for kk in k_sweep:
                if kk == k:
                    r2 = res
                else:
                    r2 = _run_queries(retr, real, src, Wq, replace(base, k=kk, screen_k=min(screen_k, kk)))
                summary["k_sweep"][str(kk)] = {key: r2[key] for key in
                                               ("recall@1", "recall@10", "recall@100", "top1_is_mate",
                                                "latency_p50_s", "latency_p95_s")}
                print(f"   K={kk:>4}: recall@10 {r2['recall@10']:.3f}  p50 {r2['latency_p50_s']:.2f} s", flush=True)
    if retr is not None:
        retr.close()
    summary["wall_seconds"] = round(time.time() - t_start, 1)
    _print_table(summary, k)
    atomic_write_bytes(json_out, json.dumps(summary, indent=2).encode())
    return summary


def _print_table(s: dict, k: int) -> None:
    print()
    print(f"{'distractors':>11} | {'R@1':>5} {'R@10':>5} {'R@100':>5} | {'FAISS@10':>8} {'@100':>6} "
          f"{'@' + str(k):>6} | {'screen':>6} {'stage2':>6} | {'p50 s':>6} {'p95 s':>6}")
    for n, r in s["per_n"].items():
        fr = r["faiss_recall"]
        st2 = next((v for key, v in r.items() if key.startswith("stage2_recall")), float("nan"))
        scr = next((v for key, v in r.items() if key.startswith("screen_recall")), float("nan"))
        print(f"{n:>11} | {r['recall@1']:5.3f} {r['recall@10']:5.3f} {r['recall@100']:5.3f} | "
              f"{fr.get('@10', float('nan')):8.3f} {fr.get('@100', float('nan')):6.3f} "
              f"{fr.get('@' + str(k), float('nan')):6.3f} | {scr:6.3f} {st2:6.3f} | "
              f"{r['latency_p50_s']:6.2f} {r['latency_p95_s']:6.2f}")
    if s["k_sweep"]:
        print("K sweep (largest N):", ", ".join(f"K={kk}: R@10 {v['recall@10']:.3f} p50 {v['latency_p50_s']:.2f}s"
                                                 for kk, v in s["k_sweep"].items()))
