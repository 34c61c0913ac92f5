"""Datasets (synthetic, tensors, imagefolder, `module:factory`) and real batches of a given size.

A batch is opaque to the rest of batchfind: a tensor, a tuple or list, a dict, or nested mixes of
these, moved to the device by `to_device`; only the step (step.py) looks inside one.
"""

from __future__ import annotations

import functools
import importlib
import os
import pickle
import re
import stat
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, default_collate

from . import devices
from .config import CNNModel, Config, InputSpec, MLPModel, TransformerModel
from .errors import InputError, described, exits_are_errors
from .models import call_factory, raised

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Items of a factory dataset inspected for their length; more would slow every start.
SCAN_LIMIT = 10_000
# Padded targets are ignored by cross-entropy.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class SampleSpec:
    """What one synthetic sample looks like."""

    input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    input_high: int | None  # integer inputs are drawn from [0, input_high)
    target_shape: tuple[int, ...]
    num_classes: int | None  # None: float targets (regression)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int64": torch.long, "int32": torch.int32, "bool": torch.bool}


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch with every tensor in it on `device`, its structure kept."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        # Mapping types such as transformers' BatchEncoding are rebuilt as plain dicts: model(**batch) takes both.
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return _rebuilt(batch, [to_device(v, device) for v in batch])
    return batch


