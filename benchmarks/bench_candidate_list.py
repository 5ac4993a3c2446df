"""Size and time of one exhibit's candidate list: the light default against the full form with every
explanation (``include_explanation=true``, the default before issue 12), on a running service.

    python benchmarks/bench_candidate_list.py --api-url http://127.0.0.1:8000 --api-key <examiner key> \\
        --exhibit 1 [--limit 50] [--repeat 5]

Prints a table and writes benchmarks/results/candidate_list.json. Run it against a service holding the
40 Fadul scans (README tour) for the figure quoted in the report of issue 12.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import httpx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--api-url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--exhibit", type=int, default=1)
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    rows = {}
    with httpx.Client(base_url=a.api_url, headers={"X-API-Key": a.api_key}, timeout=120) as c:
        for name, params in (("light (default)", {}), ("full (include_explanation=true)",
                                                        {"include_explanation": "true"})):
            times, size, n = [], 0, 0
            for _ in range(a.repeat):
                t = time.perf_counter()
                r = c.get(f"/v1/exhibits/{a.exhibit}/candidates", params={"limit": a.limit, **params})
                times.append(time.perf_counter() - t)
                r.raise_for_status()
                size, n = len(r.content), len(r.json()["items"])
            rows[name] = {"bytes": size, "items": n, "median_s": statistics.median(times), "min_s": min(times)}
        one = c.get(f"/v1/exhibits/{a.exhibit}/candidates", params={"limit": 1}).json()["items"][0]
        t = time.perf_counter()
        r = c.get(one["explanation_url"])
        rows["one explanation (explanation_url)"] = {"bytes": len(r.content), "items": 1,
                                                     "median_s": time.perf_counter() - t,
                                                     "min_s": time.perf_counter() - t}
    print(f"{'form':<36}{'items':>6}{'KB':>10}{'median s':>10}")
    for k, v in rows.items():
        print(f"{k:<36}{v['items']:>6}{v['bytes'] / 1024:>10.1f}{v['median_s']:>10.3f}")
    out = Path(__file__).resolve().parent / "results" / "candidate_list.json"
    out.write_text(json.dumps({"exhibit": a.exhibit, "limit": a.limit, "repeat": a.repeat, "rows": rows}, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
