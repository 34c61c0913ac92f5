"""Builtin models (mlp, cnn, transformer) and loading `package.module:factory` models."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import devices
from .config import CNNModel, FactoryModel, MLPModel, TransformerModel
from .errors import InputError, described, plural


def build_model(cfg: MLPModel | CNNModel | TransformerModel | FactoryModel) -> nn.Module:
    if isinstance(cfg, MLPModel):
        return mlp(cfg)
    if isinstance(cfg, CNNModel):
        return ResNetLike(cfg)
    if isinstance(cfg, TransformerModel):
        return GPT(cfg)
    model = call_factory(cfg.name, cfg.kwargs, "model.name")
    if not isinstance(model, nn.Module):
        raise InputError(f"model.name: {cfg.name} returned {type(model).__name__}, expected a torch.nn.Module")
    if is_lightning(model):
        # Where Lightning builds layers, before it asks for optimizers: setup, then configure_model.
        run_user_code(f"model.name: {cfg.name}'s setup('fit')", model.setup, "fit")
        run_user_code(f"model.name: {cfg.name}'s configure_model()", model.configure_model)
    meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        # Built under torch.device("meta") (accelerate's init_empty_weights): shapes, no data to train.
        shown = ", ".join(meta[:3]) + (", ..." if len(meta) > 3 else "")
        raise InputError(f"model.name: {cfg.name} returned a model with {plural(len(meta), 'tensor')} on the meta "
                         f"device ({shown}): shapes without data; materialize them first (to_empty(), then initialize)")
    return model


# Told what user code is about to run, and None when it has returned: a worker passes it on to its
# parent, so a crash that leaves no exception behind (a segfault, os._exit) can still be named.
announce: Callable[[str | None], None] = lambda running: None


def call_factory(spec: str, kwargs: dict[str, Any], field: str, *args: Any, kwargs_field: str | None = None) -> Any:
    """Import `package.module:attr` and call it with `args` and `kwargs`, whose `_target_` mappings
    are built first; failures name the config field (`kwargs_field`: default the section's kwargs)."""
    target = resolve(spec, field)
    kwargs_field = kwargs_field or field.rsplit(".", 1)[0] + ".kwargs"
    built = {key: instantiate(value, f"{kwargs_field}.{key}") for key, value in kwargs.items()}
    return run_user_code(f"{field}: {spec}(**kwargs)", target, *args, **built)


# Lightning's words for a hook that reads `self.trainer`, which a probe does not run.
_NEEDS_TRAINER = "attached to a `Trainer`"


def run_user_code(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, the user's code: any failure but running out of memory is bad input
    naming `what`."""
    with running(what):
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - whatever the user's code raises
            if isinstance(exc, MemoryError) or devices.is_oom(exc):
                raise  # what it builds does not fit: nothing fits, not bad input
            raise InputError(f"{what} raised {raised(exc)}{trainer_hint(exc)}") from exc


_running: str | None = None


@contextlib.contextmanager
def running(what: str) -> Iterator[None]:
    """`announce` what of the user's code runs inside, so that a worker that hangs or dies there
    names it; on leaving, what ran around it, if anything."""
    global _running
    around, _running = _running, what
    announce(what)
    try:
        yield
    finally:
        _running = around
        announce(around)


def trainer_hint(exc: BaseException) -> str:
    return "; a probe runs no Trainer: describe the step with train.step" if _NEEDS_TRAINER in described(exc) else ""


def raised(exc: BaseException) -> str:
    """What the user's code raised, in a line: a syntax error with its place, sys.exit with its code."""
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    return described(exc)


def _import(module_name: str, field: str) -> Any:
    """The module; a module that is there but fails as it is imported is bad input naming `field`."""
    announce(f"{field}: importing {module_name!r}")
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise
    except BaseException as exc:  # noqa: BLE001 - whatever the user's code raises
        raise InputError(f"{field}: importing {module_name!r} raised {raised(exc)}") from exc
    finally:
        announce(None)


def resolve(spec: str, field: str) -> Callable[..., Any]:
    """The callable named `package.module:attr`, or `package.module.attr` as Hydra's `_target_` has it."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    else:  # the longest importable prefix is the module
        parts = spec.split(".")
        module_name, attr = spec, ""
        for cut in range(len(parts) - 1, 0, -1):
            if importlib.util.find_spec(parts[0]) is None:
                break
            try:
                _import(".".join(parts[:cut]), field)
            except ImportError:
                continue
            module_name, attr = ".".join(parts[:cut]), ".".join(parts[cut:])
            break
    try:
        target: Any = _import(module_name, field)
    except ImportError as exc:
        if devices.starved(exc):
            raise  # a library the memory limit leaves no room to map: the limit's doing, not the install's
        # A module of the user's own that is missing, not one it imports: say where it was looked for.
        where = ("; install it, or run from its folder or add that to PYTHONPATH (the config's folder is not "
                 "searched)"
                 if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.split(".")[0] else "")
        raise InputError(f"{field}: cannot import {module_name!r} ({exc}){where}") from None
    for part in filter(None, attr.split(".")):
        if not hasattr(target, part):
            raise InputError(f"{field}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise InputError(f"{field}: {spec} is not callable")
    return target


def instantiate(value: Any, field: str) -> Any:
    """A config value with every `{_target_: callable, **kwargs}` mapping in it built, innermost
    first (Hydra's convention), so objects such as a transformers `BertConfig` come from YAML."""
    if isinstance(value, list):
        return [instantiate(v, f"{field}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    if "_target_" not in value:
        return {k: instantiate(v, f"{field}.{k}") for k, v in value.items()}
    spec, args, partial = value["_target_"], value.get("_args_", []), value.get("_partial_", False)
    if not isinstance(spec, str):
        raise InputError(f"{field}._target_: expected package.module:callable (got {spec!r})")
    if not isinstance(args, list):
        raise InputError(f"{field}._args_: expected a list of positional arguments (got {type(args).__name__})")
    if not isinstance(partial, bool):
        raise InputError(f"{field}._partial_: expected true or false (got {partial!r})")
    kwargs = {k: v for k, v in value.items() if k not in _HYDRA_KEYS}
    # Hydra's other keys (_recursive_, _convert_) would change what is built: refused, not ignored.
    other = next((k for k in kwargs if isinstance(k, str) and len(k) > 2 and k[0] == k[-1] == "_"), None)
    if other is not None:
        raise InputError(f"{field}.{other}: not one of the keys batchfind takes beside the arguments "
                         f"({', '.join(_HYDRA_KEYS)})")
    args = [instantiate(arg, f"{field}._args_[{i}]") for i, arg in enumerate(args)]
    if partial:  # the callable with these arguments, for the model to call (an optimizer's factory, say)
        built = {key: instantiate(v, f"{field}.{key}") for key, v in kwargs.items()}
        return functools.partial(resolve(spec, f"{field}._target_"), *args, **built)
    return call_factory(spec, kwargs, f"{field}._target_", *args, kwargs_field=field)


# Hydra's keys that batchfind reads in a mapping to build: what to call, positional arguments, and
# whether to hand over the callable with its arguments instead of calling it.
_HYDRA_KEYS = ("_target_", "_args_", "_partial_")


def is_lightning(model: nn.Module) -> bool:
    """A LightningModule, recognised without importing Lightning (an optional dependency)."""
    return any(
        cls.__name__ == "LightningModule" and cls.__module__.split(".")[0] in ("lightning", "pytorch_lightning")
        for cls in type(model).__mro__
    )


def mlp(cfg: MLPModel) -> nn.Module:
    layers: list[nn.Module] = []
    width = cfg.in_features
    for _ in range(cfg.layers):
        layers += [nn.Linear(width, cfg.hidden), nn.ReLU()]
        width = cfg.hidden
    layers.append(nn.Linear(width, cfg.classes))
    return nn.Sequential(*layers)


class _Block(nn.Module):
    """The ResNet basic block: two 3x3 convolutions with BatchNorm and a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _Bottleneck(nn.Module):
    """The ResNet-50 block: 1x1 down, 3x3, 1x1 up to 4x the width, with a shortcut."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNetLike(nn.Module):
    def __init__(self, cfg: CNNModel):
        super().__init__()
        if cfg.stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(cfg.in_channels, cfg.width, 7, 2, 3, bias=False), nn.BatchNorm2d(cfg.width), nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(cfg.in_channels, cfg.width, 3, 1, 1, bias=False), nn.BatchNorm2d(cfg.width), nn.ReLU()
            )
        blocks, width = [], cfg.width
        for stage, count in enumerate(cfg.blocks_per_stage):
            out = cfg.width * 2**stage
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                if cfg.block == "bottleneck":
                    blocks.append(_Bottleneck(width, out, stride))
                    width = out * 4
                else:
                    blocks.append(_Block(width, out, stride))
                    width = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, cfg.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _DecoderBlock(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float, causal: bool):
        super().__init__()
        self.heads, self.dropout, self.causal = heads, dropout, causal
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0,
        )
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A GPT-style decoder: token and position embeddings, pre-norm blocks, tied output head."""

    def __init__(self, cfg: TransformerModel):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.Sequential(*[_DecoderBlock(cfg.d_model, cfg.heads, cfg.dropout, cfg.causal) for _ in range(cfg.layers)])
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight
        # GPT-2's initialisation: with the head tied to the embedding, PyTorch's N(0, 1) embedding
        # gives logits of std ~sqrt(d_model) and an initial loss ~20x ln(vocab). At std 0.02 a fresh
        # model predicts nearly uniformly; residual projections shrink with depth so the stream's
        # scale does not grow with the number of layers.
        residual_std = 0.02 / (2 * cfg.layers) ** 0.5
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if name.endswith(("proj", "mlp.2")) else 0.02
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.ln(self.blocks(self.tok(idx) + self.pos(pos))))
