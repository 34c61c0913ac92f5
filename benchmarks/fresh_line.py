"""Benchmark: where a brand-new process's peak lies, and what the doubling worker can tell of it.

Each run checks every size with `batchfind check` (a brand-new worker process, as a probe's proof)
and prints the capped peak each reached (the data segment, what the cap counts), and the slope
between neighbouring sizes. A child forked from a process that has done a worker's start-up would
save a fit check its 2 s of imports and set-up, if its peak were a brand-new process's. So
`--forked imports` also checks each size in a child forked from a server that imported torch and
batchfind (Python's forkserver), and `--forked setup` in a child forked from a worker set up and
waiting, as a standby is (set up on one thread: a child forked from a process whose OpenMP threads
ran hangs at its first parallel step).

With `--reports DIR...` (kept probe reports, as `benchmarks/repeat.py --keep DIR` writes them, of
the same config and limit), for the largest size the doubling worker ran that is also checked here,
it prints how far the worker's peak less all it retained (`memory.fresh_equivalent` at no reuse)
sits below the brand-new peak, and the per-sample slope of the worker's last two and last three
sizes as the memory model reads them: what a first guess at the edge from the worker alone
starts from.

    python benchmarks/fresh_line.py configs/cnn-small.yaml 256,512,1024,1500 --runs 2 \\
        --forked imports --forked setup --reports DIR
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
from multiprocessing import reduction
from pathlib import Path
from types import SimpleNamespace

from allocator import child, sizes_parser  # noqa: E402 - a sibling script: benchmarks/ is on the path when run

MIB = 2**20


def spawned(config: str, size: int, limit: str) -> int | None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "check.json"
        subprocess.run(["batchfind", "check", config, "--batch", str(size), "--memory-limit", limit, "-o", str(out)],
                       capture_output=True)
        return json.loads(out.read_text())["trials"][-1]["capped_peak_bytes"] if out.exists() else None


class _Fd:
    """A file descriptor handed to a forkserver child (plain ints are not)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return _detach, (reduction.DupFd(self.fd),)


def _detach(dup) -> int:
    return dup.detach()


def _forked_worker(requests: int, replies: int, errors: int) -> None:
    # The worker's own loop, on the pipes the parent holds, as a worker process runs it.
    os.dup2(requests, 0), os.dup2(replies, 1), os.dup2(errors, 2)
    sys.stdin = open(0, closefd=False)
    from batchfind.worker import _serve

    _serve()


def forked(ctx, raw: dict, size: int) -> int | None:
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    with tempfile.TemporaryFile() as errors:
        process = ctx.Process(target=_forked_worker, args=(_Fd(requests_r), _Fd(replies_w), _Fd(errors.fileno())))
        process.start()
        os.close(requests_r), os.close(replies_w)
        with os.fdopen(requests_w, "w") as send, os.fdopen(replies_r) as receive:
            send.write(json.dumps({"config": raw}) + "\n")
            send.write(json.dumps({"op": "trial", "batch_size": size, "purpose": "fit"}) + "\n")
            send.flush()
            reply = {}
            for line in receive:
                reply = json.loads(line)
                if reply.get("event") in ("trial", "failed"):
                    break
        process.join()
    return reply.get("capped_peak_bytes") if reply.get("status") == "ok" else None


# A worker set up on one thread, then a fit check per size, each in a child forked from it.
FORKING = """
import json, os, sys, torch
from batchfind.session import Session
threads = torch.get_num_threads()
torch.set_num_threads(1)
session = Session(json.loads(sys.argv[1])); session.start()
peaks = []
for size in map(int, sys.argv[2].split(",")):
    read, write = os.pipe()
    if os.fork() == 0:
        torch.set_num_threads(threads)
        reply = session.serve("trial", {"batch_size": size, "purpose": "fit"}, None)
        os.write(write, json.dumps(reply.get("capped_peak_bytes") if reply["status"] == "ok" else None).encode())
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1024)  # nothing if the child crashed
    peaks.append(json.loads(answer) if answer else None)
    os.wait()
print(json.dumps(peaks))
"""


def forked_from_setup(raw: dict, sizes: list[int], env: dict[str, str]) -> list[int | None]:
    return child(FORKING, [json.dumps(raw), ",".join(map(str, sizes))], env)


