"""Benchmark: batchfind side by side with the batch-size finders people use today.

On the same models and the same memory cap, one after another on one machine: `batchfind probe`
(the whole answer: limit, table, recommendation), Lightning's tuner (`scale_batch_size`, power and
binsearch) and accelerate's `find_executable_batch_size`. Each runs as a whole process, so process
start-up counts for all. Then every answer is re-checked in brand-new processes (`batchfind check`,
the fit check batchfind proves its limit with), and the truth, the largest size a brand-new process
fits, is searched the same way between sizes that fit and fail fresh.

The peers train the same model, data, loss and optimizer as batchfind (built by batchfind's own
code from the config) under the same cap (RLIMIT_DATA) and allocator settings, three steps per size.
Needs `pip install ".[bench]"` (lightning, accelerate).

    python benchmarks/vs_peers.py --memory-limit 2GiB configs/cnn-small.yaml configs/gpt-small.yaml
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

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("lightning-power", "lightning-binsearch", "accelerate")
# accelerate needs a first guess to shrink from; Lightning's tuner stops doubling at 8192.
ACCELERATE_START = 4096
STEPS_PER_TRIAL = 3


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    return time.monotonic() - started, done


def batchfind(config: str, limit: str) -> dict:
    wall, done = run(["batchfind", "probe", config, "--memory-limit", limit, "--json", "--quiet"])
    report = json.loads(done.stdout)
    return {"tool": "batchfind", "wall_s": wall, "answer": report["limit"]["batch_size"], "report": report}


def peer(tool: str, config: str, limit: str) -> dict:
    from batchfind.worker import steady_allocator

    # The same allocator settings batchfind's CPU workers run with, so memory means the same.
    env = steady_allocator(dict(os.environ))
    wall, done = run([sys.executable, __file__, "--peer", tool, "--memory-limit", limit, config], env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"tool": tool, "wall_s": wall, "answer": None, "error": tail[:120]}
    return {"tool": tool, "wall_s": wall, **json.loads(lines[-1])}


def fits_fresh(config: str, limit: str, size: int) -> bool:
    _, done = run(["batchfind", "check", config, "--batch", str(size), "--memory-limit", limit])
    if done.returncode not in (0, 3):
        raise RuntimeError(f"check --batch {size} failed: {done.stderr.strip()[-200:]}")
    return done.returncode == 0


def truth(config: str, limit: str, fits: int, fails: int) -> int:
    """The largest size a brand-new process fits, bisected with fresh checks from a size that fits
    fresh to one that fails fresh."""
    while not fits_fresh(config, limit, fits):
        fails, fits = fits, fits // 2
    while fits_fresh(config, limit, fails):
        fits, fails = fails, fails * 2
    while fails - fits > 1:
        middle = (fits + fails) // 2
        fits, fails = (middle, fails) if fits_fresh(config, limit, middle) else (fits, middle)
    return fits


# ---- the peers, each in its own process ---------------------------------------------------


def _setup(config_path: str, limit: str):
    import torch

    from batchfind.config import load_config
    from batchfind.data import build_batches
    from batchfind.models import build_model
    from batchfind.sizes import parse_size

    config = load_config(config_path, {"--device": "cpu"})
    cap = parse_size(limit)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))  # as batchfind's workers do
    torch.manual_seed(0)
    return config, build_model(config.model).train(), build_batches(config, torch.device("cpu"))


def _lightning(mode: str, config_path: str, limit: str) -> int | None:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.tuner import Tuner

    from batchfind.step import compute_loss, make_optimizer

    config, model, batches = _setup(config_path, limit)

    class Samples(torch.utils.data.Dataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            x, y = batches.sample(1)  # the shipped configs' synthetic data: (inputs, targets)
            return x[0], y[0]

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

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    return Tuner(trainer).scale_batch_size(Module(), mode=mode, steps_per_trial=STEPS_PER_TRIAL)


def _accelerate(config_path: str, limit: str) -> int:
    from accelerate.utils import find_executable_batch_size

    from batchfind.step import Step

    config, model, batches = _setup(config_path, limit)
    step = Step(model, config.train, next(model.parameters()).device)

    @find_executable_batch_size(starting_batch_size=ACCELERATE_START)
    def train(batch_size: int) -> int:
        batch = batches.batch(batch_size)
        for _ in range(STEPS_PER_TRIAL):
            step(batch)
        return batch_size

    return train()


def _run_peer(tool: str, config: str, limit: str) -> None:
    if tool == "accelerate":
        answer = _accelerate(config, limit)
    else:
        answer = _lightning(tool.removeprefix("lightning-"), config, limit)
    print(json.dumps({"answer": answer}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--memory-limit", default="2GiB")
    parser.add_argument("--peer", choices=PEERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return _run_peer(args.peer, args.configs[0], args.memory_limit)
    rows = []
    for config in args.configs:
        ours = batchfind(config, args.memory_limit)
        results = [ours] + [peer(tool, config, args.memory_limit) for tool in PEERS]
        limit = ours["report"]["limit"]
        best = truth(config, args.memory_limit, limit["batch_size"], limit["first_oom"])
        recommended = ours["report"]["recommendation"]["batch_size"]
        for result in results:
            answer = result["answer"]
            recheck = ("fits" if fits_fresh(config, args.memory_limit, answer) else "fails") if answer else "-"
            share = f"{answer / best:.0%}" if answer else "-"
            note = result.get("error") or (f"recommended {recommended}" if result is ours else "")
            rows.append((Path(config).name, result["tool"], f"{result['wall_s']:.1f}", answer or "crashed",
                         best, share, recheck, note))
            print(rows[-1], flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
          f"memory limit {args.memory_limit}, {STEPS_PER_TRIAL} steps per trial for the peers\n")
    print("| config | tool | wall s | answer | fresh truth | answer / truth | answer re-checked fresh | note |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
