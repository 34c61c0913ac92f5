"""Benchmark: does memory a worker gives back come back slower?

batchfind's CPU workers map every tensor of 4 MiB or more afresh and unmap it when freed
(`worker.steady_allocator`), so each training step writes memory the kernel has to hand out again.
This writes a tensor of `--size-mib` `--repeats` times in one brand-new process per setting: into
one tensor kept throughout, into a new tensor each time back to back, and into a new tensor each
time after a pause of `--pause-s`, with the workers' allocator settings and huge pages on
(`glibc.malloc.hugetlb=1`, as the workers run) and off. Where the kernel reports free memory to a
hypervisor (virtio-balloon free page reporting, `/sys/module/page_reporting`), it also prints how
much it reported while each setting ran: memory so reported is faulted back in from the host.

    python benchmarks/given_back.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, statistics, sys, time
import torch

def reported():
    try:
        return int(open("/sys/module/page_reporting/parameters/reported_kib").read())
    except OSError:
        return None

size, repeats, pause = int(sys.argv[1]) << 20, int(sys.argv[2]), float(sys.argv[3])
torch.set_num_threads(1)  # the kernel's work per page, not the threads' share of it
kept = torch.empty(size, dtype=torch.uint8)
kept.fill_(1)
rows = []
for mode in ("kept", "afresh", "afresh after a pause"):
    times, before = [], reported()
    for i in range(repeats):
        if mode == "afresh after a pause":
            time.sleep(pause)
        start = time.perf_counter()
        if mode == "kept":
            kept.fill_(i)
        else:
            fresh = torch.empty(size, dtype=torch.uint8)
            fresh.fill_(i)
            del fresh
        times.append((time.perf_counter() - start) * 1000)
    after = reported()
    rows.append({"mode": mode, "median": statistics.median(times), "min": min(times), "max": max(times),
                 "reported_mib": None if before is None else (after - before) / 1024})
print(json.dumps(rows))
"""


def main() -> None:
    from batchfind.worker import MMAP_THRESHOLD

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--pause-s", type=float, default=1.0)
    args = parser.parse_args()

    base = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    print("| huge pages | written | median ms | min–max ms | GB/s | reported to the host (MiB) |")
    print("| --- | --- | ---: | --- | ---: | ---: |")
    for huge in ("1", "0"):
        env = {**base, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "GLIBC_TUNABLES": f"glibc.malloc.hugetlb={huge}"}
        done = subprocess.run([sys.executable, "-c", CHILD, str(args.size_mib), str(args.repeats), str(args.pause_s)],
                              capture_output=True, text=True, env=env, check=True)
        for row in json.loads(done.stdout):
            rate = args.size_mib * 2**20 / (row["median"] / 1000) / 1e9
            reported = "-" if row["reported_mib"] is None else f"{row['reported_mib']:,.0f}"
            mode = row["mode"].replace("a pause", f"{args.pause_s:g} s")
            print(f"| {'yes' if huge == '1' else 'no'} | {mode} | {row['median']:.0f} | {row['min']:.0f}–{row['max']:.0f} "
                  f"| {rate:.1f} | {reported} |", flush=True)


if __name__ == "__main__":
    main()
