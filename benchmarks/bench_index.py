"""Pure vector-index benchmark: build time, memory per vector, query latency, recall vs exact search.

Vectors are clustered, L2-normalised, of the whitened descriptor's dimension (128), searched by
inner product through :class:`ballistic.retrieval.index.VectorIndex` (so the IndexIDMap2 id maps are counted).
For every size and index type:

* build time (training included), memory per vector (the serialised index, and the RSS growth);
* latency of single-vector queries (nq = 1, as the service issues them), p50 / p99 over ``--queries``;
* recall@10 against exact search, exact neighbours computed by brute force for ``--exact-queries``
  queries (streamed over the data, so 1e7 vectors never sit in memory twice).

At 1e7 only IVF-PQ with refinement is built by default (Flat and HNSW would need hours to build on
two cores, or more memory than the 16 GiB budget with the raw data).

    python benchmarks/bench_index.py --sizes 1e6 --types flat,hnsw,ivfpq
    python benchmarks/bench_index.py --sizes 1e7 --types ivfpq --exact-queries 100

Prints a table and writes benchmarks/results/index_<sizes>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np

from ballistic.retrieval.index import VectorIndex

DIM = 128
TYPES = {
    "flat": dict(factory="Flat"),
    "hnsw": dict(factory="HNSW32", ef_search=128),
    "ivfpq": dict(factory="IVF4096,PQ32x4fs,RFlat", nprobe=48, k_factor=16),
    "ivfpq-sq8": dict(factory="IVF4096,PQ32x4fs,Refine(SQ8)", nprobe=48, k_factor=16),
    "hnsw-ef512": dict(factory="HNSW32", ef_search=512),
    "ivfpq-np128": dict(factory="IVF4096,PQ32x4fs,RFlat", nprobe=128, k_factor=32),
    "ivfpq-sq8-np128": dict(factory="IVF4096,PQ32x4fs,Refine(SQ8)", nprobe=128, k_factor=32),
    "ivfpq-np128-kf512": dict(factory="IVF4096,PQ32x4fs,RFlat", nprobe=128, k_factor=512),
}


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Clustered:
    """Deterministic stream of clustered unit vectors (chunk c is generated from seed (seed, c))."""

    def __init__(self, *, dim: int = DIM, n_clusters: int = 4096, spread: float = 0.6, seed: int = 0) -> None:
        rng = np.random.default_rng([seed, 999])
        self.centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
        self.dim, self.spread, self.seed = dim, spread, seed

    def chunk(self, c: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, c])
        x = self.centres[rng.integers(0, len(self.centres), n)]
        x = x + self.spread * rng.standard_normal((n, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def queries(self, n: int) -> np.ndarray:
        return self.chunk(10**6, n)


def _exact_topk(gen: Clustered, n: int, chunk: int, Q: np.ndarray, k: int) -> np.ndarray:
    best_s = np.full((len(Q), k), -np.inf, np.float32)
    best_i = np.full((len(Q), k), -1, np.int64)
    for c, lo in enumerate(range(0, n, chunk)):
        X = gen.chunk(c, min(chunk, n - lo))
        S = Q @ X.T
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
        s2 = np.take_along_axis(S, part, axis=1)
        allS = np.concatenate([best_s, s2], axis=1)
        allI = np.concatenate([best_i, part + lo], axis=1)
        o = np.argsort(-allS, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(allS, o, axis=1), np.take_along_axis(allI, o, axis=1)
    return best_i


def bench_one(name: str, n: int, gen: Clustered, Q: np.ndarray, Qx: np.ndarray, exact: np.ndarray, *,
              chunk: int, train_n: int, k: int = 10) -> dict:
    cfg = dict(TYPES[name])
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    idx = VectorIndex(DIM, min_train=10**12, **cfg)
    if idx.needs_training:
        idx.train(gen.chunk(0, min(train_n, n)))
    t_train = time.perf_counter() - t0
    for c, lo in enumerate(range(0, n, chunk)):
        m = min(chunk, n - lo)
        idx.add(np.arange(lo, lo + m, dtype=np.int64) + 10**9, gen.chunk(c, m))   # ids are not positions
    t_build = time.perf_counter() - t0
    rss = _rss_bytes() - rss0
    ser = idx.faiss_nbytes()
    # latency: one query at a time, on one thread (a service answers concurrent queries on other cores;
    # OpenMP barriers for a single query only add jitter on a busy machine)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    lat = []
    try:
        for q in Q:
            t = time.perf_counter()
            idx.search(q, k)
            lat.append(time.perf_counter() - t)
    finally:
        faiss.omp_set_num_threads(threads)
    _, I = idx.search(Qx, k)
    rec = float(np.mean([len(set(a) & set(e + 10**9)) / k for a, e in zip(I, exact)]))
    del idx
    return {"index": name, **cfg, "n": n, "build_s": round(t_build, 1), "train_s": round(t_train, 1),
            "bytes_per_vector_serialised": round(ser / n, 1), "bytes_per_vector_rss": round(rss / n, 1),
            "latency_p50_ms": round(1e3 * float(np.percentile(lat, 50)), 3),
            "latency_p99_ms": round(1e3 * float(np.percentile(lat, 99)), 3),
            f"recall@{k}_vs_exact": round(rec, 4), "exact_queries": len(Qx), "latency_queries": len(Q),
            "loadavg_1min_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1e6", help="comma-separated, e.g. 1e6,1e7")
    ap.add_argument("--types", default="flat,hnsw,ivfpq", help=f"comma-separated of {','.join(TYPES)}")
    ap.add_argument("--queries", type=int, default=1000, help="single-vector queries timed")
    ap.add_argument("--exact-queries", type=int, default=200, help="queries checked against exact search")
    ap.add_argument("--train", type=int, default=200_000, help="training sample for IVF/PQ")
    ap.add_argument("--chunk", type=int, default=500_000)
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads for building (0 = default); "
                    "queries are timed on one thread")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.threads:
        faiss.omp_set_num_threads(a.threads)
    sizes = [int(float(s)) for s in a.sizes.split(",")]
    types = [t for t in a.types.split(",") if t]
    gen = Clustered()
    rows = []
    for n in sizes:
        Qall = gen.queries(max(a.queries, a.exact_queries))
        Qx = Qall[:a.exact_queries]
        t = time.perf_counter()
        exact = _exact_topk(gen, n, a.chunk, Qx, 10)
        print(f"n={n:.0e}: exact top-10 of {len(Qx)} queries in {time.perf_counter() - t:.1f} s", flush=True)
        for name in types:
            r = bench_one(name, n, gen, Qall[:a.queries], Qx, exact, chunk=a.chunk, train_n=a.train)
            rows.append(r)
            print(f"  {name:>9}: build {r['build_s']:7.1f} s  {r['bytes_per_vector_serialised']:7.1f} B/vec "
                  f"(RSS {r['bytes_per_vector_rss']:7.1f})  p50 {r['latency_p50_ms']:7.3f} ms  "
                  f"p99 {r['latency_p99_ms']:7.3f} ms  recall@10 {r['recall@10_vs_exact']:.4f}", flush=True)
    print()
    print(f"{'n':>9} {'index':>9} {'build s':>8} {'B/vec':>8} {'p50 ms':>8} {'p99 ms':>8} {'R@10':>7}")
    for r in rows:
        print(f"{r['n']:>9.0e} {r['index']:>9} {r['build_s']:8.1f} {r['bytes_per_vector_serialised']:8.1f} "
              f"{r['latency_p50_ms']:8.3f} {r['latency_p99_ms']:8.3f} {r['recall@10_vs_exact']:7.4f}")
    out = Path(a.out) if a.out else Path(__file__).parent / "results" / f"index_{a.sizes.replace(',', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "vector index", "dim": DIM, "data": "clustered unit vectors "
                               "(4096 Gaussian clusters, spread 0.6)", "faiss": faiss.__version__,
                               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                           "loadavg_at_end": os.getloadavg()},
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
