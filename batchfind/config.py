"""The config schema, loading from YAML or TOML, and overrides from the command line."""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PlainValidator,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import InputError, clipped, plain
from .files import MAX_CONFIG_BYTES, check_shape, path_problem, read_text
from .sizes import parse_size

# \Z, not $: `$` also matches before a final newline, and "cpu\n" is not a device.
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z")
# torch keeps a device's index in 8 bits (cuda:128 wraps to cuda:-128), and reads no leading
# zeros; `\d` would take other scripts' digits.
DEVICE = re.compile(r"^(auto|cpu|cuda(:(0|[1-9][0-9]?|1[01][0-9]|12[0-7]))?)\Z")
BUILTIN_MODELS = ("mlp", "cnn", "transformer")
DATA_KINDS = ("synthetic", "tensors", "imagefolder")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
LOSSES = ("cross_entropy", "mse")


# A number with an exponent but without YAML 1.1's dot and signed exponent (1e-8, 3e-4, 1.0e5), which
# PyYAML would read as text; YAML 1.2, JSON, TOML and Hydra's configs read it as the number it is.
_EXPONENT_NUMBER = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class _Section(BaseModel):
    # Unknown keys are typos until proven otherwise; NaN and infinity are never meant (and a
    # report holding them would not be JSON).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # Fields that parse text of their own (`2GiB`, `inf`).
    _TEXT: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _plain_types(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic would take YAML's true, false, yes and no for 1 and 0, "256" for 256, and 0 or
        # "y" for a boolean: each is a value of another type, and so a mistake.
        kinds = _types(cls.model_fields[info.field_name].annotation)
        listed = list in kinds and isinstance(value, list) and any(isinstance(v, bool) for v in value)
        if kinds & {int, float} and not kinds & {bool, Any}:
            what = "a name or a number" if str in kinds else "a number"
            if isinstance(value, bool) or listed:
                raise ValueError(f"expected {what}, not a boolean (got {_as_written(value)})")
            if isinstance(value, str) and str not in kinds and info.field_name not in cls._TEXT:
                raise ValueError(f"expected {what}, not text (got {_as_written(value)}{_number_hint(value)})")
            if float not in kinds and isinstance(value, float) and value.is_integer():
                if abs(value) >= 2**63:
                    raise ValueError(f"expected a whole number below 2**63 (got {value:g})")
                return int(value)  # `1e5` samples: a whole number, written with an exponent
        if bool in kinds and not kinds & {int, float, str, Any} and value is not None and not isinstance(value, bool):
            raise ValueError(f"expected true or false (got {_as_written(value)})")
        return value


def _number_hint(value: str) -> str:
    """Text that reads as a number was quoted: without the quotes it is one. Empty where it is no
    number, or would be infinity (1e400), refused too."""
    try:
        return "; without the quotes it is a number" if math.isfinite(float(value)) else ""
    except ValueError:
        return ""


def _types(annotation: Any) -> set:
    """The plain types an annotation is made of (`list[int] | None` gives list, int and NoneType,
    and Union)."""
    args = get_args(annotation)
    if get_origin(annotation) is Literal:  # the values' types: Literal[1, 3] takes numbers
        return {type(arg) for arg in args}
    return {get_origin(annotation)}.union(*map(_types, args)) if args else {annotation}


# What YAML can make that JSON cannot hold, by what wrote it.
_NOT_JSON = {bytes: "binary data (!!binary)", set: "a set (!!set)", tuple: "pairs (!!omap or !!pairs)"}


def _json_kwargs(value: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments are copied into the report, which is JSON: every float in them finite,
    every key text or a whole number, and nothing JSON has no kind for (dates are written as text)."""
    stack: list[tuple[str, Any]] = [(str(k), v) for k, v in value.items()]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{where}: must be a finite number (got {item})")
        if isinstance(item, tuple(_NOT_JSON)):
            kind = next(name for cls, name in _NOT_JSON.items() if isinstance(item, cls))
            raise ValueError(f"{where}: expected text, a number, true or false, null, a list or a mapping (got {kind})")
        if isinstance(item, dict):
            for key in item:
                # Whole numbers are keys JSON writes as text (`id2label: {0: cat}`, as the worker reads
                # them); a boolean (`on:`), a float (`.nan`) or null is a key no one meant.
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    raise ValueError(f"{where}: key {key!r} is neither text nor a whole number (YAML reads true, "
                                     "false, yes, no, on, off, null and decimals unquoted as such): quote it")
            stack.extend((f"{where}.{k}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
    return value


JsonKwargs = Annotated[dict[str, Any], AfterValidator(_json_kwargs)]
# A model dimension or a sample's shape: what torch can index (a larger one overflows inside torch,
# far from the field that set it).
MAX_DIM = 2**31 - 1
Dim = Annotated[int, Field(gt=0, le=MAX_DIM)]
# Values in one sample: 4 TiB of float32, past any machine; a batch of shapes whose bytes pass
# 2**63 overflows inside torch, an error that names no field.
MAX_SAMPLE_VALUES = 2**40


def _sample_size(shape: list[int]) -> list[int]:
    if math.prod(shape) > MAX_SAMPLE_VALUES:  # an int: no float to overflow, however many dimensions
        raise ValueError(f"a sample of this shape holds more than 2**{MAX_SAMPLE_VALUES.bit_length() - 1} values: "
                         "more than any machine holds")
    return shape


Shape = Annotated[list[Dim], AfterValidator(_sample_size)]
# Samples in an epoch: epoch estimates stay exact in a float.
MAX_SAMPLES = 2**53


def _depth(value: Any) -> Any:
    """One positive number of blocks for every stage, or a non-empty list of them (one per stage);
    said once, not once per form it could take."""
    def dim(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_DIM

    if dim(value) or isinstance(value, list) and value and all(dim(v) for v in value):
        return value
    raise ValueError(f"expected a positive number of blocks per stage, or a non-empty list of them "
                     f"(got {_as_written(value)})")


class MLPModel(_Section):
    name: Literal["mlp"]
    in_features: Dim = 64
    hidden: Dim = 256
    layers: Dim = 3
    classes: Dim = 10


class CNNModel(_Section):
    """ResNet-like: a stem, then stages of residual blocks, width doubling per stage.

    `depth: [3, 4, 6, 3]` with `block: bottleneck`, `stem: imagenet` and `width: 64` is ResNet-50.
    """

    name: Literal["cnn"]
    in_channels: Dim = 3
    image_size: Dim = 32
    width: Dim = 32
    # Blocks per stage: one number for every stage, or a list (its length is the number of stages).
    depth: Annotated[int | list[int], PlainValidator(_depth)] = 2
    stages: Dim = 3
    block: Literal["basic", "bottleneck"] = "basic"
    # cifar: one 3x3 convolution; imagenet: 7x7 stride 2 and a max-pool (4x smaller maps).
    stem: Literal["cifar", "imagenet"] = "cifar"
    classes: Dim = 10

    @model_validator(mode="after")
    def _stages_agree(self) -> "CNNModel":
        # A list of depths says how many stages there are: a `stages` beside it that says otherwise
        # would be ignored.
        if isinstance(self.depth, list) and "stages" in self.model_fields_set and self.stages != len(self.depth):
            raise ValueError(f"stages ({self.stages}) must be the length of the depth list ({len(self.depth)}), "
                             "or left out")
        if isinstance(self.depth, list):
            self.stages = len(self.depth)  # what the report says, and a config made from it agrees
        return self

    @property
    def blocks_per_stage(self) -> list[int]:
        return self.depth if isinstance(self.depth, list) else [self.depth] * self.stages


class TransformerModel(_Section):
    """GPT-like decoder trained to predict a token at every position."""

    name: Literal["transformer"]
    vocab_size: Dim = 8192
    d_model: Dim = 256
    layers: Dim = 4
    heads: Dim = 4
    seq_len: Dim = 128
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # false: bidirectional attention, as in BERT-style encoders.
    causal: bool = True

    @model_validator(mode="after")
    def _heads_divide(self) -> "TransformerModel":
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self


class FactoryModel(_Section):
    """Any `package.module:callable` returning an nn.Module, called with `kwargs`."""

    name: str
    kwargs: JsonKwargs = {}

    @model_validator(mode="before")
    @classmethod
    def _hydra_at_the_top(cls, data: Any) -> Any:
        # Hydra's way of writing a model, `model: {_target_: pkg.Net, depth: 2}`, which would
        # otherwise read as a model without a name.
        if isinstance(data, dict) and "_target_" in data:
            target = data["_target_"]
            module, _, attr = str(target).rpartition(".")
            spec = f"{module}:{attr}" if ":" not in str(target) and module else target
            raise ValueError(f"_target_ is read inside model.kwargs; the model itself is model.name: {spec}, with "
                             "its arguments under model.kwargs")
        return data

    @field_validator("name")
    @classmethod
    def _is_factory(cls, value: str) -> str:
        if not FACTORY.match(value):
            raise ValueError(
                f"expected one of {', '.join(BUILTIN_MODELS)} or package.module:factory (got {_as_written(value)})"
            )
        return value


def _model_tag(raw: Any) -> str:
    name = raw.get("name") if isinstance(raw, dict) else getattr(raw, "name", None)
    return name if name in BUILTIN_MODELS else "factory"


ModelConfig = Annotated[
    Union[
        Annotated[MLPModel, Tag("mlp")],
        Annotated[CNNModel, Tag("cnn")],
        Annotated[TransformerModel, Tag("transformer")],
        Annotated[FactoryModel, Tag("factory")],
    ],
    Discriminator(_model_tag),
]


class InputSpec(_Section):
    """One named synthetic input: its shape per sample, dtype and, for integers, the range [low, high)."""

    shape: Shape = []
    dtype: Literal["float32", "float16", "bfloat16", "int64", "int32", "bool"] = "float32"
    low: int = 0
    high: int | None = None

    @model_validator(mode="after")
    def _integer_range(self) -> "InputSpec":
        if "float" in self.dtype and {"low", "high"} & self.model_fields_set:
            raise ValueError(f"low and high are for integer and bool inputs; a {self.dtype} input is drawn from "
                             "a standard normal")
        if self.dtype.startswith("int") and self.high is None:
            raise ValueError(f"an {self.dtype} input needs `high` (values are drawn from [low, high))")
        high = 2 if self.dtype == "bool" and self.high is None else self.high
        if high is not None and high <= self.low:
            default = ", a bool input's default" if self.high is None else ""
            raise ValueError(f"high ({high}{default}) must be > low ({self.low})")
        if self.dtype == "bool" and not (0 <= self.low and high <= 2):
            raise ValueError(f"a bool input's [low, high) must lie within [0, 2) (got [{self.low}, {high}))")
        bits = {"int64": 63, "int32": 31}.get(self.dtype)
        if bits and not (-2**bits <= self.low and self.high < 2**bits):
            raise ValueError(f"an {self.dtype} input's [low, high) must lie within [-2**{bits}, 2**{bits} - 1) "
                             f"(got [{self.low}, {self.high}))")
        return self


# Samples in an epoch of synthetic data where `data.size` leaves it out.
SYNTHETIC_DEFAULT_SIZE = 50_000


class DataConfig(_Section):
    kind: str = "synthetic"
    # Samples in one epoch for synthetic data; the dataset's length otherwise.
    size: Annotated[int, Field(gt=0, le=MAX_SAMPLES)] | None = None
    # tensors: a .pt file (a dict with `inputs` and `targets`, or a tuple) or .npz; imagefolder: a folder.
    path: Path | None = None
    # imagefolder: images are resized to image_size x image_size, with this many channels (1
    # grayscale, 3 RGB, 4 RGBA; default: the builtin cnn's in_channels, else 3).
    image_size: Dim | None = None
    channels: Literal[1, 3, 4] | None = None
    # Synthetic data for a factory model: what one sample looks like.
    input_shape: Shape | None = None
    input_dtype: Literal["float32", "int64"] = "float32"
    vocab_size: Dim | None = None
    target_shape: Shape = []
    num_classes: Dim | None = None
    # Synthetic named inputs: batches are dicts of these (with the model's labels among them).
    inputs: dict[str, InputSpec] | None = None
    # Keyword arguments for a `module:factory` dataset.
    kwargs: JsonKwargs = {}
    # The DataLoader whose steps are timed for file and factory data (the recommended size).
    workers: NonNegativeInt = 0
    pin_memory: bool | None = None  # default: on for CUDA

    @field_validator("path")
    @classmethod
    def _nameable(cls, value: Path | None) -> Path | None:
        problem = value is not None and path_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in DATA_KINDS and not FACTORY.match(value):
            raise ValueError(
                f"expected one of {', '.join(DATA_KINDS)} or package.module:factory (got {_as_written(value)})"
            )
        return value

    @model_validator(mode="after")
    def _needs_path(self) -> "DataConfig":
        if self.kind in ("tensors", "imagefolder") and self.path is None:
            raise ValueError(f"data.kind {self.kind} needs data.path")
        if self.kind == "synthetic" and self.size is None:
            self.size = SYNTHETIC_DEFAULT_SIZE  # filled in, so that the report says what an epoch was
        # A path or arguments beside synthetic data mean a `kind` left out; they would be ignored.
        unread = [k for k in ("path", "kwargs") if self.kind == "synthetic" and getattr(self, k)]
        if unread:
            raise ValueError(f"data.{' and data.'.join(unread)} given, but data.kind is synthetic, which does not "
                             f"read {'them' if len(unread) > 1 else 'it'}: set data.kind to tensors, imagefolder or "
                             "package.module:factory")
        if self.inputs is not None:
            if self.kind != "synthetic":
                raise ValueError(f"data.inputs describes synthetic data; data.kind is {self.kind}")
            if not self.inputs:
                raise ValueError("data.inputs: name at least one input")
            if self.input_shape is not None:
                raise ValueError("data.inputs and data.input_shape describe the same thing; keep one")
        return self


def _builtin_or_factory(value: str, builtins: tuple[str, ...], what: str) -> str:
    if value not in builtins and not FACTORY.match(value):
        names = ", ".join(repr(b) for b in builtins[:-1]) + f" or {builtins[-1]!r}"
        raise ValueError(f"must be {names}, or package.module:{what} (got {_as_written(value)})")
    return value


class TrainConfig(_Section):
    # A builtin name, or package.module:factory called with the parameters (or the model) and
    # `optimizer_kwargs`.
    optimizer: str = "sgd"
    optimizer_kwargs: JsonKwargs = {}
    optimizer_takes: Literal["parameters", "model"] = "parameters"
    lr: PositiveFloat = 0.1
    weight_decay: NonNegativeFloat = 0.0
    momentum: NonNegativeFloat = 0.9
    # A builtin name, or package.module:function(output, target) returning the loss. A model
    # output that carries its own `loss` is used as it is.
    loss: str = "cross_entropy"
    # The field of the model's output the loss scores (`logits`, or an index into a tuple).
    output: str | int | None = None
    # The key holding the target in dict batches (the rest go to the model); none: the whole dict.
    target: str | None = None
    # How inputs reach the model. auto: a tensor as model(x), a tuple as model(*x), a dict as
    # model(**x); positional: a dict's values as model(*values); single: model(inputs) always.
    call: Literal["auto", "positional", "single"] = "auto"
    # Keyword arguments every forward call gets beside the batch (`use_cache: false`).
    forward_kwargs: JsonKwargs = {}
    # package.module:function(model, batch, optimizer) -> loss: the whole step, replacing ours.
    step: str | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # The batch size `lr` was tuned for; with it, every batch size gets its scaled learning rate.
    reference_batch: Annotated[int, Field(gt=0, le=MAX_SAMPLES)] | None = None

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, value: str) -> str:
        return _builtin_or_factory(value, OPTIMIZERS, "factory")

    @field_validator("loss")
    @classmethod
    def _loss(cls, value: str) -> str:
        return _builtin_or_factory(value, LOSSES, "function")

    @field_validator("output", mode="before")
    @classmethod
    def _output(cls, value: Any) -> Any:
        # One line for the field, not one per type it may take (a boolean has a line of its own).
        if value is None or isinstance(value, (str, int)):
            return value
        raise ValueError(f"expected a field name or an index (got {_as_written(value)})")

    @field_validator("step")
    @classmethod
    def _step(cls, value: str | None) -> str | None:
        if value is not None and not FACTORY.match(value):
            raise ValueError(f"expected package.module:function (got {_as_written(value)})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        builtin = self.optimizer in OPTIMIZERS
        if builtin and (self.optimizer_kwargs or self.optimizer_takes != "parameters"):
            raise ValueError("optimizer_kwargs and optimizer_takes are for a package.module:factory optimizer")
        if not builtin and "lr" in self.optimizer_kwargs:
            lr = self.optimizer_kwargs["lr"]
            if "lr" in self.model_fields_set and lr != self.lr:
                raise ValueError(f"lr ({self.lr}) and optimizer_kwargs.lr ({lr}) differ; set it once")
            if isinstance(lr, (int, float)) and lr > 0:
                self.lr = float(lr)  # the learning rate the advice scales
        elif not builtin and "lr" in self.model_fields_set:
            self.optimizer_kwargs = {**self.optimizer_kwargs, "lr": self.lr}
        if self.step is not None and self.precision != "fp32":
            raise ValueError("train.step owns its precision: use torch.autocast inside it, not train.precision")
        if self.step is not None and self.forward_kwargs:
            raise ValueError("train.step calls the model itself: pass forward_kwargs there, "
                             "not in train.forward_kwargs")
        return self

    @property
    def builtin_loss(self) -> bool:
        return self.loss in LOSSES


# The most measured steps a throughput trial may be asked for.
MAX_STEPS = 1000


# Ranks on one machine: one per GPU, or per core of the largest CPUs (each rank is a process).
MAX_RANKS = 1024

# Eleven days and a half: a trial still running then is hung.
MAX_TIMEOUT_S = 1e6


class ProbeConfig(_Section):
    _TEXT = frozenset({"memory_limit", "time_budget_s"})

    device: str = "auto"
    min_batch: PositiveInt = 1
    max_batch: Annotated[int, Field(gt=0, le=MAX_SAMPLES)] | None = None
    # Search between the last power of two that fits and the first that does not, to the exact size.
    refine: bool = True
    # Refined sizes and the cap tried last are multiples of this (8 suits tensor cores).
    multiple_of: PositiveInt = 1
    # Throughput trials: unmeasured steps, then at least `steps` measured ones and at least
    # `min_time_s` of them (short steps are repeated until the time is reached). At most
    # `MAX_STEPS`: every step's time is kept and its statistics recomputed after each step.
    warmup_steps: Annotated[int, Field(ge=0, le=MAX_STEPS)] = 2
    steps: Annotated[int, Field(gt=0, le=MAX_STEPS)] = 5
    min_time_s: NonNegativeFloat = 0.5
    # ... then more steps while the median step time's interval reaches further than half the
    # recommendation's tolerance from it, up to this many seconds of measured steps per trial (steps
    # still settling do not count; past `steps`, a trial takes at most twice this).
    max_time_s: NonNegativeFloat = 1.0
    # Fit checks near the edge: steps that reach the steady-state peak (optimizer state appears at
    # the first optimizer step, so the second step holds it).
    fit_steps: Annotated[int, Field(ge=2, le=MAX_STEPS)] = 2
    # CPU: the worker's RAM cap (default: 80% of available RAM). GPU: none unless given.
    memory_limit: int | None = None
    # Stop starting new trials after this long; null (or inf) for no budget.
    time_budget_s: PositiveFloat | None = 600.0
    # A trial (setup and steps) that takes longer is stopped and reported as a timeout. Bounded: the
    # ranks' rendezvous hands it to a C++ clock, which overflows on huge values.
    trial_timeout_s: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] = 300.0
    # Ranks on this machine, each with its own device and the same per-device batch (under
    # torchrun, torchrun says instead). null: one process, no distributed wrapper.
    nproc_per_node: Annotated[int, Field(gt=0, le=MAX_RANKS)] | None = None
    # How the ranks train: ddp (a replica per rank) or fsdp (sharded parameters and optimizer state).
    strategy: Literal["ddp", "fsdp"] = "ddp"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not DEVICE.match(value):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, N from 0 to 127 without leading zeros "
                             f"(got {_as_written(value)})")
        return value

    @field_validator("time_budget_s", mode="before")
    @classmethod
    def _unbounded(cls, value: Any) -> Any:
        # `--time-budget inf` (or `inf` in a config) is the natural way to ask for none; the report
        # says null.
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity"):
            return None
        return None if isinstance(value, float) and value == math.inf else value

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int | None:
        return None if value is None else parse_size(value)

    @model_validator(mode="after")
    def _min_le_max(self) -> "ProbeConfig":
        if self.max_batch is not None and self.min_batch > self.max_batch:
            raise ValueError(f"min_batch ({self.min_batch}) must be <= max_batch ({self.max_batch})")
        return self


class RecommendConfig(_Section):
    # Sizes whose throughput is within this fraction of the best count as "as fast".
    tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.02
    # Fraction of the memory limit a recommended size must leave free.
    headroom: Annotated[float, Field(ge=0, lt=1)] = 0.10
    # auto: linear for sgd and rmsprop, sqrt for the Adam family.
    lr_rule: Literal["auto", "linear", "sqrt", "none"] = "auto"
    # The batch you want to train with; sizes below it get gradient-accumulation steps.
    target_batch: Annotated[int, Field(gt=0, le=MAX_SAMPLES)] | None = None
    # Estimate the gradient noise scale (extra gradient computations after probing).
    noise_scale: bool = False


class Config(_Section):
    model: ModelConfig
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()
    recommend: RecommendConfig = RecommendConfig()
    # The file it was read from, which errors found later (building the model) name too, and the
    # fields the command line set ("probe.min_batch" -> "--min-batch"), which they name instead.
    _source: Path | None = PrivateAttr(None)
    _options: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _loss_fits_builtin_samples(self) -> "Config":
        # A builtin model's synthetic samples follow the model: under mse, one float per sample.
        model, data = self.model, self.data
        if self.train.loss != "mse" or data.kind != "synthetic" or data.inputs is not None:
            return self
        if isinstance(model, TransformerModel):
            raise ValueError("train.loss: mse: the builtin transformer predicts tokens (its synthetic targets are "
                             "token ids): use cross_entropy")
        if isinstance(model, (MLPModel, CNNModel)) and model.classes != 1:
            raise ValueError(f"train.loss: mse: the builtin {model.name}'s synthetic targets are one float per sample, "
                             f"and it gives model.classes ({model.classes}) outputs: set model.classes: 1")
        return self

    def named(self, error: InputError) -> InputError:
        """`error` naming this config's file first, unless it names a file or an option already, or
        the option that set the field it names."""
        text = str(error)
        field, _, rest = text.partition(": ")
        if field in self._options:
            return InputError(f"{self._options[field]}: {rest}")
        if self._source is None or text.startswith((str(self._source), "-")):
            return error
        return InputError(f"{self._source}: {text}")  # a traceback under --debug follows as it is


# Command-line option -> config field, so errors name what the user typed.
OPTIONS = {
    "--device": ("probe", "device"),
    "--min-batch": ("probe", "min_batch"),
    "--max-batch": ("probe", "max_batch"),
    "--steps": ("probe", "steps"),
    "--warmup": ("probe", "warmup_steps"),
    "--fit-steps": ("probe", "fit_steps"),
    "--memory-limit": ("probe", "memory_limit"),
    "--time-budget": ("probe", "time_budget_s"),
    "--refine/--no-refine": ("probe", "refine"),
    "--multiple-of": ("probe", "multiple_of"),
    "--nproc-per-node": ("probe", "nproc_per_node"),
    "--strategy": ("probe", "strategy"),
    "--tolerance": ("recommend", "tolerance"),
    "--headroom": ("recommend", "headroom"),
    "--lr-rule": ("recommend", "lr_rule"),
    "--target-batch": ("recommend", "target_batch"),
    "--noise-scale": ("recommend", "noise_scale"),
}


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read, override and validate a config; every problem becomes one InputError."""
    path = Path(path)
    raw = _read(path)
    for section in ("data", "train", "probe", "recommend"):
        if section in raw and raw[section] is None:
            raw[section] = {}  # a section whose keys are all commented out
    overrides = _switches(overrides or {})
    for option, value in overrides.items():
        if option not in OPTIONS:
            raise InputError(f"unknown override {option!r}; expected one of {', '.join(OPTIONS)}")
        if value is not None:
            section, key = OPTIONS[option]
            if not isinstance(raw.setdefault(section, {}), dict):
                break  # the section itself is wrong; validation says so
            raw[section][key] = value
    # (section, key) -> the option that set it: errors name what the user typed.
    given = {v: k for k, v in OPTIONS.items() if overrides.get(k) is not None}
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise InputError("\n".join(clipped(line) for line in _lines(path, _causes(exc.errors()), given))) from None
    if config.data.path is not None and not config.data.path.is_absolute():
        # Data paths are relative to the config file, not to wherever batchfind was run.
        # Absolute, its links left for the loader to follow: a loop of them is its one-line error
        # there (Path.resolve raises RuntimeError on one, before Python 3.13).
        config.data.path = Path(os.path.abspath(path.parent / config.data.path))
    config._source = path
    config._options = {".".join(field): option for field, option in given.items()}
    return config


def _causes(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The errors less those that follow from a `model.name` that names no model: the fields of the
    model meant (an mlp's `hidden`) are unknown to a factory, and would read as mistakes of their own."""
    unnamed = any(e["loc"][:1] == ("model",) and e["loc"][-1] == "name" for e in errors)
    return [e for e in errors if not (unnamed and e["loc"][:1] == ("model",) and e["type"] == "extra_forbidden")]


def _lines(path: Path, errors: list[dict[str, Any]], given: dict[tuple, str]) -> list[str]:
    """A line per problem; keys a factory model does not take are one problem, with where they go
    (a factory's arguments are `model.kwargs`, not fields of `model` as a builtin's are)."""
    extra = [e for e in errors if e["loc"][:2] == ("model", "factory") and e["type"] == "extra_forbidden"]
    lines = [_describe(path, e, given) for e in errors if e not in extra]
    if extra:
        keys = ", ".join(_key(e["loc"][-1]) for e in extra)
        lines.append(f"{path}: model: {keys}: unknown {'keys' if len(extra) > 1 else 'key'} for a factory model "
                     "(package.module:callable); its arguments go under model.kwargs")
    return lines


def _switches(overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides with a switch's two names (`--refine`, `--no-refine: true`) as the one option
    typer knows it by (`--refine/--no-refine`)."""
    out = {}
    for option, value in overrides.items():
        both = next((o for o in OPTIONS if "/" in o and option in o.split("/")), None)
        if both is None:
            out[option] = value
        else:
            out[both] = value if value is None or option == both.split("/")[0] else not value
    return out


def _read(path: Path) -> dict[str, Any]:
    text = read_text(path, MAX_CONFIG_BYTES, "a YAML, TOML or JSON config file")
    try:
        raw = {"TOML": _parse_toml, "JSON": _parse_json, "YAML": _parse_yaml}[_format(path)](path, text)
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to parse") from None
    if raw is None:
        raise InputError(f"{path}: empty config, expected at least a `model` section")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of sections at the top level (got {type(raw).__name__})")
    check_shape(raw, path)
    return raw


def _format(path: Path) -> str:
    """TOML and JSON by their suffix; YAML for the rest (`.yaml`, `.yml`, or none)."""
    return {".toml": "TOML", ".json": "JSON"}.get(path.suffix.lower(), "YAML")


def _parse_json(path: Path, text: str) -> Any:
    # Its own parser, not YAML's: YAML 1.1 reads JSON's 1e-05 as text.
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:  # Python's json keeps the last: the first would be lost
                raise InputError(f"{path}: duplicate key '{_key(key)}'")
            seen.add(key)
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except ValueError:  # what else json raises: an integer past Python's limit on digits
        raise InputError(f"{path}: invalid JSON: an integer of thousands of digits") from None


def _parse_toml(path: Path, text: str) -> Any:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: invalid TOML: {exc}") from None


def _parse_yaml(path: Path, text: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            # PyYAML keeps the last of two equal keys: a second `probe:` would silently drop the
            # first. Checked before merges (`<<: *base`) are flattened in, which may be overridden.
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable: the base class refuses it
                    continue
                if duplicate:
                    mark = key_node.start_mark
                    raise InputError(f"{path}: duplicate key '{_key(key)}' at line {mark.line + 1}, "
                                     f"column {mark.column + 1}")
            return super().construct_mapping(node, deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_NUMBER, list("-+0123456789."))
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{path}: invalid YAML{where}: {problem}") from None


_TAGS = {*BUILTIN_MODELS, "factory"}
SECTIONS = {"data": DataConfig, "train": TrainConfig, "probe": ProbeConfig, "recommend": RecommendConfig}


def _key(part: object) -> str:
    # A key with a newline or control character would break the one-line-per-problem promise.
    text = str(part)
    return text if text.isprintable() and text else repr(text)


def _describe(path: Path, error: dict[str, Any], given: dict[tuple, str]) -> str:
    loc = [_key(p) for p in error["loc"] if not (isinstance(p, str) and p in _TAGS and p != error["loc"][0])]
    # A mapping's key that is no string: pydantic names it by position and the key itself.
    bad_key = loc[-1:] == ["[key]"]
    if bad_key:
        loc = loc[:-2]
    # Pydantic puts a model validator's complaint on the section; it already names the fields.
    field = ".".join(loc)
    option = given.get(tuple(loc[:2]))
    where = f"{option}" if option else f"{path}: {field}" if field else str(path)
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return f"{where}: unknown key{_suggestion(error['loc'])}"
    if kind == "missing":
        return f"{where}: required"
    if bad_key:
        return (f"{where}: key {error.get('input')!r} is not a string (YAML reads true, false, yes, no, on, off and "
                "numbers unquoted as such): quote it")
    message = plain(error["msg"])
    # A section that is no mapping (`model: null`): pydantic adds the class it would have built.
    message = re.sub(r"must be a valid dictionary or instance of \w+", "must be a valid dictionary", message)
    if len(loc) == 1 and loc[0] in SECTIONS:
        # A section's own check names its fields: those set on the command line go by their option,
        # and the file is blamed only if one of them came from it.
        named = [k for k in SECTIONS[loc[0]].model_fields if re.search(rf"\b{k}\b", message)]
        for key in named:
            if (loc[0], key) in given:
                message = re.sub(rf"\b{key}\b", given[(loc[0], key)], message)
        if named and all((loc[0], key) in given for key in named):
            return message
        if message.startswith(f"{loc[0]}."):
            return f"{path}: {message}"  # it names its fields itself (`data.kind tensors needs data.path`)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number") or kind.endswith(
        ("_type", "_parsing", "_from_float")
    ) or kind == "literal_error":
        message = f"{message} (got {_as_written(value)})"
    return f"{where}: {message}"


# Names other tools give the fields that batchfind names otherwise.
_ALIASES = {"num_workers": "workers", "learning_rate": "lr", "batch_size": "max_batch", "optimizer_args": "optimizer_kwargs"}


def _suggestion(loc: tuple) -> str:
    """` (did you mean steps?)`: the field of the same section that an unknown key most likely
    meant, where one is close (a typo, or another tool's name for it)."""
    *within, key = loc
    models = {"mlp": MLPModel, "cnn": CNNModel, "transformer": TransformerModel, "factory": FactoryModel}
    owner = (Config if not within else SECTIONS.get(within[0]) if len(within) == 1
             else models.get(within[1]) if len(within) == 2 and within[0] == "model" else None)
    if owner is None or not isinstance(key, str):
        return ""
    names = list(owner.model_fields)
    alias = _ALIASES.get(key)
    found = alias if alias in names else next(iter(difflib.get_close_matches(key, names, 1, 0.75)), None)
    return f" (did you mean {found}?)" if found else ""


def _as_written(value: Any) -> str:
    """A value as a config file writes it: `true` and `null`, not Python's True and None."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, list):
        return f"[{', '.join(map(_as_written, value))}]"
    return repr(value)


# Why a factory model's synthetic targets are floats though classes were given (`classes_unused`).
FLOAT_TARGETS = "with train.loss mse the synthetic targets are floats"


def classes_unused(cfg: Config) -> bool:
    """Whether `data.num_classes` goes unused: the mse loss asks for float targets."""
    data = cfg.data
    return cfg.train.loss == "mse" and data.kind == "synthetic" and data.inputs is None and data.num_classes is not None
