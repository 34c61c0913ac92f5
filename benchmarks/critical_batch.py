"""Experiment: the empirical critical batch against batchfind's gradient-noise-scale estimate.

A small CPU task — a 2-layer MLP learning a fixed random teacher network's labels (20 features,
10 classes, 10% of labels flipped). For each batch size: SGD with momentum at the best of a small
learning-rate grid, steps until the held-out loss reaches a target. McCandlish et al. (2018)
predict steps S(B) = S_min (1 + B_crit / B); a least-squares fit of S against 1/B gives B_crit.
Beside it, B_simple from batchfind.noise.estimate, measured the way `--noise-scale` does (12
batches at two sizes) at the initial weights, halfway to the target, and at the target.

    python benchmarks/critical_batch.py
"""

from __future__ import annotations

import math
import platform
import time

import torch
from torch import nn
from torch.nn import functional as F

from batchfind.noise import estimate

FEATURES, CLASSES, HIDDEN = 20, 10, 64
BATCHES = [4, 8, 16, 32, 64, 128, 256, 512, 1024]
LRS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
TARGET = 0.85  # held-out cross-entropy to reach (the flipped labels put the floor near 0.6)
MAX_STEPS = 6000
EVAL_EVERY = 5


def make_task(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(1234)  # one teacher for every split
    teacher = nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh(), nn.Linear(32, CLASSES))
    x = torch.randn(n, FEATURES, generator=g)
    with torch.no_grad():
        y = (teacher(x) * 3).argmax(1)
    flip = torch.rand(n, generator=g) < 0.1
    y[flip] = torch.randint(0, CLASSES, (int(flip.sum()),), generator=g)
    return x, y


def student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))


def steps_to_target(train, held, batch: int, lr: float) -> int | None:
    x, y = train
    model = student()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(batch)
    for step in range(1, MAX_STEPS + 1):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not math.isfinite(loss.item()):
            return None
        if step % EVAL_EVERY == 0:
            with torch.no_grad():
                if F.cross_entropy(model(held[0]), held[1]).item() <= TARGET:
                    return step
    return None


def noise_scale(model: nn.Module, train, small: int, big: int, seed: int):
    x, y = train
    g = torch.Generator().manual_seed(seed)

    def sq_norms(size: int) -> list[float]:
        out = []
        for _ in range(12):
            idx = torch.randint(0, len(x), (size,), generator=g)
            model.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            out.append(float(sum(p.grad.pow(2).sum() for p in model.parameters())))
        return out

    return estimate(small, sq_norms(small), big, sq_norms(big))


def trained_model(train, held, batch: int, lr: float, fraction: float) -> nn.Module:
    """The student trained until its held-out loss has gone `fraction` of the way to the target."""
    x, y = train
    model = student()
    with torch.no_grad():
        start = F.cross_entropy(model(held[0]), held[1]).item()
    goal = start + (TARGET - start) * fraction
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(7)
    for _ in range(MAX_STEPS):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            if F.cross_entropy(model(held[0]), held[1]).item() <= goal:
                break
    return model


def main() -> None:
    torch.set_num_threads(2)
    started = time.monotonic()
    train, held = make_task(50_000, seed=0), make_task(5_000, seed=1)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, target held-out loss {TARGET}")
    print("\n| batch | best lr | steps to target | samples to target |")
    print("| ---: | ---: | ---: | ---: |")
    results = {}
    for batch in BATCHES:
        runs = {lr: steps_to_target(train, held, batch, lr) for lr in LRS}
        done = {lr: s for lr, s in runs.items() if s is not None}
        if not done:
            print(f"| {batch} | - | not reached in {MAX_STEPS} | - |")
            continue
        lr = min(done, key=done.get)
        results[batch] = (lr, done[lr])
        print(f"| {batch} | {lr:g} | {done[lr]} | {done[lr] * batch:,} |", flush=True)
    # S = S_min + S_min·B_crit·(1/B): least squares of S on 1/B.
    xs = [1 / b for b in results]
    ys = [s for _, s in results.values()]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
    s_min = my - slope * mx
    b_crit = slope / s_min if s_min > 0 else float("nan")
    print(f"\nfit S(B) = S_min (1 + B_crit/B): S_min = {s_min:.0f} steps, B_crit = {b_crit:.0f}")
    mid_batch = min(results, key=lambda b: abs(b - 64))
    lr = results[mid_batch][0]
    for label, model in (("initial weights", student()),
                         ("halfway to the target", trained_model(train, held, mid_batch, lr, 0.5)),
                         ("target", trained_model(train, held, mid_batch, lr, 1.0))):
        scale = noise_scale(model, train, 16, 128, seed=3)
        if scale.b_simple is None:
            print(f"B_simple at the {label}: not estimable (|G|² came out non-positive)")
            continue
        print(f"B_simple at the {label}: {scale.b_simple:.0f} (80% interval {scale.ci_low:.0f}-{scale.ci_high:.0f}, "
              f"12 batches of 16 and 128)")
    print(f"\ntook {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    import argparse

    # No options: --help says what it does before a run of about two minutes.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    main()
