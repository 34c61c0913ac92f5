"""Benchmark: plain bisection against the memory-model search for the exact edge, with the truth.

For each config, probes twice under the same memory limit — refinement by plain bisection, then
guided by the memory model — and records probes, wall time and the limit found. Then the truth:
the found limit and the size above it, each run in a brand-new process (`batchfind check`).

    python benchmarks/edge_search.py --memory-limit 2GiB configs/mlp-tabular.yaml configs/cnn-small.yaml
"""

from __future__ import annotations

import argparse
import platform
import time

from batchfind.config import load_config
from batchfind.probing import check, probe


def fits_fresh(config, size: int) -> str:
    return check(config, size).trials[0].status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--memory-limit", default=None, help="e.g. 2GiB (default: each config's own)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    overrides = {"--memory-limit": args.memory_limit, "--device": args.device, "--time-budget": 3600}
    rows = []
    for path in args.configs:
        config = load_config(path, overrides)
        for method, use_model in (("bisection", False), ("memory model", True)):
            started = time.monotonic()
            report = probe(config, memory_model=use_model)
            wall = time.monotonic() - started
            refine = [t for t in report.trials if t.phase != "double"]
            limit = report.limit.batch_size
            above = fits_fresh(config, limit + 1) if limit and limit < report.dataset_len else "-"
            truth = f"{fits_fresh(config, limit)} / {above}" if limit else "-"
            rows.append((path, method, len(report.trials), len(refine), f"{wall:.0f}",
                         report.limit.predicted_batch_size, limit, report.limit.first_oom, truth))
            print(rows[-1], flush=True)
    env = report.environment
    print(f"\n{env.device_name} ({env.device}), torch {env.torch_version}, {env.threads} threads, "
          f"{platform.platform()}, memory limit {args.memory_limit or 'per config'}\n")
    print("| config | refinement | trials | of them refine/verify | wall s | predicted edge | limit | first failure "
          "| fresh: limit / limit+1 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    main()
