"""Benchmark: a fit check in a worker forked from the launcher against one in a worker started from
nothing, at the same size.

A probe forks the brand-new workers of its fit checks near a CPU edge from a launcher that has
imported torch (`batchfind.forks`); its limit must still hold in a process started from nothing, as
`batchfind check` and training start. Each run starts one worker of each kind (in alternating
order), runs one fit check at each size given, and prints the seconds until the worker was ready,
the check's status and its capped peak (the data segment the memory cap counts).

    python benchmarks/forked.py configs/cnn-small.yaml 1540 --runs 3
"""

from __future__ import annotations

import argparse
import time


def fit_check(raw: dict, size: int, generation: int, launcher) -> tuple[float, dict]:
    from batchfind.group import Group

    started = time.monotonic()
    group = Group(raw, None, None, generation, fits_only=True, smallest=False, launcher=launcher)
    ready_s = time.monotonic() - started
    try:
        return ready_s, group.run(size, "fit", 600)
    finally:
        group.close()


def main() -> None:
    from batchfind.config import load_config
    from batchfind.forks import Launcher, imports_first
    from batchfind.worker import environment

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("sizes", type=int, nargs="+")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-limit", default="2GiB")
    args = parser.parse_args()
    config = load_config(args.config, {"--memory-limit": args.memory_limit, "--device": "cpu"})
    raw = config.model_dump(mode="json")
    launcher = Launcher(environment("cpu", fits_only=True), imports_first(config.train.optimizer))
    if not launcher.ready(120):
        raise SystemExit("the launcher failed to start")
    print("| run | size | worker | ready s | status | capped peak MiB |")
    print("| ---: | ---: | --- | ---: | --- | ---: |")
    generation = 0
    try:
        for run in range(1, args.runs + 1):
            for size in args.sizes:
                kinds = [("started", None), ("forked", launcher)]
                for kind, given in kinds if run % 2 else kinds[::-1]:
                    generation += 1
                    ready_s, result = fit_check(raw, size, generation, given)
                    peak = result.get("capped_peak_bytes")
                    shown = f"{peak / 2**20:.1f}" if peak else "-"
                    print(f"| {run} | {size} | {kind} | {ready_s:.2f} | {result['status']} | {shown} |", flush=True)
                    time.sleep(1)  # the last worker's memory given back before the next start
    finally:
        launcher.close()


if __name__ == "__main__":
    main()
