"""Benchmark: batchfind side by side with the batch-size finders people use today.

On the same models and the same memory cap, one after another on one machine: `batchfind probe`
(the whole answer: limit, table, recommendation), Lightning's tuner (`scale_batch_size`, power and
binsearch) and accelerate's `find_executable_batch_size`. Each runs as a whole process, so process
start-up counts for all. Then every answer is re-checked in brand-new processes (`batchfind check`,
the fit check batchfind proves its limit with), and the truth, the largest size a brand-new process
fits, is searched the same way between sizes that fit and fail fresh.

The peers train the same model, data, loss and optimizer as batchfind (built by batchfind's own
code from the config) under the same cap and allocator settings, three steps per size. On a CPU the
cap is RLIMIT_DATA, as in batchfind's workers; on a GPU, `--memory-limit none` gives every tool the
whole card, and a size caps each with `torch.cuda.set_per_process_memory_fraction`, as batchfind
does. Needs `pip install ".[bench]"` (lightning, accelerate).

    python benchmarks/vs_peers.py --memory-limit 2GiB configs/cnn-small.yaml configs/gpt-small.yaml
    python benchmarks/vs_peers.py --device cuda --memory-limit none --peers lightning-binsearch configs/resnet50.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from mdtable import print_table

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("lightning-power", "lightning-binsearch", "accelerate")
# accelerate needs a first guess to shrink from; Lightning's tuner stops doubling at 8192.
ACCELERATE_START = 4096
STEPS_PER_TRIAL = 3
# Samples Lightning's DataLoader draws from, over and over: making each item afresh would time the
# data, not the step.
POOL = 256


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    env = dict(env or os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    return time.monotonic() - started, done


def flags(device: str, limit: str | None) -> list[str]:
    """batchfind's options for the device and the cap (none: the whole device)."""
    return ["--device", device] + (["--memory-limit", limit] if limit else [])


# This checkout's batchfind, installed or not (a lent GPU machine has it only as files).
BATCHFIND = [sys.executable, "-m", "batchfind"]


def batchfind(config: str, device: str, limit: str | None) -> dict:
    wall, done = run([*BATCHFIND, "probe", config, *flags(device, limit), "--json", "--quiet"])
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        # No report: the run's own words are all there is to go on.
        raise RuntimeError(f"batchfind probe {config} exited {done.returncode} with no report: "
                           f"{done.stderr.strip()[-2000:] or 'no output'}") from None
    return {"tool": "batchfind", "wall_s": wall, "answer": report["limit"]["batch_size"], "report": report}


def peer(tool: str, config: str, device: str, limit: str | None) -> dict:
    from batchfind.worker import steady_allocator

    # The same allocator settings batchfind's fit checks run with, so memory means the same.
    env = steady_allocator(dict(os.environ), fits_only=True) if device == "cpu" else None
    wall, done = run([sys.executable, __file__, "--peer", tool, "--device", device,
                      "--memory-limit", limit or "none", config], env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"tool": tool, "wall_s": wall, "answer": None, "error": tail[:120]}
    return {"tool": tool, "wall_s": wall, **json.loads(lines[-1])}


def fits_fresh(config: str, device: str, limit: str | None, size: int) -> bool:
    _, done = run([*BATCHFIND, "check", config, "--batch", str(size), *flags(device, limit)])
    if done.returncode not in (0, 3):
        raise RuntimeError(f"check --batch {size} failed: {done.stderr.strip()[-200:]}")
    return done.returncode == 0


def truth(config: str, device: str, limit: str | None, fits: int, fails: int) -> int:
    """The largest size a brand-new process fits, bisected with fresh checks from a size that fits
    fresh to one that fails fresh."""
    while not fits_fresh(config, device, limit, fits):
        fails, fits = fits, fits // 2
    while fits_fresh(config, device, limit, fails):
        fits, fails = fails, fails * 2
    while fails - fits > 1:
        middle = (fits + fails) // 2
        fits, fails = (middle, fails) if fits_fresh(config, device, limit, middle) else (fits, middle)
    return fits


# ---- the peers, each in its own process ---------------------------------------------------


def _setup(config_path: str, device: str, limit: str | None, data_device: str | None = None):
    """The config, the model on `device` under the cap, and batches built on `data_device` (default:
    the device)."""
    import torch

    from batchfind.config import load_config
    from batchfind.data import build_batches
    from batchfind.models import build_model
    from batchfind.sizes import parse_size

    config = load_config(config_path, {"--device": device})
    target = torch.device(device)
    if limit and target.type == "cuda":
        total = torch.cuda.get_device_properties(target).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, parse_size(limit) / total), target)
    elif limit:
        cap = parse_size(limit)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))  # as batchfind's workers do
    torch.manual_seed(0)
    model = build_model(config.model).train().to(target)
    return config, model, build_batches(config, torch.device(data_device or device))


