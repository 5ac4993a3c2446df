"""What the rotation-searched (phase) descriptor's index stage costs, and which cuts keep the mates.

The phase descriptor (:class:`ballistic.retrieval.polar_phase.PolarPhaseDescriptor`) sends a query as 256
rows (128 rotations x 2 parities) of 1280 values: among 10^5 vectors the index stage is the largest part of a
query. This script measures, on the 40 rotated Fadul scans among ``--distractors`` synthetic distractors (the
retrieval benchmark's own, cached in ``--cache``), the FAISS-stage recall of each query's mates after
:func:`~ballistic.retrieval.search.best_per_id` (as :class:`~ballistic.retrieval.search.Retriever` merges
the rows) and the index time a query (median), for

* ``Flat`` (exact) - the reference, searched row by row (FAISS) and by the descriptor's rotation scan
  (:func:`~ballistic.retrieval.polar_phase.rotation_scan`, what the retriever does on a Flat index: the same
  answer from one cross-spectrum per stored vector and one FFT over the angles), and ``SQfp16`` (the vectors
  in half precision, scanned too);
* ``HNSW32`` for each efSearch and each number of neighbours asked of every query row (the retriever asks
  each row for the whole shortlist; measured: efSearch sets the cost, the depth a row hardly does);
* ``IVF<4 sqrt N>,Flat`` and ``,SQ8`` for each nprobe;
* exact searches on fewer rotations, or on the first harmonics only (numpy): would a cheaper first pass keep
  the mates.

Memory per vector is :meth:`~ballistic.retrieval.index.VectorIndex.faiss_nbytes` over the count.

    python benchmarks/bench_phase_index.py [--distractors 100000] [--cache out/cache] [--arms flat,hnsw,ivf,parts]

Prints a table and writes ``benchmarks/results/phase_index_<N>.json``.
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
DATA = ROOT.parent / "shared" / "data" / "cartridge" / "fadul"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--distractors", type=int, default=100_000)
    ap.add_argument("--cache", type=Path, default=ROOT / "out" / "cache")
    ap.add_argument("--seed", type=int, default=0, help="rotation draw of the real scans")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--arms", default="flat,hnsw,ivf,parts", help="which of flat,hnsw,ivf,parts to run")
    ap.add_argument("--rotations", default="",
                    help="also scan the Flat index with these rotation counts (comma-separated, e.g. 256,512): the "
                         "stored vectors are the same, only the query's angle step changes")
    a = ap.parse_args()

    import faiss

    from ballistic.bench.retrieval import (bench_index, distractor_catalogue, distractor_descriptors,
                                           load_rotated_scans, mate_recall, mates_of)
    from ballistic.retrieval.index import VectorIndex
    from ballistic.retrieval.polar_phase import PolarPhaseDescriptor
    from ballistic.retrieval.registry import load_descriptor
    from ballistic.retrieval.search import best_per_id, index_queries

    n = a.distractors
    desc = load_descriptor("phase")
    names, src, real = load_rotated_scans(a.data, a.data / "labels.csv", seed=a.seed)
    D = distractor_descriptors(n, catalogue=distractor_catalogue(), descriptor=desc, cache_dir=a.cache)
    Q = np.stack([desc(real[i]) for i in range(len(src))]).astype(np.float32)
    rows = {i: index_queries(desc, Q[i]) for i in range(len(src))}
    out: dict = {"benchmark": "phase_index", "descriptor": desc.name, "queries": len(src), "distractors": n,
                 "seed": a.seed, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                 "faiss_threads": faiss.omp_get_max_threads(), "runs": []}

    def build(factory: str, **kw) -> tuple[VectorIndex, float]:
        t = time.perf_counter()
        idx = bench_index(Q, D, factory=factory, **kw)
        return idx, time.perf_counter() - t

    def run(idx: VectorIndex, label: dict, row_k: int = 200, scan=None, sent=None) -> dict:
        sent = rows if sent is None else sent             # the query copies: the descriptor's, or another step's
        rec = {10: [], 100: []}
        ts = []
        for i in range(len(src)):
            t = time.perf_counter()
            s, ids = idx.search(sent[i], row_k + 1, scan=scan)
            ts.append(time.perf_counter() - t)
            got = best_per_id(ids, s, metric="ip")[0]
            got = got[got != i]
            for k in rec:
                rec[k].append(mate_recall(got, mates_of(src, i), k))
        r = {**label, "row_k": row_k, "recall@10": round(float(np.mean(rec[10])), 4),
             "recall@100": round(float(np.mean(rec[100])), 4), "index_p50_s": round(float(np.median(ts)), 4),
             "bytes_per_vector": round(idx.faiss_nbytes() / len(idx), 1)}
        out["runs"].append(r)
        print(f"{r['index']:>16} {str(r.get('setting', '')):>14} row_k {row_k:>4}: @10 {r['recall@10']:.4f} "
              f"@100 {r['recall@100']:.4f}  p50 {r['index_p50_s'] * 1000:6.0f} ms  {r['bytes_per_vector']:7.0f} B/vec",
              flush=True)
        return r

    arms = set(a.arms.split(","))
    if "flat" in arms:
        idx, tb = build("Flat")
        run(idx, {"index": "Flat", "build_s": round(tb, 1)})
        run(idx, {"index": "Flat", "setting": "rotation scan", "build_s": round(tb, 1)}, scan=desc.scan)
        for n_rot in [int(x) for x in a.rotations.split(",") if x]:
            finer = PolarPhaseDescriptor(**desc.kwargs, n_rotations=n_rot, mirror=desc.mirror)
            run(idx, {"index": "Flat", "setting": f"scan {n_rot} rot.", "build_s": round(tb, 1)}, scan=finer.scan,
                sent={i: index_queries(finer, Q[i]) for i in range(len(src))})
        del idx
        idx, tb = build("SQfp16")                       # float16 vectors: half the memory, scanned in place
        run(idx, {"index": "SQfp16", "setting": "rotation scan", "build_s": round(tb, 1)}, scan=desc.scan)
        del idx
    if "hnsw" in arms:
        idx, tb = build("HNSW32", ef_search=128)
        for ef in (32, 64, 128):
            idx.set_search_params(ef_search=ef)
            for row_k in (10, 20, 50, 200):
                run(idx, {"index": "HNSW32", "setting": f"efSearch {ef}", "build_s": round(tb, 1)}, row_k)
        del idx
    lists = int(4 * np.sqrt(n + len(src)))
    for codes in ("Flat", "SQ8") if "ivf" in arms else ():
        idx, tb = build(f"IVF{lists},{codes}", nprobe=16)
        for nprobe in (16, 64):
            idx.set_search_params(nprobe=nprobe)
            run(idx, {"index": f"IVF{lists},{codes}", "setting": f"nprobe {nprobe}", "build_s": round(tb, 1)})
        del idx

    # exact searches on a part of the descriptor: fewer rotations, or the first harmonics only
    nb, nh = desc.kwargs["n_bands"], desc.kwargs["n_harmonics"]
    A = np.concatenate([Q, D]).reshape(-1, nb, nh, 2) if "parts" in arms else None

    def part_rows(v: np.ndarray, m: int, n_rot: int) -> np.ndarray:
        c = v.reshape(nb, nh, 2)
        c = (c[..., 0] + 1j * c[..., 1])[:, :m]
        turn = np.exp(-1j * np.arange(1, m + 1)[None, :] * (np.arange(n_rot) * 2 * np.pi / n_rot)[:, None])
        r = np.concatenate([c[None] * turn[:, None, :], np.conj(c)[None] * turn[:, None, :]])
        return np.stack([r.real, r.imag], axis=-1).reshape(len(r), -1).astype(np.float32)

    for m, n_rot in ((16, 64), (24, 96), (32, 128), (48, 96), (64, 64), (64, 128)) if "parts" in arms else ():
        Am = np.ascontiguousarray(A[:, :, :m, :].reshape(len(A), -1))
        rec = {10: [], 100: []}
        for i in range(len(src)):
            s = (Am @ part_rows(Q[i], m, n_rot).T).max(axis=1)
            s[i] = -np.inf
            top = np.argsort(-s)[:100]
            for k in rec:
                rec[k].append(mate_recall(top, mates_of(src, i), k))
        r = {"index": "exact, part", "setting": f"{m} harmonics, {n_rot} rotations",
             "cost_vs_full": round(m * n_rot / (nh * desc.n_rotations), 3),
             "recall@10": round(float(np.mean(rec[10])), 4), "recall@100": round(float(np.mean(rec[100])), 4)}
        out["runs"].append(r)
        print(f"{'exact, part':>16} {r['setting']:>28}: @10 {r['recall@10']:.4f} @100 {r['recall@100']:.4f}  "
              f"cost {r['cost_vs_full']:.3f} of the full search", flush=True)
    path = a.out or ROOT / "benchmarks" / "results" / f"phase_index_{n}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
