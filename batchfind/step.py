"""One full training step: forward, loss, backward, optimizer step, with the configured precision.

Only this module looks inside a batch: how it splits into inputs and a target, how the model is
called with them, and where the loss comes from. Everyone else calls `step(batch)`. A step is the
default one (any nn.Module), a LightningModule's own, or the user's `train.step`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import numbers
import types
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import devices
from .config import OPTIMIZERS, TrainConfig
from .errors import InputError, described, exits_are_errors
from .models import call_factory, is_lightning, resolve, run_user_code, trainer_hint


def make_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer not in OPTIMIZERS:
        # Called with the model when it builds parameter groups itself, else with the parameters.
        given = model if train.optimizer_takes == "model" else model.parameters()
        optimizer = call_factory(train.optimizer, train.optimizer_kwargs, "train.optimizer", given,
                                 kwargs_field="train.optimizer_kwargs")
        if not (hasattr(optimizer, "step") and hasattr(optimizer, "zero_grad")):
            raise InputError(f"train.optimizer: {train.optimizer} returned {type(optimizer).__name__}, expected an optimizer")
        if not _holds_any(optimizer, model):
            # Its state would not be the model's, and the memory measured not what training holds.
            raise InputError(f"train.optimizer: {train.optimizer} returned an optimizer that holds none of the "
                             "model's parameters")
        return optimizer
    sparse = [name or type(m).__name__ for name, m in model.named_modules()
              if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse]
    if sparse and (train.optimizer != "sgd" or train.weight_decay):
        # Found here, not as an error of the first step at every size.
        field, what = (("train.weight_decay", "sgd with weight decay") if train.optimizer == "sgd"
                       else ("train.optimizer", train.optimizer))
        raise InputError(f"{field}: {what} takes no sparse gradients, and the model's {', '.join(sparse[:3])} "
                         "gives them (an embedding built with sparse=True): use sgd without weight decay, or "
                         "build it with sparse=False")
    params = model.parameters()
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    if train.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    cls = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=train.lr, weight_decay=train.weight_decay)


def _holds_any(optimizer: Any, model: nn.Module) -> bool:
    """Whether the optimizer's parameter groups hold one of the model's trainable parameters (an
    optimizer without torch's groups is taken at its word)."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(g, Mapping) for g in groups):
        return True
    held = {id(p) for g in groups for p in g.get("params", [])}
    return any(id(p) in held for p in model.parameters() if p.requires_grad)


def first_lr(optimizers: list[torch.optim.Optimizer]) -> float | None:
    """The learning rate of the first optimizer's first parameter group, as built (before `still`):
    what a factory optimizer given none trains at."""
    try:
        return float(optimizers[0].param_groups[0]["lr"])
    except (IndexError, KeyError, TypeError, ValueError, AttributeError):
        return None


def still(optimizers: list[torch.optim.Optimizer]) -> list[torch.optim.Optimizer]:
    """The optimizers with every learning rate 0. A trial repeats one batch for up to a hundred steps:
    at the configured rate the weights fit it and can run off to NaN (a plain MLP under SGD at 0.1
    and momentum 0.9 did at every size from 4 or 8 up), and a size is never recommended on a non-finite
    loss. At 0 the update's arithmetic and memory are the same and the weights stay where they
    started. An optimizer's own groups without a learning rate are left as they are."""
    for optimizer in optimizers:
        for group in getattr(optimizer, "param_groups", []):
            lr = group.get("lr")
            if isinstance(lr, torch.Tensor):
                with torch.no_grad():
                    lr.fill_(0)
            elif isinstance(lr, (int, float)) and not isinstance(lr, bool):
                group["lr"] = 0.0
    return optimizers


def _update_hint(exc: Exception) -> str:
    text = str(exc)
    if "closure" in text:
        return "; an optimizer that calls a closure (LBFGS) needs a step of your own that passes one: train.step"
    if "unscale FP16 gradients" in text:
        return ("; train.precision fp16 scales gradients, and torch refuses those of parameters held in float16: "
                "keep the parameters float32 (autocast computes in fp16), or use bf16")
    return ""


def _loss_function(spec: str) -> Callable[..., Any]:
    """`train.loss` as a function; a loss class (`torch.nn:CrossEntropyLoss`) built with its
    defaults, as a training loop builds it before calling it."""
    found = resolve(spec, "train.loss")
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        return found
    try:
        return found()
    except Exception as exc:  # noqa: BLE001 - the user's class
        raise InputError(f"train.loss: {spec} is a class, built with no arguments to call as loss(output, target), "
                         f"and building it raised {described(exc)}: name a function, or a class with defaults") from None


def compute_loss(output: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        # Labels as text ('cat'), which a DataLoader collates into a tuple of strings.
        text = isinstance(target, (tuple, list)) and target and all(isinstance(t, str) for t in target)
        raise InputError(f"train.loss: {loss} scores the model's output against the batches' targets, which are "
                         f"{'text (' + repr(target[0]) + ', ...)' if text else _kind(target)}, not tensors: give "
                         f"{'class labels as whole numbers' if loss == 'cross_entropy' else 'targets as numbers'}")
    if loss == "mse":
        if output.shape != target.shape:
            if output.shape[:-1] == target.shape and output.shape[-1] == 1:
                output = output.squeeze(-1)  # one value per sample, as (B, 1), against (B,) targets
            else:
                # torch would broadcast them (into B × B for (B, 1) against (1, B)) and only warn.
                raise InputError(f"train.loss: mse of an output of shape {tuple(output.shape)} against targets of shape "
                                 f"{tuple(target.shape)}: they must have the same shape")
        return F.mse_loss(output.float(), target.float())
    if not (target.is_floating_point() or target.dtype in (torch.int64, torch.bool)):
        target = target.long()  # int32 or uint8 labels, which cross-entropy refuses: as a training loop casts them
    if output.dim() == 0:
        raise InputError("train.loss: cross_entropy scores the model's output against the batches' targets, and the "
                         "model returned a scalar: a model that computes its own loss returns it as the `loss` of a "
                         "dict or output object")
    if _one_class(output, target):
        # Softmax over one class is 1 whatever the model says: a loss of 0 with no gradient.
        raise InputError(f"train.loss: cross_entropy over one class (the model's output has shape "
                         f"{tuple(output.shape)}) is always 0 and trains nothing: use train.loss: mse for one value "
                         "per sample, or give the model an output per class")
    if output.dim() > 2 and class_dim(output, target) == -1:
        # Sequence outputs (batch, time, classes): every position is a prediction.
        return F.cross_entropy(output.flatten(0, -2).float(), target.flatten())
    return F.cross_entropy(output.float(), target)


def _one_class(output: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether the classes cross-entropy would score are one, where the shapes say so for certain:
    (batch, 1), or a class dimension of 1 that the target's shape (labels, or probabilities of the
    output's shape) places."""
    if output.dim() == 2:
        return output.shape[1] == 1
    if output.dim() < 2:
        return False
    if target.shape == output.shape:  # probabilities: classes second, as torch takes them
        return output.shape[1] == 1
    dim = class_dim(output, target)
    placed = dim == 1 or target.shape == output.shape[:-1]
    return placed and output.shape[dim] == 1


def class_dim(output: torch.Tensor, target: Any) -> int:
    """Where an output's classes are, as the target's shape says: last, as a sequence model gives
    them (batch, time, classes), or second, torch's own layout (batch, classes, height, width), as
    a segmentation model gives them. Where both fit (as many classes as pixels a side), outputs of
    more than three dimensions are taken as maps."""
    if output.dim() <= 2 or not isinstance(target, torch.Tensor):
        return -1
    last = target.shape == output.shape[:-1]
    second = target.shape == output.shape[:1] + output.shape[2:]
    return 1 if second and (not last or output.dim() > 3) else -1


def label_classes(logits: Any, labels: Any, own_loss: bool = False) -> int | None:
    """How many classes integer `labels` index in `logits`, where the two shapes say so (classes
    last, or second as in a segmentation map); None where they do not: a model computing its own
    loss may resize its logits to its labels (a segmentation model's smaller map) or, with one
    output, score integer labels as numbers (regression)."""
    if not (isinstance(logits, torch.Tensor) and isinstance(labels, torch.Tensor)) or labels.is_floating_point():
        return None
    if logits.dim() < 2:
        return None
    dim = class_dim(logits, labels)
    layout = logits.shape[:1] + logits.shape[2:] if dim == 1 else logits.shape[:-1]
    # Our loss takes a sequence's targets flattened too (compute_loss); a model's own, who knows.
    flattened = not own_loss and dim == -1 and labels.dim() == 1 and labels.numel() == layout.numel()
    if (labels.shape != layout and not flattened) or (own_loss and logits.shape[dim] == 1):
        return None
    return logits.shape[dim]


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def split(batch: Any, train: TrainConfig) -> tuple[Any, Any]:
    """(inputs, target or None). A dict goes to the model whole unless `train.target` names the
    target's key; a tuple or list is its inputs then its target; anything else is all input."""
    if isinstance(batch, Mapping):
        if train.target is None:
            return batch, None
        if train.target not in batch:
            raise InputError(f"train.target: batches have no key {train.target!r} (they have {', '.join(map(str, batch))})")
        return {k: v for k, v in batch.items() if k != train.target}, batch[train.target]
    if train.target is not None:
        raise InputError(f"train.target: names a key of dict batches, but batches are {type(batch).__name__}s")
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return batch[0], None
        return (batch[0] if len(batch) == 2 else tuple(batch[:-1])), batch[-1]
    return batch, None


def given_labels(batch: Any) -> torch.Tensor | None:
    """The class labels a dict batch hands its model (`labels`, Hugging Face's name), if any."""
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    return labels if isinstance(labels, torch.Tensor) and not labels.is_floating_point() else None


def call_model(model: nn.Module, inputs: Any, call: str, extra: Mapping[str, Any] | None = None) -> Any:
    """The model on the inputs as `call` says, with the `extra` keyword arguments beside them."""
    extra = extra or {}
    with exits_are_errors():
        if call == "single" or isinstance(inputs, torch.Tensor):
            return model(inputs, **extra)
        if isinstance(inputs, Mapping):
            return model(*inputs.values(), **extra) if call == "positional" else model(**inputs, **extra)
        if isinstance(inputs, (tuple, list)):
            return model(*inputs, **extra)
        return model(inputs, **extra)


def field(output: Any, name: str | int) -> Any:
    """A named field of a model's output: an attribute, a key, or a position in a tuple; None if absent."""
    if isinstance(output, torch.Tensor):
        return None
    if isinstance(name, int):
        try:
            return output[name] if isinstance(output, (tuple, list, Mapping)) else None
        except (IndexError, KeyError):
            return None
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)


def _kind(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"{type(output).__name__} with fields {', '.join(map(str, output))}"
    # A NamedTuple's names, or a dataclass's: what `train.output` can name.
    names = getattr(output, "_fields", None) or (
        [f.name for f in dataclasses.fields(output)] if dataclasses.is_dataclass(output) else None)
    if names:
        return f"{type(output).__name__} with fields {', '.join(names)}"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)}"
    return type(output).__name__


def scalar(value: Any, source: str, backward: bool = True) -> torch.Tensor:
    """The loss as a one-element tensor, one that training can backpropagate through unless the
    source did its own `backward`; anything else is the source's mistake."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        what = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        # A step of one's own may return the loss as a number too (`loss.item()`), once it has stepped.
        taken = "a tensor with one element" + ("" if backward else ", or a number")
        raise InputError(f"{source} returned {what}, expected the loss ({taken})")
    if backward:
        trainable(value, f"the loss from {source}")
    return value.reshape(())


def trainable(loss: torch.Tensor, subject: str) -> torch.Tensor:
    """The loss, where backward can reach the model from it; checked only where gradients are on
    (a trial's step, not set-up's check under no_grad). Left alone, backward fails at every size
    alike, which is no batch's doing."""
    if torch.is_grad_enabled() and not loss.requires_grad:
        raise InputError(f"{subject} does not depend on the model's trainable parameters (no grad_fn: made under "
                         "torch.no_grad(), or from detached tensors): nothing to train")
    return loss


class Step:
    """One training step on a batch, returning the (detached) loss.

    The loss is the model output's own `loss` when it has one (Hugging Face models given labels);
    otherwise the configured loss scores the output, or its `train.output` field, against the
    target. `stage` names the part running (forward, backward, optimizer step), so a failure can
    say where memory ran out.
    """

    def __init__(self, model: nn.Module, train: TrainConfig, device: torch.device):
        self.model, self.train, self.device = model, train, device
        built = self._optimizers()
        self.given_lr = first_lr(built)
        self.optimizers = still(built)
        self.loss_fn = None if train.builtin_loss else _loss_function(train.loss)
        # fp16 needs loss scaling to train; its cost belongs in the measurement.
        self.scaler = torch.amp.GradScaler(device.type, enabled=train.precision == "fp16")
        self.stage = "forward"
        self.own_loss = False  # whether the model's output carried the loss that trains (seen in `score`)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [make_optimizer(self.model, self.train)]

    def __call__(self, batch: Any) -> torch.Tensor:
        self.stage = "forward"
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.train.precision):
            loss = self.loss(batch)
        self.stage = "backward"
        self.scaler.scale(loss).backward()
        self.stage = "optimizer step"
        try:
            for optimizer in self.optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
        except Exception as exc:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            if devices.is_oom(exc) or distributed:
                raise  # ranks: a peer lost mid-update is the group's to name, not the config's
            # The update reads parameters and gradients, not the batch: it fails at every size alike.
            raise InputError(f"{self.optimizer_source}: its step raised {described(exc)}{_update_hint(exc)}") from exc
        return loss.detach()

    @property
    def optimizer_source(self) -> str:
        """Where the optimizers come from, as a failure of theirs names it."""
        return f"train.optimizer: {self.train.optimizer}"

    def gradients(self, batch: Any) -> None:
        """The gradient of the loss on `batch`, added to the parameters' `.grad`; no update."""
        with autocast(self.device, self.train.precision):
            loss = self.loss(batch)
        loss.backward()

    def check(self, batch: Any, labels_below: Callable[[int], None]) -> None:
        """The forward and the loss without training; problems raise. Class labels are checked
        against the output's classes (`labels_below`) before the loss can trip over them."""
        with torch.no_grad(), autocast(self.device, self.train.precision):
            try:
                output, target = self.forward(batch)
            except Exception:
                self._labels_in_range(batch, labels_below)  # a label past the classes is what failed
                raise
            scored = self._scored(output)
            own = field(output, "loss") is not None
            # A model that takes its labels and computes its own loss (Hugging Face's) indexes its
            # logits by label too: one out of range in an item the two samples missed would fail
            # the first trial.
            classes = (label_classes(field(output, "logits"), given_labels(batch), own_loss=True) if own
                       else label_classes(scored, target) if self.train.loss == "cross_entropy" else None)
            if classes is not None:
                labels_below(classes)
            try:
                self.score(output, target)
            except InputError:
                raise
            except Exception as exc:
                if self.loss_fn is None or devices.is_oom(exc):
                    raise
                # The data reached the model; what failed is a loss of the user's own.
                raise InputError(f"train.loss: {self.train.loss} raised {described(exc)}") from None

    def _labels_in_range(self, batch: Any, labels_below: Callable[[int], None]) -> None:
        """Where a model given its labels failed: its logits without them, to check the labels
        against its classes (a label out of range fails inside the model's own loss, in its words)."""
        if given_labels(batch) is None:
            return
        try:
            output, _ = self.forward({k: v for k, v in batch.items() if k != "labels"})
        except Exception:  # noqa: BLE001 - it fails without labels too: the first failure is the one to report
            return
        classes = label_classes(field(output, "logits"), given_labels(batch), own_loss=True)
        if classes is not None:
            labels_below(classes)

    def loss(self, batch: Any) -> torch.Tensor:
        return self.score(*self.forward(batch))

    def forward(self, batch: Any) -> tuple[Any, Any]:
        inputs, target = split(batch, self.train)
        return call_model(self.model, inputs, self.train.call, self.train.forward_kwargs), target

    def _scored(self, output: Any) -> Any:
        if self.train.output is None:
            return output
        name = self.train.output
        value = field(output, name)
        if value is None:
            # A position written in quotes is text: `output: "1"` names a field, `output: 1` a position.
            hint = (f" (a position is a number: output: {name})"
                    if isinstance(output, (tuple, list)) and isinstance(name, str) and name.isdigit() else "")
            raise InputError(f"train.output: the model returned {_kind(output)}: no field {name!r}{hint}")
        return value

    def score(self, output: Any, target: Any) -> torch.Tensor:
        own = field(output, "loss")
        if isinstance(own, torch.Tensor):
            self.own_loss = True
            return scalar(own, "the model's output `loss`")
        scored = self._scored(output)
        if self.loss_fn is not None:
            with exits_are_errors():
                loss = self.loss_fn(scored, target) if target is not None else self.loss_fn(scored)
            return scalar(loss, f"train.loss {self.train.loss}")
        if not isinstance(scored, torch.Tensor):
            # Scoring a field needs a target too: where batches hold none, say how they get one.
            # A plain tuple's fields have no names: a position picks one.
            which = ("position to score (a number: 0 for the first)"
                     if isinstance(scored, (tuple, list)) and not hasattr(scored, "_fields")
                     else "field to score (such as logits)")
            scoring = f"set train.output to the {which}" + (
                "" if target is not None else
                " and give the batches a target (train.target names its key in dict batches; or (input, target) items)")
            raise InputError(f"the model returned {_kind(scored)}: not a tensor and no loss; {scoring}, or give the "
                             "model its labels so it computes its own loss")
        if target is None:
            if scored.dim() == 0:
                return trainable(scored, "the model's output")  # a model given its labels that returns the loss itself
            raise InputError(
                f"the model's output (a tensor of shape {tuple(scored.shape)}) is not a loss and batches have "
                "no target: name the target's key in train.target (dict batches), give the model its labels, "
                "or use (input, target) items"
            )
        return trainable(compute_loss(scored, target, self.train.loss), "the model's output")


