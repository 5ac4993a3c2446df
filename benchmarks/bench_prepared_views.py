"""What a search pays to fetch a candidate that is not in memory: read and prepare its scan, or load its stored views.

Every candidate the service screens or compares is a :class:`~ballistic.cartridge.cmc.params.PreparedSurface`.
Without stored views a worker reads the exhibit's preprocessed x3p and prepares it (resampling and band-passing
three views); with them (:func:`~ballistic.cartridge.cmc.params.save_prepared`, written by the exhibit's job
beside its scan) it loads one compressed file. Once a database holds more exhibits than the per-process cache
(``prepared_cache_size``, 256), most of a search's shortlist is such a miss.

For every real scan of the chosen sets the script normalises it as the service does, stores it as an x3p and its
views beside it in a temporary folder, then times, in one run, reading + preparing against loading (median of
``--repeat`` each), checks that both give the same views bit for bit, and reports the files' sizes and the cost
of a shortlist of ``--shortlist`` cold candidates on one worker.

    python benchmarks/bench_prepared_views.py [--data ../shared/data] [--sets fadul,dfsc] [--repeat 5]

Prints a table and writes ``benchmarks/results/prepared_views.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--sets", default="fadul,dfsc", help="folders under DATA/cartridge")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--shortlist", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "prepared_views.json")
    a = ap.parse_args()

    from ballistic.cartridge.breech_face import preprocess_cartridge
    from ballistic.cartridge.cmc.params import CMCParams, load_prepared, prepare, save_prepared
    from ballistic.io.x3p import read_x3p, write_x3p

    params = CMCParams()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [s for s in a.sets.split(",") if s]:
            files = sorted((a.data / "cartridge" / name).rglob("*.x3p"))
            if not files:
                raise SystemExit(f"no .x3p under {a.data / 'cartridge' / name}; pass --data or --sets")
            for f in files:
                scan = Path(tmp) / f"{name}-{f.stem}.x3p"
                write_x3p(preprocess_cartridge(read_x3p(f)), scan)
                views = scan.with_name(scan.name + ".prepared.npz")
                made = prepare(read_x3p(scan), params, name=f.stem)
                save_prepared(made, views, params=params, source=scan)
                loaded = load_prepared(views, params, source=scan)
                exact = all(np.array_equal(getattr(made, v), getattr(loaded, v), equal_nan=True)
                            for v in ("fine", "coarse", "prior"))
                t_prepare = _median_seconds(lambda: prepare(read_x3p(scan), params, name=f.stem), a.repeat)
                t_load = _median_seconds(lambda: load_prepared(views, params, source=scan), a.repeat)
                rows.append({"set": name, "scan": f.stem, "points": int(np.isfinite(made.fine).sum()),
                             "x3p_bytes": scan.stat().st_size, "views_bytes": views.stat().st_size,
                             "read_prepare_s": t_prepare, "load_views_s": t_load, "exact": bool(exact)})

    def summary(rs):
        rp = statistics.median(r["read_prepare_s"] for r in rs)
        lv = statistics.median(r["load_views_s"] for r in rs)
        return {"scans": len(rs), "read_prepare_s_median": rp, "load_views_s_median": lv, "ratio": rp / lv,
                "x3p_kb_median": statistics.median(r["x3p_bytes"] for r in rs) / 1024,
                "views_kb_median": statistics.median(r["views_bytes"] for r in rs) / 1024,
                "shortlist_read_prepare_s": a.shortlist * rp, "shortlist_load_views_s": a.shortlist * lv,
                "all_exact": all(r["exact"] for r in rs)}

    sets = {s: summary([r for r in rows if r["set"] == s]) for s in dict.fromkeys(r["set"] for r in rows)}
    sets["all"] = summary(rows)
    print(f"{'set':>6} {'scans':>5} {'read+prepare':>13} {'load views':>11} {'ratio':>6} {'x3p KB':>7} "
          f"{'views KB':>9} {f'{a.shortlist} cold, read':>16} {f'{a.shortlist} cold, views':>17} {'exact':>6}")
    for s, m in sets.items():
        print(f"{s:>6} {m['scans']:>5} {m['read_prepare_s_median'] * 1e3:>10.1f} ms {m['load_views_s_median'] * 1e3:>8.2f} ms"
              f" {m['ratio']:>6.1f} {m['x3p_kb_median']:>7.0f} {m['views_kb_median']:>9.0f}"
              f" {m['shortlist_read_prepare_s']:>14.2f} s {m['shortlist_load_views_s']:>15.2f} s {str(m['all_exact']):>6}")
    out = {"benchmark": "prepared_views", "params": params.as_dict(), "repeat": a.repeat, "shortlist": a.shortlist,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "sets": sets, "scans": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
