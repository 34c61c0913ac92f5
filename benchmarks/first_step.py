"""Benchmark: how a size's first step in a worker that has stepped before compares with its later ones.

One brand-new process per run, with the allocator settings of a worker that times steps, runs the
given sizes in order as the doubling worker does, each as a trial of `--steps` timed steps and no
warm-up, and prints per size the first step's time, the quickest of the later ones, and their
ratio. A CPU worker stops a size past the throughput peak on its first step when that step took
`measure.GLANCE_MIN_MS` or more and `measure.GLANCE_FACTOR` times its bar: the ratio says how far a
first step that long may sit from the size's best.

    python benchmarks/first_step.py configs/cnn-small.yaml 1,2,4,8,16,32,64,128,256,512,1024 --runs 2
"""

from __future__ import annotations

import os

from allocator import child, sizes_parser  # noqa: E402 - a sibling script: benchmarks/ is on the path when run

CHILD = """
import json, sys
from batchfind.config import load_config
from batchfind.session import Session
config = load_config(sys.argv[1], {"--memory-limit": sys.argv[2], "--device": "cpu", "--warmup": 0,
                                   "--steps": int(sys.argv[4])})
raw = config.model_dump(mode="json")
raw["probe"].update(min_time_s=0, max_time_s=0)  # exactly the steps asked for, none left out
session = Session(raw); session.start()
rows = []
for size in map(int, sys.argv[3].split(",")):
    reply = session.serve("trial", {"batch_size": size, "purpose": "throughput"}, lambda message: None)
    rows.append({"batch_size": size, "samples": (reply.get("step_ms") or {}).get("samples")})
print(json.dumps(rows))
"""


def main() -> None:
    from batchfind.measure import GLANCE_MIN_MS
    from batchfind.worker import steady_allocator

    parser = sizes_parser(__doc__)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    env = steady_allocator(dict(os.environ), fits_only=False)
    print("| run | batch | first ms | quickest later ms | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    ratios = []
    for run in range(1, args.runs + 1):
        for row in child(CHILD, [args.config, args.memory_limit, args.sizes, str(args.steps)], env):
            samples = row["samples"]
            if not samples or len(samples) < 2:
                print(f"| {run} | {row['batch_size']} | - | - | - |")
                continue
            ratio = samples[0] / min(samples[1:])
            if samples[0] >= GLANCE_MIN_MS:
                ratios.append(ratio)
            print(f"| {run} | {row['batch_size']} | {samples[0]:.0f} | {min(samples[1:]):.0f} | {ratio:.2f} |", flush=True)
    if ratios:
        print(f"\nfirst steps of {GLANCE_MIN_MS:.0f} ms or more: ratio {min(ratios):.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    main()
