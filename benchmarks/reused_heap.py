"""Benchmark: how much of the doubling worker's free heap its largest size reused, read from kept reports.

A CPU worker that ran other sizes holds free heap a brand-new process does not; a trial may have
reused anything from none of it to all of it (`memory.fresh_equivalent`). For each config (reports
named CONFIG-RUN.json, as `benchmarks/repeat.py --keep DIR` writes them) this prints:

- the share of the free heap that the last size the doubling worker ran must have reused for its
  peak to sit on the brand-new processes' line: the largest brand-new fit's capped peak, less the
  per-sample slope times the sizes between (the slope from the two largest brand-new fits where they
  are 5% or more apart, else from the worker's last two sizes less what they retained);
- for several shares, how far the memory model's first guess at the edge (fitted to the doubling
  and re-measured trials alone, as the search first asks it) lands from the reported limit.

    python benchmarks/reused_heap.py DIR [DIR ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

from batchfind import memory

SHARES = (0.5, 0.4, 0.3, 0.2, 0.1, 0.0)


def reused_share(report: dict) -> float | None:
    trials = report["trials"]
    fresh = sorted((t for t in trials if t["fresh_process"] and t["phase"] != "double" and t["status"] == "ok"
                    and t["capped_peak_bytes"]), key=lambda t: t["batch_size"])
    worker = [t for t in trials if t["phase"] == "double" and t["status"] == "ok" and not t["fresh_process"]
              and t["capped_peak_bytes"] and t["retained_bytes"] is not None]
    if not fresh or len(worker) < 2 or not worker[-1]["retained_free_bytes"] or worker[-1]["retained_free_bytes"] <= 0:
        return None
    top, last, before = fresh[-1], worker[-1], worker[-2]
    if len(fresh) >= 2 and top["batch_size"] >= 1.05 * fresh[-2]["batch_size"]:
        slope = (top["capped_peak_bytes"] - fresh[-2]["capped_peak_bytes"]) / (top["batch_size"] - fresh[-2]["batch_size"])
    else:
        slope = ((last["capped_peak_bytes"] - last["retained_bytes"]) - (before["capped_peak_bytes"] - before["retained_bytes"])) \
            / (last["batch_size"] - before["batch_size"])
    fresh_peak = top["capped_peak_bytes"] - slope * (top["batch_size"] - last["batch_size"])
    return (fresh_peak - last["capped_peak_bytes"] + last["retained_bytes"]) / last["retained_free_bytes"]


def first_guesses(report: dict) -> dict[float, int] | None:
    """The model's first edge less the reported limit, per share of the free heap taken as reused."""
    limit = report["limit"]["batch_size"]
    ceiling = (report.get("memory_model") or {}).get("ceiling_bytes")
    known = [SimpleNamespace(**t) for t in report["trials"] if t["phase"] in ("double", "remeasure")]
    if limit is None or ceiling is None:
        return None
    guesses = {}
    kept = memory.REUSED_FREE_HEAP
    try:
        for share in SHARES:
            memory.REUSED_FREE_HEAP = share
            model = memory.fit(known, ceiling, kinds_differ=True)
            if model is None:
                return None
            guesses[share] = model.predicted_edge - limit
    finally:
        memory.REUSED_FREE_HEAP = kept
    return guesses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    args = parser.parse_args()
    shares: dict[str, list[float]] = defaultdict(list)
    guesses: dict[str, list[dict[float, int]]] = defaultdict(list)
    for directory in args.dirs:
        for path in sorted(directory.glob("*-*.json")):
            config = path.stem.rsplit("-", 1)[0]
            report = json.loads(path.read_text())
            if (share := reused_share(report)) is not None:
                shares[config].append(share)
            if (guess := first_guesses(report)) is not None:
                guesses[config].append(guess)
    for config in sorted(set(shares) | set(guesses)):
        s = sorted(shares[config])
        if s:
            print(f"{config}: share reused in {len(s)} probes: {s[0]:.2f}-{s[-1]:.2f}, median {statistics.median(s):.2f}")
        print(f"  first guess less the limit, in {len(guesses[config])} probes:")
        print("  | reused | below by more than 1 | 1 below | exact | 1 above | above by more than 1 | median |")
        print("  | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for share in SHARES:
            off = [g[share] for g in guesses[config]]
            if not off:
                continue
            n = Counter(min(max(d, -2), 2) for d in off)
            print(f"  | {share:.1f} | {n[-2]} | {n[-1]} | {n[0]} | {n[1]} | {n[2]} | {statistics.median(off):+g} |")


if __name__ == "__main__":
    main()
