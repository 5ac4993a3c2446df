"""Descriptor inference time per scan on one core: the learned embedding (bf-learned/1) vs the polar-FFT one.

Real processed scans (Fadul, 6.25 um, ~545 x 545) as the service gets them from preprocess_cartridge; one
torch / OpenCV thread. Per descriptor: single calls (p50 / p95 over every scan and repeat) and, for the
learned one, the batch API (``describe_many``, bulk indexing) and its two parts (inputs: resample to
25 um, aperture centre, polar sampling; network: batched forward pass).

    python benchmarks/bench_descriptor_speed.py --data ../shared/data --repeats 5

Prints a table and writes benchmarks/results/descriptor_speed.json. Run on a quiet machine: other
work on the cores inflates every figure (the load average is recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--scans", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--weights", default=None, help="learned descriptor weights (default: the shipped ones)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "descriptor_speed.json"))
    a = ap.parse_args()
    import cv2
    import torch

    load0 = os.getloadavg()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from ballistic.cartridge.breech_face import preprocess_cartridge
    from ballistic.io.x3p import read_x3p
    from ballistic.retrieval.registry import load_descriptor

    paths = sorted((Path(a.data) / "cartridge" / "fadul").glob("*.x3p"))[:a.scans]
    if not paths:
        raise SystemExit(f"no Fadul scans under {a.data}/cartridge/fadul")
    S = [preprocess_cartridge(read_x3p(p)) for p in paths]
    learned = load_descriptor("learned", **({"weights": a.weights} if a.weights else {}))
    polar = load_descriptor("polar")
    rows = {}
    for name, d in (("learned", learned), ("polar", polar)):
        d(S[0])
        t = []
        for _ in range(a.repeats):
            for s in S:
                t0 = time.perf_counter()
                d(s)
                t.append(time.perf_counter() - t0)
        rows[name] = {"descriptor": d.name, "single_p50_ms": round(1e3 * float(np.percentile(t, 50)), 2),
                      "single_p95_ms": round(1e3 * float(np.percentile(t, 95)), 2)}
    best_in, best_net, best_many = [], [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        X = np.stack([learned.inputs(s) for s in S])
        best_in.append((time.perf_counter() - t0) / len(S))
        t0 = time.perf_counter()
        learned.embed_inputs(X)
        best_net.append((time.perf_counter() - t0) / len(S))
        t0 = time.perf_counter()
        learned.describe_many(S)
        best_many.append((time.perf_counter() - t0) / len(S))
    rows["learned"].update(batch_ms_per_scan=round(1e3 * float(np.median(best_many)), 2),
                           inputs_ms_per_scan=round(1e3 * float(np.median(best_in)), 2),
                           network_batched_ms_per_scan=round(1e3 * float(np.median(best_net)), 2))
    rows["learned_over_polar_single"] = round(rows["learned"]["single_p50_ms"] / rows["polar"]["single_p50_ms"], 2)
    out = {"benchmark": "descriptor inference", "loadavg_at_start": load0, "scans": len(S), "repeats": a.repeats, "threads": 1,
           "torch": torch.__version__, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                  "loadavg_at_end": os.getloadavg()}, "results": rows}
    for name in ("learned", "polar"):
        r = rows[name]
        print(f"{name:>8}: single p50 {r['single_p50_ms']:6.2f} ms  p95 {r['single_p95_ms']:6.2f} ms"
              + (f"  | batch {r['batch_ms_per_scan']:.2f} ms/scan (inputs {r['inputs_ms_per_scan']:.2f}, "
                 f"network {r['network_batched_ms_per_scan']:.2f})" if name == "learned" else ""))
    print(f"load average {os.getloadavg()}")
    from ballistic.io.atomic import atomic_write_bytes

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(a.out, json.dumps(out, indent=2).encode())
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
