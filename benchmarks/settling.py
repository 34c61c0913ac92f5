"""Benchmark: were a trial's first measured steps still settling? Read from kept reports.

For each config (reports named CONFIG-RUN.json, as `benchmarks/repeat.py --keep DIR` writes them)
and each size's first throughput trial in the doubling, prints over the runs how much slower the
first half of its counted steps ran than the second half (median step time of each half, from
`step_ms.samples`), and how many steps the probe left out as still settling (`settling_steps`;
"-" for reports from before the field). Reports from before steps were left out show the trend
itself; later ones show what is left of it.

    python benchmarks/settling.py DIR [DIR ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from batchfind.measure import SETTLE_HALF

# Fewer steps than this in a trial say nothing about a trend, as the probe judges it.
LEAST = 2 * SETTLE_HALF


def first_trials(report: dict) -> dict[int, dict]:
    """Each size's first throughput trial of the doubling."""
    first: dict[int, dict] = {}
    for t in report["trials"]:
        if t.get("phase") == "double" and t.get("purpose") == "throughput" and t.get("step_ms"):
            first.setdefault(t["batch_size"], t)
    return first


def halves(samples: list[float]) -> float | None:
    """The first half's median step time over the second half's, less one."""
    if len(samples) < LEAST:
        return None
    half = len(samples) // 2
    return statistics.median(samples[:half]) / statistics.median(samples[half:]) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| reports | config | batch | runs | first half slower (min, median, max) | runs with steps left out | steps left out |")
    print("| --- | --- | ---: | ---: | --- | ---: | --- |")
    for folder in args.dirs:
        by_config: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for path in sorted(folder.glob("*-*.json")):
            config = path.stem.rsplit("-", 1)[0]
            for size, trial in first_trials(json.loads(path.read_text())).items():
                by_config[config][size].append(trial)
        for config, sizes in sorted(by_config.items()):
            for size, trials in sorted(sizes.items()):
                slower = sorted(s for s in (halves(t["step_ms"]["samples"]) for t in trials) if s is not None)
                if not slower:
                    continue
                left = [t.get("settling_steps") for t in trials]
                known = [n for n in left if n is not None]
                spread = f"{slower[0]:+.0%}, {statistics.median(slower):+.0%}, {slower[-1]:+.0%}"
                print(f"| {folder.name} | {config} | {size} | {len(slower)} | {spread} | "
                      f"{sum(1 for n in known if n) if known else '-'} | "
                      f"{', '.join(str(n) for n in known if n) if known else '-'} |")


if __name__ == "__main__":
    main()
