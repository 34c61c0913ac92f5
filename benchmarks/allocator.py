"""Benchmark: a CPU worker's peak and step time under glibc's default allocator and held steady.

For each config and batch size, `--runs` brand-new processes under the memory limit run
`--steps` training steps with glibc as it comes, then as batchfind's fit checks run it
(`worker.steady_allocator`: mmap threshold fixed at 4 MiB, those mappings on huge pages), then with
the threshold alone (no huge pages). Prints each run's peak data segment (what the cap counts)
after the last step, or the step it failed at, the median step time after the first, and how far
the 10th and 90th percentiles of those steps sit from it, each run's first step (a brand-new
process's first step also faults in its memory), and the peak each step reached where it rose
above every step before it (`-` where it did not: how many steps a fit check needs).

    python benchmarks/allocator.py --memory-limit 2GiB configs/cnn-small.yaml:1000 configs/gpt-small.yaml:64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import json, sys, time
from batchfind import devices
from batchfind.config import load_config
from batchfind.session import Session
config = load_config(sys.argv[1], {"--memory-limit": sys.argv[3], "--device": "cpu"})
session = Session(config.model_dump(mode="json")); session.start()
meter = devices.CappedPeak(session.device)
batch, times, raised, failed = session.batches.batch(int(sys.argv[2])), [], [], None
for i in range(int(sys.argv[4])):
    step = devices.CappedPeak(session.device)  # None where the step stayed below every peak before it
    start = time.perf_counter()
    try:
        session.step(batch)
    except Exception as exc:
        if not devices.is_oom(exc):
            raise
        failed = i + 1
        break
    times.append((time.perf_counter() - start) * 1000)
    raised.append(step.read())
print(json.dumps({"peak": meter.read(), "times": times, "raised": raised, "failed": failed}))
"""


def child(code: str, args: list[str], env: dict[str, str]):
    """What a brand-new Python process running `code` prints, as JSON."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(done.stderr.strip()[-300:])
    return json.loads(done.stdout)


def sizes_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of a script that runs sizes in order in one process a run: a config, the sizes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("sizes", help="comma-separated batch sizes, in the order to run them")
    parser.add_argument("--memory-limit", default="2GiB")
    parser.add_argument("--runs", type=int, default=2)
    return parser


def run(config: str, size: int, limit: str, steps: int, env: dict[str, str]) -> dict:
    return child(CHILD, [config, str(size), limit, str(steps)], env)


def main() -> None:
    from batchfind.worker import steady_allocator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", help="CONFIG:BATCH")
    parser.add_argument("--memory-limit", default="2GiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    plain = {k: v for k, v in os.environ.items()
             if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_")}
    steady = steady_allocator(plain, fits_only=True)
    without_huge_pages = {**plain, "MALLOC_MMAP_THRESHOLD_": steady["MALLOC_MMAP_THRESHOLD_"]}
    print("| config | batch | allocator | peak data segment per run (MiB) | new peak by step, per run (MiB) "
          "| first step ms per run | median step ms after the first | p10, p90 |")
    print("| --- | ---: | --- | --- | --- | --- | ---: | --- |")
    for case in args.cases:
        config, size = case.rsplit(":", 1)
        for name, env in (("glibc default", plain), ("steady", steady), ("4 MiB, no huge pages", without_huge_pages)):
            runs = [run(config, int(size), args.memory_limit, args.steps, env) for _ in range(args.runs)]
            peaks = ", ".join(_peak(r) for r in runs)
            firsts = ", ".join(f"{r['times'][0]:.0f}" for r in runs if r["times"]) or "-"
            by_step = "; ".join(" ".join("-" if p is None else f"{p / 2**20:.0f}" for p in r["raised"]) or "-"
                                for r in runs)
            later = [t for r in runs for t in r["times"][1:]]
            median = statistics.median(later) if later else None
            spread = "-"
            if median and len(later) >= 2:
                deciles = statistics.quantiles(later, n=10)
                spread = f"{deciles[0] / median - 1:+.0%}, {deciles[-1] / median - 1:+.0%}"
            print(f"| {os.path.basename(config)} | {size} | {name} | {peaks} | {by_step} | {firsts} | "
                  f"{'-' if median is None else format(median, '.0f')} | {spread} |", flush=True)


def _peak(run: dict) -> str:
    if run["failed"]:
        return f"failed at step {run['failed']}"
    # Steps that stay below the set-up's own peak leave no peak of theirs to read.
    return "below set-up" if run["peak"] is None else f"{run['peak'] / 2**20:.0f}"


if __name__ == "__main__":
    main()
