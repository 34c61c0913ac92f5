"""Commented starter configs for `batchfind init`, written as YAML or TOML.

A template is sections of (key, value, comment) rows, so both formats come from one source. TOML
has no null: a key whose value is null is written commented out, with an example value.
"""

from __future__ import annotations

import json
import re
from typing import Any

Row = tuple[str, Any, str]

# For keys that default to null: what a TOML file shows, commented out, as an example.
_EXAMPLES = {"max_batch": 1024, "memory_limit": "2GiB", "nproc_per_node": 8, "target_batch": 1024}


def _common(optimizer: str, lr: float, reference: int,
            losses: str = "cross_entropy | mse (float targets: one output per sample, classes: 1)") -> dict[str, list[Row]]:
    return {
        "train": [
            ("optimizer", optimizer, "sgd | adam | adamw | rmsprop | package.module:factory"),
            ("lr", lr, "the learning rate tuned at reference_batch"),
            ("reference_batch", reference, "with it, every batch size gets its scaled learning rate"),
            ("weight_decay", 0.0, ""),
            ("loss", "cross_entropy", losses),
            ("precision", "fp32", "fp32 | bf16 | fp16 (autocast)"),
        ],
        "probe": [
            ("device", "auto", "auto | cpu | cuda | cuda:N"),
            ("min_batch", 1, "then 2x, 4x, ... until out of memory"),
            ("max_batch", None, "unset: up to the dataset size"),
            ("warmup_steps", 2, "unmeasured steps per size"),
            ("steps", 5, "measured steps per size (median and p10-p90 reported)"),
            ("memory_limit", None, "unset: CPU 80% of available RAM; GPU the whole card"),
            ("refine", True, "search the exact edge between powers of two"),
            ("multiple_of", 1, "refined sizes are multiples of this (8 suits tensor cores)"),
            ("time_budget_s", 600, "no new trial starts after this"),
            ("trial_timeout_s", 300, "a trial taking longer is stopped"),
            # No strategy here: it only means something with several ranks, and set for one it
            # makes every probe warn that it was not used.
            ("nproc_per_node", None, "e.g. 8: one rank per GPU (then strategy: ddp | fsdp), or use torchrun"),
        ],
        "recommend": [
            ("tolerance", 0.02, '"as fast" = within 2% of the best samples/s'),
            ("headroom", 0.10, "the recommended size leaves 10% of the memory limit free"),
            ("lr_rule", "auto", "auto | linear | sqrt | none"),
            ("target_batch", None, "e.g. 1024: sizes below it get accumulation steps"),
            ("noise_scale", False, "estimate the gradient noise scale"),
        ],
    }


_TEMPLATES: dict[str, tuple[str, dict[str, list[Row]]]] = {
    "mlp": ("an MLP on tabular features (synthetic data of the right shape).", {
        "model": [
            ("name", "mlp", ""),
            ("in_features", 64, "input features"),
            ("hidden", 256, "width of each hidden layer"),
            ("layers", 3, "hidden layers"),
            ("classes", 10, ""),
        ],
        "data": [
            ("kind", "synthetic", "synthetic | tensors | imagefolder | package.module:factory"),
            ("size", 100000, "samples per epoch"),
        ],
        **_common("adam", 0.001, 256),
    }),
    "cnn": ("a ResNet-like CNN on images.", {
        "model": [
            ("name", "cnn", ""),
            ("in_channels", 3, ""),
            ("image_size", 32, "square images of this size"),
            ("width", 32, "channels of the first stage, doubling per stage"),
            ("depth", 2, "blocks per stage, or a list such as [3, 4, 6, 3] (then leave out stages)"),
            ("stages", 3, ""),
            ("block", "basic", "basic | bottleneck"),
            ("stem", "cifar", "cifar (3x3) | imagenet (7x7 stride 2 + max-pool)"),
            ("classes", 10, ""),
        ],
        "data": [
            ("kind", "synthetic", "or imagefolder, with path: train/ (one subfolder per class)"),
            ("size", 50000, ""),
        ],
        **_common("sgd", 0.1, 256),
    }),
    "gpt": ("a GPT-like decoder predicting the next token.", {
        "model": [
            ("name", "transformer", ""),
            ("vocab_size", 8192, ""),
            ("d_model", 256, ""),
            ("layers", 4, ""),
            ("heads", 4, "must divide d_model"),
            ("seq_len", 128, ""),
            ("dropout", 0.0, ""),
            ("causal", True, "false: BERT-style bidirectional attention"),
        ],
        "data": [
            ("kind", "synthetic", "or a package.module:factory returning (tokens, targets) items"),
            ("size", 100000, "sequences per epoch"),
        ],
        **_common("adamw", 0.0003, 64, "cross_entropy: the next token is a class"),
    }),
    # The placeholders run as they are (a linear layer from torch on synthetic data), so the file
    # validates before it is edited; the comments say what to put in their place.
    "custom": ("your own model and dataset, built by your code.\n"
               "Configs that name package.module:factory run that code: treat configs as code.", {
        "model": [
            ("name", "torch.nn:Linear", "replace with yours: a package.module:callable returning a torch.nn.Module"),
            ("kwargs", {"in_features": 16, "out_features": 4}, "passed to it"),
        ],
        "data": [
            ("kind", "synthetic", "or package.module:callable returning a map-style Dataset of (input, target),"
             " then workers: N for its DataLoader"),
            ("kwargs", {}, "for a data callable: passed to it"),
            ("size", 10000, "synthetic: samples per epoch"),
            ("input_shape", [16], "synthetic: one sample's input"),
            ("num_classes", 4, "synthetic: targets are class indices below this"),
        ],
        **_common("adamw", 0.0003, 32, "cross_entropy | mse | package.module:function(output, target)"),
    }),
}

TEMPLATE_NAMES = tuple(_TEMPLATES)


def render(name: str, fmt: str = "yaml") -> str:
    """The template `name` as a commented YAML or TOML config."""
    about, sections = _TEMPLATES[name]
    lines = [f"# batchfind config: {about}".replace("\n", "\n# ")]
    for section, rows in sections.items():
        lines.append(f"[{section}]" if fmt == "toml" else f"{section}:")
        for key, value, comment in rows:
            lines.append(_toml_row(key, value, comment) if fmt == "toml" else _yaml_row(key, value, comment))
        if fmt == "toml":
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _yaml_row(key: str, value: Any, comment: str) -> str:
    return _commented(f"  {key}: {_yaml_value(value)}", comment)


def _toml_row(key: str, value: Any, comment: str) -> str:
    if value is None:
        return _commented(f"# {key} = {json.dumps(_EXAMPLES[key])}", comment)
    return _commented(f"{key} = {_toml_value(value)}", comment)


def _commented(line: str, comment: str) -> str:
    return f"{line:<28} # {comment}" if comment else line


# Strings YAML reads as themselves without quotes (not null, a boolean or a number).
_PLAIN = re.compile(r"[A-Za-z_][\w.:/-]*")
_YAML_WORDS = {"null", "true", "false", "yes", "no", "on", "off", "y", "n"}


def _yaml_value(value: Any) -> str:
    if isinstance(value, str):
        return value if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS else json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # numbers, booleans, null and lists read the same in YAML


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # TOML's strings, numbers, booleans and arrays are JSON's
