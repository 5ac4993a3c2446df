"""What the phase descriptor's index stage costs as the database grows: rotation scan against row search.

A query of the rotation-searched descriptor (:class:`ballistic.retrieval.polar_phase.PolarPhaseDescriptor`) is
256 copies (128 rotations x 2 parities) of a 1280-value vector. A FAISS ``Flat`` index scores every copy
against every stored vector; :func:`~ballistic.retrieval.polar_phase.rotation_scan` gives the same answer from
one cross-spectrum per stored vector and one FFT over the angles. This script times both, in one run, on
``N`` random unit vectors in the stored format (the cost does not depend on what the vectors hold), for each
``N`` and for 1 and 2 threads, reports the share of the k best ids they agree on (floating-point
order aside, all), and reports the memory a vector takes in
the index (:meth:`~ballistic.retrieval.index.VectorIndex.faiss_nbytes`), for a ``Flat`` index (float32) and an
``SQfp16`` one (float16: half the memory; the scan decodes a block at a time). The last column times the scan as a
search runs it: with the query's 25 centre variants re-scoring the best ``jitter_share`` of the vectors
(:meth:`~ballistic.retrieval.polar_phase.PolarPhaseDescriptor.query_variants`, here 25 random unit vectors in
their place: the cost does not depend on what they hold).

    python benchmarks/bench_rotation_scan.py [--sizes 10000,100000,1000000] [--queries 5] [--factories Flat,SQfp16]

Prints a table and writes ``benchmarks/results/rotation_scan.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--factories", default="Flat,SQfp16",
                    help="indexes the scan reads in place: Flat (float32) and SQfp16 (float16, half the memory)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rotation_scan.json")
    a = ap.parse_args()

    import faiss

    from ballistic.retrieval.index import VectorIndex
    from ballistic.retrieval.registry import load_descriptor
    from ballistic.retrieval.search import best_per_id, index_queries

    desc = load_descriptor("phase")
    rng = np.random.default_rng(0)
    out: dict = {"benchmark": "rotation_scan", "descriptor": desc.name, "k": a.k, "queries": a.queries,
                 "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                 "faiss_threads": faiss.omp_get_max_threads(), "runs": []}
    warm = rng.standard_normal((8, desc.dim)).astype(np.float32)      # compile / load the kernels before timing
    desc.scan(index_queries(desc, warm[0]), warm, 1)
    desc.scan(index_queries(desc, warm[0]), warm.astype(np.float16), 1)
    print(f"{'N':>9} {'index':>7} {'threads':>7} {'row search':>11} {'scan':>9} {'ratio':>6} {'overlap':>8} "
          f"{'B/vec':>6} {'+variants':>10}")
    for n, factory in [(int(x), f) for x in a.sizes.split(",") if x for f in a.factories.split(",") if f]:
        idx = VectorIndex(desc.dim, factory=factory)
        for lo in range(0, n, 100_000):
            X = rng.standard_normal((min(n, lo + 100_000) - lo, desc.dim), dtype=np.float32)
            X /= np.linalg.norm(X, axis=1, keepdims=True)
            idx.add(np.arange(lo, lo + len(X)), X)
            del X
        Q = rng.standard_normal((a.queries, desc.dim)).astype(np.float32)
        Q /= np.linalg.norm(Q, axis=1, keepdims=True)
        bpv = idx.faiss_nbytes() / len(idx)
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)

            def scan(rows, stored, k, t=threads):
                return desc.scan(rows, stored, k, threads=t)

            t_rows, t_scan, same, t_var = [], [], [], []
            for q in Q:
                V = rng.standard_normal((len(desc.jitter_offsets_um), desc.dim)).astype(np.float32)
                V /= np.linalg.norm(V, axis=1, keepdims=True)
                V[0] = q

                def scan_variants(rows, stored, k, t=threads, V=V):
                    return desc.scan(rows, stored, k, threads=t, variants=V)
                rows = index_queries(desc, q)
                t = time.perf_counter()
                D0, I0 = idx.search(rows, a.k)
                t_rows.append(time.perf_counter() - t)
                t = time.perf_counter()
                D1, I1 = idx.search(rows, a.k, scan=scan)
                t_scan.append(time.perf_counter() - t)
                same.append(len(np.intersect1d(best_per_id(I0, D0)[0][:a.k], best_per_id(I1, D1)[0][:a.k])) / a.k)
                t = time.perf_counter()
                idx.search(rows, a.k, scan=scan_variants)
                t_var.append(time.perf_counter() - t)
            r = {"n": n, "factory": factory, "threads": threads,
                 "row_search_p50_s": round(float(np.median(t_rows)), 4),
                 "scan_p50_s": round(float(np.median(t_scan)), 4),
                 "ratio": round(float(np.median(t_rows) / np.median(t_scan)), 1),
                 "top_k_overlap": round(float(np.mean(same)), 4),
                 "bytes_per_vector": round(bpv, 1),
                 "scan_with_variants_p50_s": round(float(np.median(t_var)), 4),
                 "variant_rows": desc.variant_rows(n, a.k)}
            out["runs"].append(r)
            print(f"{n:>9} {factory:>7} {threads:>7} {r['row_search_p50_s']:>10.3f}s {r['scan_p50_s']:>8.3f}s "
                  f"{r['ratio']:>6.1f} {np.mean(same):>8.3f} {bpv:>6.0f} {r['scan_with_variants_p50_s']:>9.3f}s",
                  flush=True)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        del idx
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
