"""Benchmark: does a size timed again later in the same worker run faster than its first time?

One brand-new process per setting and run times throughput trials at the given sizes in order, as
the doubling worker and its re-measures do (`8,16,32,64,8,16,32`: the powers of two, then three
of them again), under three allocator settings: the mmap threshold fixed at 4 MiB alone (glibc
then gives its heap's top back above 128 KiB free), the same keeping the heap's top
(`MALLOC_TRIM_THRESHOLD_`, as workers that time steps run), and the threshold with huge pages (as
fit checks run). Prints samples/s and the capped peak (MiB) of each trial.

    python benchmarks/drift.py configs/cnn-small.yaml 8,16,32,64,8,16,32 --runs 2
"""

from __future__ import annotations

import os

from allocator import child, sizes_parser  # noqa: E402 - a sibling script: benchmarks/ is on the path when run

CHILD = """
import json, sys
from batchfind.config import load_config
from batchfind.session import Session
config = load_config(sys.argv[1], {"--memory-limit": sys.argv[2], "--device": "cpu"})
session = Session(config.model_dump(mode="json")); session.start()
rows = []
for size in map(int, sys.argv[3].split(",")):
    reply = session.serve("trial", {"batch_size": size, "purpose": "throughput"}, lambda message: None)
    rows.append({k: reply.get(k) for k in ("batch_size", "samples_per_s", "capped_peak_bytes")})
print(json.dumps(rows))
"""


def main() -> None:
    from batchfind.worker import steady_allocator

    args = sizes_parser(__doc__).parse_args()
    plain = {k: v for k, v in os.environ.items()
             if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_")}
    timing = steady_allocator(plain, fits_only=False)
    settings = {
        "threshold alone": {k: v for k, v in timing.items() if k != "MALLOC_TRIM_THRESHOLD_"},
        "heap's top kept": timing,
        "huge pages": steady_allocator(plain, fits_only=True),
    }
    sizes = args.sizes.split(",")
    print(f"| run | allocator | {' | '.join(sizes)} |")
    print(f"| ---: | --- |{' ---: |' * len(sizes)}")
    for run in range(1, args.runs + 1):
        for name, env in settings.items():
            rows = child(CHILD, [args.config, args.memory_limit, args.sizes], env)
            cells = [f"{r['samples_per_s']:.0f}" + (f" ({r['capped_peak_bytes'] / 2**20:.0f})" if r["capped_peak_bytes"] else "")
                     for r in rows]
            print(f"| {run} | {name} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
