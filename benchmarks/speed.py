"""Benchmark: the whole answer's wall time, and whether the limit it reports repeats.

For each config: a default `batchfind probe` under the memory limit, timed as a whole process
(start-up, trials, table, recommendation); the brand-new worker processes it started after the
doubling worker; then `batchfind check` at the reported limit and at `safe_batch_size`, each
`--repeats` times in brand-new processes, as a later CI job would run it.

    python benchmarks/speed.py --memory-limit 2GiB configs/gpt-small.yaml configs/cnn-small.yaml configs/mlp-tabular.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time

from mdtable import print_table


def probe(config: str, limit: str) -> tuple[float, dict]:
    started = time.monotonic()
    done = subprocess.run(["batchfind", "probe", config, "--memory-limit", limit, "--json", "--quiet"],
                          capture_output=True, text=True)
    return time.monotonic() - started, json.loads(done.stdout)


def passes(config: str, limit: str, size: int | None, repeats: int) -> str:
    if size is None:
        return "-"
    codes = [subprocess.run(["batchfind", "check", config, "--batch", str(size), "--memory-limit", limit],
                            capture_output=True).returncode for _ in range(repeats)]
    return f"{codes.count(0)}/{repeats}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--memory-limit", default="2GiB")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for config in args.configs:
        wall, report = probe(config, args.memory_limit)
        trials, limit = report["trials"], report["limit"]
        # The first trial starts the doubling worker; every other fresh one is a brand-new process.
        fresh = sum(t["fresh_process"] for t in trials) - 1
        rows.append((config, f"{wall:.1f}", len(trials), fresh, limit["predicted_batch_size"], limit["batch_size"],
                     limit["first_oom"], limit["safe_batch_size"], report["recommendation"]["batch_size"],
                     passes(config, args.memory_limit, limit["batch_size"], args.repeats),
                     passes(config, args.memory_limit, limit["safe_batch_size"], args.repeats)))
        print(rows[-1], flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
          f"memory limit {args.memory_limit}, torch {report['environment']['torch_version']}\n")
    print_table(["config", "wall s", "trials", "new processes after the doubling worker", "predicted edge", "limit",
                 "first failure", "safe", "recommended", "later checks at the limit", "at safe"], rows,
                numeric=set(range(1, 11)))


if __name__ == "__main__":
    main()