class LightningStep(Step):
    """A LightningModule's own step: `training_step` gives the loss, `configure_optimizers` the
    optimizers, stepped the way Lightning's automatic optimization does."""

    @property
    def optimizer_source(self) -> str:
        return "model.name: the LightningModule's configure_optimizers()"

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        if not getattr(self.model, "automatic_optimization", True):
            raise InputError(
                "model.name: this LightningModule optimizes manually, which needs a Trainer; probe it with train.step"
            )
        optimizers = _lightning_optimizers(run_user_code("model.name: the LightningModule's configure_optimizers()",
                                                         self.model.configure_optimizers))
        if len(optimizers) > 1:
            # Lightning itself refuses them under automatic optimization: the step would be a guess.
            raise InputError(f"model.name: configure_optimizers returned {len(optimizers)} optimizers; Lightning steps "
                             "more than one only under manual optimization, which needs a Trainer: probe it with "
                             "train.step")
        return optimizers

    @functools.cached_property
    def _index(self) -> tuple[int, ...]:
        """`batch_idx`, where training_step takes one: Lightning passes it only then."""
        try:
            params = inspect.signature(self.model.training_step).parameters.values()
        except (TypeError, ValueError):
            return (0,)
        takes = len(params) >= 2 or any(p.name == "batch_idx" or p.kind is p.VAR_POSITIONAL for p in params)
        return (0,) if takes else ()

    def loss(self, batch: Any) -> torch.Tensor:
        try:
            with exits_are_errors():
                out = self.model.training_step(batch, *self._index)
        except RuntimeError as exc:
            if not trainer_hint(exc):
                raise  # a failure at this size, the trial's to report
            raise InputError(f"model.name: the LightningModule's training_step raised {described(exc)}"
                             f"{trainer_hint(exc)}") from exc
        return scalar(out.get("loss") if isinstance(out, Mapping) else out, "the LightningModule's training_step")

    def check(self, batch: Any, labels_below: Callable[[int], None]) -> None:
        with torch.no_grad(), autocast(self.device, self.train.precision):
            self.loss(batch)