def tensors_in(batch: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a batch: itself, or in its dicts, tuples and lists at any depth."""
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for value in batch.values():
            yield from tensors_in(value)
    elif isinstance(batch, (tuple, list)):
        for value in batch:
            yield from tensors_in(value)


def _rebuilt(like: tuple | list, parts: list) -> tuple | list:
    """A tuple or list of `like`'s type holding `parts`: a namedtuple takes them one by one."""
    return type(like)(*parts) if hasattr(like, "_fields") else type(like)(parts)


def describe_batch(batch: Any, target: str | None = None, call: str = "auto") -> str:
    """Shapes and dtypes of a batch for error messages: `inputs (1, 8) torch.float32, targets ...`
    for a pair, `{input_ids: (1, 16) torch.int64, ...}` for anything else. A dict's `target` key is
    told apart from what the model got, and `call: positional` says in which order it got them."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
        x, y = batch
        return f"inputs {tuple(x.shape)} {x.dtype}, targets {tuple(y.shape)} {y.dtype}"
    if not isinstance(batch, Mapping):
        return "batch " + _structure(batch)
    inputs = {k: v for k, v in batch.items() if k != target}
    text = "batch " + _structure(inputs)
    if call == "positional":
        text += f" as model({', '.join(map(str, inputs))})"
    return text + (f", target {target} {_structure(batch[target])}" if target in batch else "")


def _structure(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {value.dtype}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_structure(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_structure(v) for v in value) + ")"
    return type(value).__name__


class Batches:
    """Real batches of any size from one dataset, plus its length for steps per epoch.

    When items vary in length (token sequences), batches are made of the longest items, padded:
    the worst case a training run can meet, so a size that fits here fits every batch. `scan` is
    what another process's scan of the same dataset found (`self.scan`): reading up to SCAN_LIMIT
    items again would cost every worker's start as much (a tokenizing dataset: seconds).
    """

    def __init__(self, dataset: Dataset | None, spec: SampleSpec | dict[str, InputSpec] | None, length: int,
                 device: torch.device, scan: dict[str, Any] | None = None, target: str | None = None):
        self.dataset, self.spec, self.length, self.device = dataset, spec, length, device
        self.target = target  # the key of dict items' targets (`train.target`), padded as targets
        self.describe = "synthetic" if dataset is None else type(dataset).__name__
        self.order: list[int] | None = None
        self.lengths: dict[str, int] | None = None
        if scan is not None:
            self.order, self.lengths = scan["order"], scan["lengths"]
        elif dataset is not None and not isinstance(dataset, (TensorDataset, ImageFolder)):
            self._scan_lengths()

    @property
    def scan(self) -> dict[str, Any] | None:
        return None if self.dataset is None else {"order": self.order, "lengths": self.lengths}

    def __len__(self) -> int:
        return self.length

    def batch(self, size: int, start: int = 0) -> Any:
        """`size` items from the `start`-th on, of a fixed order: the same items every trial (the
        longest first when lengths vary), so sizes compare fairly. Synthetic data: new samples."""
        if self.spec is not None:
            return self._synthetic(size)
        end = start + size
        if self.order is None:
            indices: Any = range(start, end)
        else:  # the scanned items, longest first, then unscanned ones in order
            indices = (self.order[:end] + list(range(len(self.order), end)))[start:]
        return self._collate([self._item(i) for i in indices])

    def sample(self, size: int) -> Any:
        """A batch of random items (new random data when synthetic): independent draws."""
        if self.spec is not None:
            return self._synthetic(size)
        indices = torch.randint(0, self.length, (size,)).tolist()
        return self._collate([self._item(i) for i in indices])

    def loader(self, size: int, workers: int, pin_memory: bool | None) -> DataLoader:
        """The DataLoader a training run would use: shuffled, full batches only."""
        if self.dataset is None:
            raise ValueError("synthetic data has no DataLoader")
        # Its items and batches fail as the trials' do, naming the dataset: the loader reads items
        # past those the trials and set-up's scan read.
        return DataLoader(
            _Read(self.dataset, self.describe), batch_size=size, shuffle=True, drop_last=True, num_workers=workers,
            persistent_workers=workers > 0,  # an epoch's end starts no workers anew in the timed steps
            pin_memory=self.device.type == "cuda" if pin_memory is None else pin_memory,
            collate_fn=functools.partial(stacked, padded=self.lengths is not None, target=self.target,
                                         describe=self.describe),
        )

    def _collate(self, items: list) -> Any:
        batch = stacked(items, self.lengths is not None, self.target, self.describe)
        if any(t.is_meta for t in tensors_in(batch)):
            raise InputError(f"data: items of the {self.describe} dataset hold tensors on the meta device: shapes "
                             "without data, which no step can train on")
        return to_device(batch, self.device)

    def _item(self, index: int) -> Any:
        return read_item(self.dataset, index, self.describe)

    def _scan_lengths(self) -> None:
        scanned = min(self.length, SCAN_LIMIT)
        fields = [_lengths(self._item(i)) for i in range(scanned)]
        if len({len(f) for f in fields}) > 1:
            return  # items of different structure: not a question of length
        varying = [i for i, column in enumerate(zip(*fields)) if len(set(column)) > 1 and None not in column]
        if not varying:
            return
        # An item is as long as its longest varying field (a fixed-size field says nothing of it).
        sizes = [max(f[i] for i in varying) for f in fields]
        # A batch pads each field to its own longest item, and fields need not grow together (an
        # encoder-decoder's long inputs with short labels and short inputs with long labels): each
        # field's longest item comes first, so from that many items on every batch meets each
        # field's worst case at once; then the rest, longest first.
        firsts = {max(range(scanned), key=lambda i: fields[i][column]) for column in varying}
        self.order = sorted(firsts, key=lambda i: -sizes[i]) + sorted(
            (i for i in range(scanned) if i not in firsts), key=lambda i: -sizes[i])
        self.lengths = {"longest": max(sizes), "shortest": min(sizes), "scanned": scanned, "total": self.length}

    def _synthetic(self, size: int) -> Any:
        s, dev = self.spec, self.device
        if isinstance(s, dict):
            return {name: _random(size, spec, dev) for name, spec in s.items()}
        if s.input_high is None:
            x = torch.randn(size, *s.input_shape, device=dev, dtype=s.input_dtype)
        else:
            x = torch.randint(0, s.input_high, (size, *s.input_shape), device=dev, dtype=s.input_dtype)
        if s.num_classes is None:
            y = torch.randn(size, *s.target_shape, device=dev)
        else:
            y = torch.randint(0, s.num_classes, (size, *s.target_shape), device=dev)
        return x, y


def _random(size: int, spec: InputSpec, device: torch.device) -> torch.Tensor:
    shape, dtype = (size, *spec.shape), DTYPES[spec.dtype]
    if dtype.is_floating_point:
        return torch.randn(shape, device=device, dtype=dtype)
    high = 2 if dtype == torch.bool and spec.high is None else spec.high
    return torch.randint(spec.low, high, shape, device=device).to(dtype)


def _numeric(value: Any) -> bool:
    """A Python number or a (nested) list of them: one field's data, not a structure of fields."""
    if isinstance(value, (list, tuple)):
        return all(_numeric(v) for v in value)
    return isinstance(value, (int, float))


def _parts(value: Any, top: bool) -> list | None:
    """The parts of a structure (a dict's values, a tuple's or list's elements), or None for one
    field's data. An item itself is always a structure when a tuple or list, as torch's
    default_collate takes it: (inputs..., target). Below it, a list of numbers (a tokenizer's ids)
    or of strings is one field."""
    if isinstance(value, Mapping):
        return list(value.values())
    if isinstance(value, (tuple, list)) and (top or not (_numeric(value) or all(isinstance(v, str) for v in value))):
        return list(value)
    return None


def _lengths(value: Any, top: bool = True) -> list[int | None]:
    """The length of every field of an item, in order (None for a field without one): a tensor's
    first dimension, a list's length."""
    parts = _parts(value, top)
    if parts is not None:
        return [n for part in parts for n in _lengths(part, False)]
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy" and hasattr(value, "shape"):
        return [value.shape[0] if len(value.shape) else None]  # a numpy array's first dimension too
    return [len(value)] if isinstance(value, (list, tuple)) else [None]


def read_item(dataset: Dataset, index: int, describe: str) -> Any:
    try:
        with exits_are_errors():
            return dataset[index]
    except InputError:
        raise  # batchfind's own dataset (an image folder's file that does not decode) names what failed
    except Exception as exc:  # the user's dataset: a failure is bad input, in one line
        if isinstance(exc, MemoryError) or devices.is_oom(exc):
            raise  # an item too large for the memory limit: out of memory, as a batch too large is
        raise InputError(f"data: item {index} of the {describe} dataset raised {described(exc)}") from None


class _Read(Dataset):
    """A dataset whose items are read by `read_item`."""

    def __init__(self, dataset: Dataset, describe: str):
        self.dataset, self.describe = dataset, describe

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return read_item(self.dataset, index, self.describe)


def stacked(items: list, padded: bool, target: str | None, describe: str) -> Any:
    """Items collated into a batch (padded, where their lengths vary); items of no shape a batch
    can take (None, a dict beside a tuple) are bad input naming the dataset."""
    try:
        return pad_collate(items, target) if padded else collate(items)
    except InputError:
        raise
    except Exception as exc:
        if devices.is_oom(exc):
            raise
        raise InputError(f"data: items of the {describe} dataset do not stack into a batch: {described(exc)}") from None


def collate(items: list) -> Any:
    """torch's default_collate, except that dict items (a tokenizer's output) make a dict of
    tensors, their lists of numbers included."""
    return _padded(items, False, "", True) if isinstance(items[0], Mapping) else default_collate(items)


def pad_collate(items: list, target: str | None = None) -> Any:
    """Items whose fields vary in length, at any depth: each such field is padded to its longest,
    an integer target (an item's last element, a dict's `labels` or its `target` key, as
    `train.target` names it) with IGNORE_INDEX, which cross-entropy ignores, everything else with 0."""
    return _padded(items, False, "", True, frozenset({"labels", target}))


def _padded(values: list, target: bool, where: str, top: bool = False,
            targets: frozenset = frozenset({"labels"})) -> Any:
    first = values[0]
    if isinstance(first, Mapping):
        return {key: _padded([v[key] for v in values], target or key in targets, f"{where}{key}.", targets=targets)
                for key in first}
    parts = _parts(first, top)
    if parts is not None:
        if any(len(v) != len(parts) for v in values):
            raise InputError(f"data: {_field(where)} holds {len(parts)} elements in one item and "
                             f"{next(len(v) for v in values if len(v) != len(parts))} in another")
        last = len(parts) - 1
        collated = [_padded([v[i] for v in values], target or top and i == last, f"{where}{i}.", targets=targets)
                    for i in range(last + 1)]
        return _rebuilt(first, collated)
    if isinstance(first, (str, bytes)) or isinstance(first, list) and not _numeric(first):
        return list(values)  # text is not collated
    tensors = [torch.as_tensor(v) for v in values]
    if all(t.shape == tensors[0].shape for t in tensors):
        # Lists of numbers stack as one tensor; anything else as default_collate makes it (its dtypes).
        return torch.stack(tensors) if isinstance(first, list) else default_collate(values)
    if any(t.dim() == 0 or t.shape[1:] != tensors[0].shape[1:] for t in tensors):
        shapes = sorted({tuple(t.shape) for t in tensors})[:3]
        raise InputError(f"data: {_field(where)} varies in shape ({', '.join(map(str, shapes))}, ...): only the "
                         "first dimension (a length) can vary between items")
    kind = tensors[0]
    if target and not (kind.is_floating_point() or kind.is_complex() or kind.dtype == torch.bool):
        # Integer targets pad with IGNORE_INDEX, which narrow ones (uint8) cannot hold: as int64,
        # as the loss takes them.
        return pad_sequence([t.long() for t in tensors], batch_first=True, padding_value=IGNORE_INDEX)
    return pad_sequence(tensors, batch_first=True, padding_value=0)


def _field(where: str) -> str:
    return f"field {where.rstrip('.')}" if where else "each item"


def build_batches(cfg: Config, device: torch.device, scan: dict[str, Any] | None = None) -> Batches:
    data = cfg.data
    if data.kind == "synthetic":
        return Batches(None, synthetic_spec(cfg), data.size, device)
    if data.kind == "tensors":
        dataset = load_tensors(data.path)
    elif data.kind == "imagefolder":
        size = data.image_size or (cfg.model.image_size if isinstance(cfg.model, CNNModel) else None)
        if size is None:
            raise InputError("data.image_size: required for imagefolder data unless the model is the builtin cnn")
        channels = data.channels or (cfg.model.in_channels if isinstance(cfg.model, CNNModel) else 3)
        if channels not in IMAGE_MODES:
            raise InputError(f"model.in_channels: {channels}, but imagefolder images have 1 (grayscale), 3 (RGB) or 4 "
                             "(RGBA) channels")
        dataset = ImageFolder(data.path, size, channels)
    else:
        dataset = call_factory(data.kind, data.kwargs, "data.kind")
        # An IterableDataset may define both and still refuse items by index.
        if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise InputError(
                f"data.kind: {data.kind} returned {type(dataset).__name__}, expected a map-style torch Dataset (items by index, and a length)"
            )
    try:
        length = len(dataset)
    except BaseException as exc:  # noqa: BLE001 - a __len__ of the user's own
        raise InputError(f"data.kind: the length of {data.kind}'s dataset raised {raised(exc)}") from exc
    if length == 0:
        raise InputError(f"data: the {data.kind} dataset is empty")
    return Batches(dataset, None, length, device, scan, cfg.train.target)


def synthetic_spec(cfg: Config) -> SampleSpec | dict[str, InputSpec]:
    model, data = cfg.model, cfg.data
    if data.inputs is not None:
        return data.inputs
    # A loss of your own scores float targets unless classes are given.
    regression = cfg.train.loss == "mse" or (not cfg.train.builtin_loss and data.num_classes is None)
    if isinstance(model, MLPModel):
        return SampleSpec((model.in_features,), torch.float32, None, (), None if regression else model.classes)
    if isinstance(model, CNNModel):
        shape = (model.in_channels, model.image_size, model.image_size)
        return SampleSpec(shape, torch.float32, None, (), None if regression else model.classes)
    if isinstance(model, TransformerModel):
        # Next-token prediction: every position has a target token.
        return SampleSpec((model.seq_len,), torch.long, model.vocab_size, (model.seq_len,), model.vocab_size)
    if data.input_shape is None:
        raise InputError("data.input_shape: required for synthetic data with a factory model (or data.inputs)")
    integer = data.input_dtype == "int64"
    if integer and data.vocab_size is None:
        raise InputError("data.vocab_size: required when data.input_dtype is int64")
    if not regression and data.num_classes is None:
        raise InputError("data.num_classes: required for synthetic data with cross_entropy loss")
    return SampleSpec(
        tuple(data.input_shape),
        torch.long if integer else torch.float32,
        data.vocab_size if integer else None,
        tuple(data.target_shape),
        None if regression else data.num_classes,
    )


def load_tensors(path: Path) -> TensorDataset:
    """A .pt file holding {inputs, targets} or (inputs, targets), or an .npz with those arrays."""
    _must_be_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK" and not zipfile.is_zipfile(path):
            # Either reader would take a zip archive cut short for something else (torch: a pickle
            # holding objects).
            raise InputError(f"data.path: {path} is a zip archive cut short (its directory at the end is missing): "
                             "write it again")
        if path.suffix == ".npz":
            import numpy as np

            if head != b"PK":  # numpy would take any other file for a pickle, and say so
                raise InputError(f"data.path: {path} is not an .npz archive (numpy.savez writes one)")
            with np.load(path, allow_pickle=False) as npz:
                # Only the two arrays read: another one (a large, or a compressed bomb) costs nothing.
                wanted = ("inputs", "targets") if {"inputs", "targets"} <= set(npz.files) else npz.files
                loaded: Any = {k: torch.from_numpy(npz[k]) for k in wanted}
        else:
            # torch.save writes a zip archive (a pickle before torch 1.6): anything else would be
            # refused as a pickle holding what is not a tensor.
            if head != b"PK" and head[:1] != b"\x80":
                raise InputError(f"data.path: {path} is not a file torch.save wrote, expected a .pt file (or an .npz "
                                 "archive)")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except InputError:
        raise
    except pickle.UnpicklingError as exc:
        # torch's refusal runs to a dozen lines and suggests weights_only=False, which would run
        # whatever code the file holds: name what was refused, once.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = found.group(1) if found else "objects that are not tensors"
        raise InputError(f"data.path: cannot load {path}: it holds {what}; only tensors, numbers and plain "
                         "containers are loaded (weights_only=True)") from None
    except Exception as exc:
        if isinstance(exc, MemoryError) or devices.is_oom(exc):
            raise  # the data does not fit in the memory limit: nothing fits, not a bad file
        raise InputError(f"data.path: cannot load {path}: {described(exc)}") from None
    if isinstance(loaded, dict):
        missing = {"inputs", "targets"} - loaded.keys()
        if missing:
            raise InputError(f"data.path: {path} has keys {sorted(loaded)}, expected 'inputs' and 'targets'")
        inputs, targets = loaded["inputs"], loaded["targets"]
    elif isinstance(loaded, (tuple, list)) and len(loaded) == 2:
        inputs, targets = loaded
    else:
        raise InputError(f"data.path: {path} must hold {{'inputs', 'targets'}} or (inputs, targets)")
    if not (isinstance(inputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
        raise InputError(f"data.path: {path}: inputs and targets must be tensors")
    if not (inputs.dim() and targets.dim()):
        raise InputError(f"data.path: {path}: inputs and targets must have a first dimension, one entry per sample "
                         f"(got shapes {tuple(inputs.shape)} and {tuple(targets.shape)})")
    if len(inputs) != len(targets):
        raise InputError(f"data.path: {path}: {len(inputs)} inputs but {len(targets)} targets")
    for name, tensor in (("inputs", inputs), ("targets", targets)):
        if tensor.dtype == torch.uint64:
            raise InputError(f"data.path: {path}: {name} are uint64, which torch's operations do not take and int64 "
                             "cannot always hold: save them as int64")
    return TensorsFile(inputs, targets)


class TensorsFile(TensorDataset):
    """A tensors file's samples; uint16 and uint32 (token ids as many pipelines store them), which
    few torch operations take, read as int64 sample by sample, as a training loop converts them."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t.long() if t.dtype in (torch.uint16, torch.uint32) else t for t in super().__getitem__(index))


# Pillow's mode for images of so many channels.
IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


# Folder names that split a dataset rather than name a class.
_SPLITS = {"train", "training", "val", "valid", "validation", "test", "testing"}


class ImageFolder(Dataset):
    """One subfolder per class; images decoded with Pillow, made `channels` deep, resized and
    scaled to [0, 1]."""

    def __init__(self, root: Path, size: int, channels: int = 3):
        try:
            importlib.import_module("PIL")  # missing: said here, not as the first item's failure
        except ImportError:
            raise InputError('data.kind: imagefolder decodes images with Pillow, which is not installed: '
                             'pip install Pillow (or batchfind\'s extra, ".[images]")') from None
        if not root.is_dir():
            raise InputError(f"data.path: {root} is not a folder (imagefolder needs one subfolder per class)")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise InputError(f"data.path: {root} has no class subfolders")
        if len(classes) > 1 and {c.lower() for c in classes} <= _SPLITS:
            # A dataset's root (train/, val/, each with its class folders) would be read as two classes.
            train = next((c for c in classes if c.lower().startswith("train")), classes[0])
            raise InputError(f"data.path: {root} holds {', '.join(classes)}: a dataset's splits, not its classes; "
                             f"point data.path at the one to train on ({root / train})")
        self.size, self.channels = size, channels
        self.samples = [
            (f, label)
            for label, name in enumerate(classes)
            for f in sorted((root / name).rglob("*"))
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        if path.exists() and not (path.is_file() or path.is_dir()):  # a FIFO: opened, it waits for a writer
            raise InputError(f"data.path: {path} is not a regular file (a FIFO, a device or a socket)")
        try:
            with Image.open(path) as img:
                img = img.convert(IMAGE_MODES[self.channels]).resize((self.size, self.size))
                pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        except (OSError, Image.DecompressionBombError) as exc:  # a bomb is refused, as no image
            raise InputError(f"data.path: cannot decode image {path}: {exc}") from None
        return pixels.view(self.size, self.size, self.channels).permute(2, 0, 1).float().div_(255), label


def _must_be_file(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"data.path: {path}: no such file") from None
    except OSError as exc:  # a loop of symbolic links, a folder that cannot be read
        raise InputError(f"data.path: {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"data.path: {path} is a directory, expected a .pt or .npz file")
    if not stat.S_ISREG(mode):  # a FIFO would be read from forever, waiting for a writer
        raise InputError(f"data.path: {path} is not a regular file (a FIFO, a device or a socket), expected a .pt "
                         "or .npz file")
