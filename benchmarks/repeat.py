"""Benchmark: does the recommendation repeat? Default probes of each config, back to back.

Each run is a whole `batchfind probe` process under the memory limit. Prints every run (wall time,
limit, recommended batch, the interval it cannot be told apart from, the fitted plateau, the
recommended size's measured samples/s and how far under the plateau it is), then per config how
often the most frequent recommendation came up and whether every run stayed within one power of two
of it.

    python benchmarks/repeat.py --runs 10 --memory-limit 2GiB configs/cnn-small.yaml configs/gpt-small.yaml

`--keep DIR` also writes every report; `--replay DIR` makes the choice again on reports kept so,
with the recommendation rule of the batchfind it imports (the same trials, limit and settings), and
prints per config how often each size came up and how far under the plateau of the curve it is
described by: a change to the rule or the curve can be judged on runs already made, and an earlier
release's on a checkout of it (`PYTHONPATH=<checkout>`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import time
from collections import Counter
from pathlib import Path


def probe(config: str, limit: str, keep: Path | None, run: int) -> tuple[float, dict]:
    started = time.monotonic()
    done = subprocess.run(["batchfind", "probe", config, "--memory-limit", limit, "--json", "--quiet"],
                          capture_output=True, text=True, check=True)
    wall = time.monotonic() - started
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"{Path(config).stem}-{run}.json").write_text(done.stdout)
    return wall, json.loads(done.stdout)


def row(config: str, run: int, wall: float, report: dict) -> dict:
    rec = report["recommendation"]
    measured = next((t["samples_per_s"] for t in reversed(report["trials"])
                     if t["batch_size"] == rec["batch_size"] and t.get("purpose", "throughput") == "throughput"), None)
    plateau = (rec.get("curve") or {}).get("plateau_samples_per_s")
    return {
        "config": config, "run": run, "wall_s": wall, "limit": report["limit"]["batch_size"],
        "recommended": rec["batch_size"], "interval": rec.get("interval"), "plateau": plateau,
        "measured": measured, "below": 1 - measured / plateau if measured and plateau else None,
    }


def summary(rows: list[dict]) -> str:
    picks = Counter(r["recommended"] for r in rows)
    mode, count = picks.most_common(1)[0]
    near = all(abs(math.log2(r["recommended"] / mode)) <= 1 for r in rows)
    worst = max((r["below"] for r in rows if r["below"] is not None), default=None)
    walls = sorted(r["wall_s"] for r in rows)
    return (f"{rows[0]['config']}: recommended {mode} in {count} of {len(rows)} runs "
            f"({', '.join(f'{b}×{n}' for b, n in sorted(picks.items()))}); "
            f"all within one power of two of it: {'yes' if near else 'no'}; "
            f"recommended size's measured samples/s {under_plateau(worst)}; "
            f"wall time median {walls[len(walls) // 2]:.1f} s (range {walls[0]:.1f}–{walls[-1]:.1f})"
            if worst is not None else f"{rows[0]['config']}: recommended {mode} in {count} of {len(rows)} runs")


def under_plateau(worst: float) -> str:
    return (f"at most {worst:.1%} under the fitted plateau" if worst > 0
            else "at or above the fitted plateau in every run")


def replay(folder: Path) -> None:
    from batchfind.config import RecommendConfig
    from batchfind.recommend import recommend
    from batchfind.report import load_report

    rows: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*-*.json")):
        config, run = path.stem.rsplit("-", 1)
        if not run.isdigit():
            continue  # not a report `--keep` wrote
        report = load_report(path)
        env = report.environment
        rec, _ = recommend(report.trials, report.limit, RecommendConfig(**report.config["recommend"]),
                           env.memory_limit_bytes or env.memory_total_bytes)
        raw = {**json.loads(path.read_text()), "recommendation": dataclasses.asdict(rec)}
        rows.setdefault(config, []).append(row(config, int(run), 0.0, raw))
    for config, runs in rows.items():
        counts = Counter(r["recommended"] for r in runs)
        below = [r["below"] for r in runs if r["below"] is not None]
        print(f"{config}: " + ", ".join(f"{b}×{n}" for b, n in sorted(counts.items(), key=lambda kv: kv[0] or 0))
              + (f"; {under_plateau(max(below))}" if below else "")
              + (f", more than 5% under it in {sum(b > 0.05 for b in below)} of {len(below)}"
                 if below and max(below) > 0 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--memory-limit", default="2GiB")
    parser.add_argument("--keep", type=Path, help="also write each run's JSON report to this folder")
    parser.add_argument("--replay", type=Path, help="only make the choice again on the reports in this folder")
    args = parser.parse_args()
    if args.replay:
        return replay(args.replay)
    if not args.configs:
        parser.error("give the configs to probe, or --replay DIR")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
          f"memory limit {args.memory_limit}\n")
    print("| config | run | wall s | limit | recommended | cannot be told apart | fitted plateau "
          "samples/s | measured there | under the plateau |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    results = {}
    for config in args.configs:
        for run in range(1, args.runs + 1):
            r = row(config, run, *probe(config, args.memory_limit, args.keep, run))
            results.setdefault(config, []).append(r)
            interval = "–".join(map(str, r["interval"])) if r["interval"] else "-"
            print(f"| {config} | {run} | {r['wall_s']:.1f} | {r['limit']} | {r['recommended']} | {interval} | "
                  f"{r['plateau'] or 0:,.0f} | {r['measured'] or 0:,.0f} | "
                  f"{'-' if r['below'] is None else format(r['below'], '.1%')} |", flush=True)
    print()
    for rows in results.values():
        print(summary(rows))


if __name__ == "__main__":
    main()