def _lightning_optimizers(configured: Any) -> list[torch.optim.Optimizer]:
    """The optimizers in whatever configure_optimizers returned: one, a list, (optimizers,
    schedulers), a dict with an `optimizer`, or a list of those."""
    if configured is None:
        raise InputError("model.name: the LightningModule's configure_optimizers returned no optimizer")
    if isinstance(configured, Mapping):
        return _lightning_optimizers(configured.get("optimizer"))
    if hasattr(configured, "step") and hasattr(configured, "zero_grad"):
        return [configured]
    if isinstance(configured, (list, tuple)) and configured:
        if len(configured) == 2 and isinstance(configured[0], (list, tuple)):
            configured = configured[0]  # (optimizers, schedulers)
        return [o for item in configured for o in _lightning_optimizers(item)]
    raise InputError(f"model.name: configure_optimizers returned {type(configured).__name__}, expected optimizers")


class CustomStep:
    """The user's `train.step(model, batch, optimizer) -> loss`: forward, backward and update are theirs."""

    def __init__(self, model: nn.Module, train: TrainConfig, device: torch.device):
        self.model, self.train, self.device = model, train, device
        self.fn = resolve(train.step, "train.step")
        built = [make_optimizer(model, train)]
        self.given_lr = first_lr(built)
        self.optimizer = still(built)[0]
        self.optimizers = [self.optimizer]
        self.stage = "train.step"

    def __call__(self, batch: Any) -> torch.Tensor:
        self.stage = "train.step"
        return self._run(batch, self.optimizer).detach()

    def gradients(self, batch: Any) -> None:
        # The user's step runs as written, but its optimizer neither updates nor clears gradients.
        with _frozen(self.optimizer) as optimizer:
            self._run(batch, optimizer)

    def _run(self, batch: Any, optimizer: Any) -> torch.Tensor:
        with exits_are_errors():
            loss = self.fn(self.model, batch, optimizer)
        # A number: `return loss.item()`, as training loops often end (numpy's floats count too).
        if isinstance(loss, numbers.Real) and not isinstance(loss, bool):
            loss = torch.tensor(float(loss))
        return scalar(loss, f"train.step {self.train.step}", backward=False)

    def check(self, batch: Any, labels_below: Callable[[int], None]) -> None:
        """The whole step without its update (it may not run under no_grad: it calls backward)."""
        self.gradients(batch)
        self.model.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _frozen(optimizer: torch.optim.Optimizer) -> Iterator[torch.optim.Optimizer]:
    """The optimizer itself, its `step` and `zero_grad` doing nothing while inside: a closure given
    to `step` (LBFGS's) still runs once, for the gradient it computes. Still the real object, so
    torch takes it (a scheduler built on it checks that it is an Optimizer, and wraps its `step`)."""
    def step(self: Any, closure: Callable[[], Any] | None = None) -> Any:
        return closure() if closure is not None else None

    def zero_grad(self: Any, set_to_none: bool = True) -> None:
        return None

    optimizer.step = types.MethodType(step, optimizer)
    optimizer.zero_grad = types.MethodType(zero_grad, optimizer)
    try:
        yield optimizer
    finally:
        # The class's own again, with whatever wrapped these (a scheduler's counter).
        for name in ("step", "zero_grad"):
            optimizer.__dict__.pop(name, None)


def make_step(model: nn.Module, train: TrainConfig, device: torch.device) -> Step | CustomStep:
    if train.step is not None:
        return CustomStep(model, train, device)
    if is_lightning(model):
        return LightningStep(model, train, device)
    if is_lightning(getattr(model, "module", None)):
        raise InputError("model.name: a LightningModule is not probed under DDP: its training_step would bypass the wrapper")
    return Step(model, train, device)
