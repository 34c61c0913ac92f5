"""Benchmark: how long a probe's first worker takes to be ready, alone, with a standby starting
beside it, and with a launcher starting beside it.

Each run starts the first worker as a probe does (`Group`): alone; with a standby started just
before it (as `probing.Prober.start` does where the probe may run on a GPU); and with a launcher
started just before it (as it does on a CPU: `batchfind.forks`). It prints the seconds until the
worker was ready and until the standby stood by, or the launcher had done its imports. A probe's
first trial waits for both.

    python benchmarks/startup.py configs/cnn-small.yaml --runs 3
"""

from __future__ import annotations

import argparse
import time


def ready_s(raw: dict, beside: str | None) -> tuple[float, float | None]:
    from batchfind.forks import Launcher, imports_first
    from batchfind.group import Group
    from batchfind.worker import environment

    started = time.monotonic()
    standby = Group(raw, None, None, generation=2, standby=True) if beside == "standby" else None
    imports = imports_first(raw["train"]["optimizer"])
    launcher = Launcher(environment("cpu", fits_only=True), imports) if beside == "launcher" else None
    worker = Group(raw, None, None, generation=1)
    worker_s = time.monotonic() - started
    try:
        if standby is not None and not standby.standing_by():
            raise SystemExit(f"the standby failed its set-up: {standby.standby_failure}")
        if launcher is not None and not launcher.ready(120):
            raise SystemExit("the launcher failed to start")
        return worker_s, (time.monotonic() - started if beside else None)
    finally:
        worker.close()
        for other in (standby, launcher):
            if other is not None:
                other.close()


def main() -> None:
    from batchfind.config import load_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-limit", default="2GiB")
    args = parser.parse_args()
    raw = load_config(args.config, {"--memory-limit": args.memory_limit, "--device": "cpu"}).model_dump(mode="json")
    print("| run | alone: worker ready s | beside a standby: worker ready s | standby set up s "
          "| beside a launcher: worker ready s | launcher ready s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in range(1, args.runs + 1):
        times = []
        for beside in (None, "standby", "launcher"):
            times.extend(t for t in ready_s(raw, beside) if t is not None)
            time.sleep(1)  # the last worker's memory given back before the next start
        print(f"| {run} | " + " | ".join(f"{t:.2f}" for t in times) + " |", flush=True)


if __name__ == "__main__":
    main()
