"""Models, datasets, losses, optimizers and steps that the any-model tests name as `zoo:...`: the
user code each kind of model needs (and nothing for what YAML alone can describe)."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TwoTower(nn.Module):
    """A two-input model, `forward(a, b)`: embeds each input; returns the pair of embeddings, or
    class scores when `classes` is given."""

    def __init__(self, a_features: int = 8, b_features: int = 6, dim: int = 16, classes: int | None = None):
        super().__init__()
        self.a, self.b = nn.Linear(a_features, dim), nn.Linear(b_features, dim)
        self.head = nn.Linear(2 * dim, classes) if classes else None

    def forward(self, a, b):
        za, zb = self.a(a), self.b(b)
        return self.head(torch.cat([za, zb], -1)) if self.head else (za, zb)


def info_nce(output, temperature: float = 0.1):
    """A contrastive loss with no target: each `a` must pick its own `b` among the batch's."""
    za, zb = (F.normalize(z, dim=-1) for z in output)
    logits = za @ zb.T / temperature
    return F.cross_entropy(logits, torch.arange(len(za), device=logits.device))


class Tokens(torch.utils.data.Dataset):
    """What a tokenized text dataset yields: dicts of Python lists, lengths varying per item."""

    def __init__(self, n: int = 40, vocab: int = 100, shortest: int = 4, longest: int = 24, classes: int | None = None):
        g = torch.Generator().manual_seed(0)
        self.lengths = torch.randint(shortest, longest + 1, (n,), generator=g).tolist()
        self.vocab, self.classes = vocab, classes

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i):
        ids = torch.randint(0, self.vocab, (self.lengths[i],), generator=torch.Generator().manual_seed(i)).tolist()
        item = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        # A classifier's item has one label; a language model's labels are its inputs.
        item["labels"] = i % self.classes if self.classes else list(ids)
        return item


class ScoresItself(nn.Module):
    """forward(x, y) -> the loss, a bare scalar (with `accuracy`, a scalar that is no loss); the
    logits when no `y` is given."""

    def __init__(self, features: int = 8, classes: int = 4, accuracy: bool = False):
        super().__init__()
        self.linear = nn.Linear(features, classes)
        self.accuracy = accuracy

    def forward(self, x, y=None):
        logits = self.linear(x)
        if y is None:
            return logits
        return (logits.argmax(1) == y).float().mean() if self.accuracy else nn.functional.cross_entropy(logits, y)


class TinyConfig:
    """A model's configuration object, as Hugging Face models keep theirs."""


class ReadsItsConfig(nn.Module):
    """A forward that reads a setting its configuration object does not set (a T5 built from a
    T5Config without decoder_start_token_id, under transformers 5)."""

    def __init__(self):
        super().__init__()
        self.config, self.linear = TinyConfig(), nn.Linear(8, 4)

    def forward(self, x):
        return self.linear(x) * self.config.scale


def grouped_adamw(model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.01):
    """Parameter groups: no weight decay on biases and norms (so it takes the model, not its parameters)."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def fixed_sgd(params):
    """An optimizer factory that takes no learning rate: it sets its own."""
    return torch.optim.SGD(params, lr=0.05)


def clipped_step(model, batch, optimizer):
    """Two losses, gradient clipping: a step a loss function alone cannot describe."""
    x, y = batch
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, y) + 0.01 * logits.pow(2).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss


def forgets_the_loss(model, batch, optimizer):
    clipped_step(model, batch, optimizer)


def fails_in_its_own_code(model, batch, optimizer):
    clipped_step(model, batch, optimizer)
    raise ValueError("the scheduler is not set")


def closure_step(model, batch, optimizer):
    """LBFGS's way: the optimizer calls a closure that computes the loss and its gradient."""
    x, y = batch

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return optimizer.step(closure)


_schedulers: dict = {}


def scheduled_step(model, batch, optimizer):
    """A step that builds a learning-rate scheduler on the optimizer it is given, once."""
    scheduler = _schedulers.setdefault(id(optimizer), torch.optim.lr_scheduler.StepLR(optimizer, 10))
    loss = clipped_step(model, batch, optimizer)
    scheduler.step()
    return loss


def reports_the_loss(model, batch, optimizer):
    """A step as training loops often end one: the loss as a Python number."""
    return clipped_step(model, batch, optimizer).item()


def reports_the_loss_in_numpy(model, batch, optimizer):
    return np.float32(reports_the_loss(model, batch, optimizer))


def lightning_classifier(features: int = 8, classes: int = 4, lr: float = 0.01, optimizers: int = 1,
                         built_in: str = "__init__", batch_idx: bool = True, reads_trainer: str | None = None):
    """A LightningModule (defined here so this file imports without Lightning); with `optimizers`
    above 1, its configure_optimizers returns that many. Its layers are made in `built_in`
    (`__init__`, `setup` or `configure_model`, as Lightning allows); without `batch_idx` its
    training_step takes the batch alone; `reads_trainer` names a hook that reads `self.trainer`."""
    import lightning as L

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = None
            if built_in == "__init__":
                self._build()
            self.training_steps = 0

        def _build(self):
            if self.net is None:
                self.net = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, classes))

        def setup(self, stage):
            if built_in == "setup":
                self._build()

        def configure_model(self):
            if built_in == "configure_model":
                self._build()

        def _loss(self, batch):
            if reads_trainer == "training_step":
                self.trainer.global_step
            self.training_steps += 1
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return {"loss": loss}

        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.parameters(), lr=lr)
            if optimizers > 1:
                return [optimizer] + [torch.optim.SGD(self.parameters(), lr=lr) for _ in range(optimizers - 1)]
            steps = self.trainer.estimated_stepping_batches if reads_trainer == "configure_optimizers" else 10
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, steps)}

    if batch_idx:
        Classifier.training_step = lambda self, batch, batch_idx: self._loss(batch)
    else:
        Classifier.training_step = lambda self, batch: self._loss(batch)
    return Classifier()
