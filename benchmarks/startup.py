"""Benchmark: how long a probe's first worker takes to be ready, alone and with a standby starting
beside it.

Each run starts the first worker as a probe does (`Group`), once alone and once with a standby
started just before it (as `probing.Prober.start` does), and prints the seconds until the worker
was ready and until the standby said it stands by. A probe's first trial waits for both.

    python benchmarks/startup.py configs/cnn-small.yaml --runs 3
"""

from __future__ import annotations

import argparse
import time


def ready_s(raw: dict, beside: bool) -> tuple[float, float | None]:
    from batchfind.group import Group

    started = time.monotonic()
    standby = Group(raw, None, None, generation=2, standby=True) if beside else None
    worker = Group(raw, None, None, generation=1)
    worker_s = time.monotonic() - started
    try:
        if standby is not None and not standby.standing_by():
            raise SystemExit(f"the standby failed its set-up: {standby.standby_failure}")
        return worker_s, (time.monotonic() - started if standby is not None else None)
    finally:
        worker.close()
        if standby is not None:
            standby.close()


def main() -> None:
    from batchfind.config import load_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-limit", default="2GiB")
    args = parser.parse_args()
    raw = load_config(args.config, {"--memory-limit": args.memory_limit, "--device": "cpu"}).model_dump(mode="json")
    print("| run | alone: worker ready s | beside a standby: worker ready s | standby set up s |")
    print("| ---: | ---: | ---: | ---: |")
    for run in range(1, args.runs + 1):
        alone, _ = ready_s(raw, beside=False)
        time.sleep(1)  # the last worker's memory given back before the next start
        worker, standby = ready_s(raw, beside=True)
        time.sleep(1)
        print(f"| {run} | {alone:.2f} | {worker:.2f} | {standby:.2f} |", flush=True)


if __name__ == "__main__":
    main()
