"""One cartridge through two pipelines: raw scans compared with scans another pipeline already processed.

Issue 10 asks that a scan somebody else already levelled and filtered comes out of the normalisation on
equal terms with a raw one. This bench measures it on the real data in ``../shared/data``:

* NanoFocus: the three RAW Fadul scans (``cartridge/fadul-raw``: 1-1, 1-2, 2-1 at 3.125 um with primer,
  firing-pin hole and roll-off) against the 40 cmcR-processed Fadul scans (120 pairs, slides from
  ``cartridge/fadul/labels.csv``);
* TopMatch: the three RAW Baldwin scans (``cartridge/baldwin``: K013sA1, K013sA2, K227iG3; gun = the
  uppercase letter) against the 17 DFSC scans of three other pipelines (51 pairs).

Every scan is rotated by a seeded random angle before preprocessing. Pairs of one cartridge scanned once and
processed twice (e.g. ``fadul1.2_raw`` vs ``Fadul 1-2``) are reported apart (registration NCC, CMC): they
show how equal the terms are; the other pairs give AUC and errors at C >= 6 and at the pair model's 0
(the shipped model was fitted on pairs that include the Baldwin raw scans: its TopMatch figures are not
held out; the raw NanoFocus scans were never fitted on). Prints a table, writes JSON.

    python benchmarks/bench_cross_pipeline.py [--data ../shared/data] [--seed 0] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _scans(data: Path):
    """The scans (:class:`ballistic.bench.generalization.Scan`: the labelled sets as the generalization bench
    finds them, plus the raw Fadul scans) and the raw x other-pipeline pairs."""
    from ballistic.bench.generalization import Scan, discover_sets

    sets = discover_sets(data)
    raw = []
    for f in sorted((Path(data) / "cartridge" / "fadul-raw").glob("*.x3p")):
        m = re.match(r"fadul(\d+)\.(\d+)_raw", f.stem)
        if m:     # fadul1.2_raw: slide 1, the cartridge the processed set calls "Fadul 1-2"
            raw.append(Scan(f.stem, f, "fadul-raw", f"fadul:{m.group(1)}", "fadul-raw",
                            f"Fadul {m.group(1)}-{m.group(2)}"))
    by = {d: [s for s in sets if s.dataset == d] for d in ("fadul", "baldwin", "dfsc")}
    scans = raw + by["fadul"] + by["baldwin"] + by["dfsc"]
    pairs = [(i, j) for i, a in enumerate(scans) for j, b in enumerate(scans)
             if (a.dataset, b.dataset) in (("fadul-raw", "fadul"), ("baldwin", "dfsc"))]
    return scans, pairs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "cross_pipeline.json")
    a = ap.parse_args()

    from ballistic.bench.cartridge import compare_all_pairs, load_scans_parallel
    from ballistic.cartridge.cmc.pair import ALGORITHM_VERSION
    from ballistic.cartridge.cmc.params import CMCParams
    from ballistic.stats.metrics import roc_auc

    scans, pairs = _scans(a.data)
    if not pairs:
        raise SystemExit(f"no raw scans under {a.data / 'cartridge'}")
    params = CMCParams()
    rng = np.random.default_rng(a.seed)
    angles = [float(rng.uniform(0.0, 360.0)) for _ in scans]
    t0 = time.perf_counter()
    prepared, t_load = load_scans_parallel([s.path for s in scans], [s.name for s in scans], angles, params,
                                           workers=a.workers)
    rows, _ = compare_all_pairs(prepared, pairs, params, workers=a.workers)
    summary: dict = {"benchmark": "cross-pipeline", "algorithm": ALGORITHM_VERSION, "seed": a.seed,
                     "seconds": round(time.perf_counter() - t0, 1), "sets": {}}
    print(f"{'set':<12}{'pairs':>6}{'same':>5}{'AUC sim':>9}{'AUC mdl':>9}{'FN C6':>7}{'FP C6':>7}{'FN mdl':>8}"
          f"{'FP mdl':>8}{'min C same':>11}{'max C diff':>11}   same cartridge: NCC / C")
    for fam, raw_set in (("nanofocus", "fadul-raw"), ("topmatch", "baldwin")):
        sel = [(i, j, r) for (i, j), r in zip(pairs, rows) if scans[i].dataset == raw_set]
        same_cart = [(scans[i].name, scans[j].name, r["registration_ncc"], r["cmc_count"])
                     for i, j, r in sel if scans[i].cartridge == scans[j].cartridge]
        ev = [(i, j, r) for i, j, r in sel if scans[i].cartridge != scans[j].cartridge]
        y = np.array([scans[i].firearm == scans[j].firearm for i, j, _ in ev])
        c = np.array([r["cmc_count"] for *_, r in ev], float)
        sim = np.array([r["similarity"] for *_, r in ev], float)
        m = np.array([np.nan if r["model_score"] is None else r["model_score"] for *_, r in ev], float)
        block = {"pairs": len(ev), "same_source": int(y.sum()), "auc_similarity": roc_auc(sim, y),
                 "auc_model": roc_auc(m, y) if np.isfinite(m).all() else None,
                 "cmc_false_negatives": int(((c < 6) & y).sum()), "cmc_false_positives": int(((c >= 6) & ~y).sum()),
                 "model_false_negatives": int(((m < 0) & y).sum()),
                 "model_false_positives": int(((m >= 0) & ~y).sum()),
                 "min_cmc_same_source": int(c[y].min()) if y.any() else None,
                 "max_cmc_different_source": int(c[~y].max()) if (~y).any() else None,
                 "errors": [{"raw": scans[i].name, "other": scans[j].name, "same_source": bool(yy), "cmc_count": int(cc),
                             "model_score": mm} for (i, j, _), yy, cc, mm in zip(ev, y, c, m)
                            if (cc >= 6) != yy or (mm >= 0) != yy],
                 "same_cartridge": [{"raw": p, "other": q, "registration_ncc": n, "cmc_count": k}
                                    for p, q, n, k in same_cart]}
        summary["sets"][fam] = block
        sc = ", ".join(f"{n:.2f}/{k}" for *_, n, k in same_cart)
        auc_m = "-" if block["auc_model"] is None else f"{block['auc_model']:.3f}"
        print(f"{fam:<12}{len(ev):>6}{int(y.sum()):>5}{block['auc_similarity']:>9.3f}{auc_m:>9}"
              f"{block['cmc_false_negatives']:>7}{block['cmc_false_positives']:>7}{block['model_false_negatives']:>8}"
              f"{block['model_false_positives']:>8}{str(block['min_cmc_same_source']):>11}"
              f"{str(block['max_cmc_different_source']):>11}   {sc}")
        for e in block["errors"]:
            print(f"   wrong: {e['raw']} vs {e['other']} same source {e['same_source']} C {e['cmc_count']} "
                  f"model {e['model_score']:+.2f}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(summary, indent=1))
    print(f"wrote {a.json} ({summary['seconds']} s, load {t_load:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
