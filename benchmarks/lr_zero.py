"""Benchmark: does a training step take as long at learning rate 0 (as trials step) as at the rate
the config trains with?

One process builds the config's model and step on CPU and runs one batch of each size in
alternating blocks (one unmeasured step after each switch, then `--steps` measured ones), the
configured rate and 0 taking turns `--blocks` times, so that drift in the machine's speed falls on
both. Prints the median step time of each rate and its 10th and 90th percentiles.

    python benchmarks/lr_zero.py configs/gpt-small.yaml 16 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from batchfind.config import load_config
from batchfind.data import build_batches
from batchfind.models import build_model
from batchfind.step import make_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("sizes", nargs="+", type=int)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    config = load_config(args.config, {"--device": "cpu"})
    torch.manual_seed(0)
    model = build_model(config.model).train()
    step = make_step(model, config.train, torch.device("cpu"))
    batches = build_batches(config, torch.device("cpu"))
    groups = [g for optimizer in step.optimizers for g in optimizer.param_groups]
    for size in args.sizes:
        batch = batches.batch(size)
        times: dict[float, list[float]] = {config.train.lr: [], 0.0: []}
        for _ in range(args.blocks):
            for lr in times:
                for group in groups:
                    group["lr"] = lr
                step(batch)
                for _ in range(args.steps):
                    start = time.perf_counter()
                    step(batch)
                    times[lr].append((time.perf_counter() - start) * 1000)
        for lr, ms in times.items():
            deciles = statistics.quantiles(ms, n=10)
            print(f"batch {size}, lr {lr:g}: median {statistics.median(ms):.1f} ms "
                  f"(p10 {deciles[0]:.1f}, p90 {deciles[-1]:.1f}, {len(ms)} steps)")


if __name__ == "__main__":
    main()