def _lightning(mode: str, config_path: str, device: str, limit: str | None) -> int | None:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.tuner import Tuner

    from batchfind.step import compute_loss, make_optimizer

    # Lightning moves each batch to the device itself.
    config, model, batches = _setup(config_path, device, limit, data_device="cpu")
    pool = batches.batch(min(POOL, len(batches)))  # the shipped configs' synthetic data: (inputs, targets)

    class Samples(torch.utils.data.Dataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            x, y = pool
            return x[i % len(x)], y[i % len(y)]

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.batch_size = model, 2

        def training_step(self, batch, _):
            x, y = batch
            return compute_loss(self.model(x), y, config.train.loss)

        def configure_optimizers(self):
            return make_optimizer(self.model, config.train)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(Samples(), batch_size=self.batch_size)

    precision = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}[config.train.precision]
    target = torch.device(device)
    trainer = pl.Trainer(accelerator="gpu" if target.type == "cuda" else "cpu",
                         devices=[target.index or 0] if target.type == "cuda" else 1, max_epochs=1,
                         precision=precision, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    return Tuner(trainer).scale_batch_size(Module(), mode=mode, steps_per_trial=STEPS_PER_TRIAL)


def _accelerate(config_path: str, device: str, limit: str | None) -> int:
    from accelerate.utils import find_executable_batch_size

    from batchfind.step import Step

    config, model, batches = _setup(config_path, device, limit)
    step = Step(model, config.train, next(model.parameters()).device)

    @find_executable_batch_size(starting_batch_size=ACCELERATE_START)
    def train(batch_size: int) -> int:
        batch = batches.batch(batch_size)
        for _ in range(STEPS_PER_TRIAL):
            step(batch)
        return batch_size

    return train()


def _run_peer(tool: str, config: str, device: str, limit: str | None) -> None:
    if tool == "accelerate":
        answer = _accelerate(config, device, limit)
    else:
        answer = _lightning(tool.removeprefix("lightning-"), config, device, limit)
    print(json.dumps({"answer": answer}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--memory-limit", default="2GiB", help="a size, or none for the whole device (GPU)")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    parser.add_argument("--keep", type=Path, help="write batchfind's report of each config into this folder")
    parser.add_argument("--peer", choices=PEERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    limit = None if args.memory_limit.lower() == "none" else args.memory_limit
    if limit is None and args.device == "cpu":
        parser.error("--memory-limit none: a CPU run needs a cap, or out of memory means swapping")
    if args.peer:
        return _run_peer(args.peer, args.configs[0], args.device, limit)
    peers = [p for p in args.peers.split(",") if p]
    if unknown := set(peers) - set(PEERS):
        parser.error(f"--peers: unknown {', '.join(sorted(unknown))}; expected some of {', '.join(PEERS)}")
    rows, device = [], args.device
    for config in args.configs:
        try:
            ours = batchfind(config, args.device, limit)
        except RuntimeError as exc:  # one config's failure leaves the others' numbers to be had
            print(exc, flush=True)
            continue
        device = ours["report"]["environment"]["device_name"] or args.device
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / f"{Path(config).stem}.json").write_text(json.dumps(ours["report"], indent=2))
        found = ours["report"]["limit"]
        if not found["batch_size"] or not found["first_oom"]:
            # Nothing fitted, or nothing failed (the data's size, --max-batch, the time budget): no edge
            # to bisect, so no truth to set the peers beside.
            print(f"{config}: no edge to measure against: limit {found['batch_size']}, first failure "
                  f"{found['first_oom']} ({ours['report']['stopped_because']})", flush=True)
            continue
        results = [ours] + [peer(tool, config, args.device, limit) for tool in peers]
        best = truth(config, args.device, limit, found["batch_size"], found["first_oom"])
        recommended = ours["report"]["recommendation"]["batch_size"]
        for result in results:
            answer = result["answer"]
            recheck = ("fits" if fits_fresh(config, args.device, limit, answer) else "fails") if answer else "-"
            share = f"{answer / best:.0%}" if answer else "-"
            note = result.get("error") or (f"recommended {recommended}" if result is ours else "")
            rows.append((Path(config).name, result["tool"], f"{result['wall_s']:.1f}", answer or "crashed",
                         best, share, recheck, note))
            print(rows[-1], flush=True)
    print(f"\n{device}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
          f"memory limit {limit or 'none'}, {STEPS_PER_TRIAL} steps per trial for the peers\n")
    print_table(["config", "tool", "wall s", "answer", "fresh truth", "answer / truth", "answer re-checked fresh",
                 "note"], rows, numeric={2, 3, 4, 5})


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
