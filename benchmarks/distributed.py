"""Benchmark: the per-device limit with one process, DDP and FSDP, launched by batchfind or torchrun.

For each config, probes under the same per-rank memory limit: a plain run, DDP with world size 1
(started by batchfind, then by torchrun), and DDP and FSDP with N ranks. Prints the limit, the
first failure, the peak at the limit, the recommended per-device and global batch, samples/s and
wall time of each, as a Markdown table.

    python benchmarks/distributed.py --memory-limit 2GiB configs/cnn-small.yaml
    python benchmarks/distributed.py --device cuda --nproc 2 configs/resnet50.yaml

Other options (`--no-refine`, `--steps 2`) go to every `batchfind probe` as they are.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mdtable import print_table

MODES = {
    "plain": ([], None),  # one process, no wrapper
    "ddp1": (["--nproc-per-node", "1"], None),  # DDP, world size 1, started by batchfind
    "torchrun1": ([], 1),  # the same through torchrun
    "ddp": (["--nproc-per-node", "{n}", "--strategy", "ddp"], None),
    "fsdp": (["--nproc-per-node", "{n}", "--strategy", "fsdp"], None),
}


def run(config: str, mode: str, nproc: int, extra: list[str]) -> tuple[dict, float]:
    args, torchrun = MODES[mode]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        probe = ["probe", config, "-q", "-o", str(out), *[a.format(n=nproc) for a in args], *extra]
        if torchrun:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc-per-node", str(torchrun), "-m", "batchfind", *probe]
        else:
            command = [sys.executable, "-m", "batchfind", *probe]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.monotonic() - started
        if not out.exists():
            raise SystemExit(f"{mode} on {config} wrote no report (exit {done.returncode}): {done.stderr[-1500:]}")
        return json.loads(out.read_text()), wall


def row(config: str, mode: str, report: dict, wall: float) -> list:
    limit, rec = report["limit"], report["recommendation"]
    at_limit = [t for t in report["trials"] if t["status"] == "ok" and t["batch_size"] == limit["batch_size"]]
    chosen = [t for t in report["trials"] if t["status"] == "ok" and t["batch_size"] == rec["batch_size"]]
    peak = at_limit[-1]["peak_bytes"] / 2**20 if at_limit else None
    speed = chosen[-1]["samples_per_s"] if chosen else None
    world = (report["distributed"] or {}).get("world_size", 1)
    return [config, mode, world, limit["batch_size"], limit["first_oom"], f"{peak:.0f}" if peak else "-",
            rec["batch_size"], rec["global_batch_size"], f"{speed:,.0f}" if speed else "-", f"{wall:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--nproc", type=int, default=2, help="ranks for the ddp and fsdp runs")
    parser.add_argument("--memory-limit", default=None, help="per rank, e.g. 2GiB")
    parser.add_argument("--device", default=None)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    args, passed = parser.parse_known_args()
    extra = ["--time-budget", "3600", *passed]
    extra += ["--memory-limit", args.memory_limit] if args.memory_limit else []
    extra += ["--device", args.device] if args.device else []
    rows, report = [], None
    for config in args.configs:
        for mode in args.modes.split(","):
            report, wall = run(config, mode, args.nproc, extra)
            rows.append(row(config, mode, report, wall))
            print(rows[-1], flush=True)
    env = report["environment"]
    print(f"\n{env['device_name']} ({env['device']}), torch {env['torch_version']}, {platform.platform()}, "
          f"memory limit per rank {args.memory_limit or 'per config'}\n")
    print_table(["config", "run", "world", "limit/device", "first failure", "peak at limit MiB", "recommended/device",
                 "global batch", "samples/s (all ranks)", "wall s"], rows, numeric=set(range(2, 10)))


if __name__ == "__main__":
    main()