def worker_view(dirs: list[str], raw: dict, fresh: dict[int, float]) -> None:
    from batchfind import memory

    limit, name = raw["probe"]["memory_limit"], raw["model"]["name"]
    below, two, three = [], [], []
    for path in sorted(p for d in dirs for p in Path(d).glob("*.json")):
        report = json.loads(path.read_text())
        if report["config"]["probe"]["memory_limit"] != limit or report["config"]["model"]["name"] != name:
            continue
        doubled = [SimpleNamespace(**t) for t in report["trials"] if t["phase"] == "double"]
        worker = [t for t in doubled if t.status == "ok" and not t.fresh_process and t.capped_peak_bytes
                  and t.retained_bytes is not None]
        if len(worker) < 3:
            continue
        last = max((t for t in worker if t.batch_size in fresh), key=lambda t: t.batch_size, default=None)
        if last is not None:
            below.append((fresh[last.batch_size] - last.capped_peak_bytes + last.retained_bytes) / MIB)
        (x1, y1), (x2, y2) = [(t.batch_size, memory.fresh_equivalent(t)) for t in worker[-2:]]
        two.append((y2 - y1) / (x2 - x1) / MIB)
        three.append(memory.fit(doubled, limit, kinds_differ=True).per_sample_bytes / MIB)
    if not two:
        print(f"\nno reports of {name} under this limit in {', '.join(dirs)}")
        return
    print(f"\n{len(two)} reports of {name}: the doubling worker's view")
    if below:
        print(f"  brand-new peak above the worker's peak less all it retained, at its largest checked size: "
              f"median {statistics.median(below):.1f} MiB, {min(below):.1f} to {max(below):.1f}")
    for label, slopes in (("last two sizes", two), ("last three sizes", three)):
        print(f"  worker slope, {label}: median {statistics.median(slopes):.4f} MiB/sample, "
              f"{min(slopes):.4f} to {max(slopes):.4f}")


def main() -> None:
    from batchfind.config import load_config
    from batchfind.worker import steady_allocator

    parser = sizes_parser(__doc__)
    parser.add_argument("--forked", action="append", choices=("imports", "setup"), default=[],
                        help="also check each size in a child forked after imports, or after set-up")
    parser.add_argument("--reports", nargs="*", default=[], help="dirs of kept probe reports of this config")
    args = parser.parse_args()
    sizes = sorted(map(int, args.sizes.split(",")))
    raw = load_config(args.config, {"--memory-limit": args.memory_limit, "--device": "cpu"}).model_dump(mode="json")
    # Forked children run with the allocator settings of a worker that runs fit checks.
    env = steady_allocator(dict(os.environ), fits_only=True)
    ctx = None
    if "imports" in args.forked:
        os.environ.update(env)  # the server starts with them
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "batchfind.session"])
    peaks: dict[str, dict[int, list[float]]] = {"brand-new": {}, "forked after imports": {}, "forked after set-up": {}}
    for _ in range(args.runs):
        for size in sizes:
            peaks["brand-new"].setdefault(size, []).append(spawned(args.config, size, args.memory_limit))
            if ctx is not None:
                peaks["forked after imports"].setdefault(size, []).append(forked(ctx, raw, size))
        if "setup" in args.forked:
            for size, peak in zip(sizes, forked_from_setup(raw, sizes, env)):
                peaks["forked after set-up"].setdefault(size, []).append(peak)
    print("| kind | batch | capped peaks, MiB | slope from the size before, MiB/sample |")
    print("| --- | ---: | --- | ---: |")
    for kind, by_size in peaks.items():
        before = None
        for size in sizes:
            if size not in by_size:
                continue
            values = [p / MIB for p in by_size[size] if p]
            slope = (f"{(statistics.median(values) - before[1]) / (size - before[0]):.4f}"
                     if before and values else "")
            print(f"| {kind} | {size} | {', '.join(f'{v:.1f}' for v in values) or 'failed'} | {slope} |")
            before = (size, statistics.median(values)) if values else None
    fresh = {size: statistics.median(p for p in values if p) for size, values in peaks["brand-new"].items()
             if any(values)}
    if args.reports:
        worker_view(args.reports, raw, fresh)


if __name__ == "__main__":
    main()
