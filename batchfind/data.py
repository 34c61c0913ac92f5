"""Datasets (synthetic, tensors, imagefolder, `module:factory`) and real batches of a given size."""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from .config import CNNModel, Config, MLPModel, TransformerModel
from .errors import InputError
from .models import call_factory

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SYNTHETIC_DEFAULT_SIZE = 50_000
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


class Batches:
    """Real batches of any size from one dataset, plus its length for steps per epoch.

    When items vary in length (token sequences), batches are made of the longest items, padded:
    the worst case a training run can meet, so a size that fits here fits every batch.
    """

    def __init__(self, dataset: Dataset | None, spec: SampleSpec | None, length: int, device: torch.device):
        self.dataset, self.spec, self.length, self.device = dataset, spec, length, device
        self.describe = "synthetic" if dataset is None else type(dataset).__name__
        self.order: list[int] | None = None
        self.lengths: dict[str, int] | None = None
        if dataset is not None and not isinstance(dataset, (TensorDataset, ImageFolder)):
            self._scan_lengths()

    def __len__(self) -> int:
        return self.length

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec is not None:
            return self._synthetic(size)
        # The same items every trial (the longest first when lengths vary), so sizes compare fairly.
        if self.order is None:
            indices: Any = range(size)
        else:  # the scanned items, longest first, then unscanned ones in order
            indices = self.order[:size] + list(range(len(self.order), size))
        return self._collate([self.dataset[i] for i in indices])

    def sample(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of random items (new random data when synthetic): independent draws."""
        if self.spec is not None:
            return self._synthetic(size)
        indices = torch.randint(0, self.length, (size,)).tolist()
        return self._collate([self.dataset[i] for i in indices])

    def loader(self, size: int, workers: int, pin_memory: bool | None) -> DataLoader:
        """The DataLoader a training run would use: shuffled, full batches only."""
        if self.dataset is None:
            raise ValueError("synthetic data has no DataLoader")
        return DataLoader(
            self.dataset, batch_size=size, shuffle=True, drop_last=True, num_workers=workers,
            pin_memory=self.device.type == "cuda" if pin_memory is None else pin_memory,
            collate_fn=default_collate if self.lengths is None else pad_collate,
        )

    def _collate(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = default_collate(items) if self.lengths is None else pad_collate(items)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _scan_lengths(self) -> None:
        scanned = min(self.length, SCAN_LIMIT)
        sizes = [_length(self.dataset[i][0]) for i in range(scanned)]
        if None in sizes or len(set(sizes)) <= 1:
            return
        self.order = sorted(range(scanned), key=lambda i: -sizes[i])
        self.lengths = {"longest": max(sizes), "shortest": min(sizes), "scanned": scanned, "total": self.length}

    def _synthetic(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, dev = self.spec, self.device
        if s.input_high is None:
            x = torch.randn(size, *s.input_shape, device=dev, dtype=s.input_dtype)
        else:
            x = torch.randint(0, s.input_high, (size, *s.input_shape), device=dev, dtype=s.input_dtype)
        if s.num_classes is None:
            y = torch.randn(size, *s.target_shape, device=dev)
        else:
            y = torch.randint(0, s.num_classes, (size, *s.target_shape), device=dev)
        return x, y


def _length(value: Any) -> int | None:
    if isinstance(value, torch.Tensor):
        return value.shape[0] if value.dim() else None
    return len(value) if isinstance(value, (list, tuple)) else None


def pad_collate(items: list[tuple[Any, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad inputs with 0 to the longest; per-position targets with IGNORE_INDEX."""
    inputs = [torch.as_tensor(x) for x, _ in items]
    targets = [torch.as_tensor(y) for _, y in items]
    x = pad_sequence(inputs, batch_first=True, padding_value=0)
    if all(t.dim() and t.shape[0] == i.shape[0] for t, i in zip(targets, inputs)):
        return x, pad_sequence(targets, batch_first=True, padding_value=IGNORE_INDEX)
    return x, default_collate(targets)


def build_batches(cfg: Config, device: torch.device) -> Batches:
    data = cfg.data
    if data.kind == "synthetic":
        return Batches(None, synthetic_spec(cfg), data.size or SYNTHETIC_DEFAULT_SIZE, device)
    if data.kind == "tensors":
        dataset = load_tensors(data.path)
    elif data.kind == "imagefolder":
        size = data.image_size or (cfg.model.image_size if isinstance(cfg.model, CNNModel) else None)
        if size is None:
            raise InputError("data.image_size: required for imagefolder data unless the model is the builtin cnn")
        dataset = ImageFolder(data.path, size)
    else:
        dataset = call_factory(data.kind, data.kwargs, "data.kind")
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise InputError(
                f"data.kind: {data.kind} returned {type(dataset).__name__}, expected a map-style torch Dataset"
            )
    length = len(dataset)
    if length == 0:
        raise InputError(f"data: the {data.kind} dataset is empty")
    return Batches(dataset, None, length, device)


def synthetic_spec(cfg: Config) -> SampleSpec:
    model, data = cfg.model, cfg.data
    regression = cfg.train.loss == "mse"
    if isinstance(model, MLPModel):
        return SampleSpec((model.in_features,), torch.float32, None, (), None if regression else model.classes)
    if isinstance(model, CNNModel):
        shape = (model.in_channels, model.image_size, model.image_size)
        return SampleSpec(shape, torch.float32, None, (), None if regression else model.classes)
    if isinstance(model, TransformerModel):
        # Next-token prediction: every position has a target token.
        return SampleSpec((model.seq_len,), torch.long, model.vocab_size, (model.seq_len,), model.vocab_size)
    if data.input_shape is None:
        raise InputError("data.input_shape: required for synthetic data with a factory model")
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


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def load_tensors(path: Path) -> TensorDataset:
    """A .pt file holding {inputs, targets} or (inputs, targets), or an .npz with those arrays."""
    _must_be_file(path)
    try:
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as npz:
                loaded: Any = {k: torch.from_numpy(npz[k]) for k in npz.files}
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's refusal runs to a dozen lines and suggests weights_only=False, which would run
        # whatever code the file holds: name what was refused, once.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = found.group(1) if found else "objects that are not tensors"
        raise InputError(f"data.path: cannot load {path}: it holds {what}; only tensors, numbers and plain "
                         "containers are loaded (weights_only=True)") from None
    except Exception as exc:
        raise InputError(f"data.path: cannot load {path}: {type(exc).__name__}: {_first_line(exc)}") from None
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
    if len(inputs) != len(targets):
        raise InputError(f"data.path: {path}: {len(inputs)} inputs but {len(targets)} targets")
    return TensorDataset(inputs, targets)


class ImageFolder(Dataset):
    """One subfolder per class; images decoded with Pillow, resized and scaled to [0, 1]."""

    def __init__(self, root: Path, size: int):
        if not root.is_dir():
            raise InputError(f"data.path: {root} is not a folder (imagefolder needs one subfolder per class)")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise InputError(f"data.path: {root} has no class subfolders")
        self.size = size
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
        try:
            with Image.open(path) as img:
                img = img.convert("RGB").resize((self.size, self.size))
                pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        except OSError as exc:
            raise InputError(f"data.path: cannot decode image {path}: {exc}") from None
        return pixels.view(self.size, self.size, 3).permute(2, 0, 1).float().div_(255), label


def _must_be_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"data.path: {path}: no such file")
    if path.is_dir():
        raise InputError(f"data.path: {path} is a directory, expected a .pt or .npz file")
