"""Benchmark: what a long-lived CPU worker retains, and whether its peaks predict a brand-new process's.

For each config: one process runs two steps at each power of two from 1 up to BATCH, as the doubling
worker does (past the throughput peak it may run one on a CPU), and reports per size the data segment and the allocator's free heap at the trial's
start beyond what it held after its first trial (`retained_bytes`, `retained_free_bytes`) and the
peak of the data segment. Then brand-new processes run BATCH alone, `--runs` times. The memory
model's fresh equivalent of the long-lived peak (`memory.fresh_equivalent`) is printed beside the
range it must lie in (all of the free heap reused, or none of it) and the brand-new peaks.

    python benchmarks/retained.py --memory-limit 2GiB configs/cnn-small.yaml:1024 configs/gpt-small.yaml:64 configs/mlp-tabular.yaml:262144
"""

from __future__ import annotations

import argparse
import os

from allocator import child  # noqa: E402 - a sibling script: benchmarks/ is on the path when run

CHILD = """
import json, sys
from batchfind.config import load_config
from batchfind.session import Session
config = load_config(sys.argv[1], {"--memory-limit": sys.argv[2], "--device": "cpu"})
session = Session(config.model_dump(mode="json")); session.start()
rows = []
for size in map(int, sys.argv[3].split(",")):
    reply = session.serve("trial", {"batch_size": size, "purpose": "fit"})
    rows.append({k: reply.get(k) for k in ("batch_size", "status", "capped_peak_bytes", "retained_bytes",
                                           "retained_free_bytes")})
print(json.dumps(rows))
"""

MiB = 2**20


def run(config: str, limit: str, sizes: list[int]) -> list[dict]:
    from batchfind.worker import steady_allocator

    # As the doubling worker runs: it times its steps.
    return child(CHILD, [config, limit, ",".join(map(str, sizes))], steady_allocator(dict(os.environ), fits_only=False))


def main() -> None:
    from batchfind.memory import fresh_equivalent
    from batchfind.report import Trial

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", help="CONFIG:BATCH")
    parser.add_argument("--memory-limit", default="2GiB")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print("| config | batch | long-lived peak | retained | of it free heap | fresh equivalent | range "
          "| brand-new peaks |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for case in args.cases:
        config, batch = case.rsplit(":", 1)
        batch = int(batch)
        sizes = [2**k for k in range(batch.bit_length()) if 2**k < batch] + [batch]
        last = Trial.from_dict(run(config, args.memory_limit, sizes)[-1])
        fresh = [run(config, args.memory_limit, [batch])[0]["capped_peak_bytes"] for _ in range(args.runs)]
        if last.capped_peak_bytes is None:
            print(f"| {os.path.basename(config)} | {batch} | below the setup's peak: pick a larger batch |")
            continue
        retained, free = last.retained_bytes or 0, last.retained_free_bytes or 0
        low = last.capped_peak_bytes - retained
        print(f"| {os.path.basename(config)} | {batch} | {last.capped_peak_bytes / MiB:.0f} | {retained / MiB:.0f} | "
              f"{free / MiB:.0f} | {fresh_equivalent(last) / MiB:.0f} | {low / MiB:.0f}–{(low + free) / MiB:.0f} | "
              f"{', '.join(f'{p / MiB:.0f}' for p in fresh)} |", flush=True)


if __name__ == "__main__":
    main()
