"""One full training step: forward, loss, backward, optimizer step, with the configured precision."""

from __future__ import annotations

import contextlib
import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig


def make_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    if train.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    cls = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=train.lr, weight_decay=train.weight_decay)


def compute_loss(output: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "mse":
        return F.mse_loss(output.float(), target.float())
    if output.dim() > 2:
        # Sequence outputs (batch, time, classes): every position is a prediction.
        return F.cross_entropy(output.flatten(0, -2).float(), target.flatten())
    return F.cross_entropy(output.float(), target)


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Step:
    """One training step on a batch, returning the (detached) loss.

    `stage` names the part running (forward, backward, optimizer step), so a failure can say where
    memory ran out.
    """

    def __init__(self, model: nn.Module, train: TrainConfig, device: torch.device):
        self.model, self.train, self.device = model, train, device
        self.optimizer = make_optimizer(model, train)
        # fp16 needs loss scaling to train; its cost belongs in the measurement.
        self.scaler = torch.amp.GradScaler(device.type, enabled=train.precision == "fp16")
        self.stage = "forward"

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.stage = "forward"
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.train.precision):
            loss = compute_loss(self.model(x), y, self.train.loss)
        self.stage = "backward"
        self.scaler.scale(loss).backward()
        self.stage = "optimizer step"
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()
