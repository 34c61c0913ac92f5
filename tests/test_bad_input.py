"""The bad-input corpus: every case is one line naming the file and field (or option), what was
expected, exit code 2, and no traceback."""

import argparse
import json
import os
import subprocess
import struct
import sys
import zlib

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from batchfind.cli import app

runner = CliRunner()

MLP = "model: {name: mlp, in_features: 8, classes: 4}\n"
CPU = "probe: {device: cpu, warmup_steps: 0, steps: 1}\n"

# (config text, extra arguments, the substring the error must contain)
CASES = {
    "malformed yaml": ("model: [1, 2\n", [], "invalid YAML at line 2"),
    "malformed toml": ("[model\nname = 'mlp'\n", [], "config.toml: invalid TOML"),
    "toml wrong type": ("[model]\nname = 'mlp'\nhidden = 'wide'\n", [], "config.toml: model.hidden: expected a number, not text (got 'wide')"),
    "malformed JSON": ('{"model": {"name": "mlp"}\n', [], "invalid JSON at line 2"),
    "output of neither type it takes": (MLP + "train: {output: 1.5}\n", [],
                                        "train.output: expected a field name or an index (got 1.5)"),
    "JSON integer of 5000 digits": ('{"model": {"name": "mlp", "hidden": ' + "9" * 5000 + '}}', [],
                                    "config.json: invalid JSON: an integer of thousands of digits"),
    "duplicate JSON key": ('{"model": {"name": "mlp"}, "model": {}}', [], "config.json: duplicate key 'model'"),
    "quoted number in JSON": ('{"model": {"name": "mlp"}, "train": {"lr": "1e-4"}}', [],
                              "train.lr: expected a number, not text (got '1e-4'; without the quotes it is a number)"),
    "quoted number in toml": ("[model]\nname = 'mlp'\n[train]\nweight_decay = '1e-4'\n", [],
                              "train.weight_decay: expected a number, not text (got '1e-4'; without the quotes it is "
                              "a number)"),
    "yaml tab indent": ("model:\n\t name: mlp\n", [], "invalid YAML"),
    "empty file": ("", [], "empty config, expected at least a `model` section"),
    "top level list": ("- model\n", [], "expected a mapping of sections at the top level (got list)"),
    "missing model": ("probe: {}\n", [], "model: required"),
    "unknown top key": (MLP + "trian: {}\n", [], "trian: unknown key"),
    "unknown model key": ("model: {name: mlp, widht: 3}\n", [], "model.widht: unknown key"),
    "unknown probe key": (MLP + "probe: {step: 3}\n", [], "probe.step: unknown key (did you mean steps?)\n"),
    "another tool's name for a key": (MLP + "data: {num_workers: 2}\n", [],
                                      "data.num_workers: unknown key (did you mean workers?)\n"),
    "unknown key like none": (MLP + "train: {foo: 1}\n", [], "train.foo: unknown key\n"),
    "a model written the Hydra way": ("model: {_target_: mymodels.Net, in_dim: 8}\n", [],
                                      "config.yaml: model: _target_ is read inside model.kwargs; the model itself is "
                                      "model.name: mymodels:Net, with its arguments under model.kwargs\n"),
    "file data without a path": (MLP + "data: {kind: tensors}\n", [], "config.yaml: data.kind tensors needs data.path\n"),
    "section not a mapping": (MLP + "probe: 5\n", [], "probe: must be a valid dictionary"),
    "wrong type": (MLP + "train: {lr: fast}\n", [], "train.lr: expected a number, not text (got 'fast')"),
    "number as text": ('model: {name: mlp, hidden: "256"}\n', [], "model.hidden: expected a number, not text (got '256'; without the quotes it is a number)"),
    "number for a switch": (MLP + "probe: {refine: 0}\n", [], "probe.refine: expected true or false (got 0)"),
    "text for a switch": (MLP + "recommend: {noise_scale: y}\n", [],
                          "recommend.noise_scale: expected true or false (got 'y')"),
    "list for int": ("model: {name: mlp, hidden: [1]}\n", [], "model.hidden: must be a valid integer"),
    "zero size": ("model: {name: cnn, width: 0}\n", [], "model.width: must be greater than 0 (got 0)"),
    "negative size": ("model: {name: mlp, layers: -2}\n", [], "model.layers: must be greater than 0 (got -2)"),
    "zero steps": (MLP + "probe: {steps: 0}\n", [], "probe.steps: must be greater than 0 (got 0)"),
    "too many steps": (MLP + "probe: {steps: 1001}\n", [], "probe.steps: must be less than or equal to 1000 (got 1001)"),
    "fractional steps": (MLP + "probe: {steps: 2.5}\n", [], "probe.steps: must be a valid integer, got a number with a "
                         "fractional part (got 2.5)"),
    "number too large for a float": ("model: {name: mlp, hidden: 1e400}\n", [],
                                     "model.hidden: must be a finite number (got inf)\n"),
    "factory with a builtin's fields": ("model: {name: mypkg.models:build, in_features: 8, hidden: 4}\n", [],
                                        "model: in_features, hidden: unknown keys for a factory model "
                                        "(package.module:callable); its arguments go under model.kwargs\n"),
    "min above max": (MLP + "probe: {min_batch: 64, max_batch: 8}\n", [], "min_batch (64) must be <= max_batch (8)"),
    "bad memory size": (MLP + "probe: {memory_limit: 2 gigs}\n", [], "probe.memory_limit: expected a size like 2GiB"),
    "fractional bytes": (MLP + "probe: {memory_limit: 1.5}\n", [],
                         "probe.memory_limit: a number of bytes is whole: add a unit, as in 1.5GiB (got 1.5)"),
    "memory limit without its unit": (MLP + "probe: {memory_limit: 2}\n", [],
                                      "probe.memory_limit: must be at least 1 MiB; a number without a unit counts "
                                      "bytes (got 2: 2 bytes)"),
    "negative memory": (MLP + "probe: {memory_limit: -5}\n", [], "probe.memory_limit: must be > 0 bytes"),
    "unknown device": (MLP + "probe: {device: tpu}\n", [], "probe.device: expected auto, cpu, cuda or cuda:N"),
    "unknown optimizer": (MLP + "train: {optimizer: lamb}\n", [], "train.optimizer: must be 'sgd', 'adam'"),
    "unknown loss": (MLP + "train: {loss: hinge}\n", [], "train.loss: must be 'cross_entropy' or 'mse'"),
    "mse for a builtin's classes": (MLP + "train: {loss: mse}\n", [],
                                    "train.loss: mse: the builtin mlp's synthetic targets are one float per sample, "
                                    "and it gives model.classes (4) outputs: set model.classes: 1"),
    "mse for tokens": ("model: {name: transformer}\ntrain: {loss: mse}\n", [],
                       "train.loss: mse: the builtin transformer predicts tokens (its synthetic targets are token "
                       "ids): use cross_entropy"),
    "unknown precision": (MLP + "train: {precision: fp8}\n", [], "train.precision: must be 'fp32', 'bf16' or 'fp16'"),
    "unknown model": ("model: {name: resnet}\n", [], "model.name: expected one of mlp, cnn, transformer"),
    "unknown data kind": (MLP + "data: {kind: parquet}\n", [], "data.kind: expected one of synthetic, tensors"),
    "heads do not divide": ("model: {name: transformer, d_model: 10, heads: 3}\n", [],
                            "d_model (10) must be divisible by heads (3)"),
    # Storage for a batch of two would overflow inside torch, an error naming no field.
    "sample too large": ("model: {name: 'fixtures:Trap'}\ndata: {input_shape: [2147483647, 2147483647]}\n", [],
                         "data.input_shape: a sample of this shape holds more than 2**40 values: more than any "
                         "machine holds"),
    # Past 1e308 values a float of the product would overflow: the message counts in whole numbers.
    "sample past any float": ("model: {name: 'fixtures:Trap'}\ndata: {input_shape: [" + ", ".join(["2147483647"] * 40)
                              + "]}\n", [], "data.input_shape: a sample of this shape holds more than 2**40 values"),
    "input too large": ("model: {name: 'fixtures:Trap'}\ndata: {inputs: {x: {shape: [1048576, 1048577]}}}\n", [],
                        "data.inputs.x.shape: a sample of this shape holds more than 2**40 values"),
    # A list of depths gives the number of stages: a `stages` that disagrees would go unused.
    "stages beside a depth list": ("model: {name: cnn, depth: [1, 1], stages: 3}\n", [],
                                   "model: stages (3) must be the length of the depth list (2), or left out"),
    "tolerance out of range": (MLP + "recommend: {tolerance: 2}\n", [], "recommend.tolerance: must be less than 1"),
    "option min batch": (MLP, ["--min-batch", "0"], "--min-batch: must be greater than 0 (got 0)"),
    "option memory": (MLP, ["--memory-limit", "lots"], "--memory-limit: expected a size like 2GiB"),
    "memory limit in other digits": (MLP, ["--memory-limit", "\u0661GiB"], "--memory-limit: expected a size like 2GiB"),
    "option device": (MLP, ["--device", "gpu0"], "--device: expected auto, cpu, cuda or cuda:N"),
    # torch keeps 8 bits of a device's index (cuda:128 is cuda:-128) and reads only ASCII digits.
    "device index past torch's": (MLP, ["--device", "cuda:128"], "--device: expected auto, cpu, cuda or cuda:N, "
                                  "N from 0 to 127 without leading zeros (got 'cuda:128')"),
    "device index in other digits": (MLP, ["--device", "cuda:\u0663"], "--device: expected auto, cpu, cuda or cuda:N"),
    "warm-up steps past the bound": (MLP, ["--warmup", "100000000"], "--warmup: must be less than or equal to 1000"),
    "fit steps past the bound": (MLP, ["--fit-steps", "1001"], "--fit-steps: must be less than or equal to 1000"),
    "ranks past the bound": (MLP, ["--nproc-per-node", "99999999999999999999999"],
                             "--nproc-per-node: must be less than or equal to 1024"),
    "option not a number": (MLP, ["--max-batch", "many"], "Invalid value for '--max-batch'"),
    "output folder missing": (MLP, ["-o", "/no/such/dir/r.json"], "--output: folder /no/such/dir does not exist"),
    "output is a folder": (MLP, ["-o", "{dir}"], "is a directory, expected a file path"),
    # These reach the worker: model and data are built there.
    "import path missing": ("model: {name: 'no_such_pkg.models:build'}\n" + CPU, [],
                            "model.name: cannot import 'no_such_pkg.models'"),
    "factory attribute missing": ("model: {name: 'fixtures:nothing_here'}\n" + CPU, [],
                                  "model.name: module 'fixtures' has no attribute 'nothing_here'"),
    "factory raises": ("model: {name: 'fixtures:raises'}\n" + CPU, [],
                       "model.name: fixtures:raises(**kwargs) raised ValueError: factory is broken"),
    "factory crashes": ("model: {name: 'fixtures:crashes'}\n" + CPU, [],
                        "model.name: fixtures:crashes(**kwargs) ended the worker (killed by SIGSEGV)"),
    "factory exits": ("model: {name: 'fixtures:crashes', kwargs: {how: exit}}\n" + CPU, [],
                      "model.name: fixtures:crashes(**kwargs) ended the worker (exited with code 7)"),
    "factory interrupts": ("model: {name: 'fixtures:crashes', kwargs: {how: interrupt}}\n" + CPU, [],
                           "model.name: fixtures:crashes(**kwargs) raised KeyboardInterrupt"),
    "factory raises past Exception": ("model: {name: 'fixtures:crashes', kwargs: {how: base}}\n" + CPU, [],
                                      "model.name: fixtures:crashes(**kwargs) raised Stray: stray"),
    "dataset factory crashes": (MLP + "data: {kind: 'fixtures:crashes'}\n" + CPU, [],
                                "data.kind: fixtures:crashes(**kwargs) ended the worker (killed by SIGSEGV)"),
    "factory returns no model": ("model: {name: 'fixtures:not_a_model'}\n" + CPU, [],
                                 "model.name: fixtures:not_a_model returned int, expected a torch.nn.Module"),
    "model without parameters": ("model: {name: 'fixtures:no_parameters'}\ndata: {input_shape: [8], num_classes: 8}\n"
                                 + CPU, [], "model.name: fixtures:no_parameters has no trainable parameters"),
    "loss function raises": (MLP + "data: {kind: 'fixtures:Pairs'}\ntrain: {loss: 'fixtures:broken_loss'}\n" + CPU, [],
                             "train.loss: fixtures:broken_loss raised KeyError: 'logits'"),
    "dataset factory returns no dataset": (MLP + "data: {kind: 'fixtures:not_a_model'}\n" + CPU, [],
                                           "data.kind: fixtures:not_a_model returned int, expected a map-style"),
    "iterable dataset": (MLP + "data: {kind: 'fixtures:Stream'}\n" + CPU, [],
                         "data.kind: fixtures:Stream returned Stream, expected a map-style torch Dataset (items by index"),
    "integer input beyond int64": ("model: {name: mlp}\ndata: {inputs: {x: {shape: [3], dtype: int64, high: 1e30}}}\n", [],
                                   "data.inputs.x.high: expected a whole number below 2**63 (got 1e+30)"),
    "quoted exponent": (MLP + "train: {lr: '1e-3'}\n", [],
                        "train.lr: expected a number, not text (got '1e-3'; without the quotes it is a number)"),
    "integer input beyond int32": ("model: {name: mlp}\ndata: {inputs: {x: {shape: [3], dtype: int32, high: 3000000000}}}\n",
                                   [], "data.inputs.x: an int32 input's [low, high) must lie within [-2**31, 2**31 - 1)"),
    "bool input above its default high": ("model: {name: mlp}\ndata: {inputs: {x: {shape: [3], dtype: bool, low: 3}}}\n",
                                          [], "data.inputs.x: high (2, a bool input's default) must be > low (3)"),
    "bool input beyond 0 and 1": ("model: {name: mlp}\ndata: {inputs: {x: {shape: [3], dtype: bool, high: 3}}}\n",
                                  [], "data.inputs.x: a bool input's [low, high) must lie within [0, 2) (got [0, 3))"),
    "range for a float input": ("model: {name: mlp}\ndata: {inputs: {x: {shape: [3], low: 1}}}\n", [],
                                "data.inputs.x: low and high are for integer and bool inputs; a float32 input is "
                                "drawn from a standard normal"),
    "boolean for a number, shown as written": ("model: {name: mlp}\nprobe: {steps: true}\n", [],
                                               "probe.steps: expected a number, not a boolean (got true)"),
    "null for a section, shown as written": ("model: null\n", [], "model: must be a valid dictionary (got null)"),
    "trial timeout beyond any clock": (MLP + "probe: {trial_timeout_s: 1.0e+300}\n", [],
                                       "probe.trial_timeout_s: must be less than or equal to 1000000"),
    "target batch beyond any dataset": (MLP + CPU, ["--target-batch", "1" + "0" * 30],
                                        "--target-batch: must be less than or equal to 9007199254740992"),
    "data path without a kind": ("model: {name: mlp}\ndata: {path: data.pt}\n", [],
                                 "config.yaml: data.path given, but data.kind is synthetic, which does not read it"),
    "data arguments without a kind": ("model: {name: mlp}\ndata: {kwargs: {n: 3}}\n", [],
                                      "config.yaml: data.kwargs given, but data.kind is synthetic"),
    "empty dataset": (MLP + "data: {kind: 'fixtures:Pairs', kwargs: {n: 0}}\n" + CPU, [],
                      "data: the fixtures:Pairs dataset is empty"),
    "dataset smaller than min batch": (MLP + "data: {kind: 'fixtures:Pairs', kwargs: {n: 10}}\n" + CPU,
                                       ["--min-batch", "16"], "--min-batch: 16 is larger than the dataset (10"),
    "dataset of one sample": (MLP + "data: {kind: 'fixtures:Pairs', kwargs: {n: 1}}\n" + CPU,
                              ["--min-batch", "2"], "--min-batch: 2 is larger than the dataset (1 sample)"),
    "shape does not fit": ("model: {name: mlp, in_features: 5}\ndata: {kind: 'fixtures:Pairs'}\n" + CPU, [],
                           "data and model do not fit together: inputs (2, 8) torch.float32"),
    "labels out of range": ("model: {name: mlp, in_features: 8, classes: 2}\n"
                            "data: {kind: 'fixtures:Pairs', kwargs: {classes: 9}}\n" + CPU, [],
                            "but the model outputs 2 classes"),
    "tensor file missing": (MLP + "data: {kind: tensors, path: none.pt}\n" + CPU, [], "none.pt: no such file"),
    "tensor file is a folder": (MLP + "data: {kind: tensors, path: .}\n" + CPU, [],
                                "is a directory, expected a .pt or .npz file"),
    "tensor file wrong keys": (MLP + "data: {kind: tensors, path: wrong.npz}\n" + CPU, [],
                               "expected 'inputs' and 'targets'"),
    "synthetic factory needs shape": ("model: {name: 'fixtures:Trap'}\n" + CPU, [],
                                      "data.input_shape: required for synthetic data with a factory model"),
    # Hostile or careless input beyond the ordinary: each still one line, exit 2.
    "duplicate key": (MLP + "probe: {steps: 3}\nprobe: {device: cpu}\n", [], "duplicate key 'probe' at line 3"),
    "duplicate nested key": (MLP + "train: {lr: 0.1, lr: 0.2}\n", [], "duplicate key 'lr' at line 2"),
    "device with a newline": (MLP + 'probe: {device: "cpu\\n"}\n', [],
                              "probe.device: expected auto, cpu, cuda or cuda:N, N from 0 to 127 without leading zeros "
                              "(got 'cpu\\n')"),
    "factory with a newline": ('model: {name: "fixtures:Trap\\n"}\n', [], "model.name: expected one of mlp"),
    "memory limit of 400 digits": (MLP, ["--memory-limit", "9" * 400], "--memory-limit: must be at most"),
    "memory limit huge integer": (MLP + f"probe: {{memory_limit: {10**30}}}\n", [],
                                  "probe.memory_limit: must be at most"),
    "nan in kwargs": ("model: {name: 'fixtures:Trap', kwargs: {features: .nan}}\n", [],
                      "model.kwargs: features: must be a finite number (got nan)"),
    "infinite lr": (MLP + "train: {lr: .inf}\n", [], "train.lr: must be a finite number (got inf)"),
    "infinite optimizer lr": (MLP + "train: {optimizer: 'fixtures:opt', optimizer_kwargs: {lr: .inf}}\n", [],
                              "train.optimizer_kwargs: lr: must be a finite number (got inf)"),
    "nan optimizer setting": (MLP + "train: {optimizer: 'fixtures:opt', optimizer_kwargs: {betas: [0.9, .nan]}}\n",
                              [], "train.optimizer_kwargs: betas[1]: must be a finite number (got nan)"),
    "nan time budget": (MLP, ["--time-budget", "nan"], "--time-budget: must be a finite number (got nan)"),
    "max batch past any dataset": (MLP, ["--max-batch", "9" * 23], "--max-batch: must be less than or equal to "
                                                                   "9007199254740992"),
    "require-on alone": (MLP, ["--require-on", "limit"], "--require-on: says what --require-batch checks; give "
                                                          "--require-batch N too"),
    "output is the config": (MLP, ["-o", "{config}"], "would overwrite"),
    "output is the data file": (MLP + "data: {kind: tensors, path: data.pt}\n", ["-o", "{dir}/data.pt"],
                                "data.pt would overwrite"),
    "plot is the data file": (MLP + "data: {kind: tensors, path: data.pt}\n", ["--plot", "{dir}/data.pt"],
                              "data.pt would overwrite"),
    "plot is the config": (MLP, ["--plot", "{config}"], "would overwrite"),
    "output name too long": (MLP, ["-o", "x" * 300], "--output: a name in the path is longer than 255 bytes"),
    "tensor file holds objects": (MLP + "data: {kind: tensors, path: objects.pt}\n" + CPU, [],
                                  "it holds argparse.Namespace; only tensors"),
    "tensor file that is text": (MLP + "data: {kind: tensors, path: config.yaml}\n" + CPU, [],
                                 "config.yaml is not a file torch.save wrote, expected a .pt file"),
    "npz file that is text": (MLP + "data: {kind: tensors, path: text.npz}\n" + CPU, [],
                              "text.npz is not an .npz archive (numpy.savez writes one)"),
    "optimizer of other parameters": (MLP + "train: {optimizer: 'fixtures:elsewhere_optimizer'}\n" + CPU, [],
                                      "train.optimizer: fixtures:elsewhere_optimizer returned an optimizer that holds "
                                      "none of the model's parameters"),
    "optimizer that is a name": (MLP + "train: {optimizer: 'fixtures:named_optimizer'}\n" + CPU, [],
                                 "train.optimizer: fixtures:named_optimizer returned str, expected an optimizer"),
    "depth neither a number nor a list": ("model: {name: cnn, depth: [3, -1]}\n", [],
                                          "model.depth: expected a positive number of blocks per stage, or a "
                                          "non-empty list of them (got [3, -1])"),
    "empty depth": ("model: {name: cnn, depth: []}\n", [], "model.depth: expected a positive number"),
    "width torch cannot index": ("model: {name: cnn, width: 100000000000000000000}\n", [],
                                 "model.width: must be less than or equal to 2147483647"),
    "a value as long as a file": ("model: {name: '" + "x" * 5000 + "'}\n", [], "model.name: expected one of"),
    "memory limit above the ram": (MLP + CPU, ["--memory-limit", "1000000TiB"],
                                   "--memory-limit: 976.6 PiB is more than this machine's RAM"),
    "memory limit in PiB": (MLP + CPU, ["--memory-limit", "2PiB"], "--memory-limit: 2.0 PiB is more than this machine's RAM"),
    "memory limit past 64 bits": (MLP + CPU, ["--memory-limit", "9EiB"],
                                  "--memory-limit: must be at most 9223372036854775807 bytes (8 EiB) (got '9EiB')"),
    "output is stdout beside json": (MLP, ["--json", "-o", "/dev/stdout"],
                                     "--output: /dev/stdout is standard output, where --json already writes"),
    "module that fails as it is imported": ('model: {name: "fails_on_import:Model"}\n', [],
                                            "model.name: importing 'fails_on_import' raised ZeroDivisionError: "
                                            "division by zero"),
    "factory whose error has no message": ("model: {name: 'fixtures:unprintable'}\n" + CPU, [],
                                           "model.name: fixtures:unprintable(**kwargs) raised _Unprintable: "
                                           "(its message could not be read)"),
    "factory error of 100,000 characters": ("model: {name: 'fixtures:long_winded'}\n" + CPU, [],
                                            "raised ValueError: " + "x" * 200),
    "items that are None": (MLP + "data: {kind: 'fixtures:Nones'}\n" + CPU, [],
                            "data: items of the Nones dataset do not stack into a batch: TypeError"),
    "items of two kinds": (MLP + "data: {kind: 'fixtures:Mixed'}\n" + CPU, [],
                           "data: items of the Mixed dataset do not stack into a batch"),
    "factory that calls sys.exit": ('model: {name: "fixtures:exits"}\n', [],
                                    "model.name: fixtures:exits(**kwargs) raised SystemExit (sys.exit(3))"),
    # The user's code ends its process where a worker runs it: that code's failure, named.
    "step that calls sys.exit": (MLP + "train: {step: 'fixtures:exiting_step'}\n" + CPU, [],
                                 "train.step fixtures:exiting_step raised SystemExit (sys.exit(0))"),
    "loss that raises KeyboardInterrupt": (MLP + "data: {kind: 'fixtures:Pairs'}\ntrain: {loss: 'fixtures:interrupting_loss'}\n"
                                           + CPU, [], "train.loss: fixtures:interrupting_loss raised KeyboardInterrupt"),
    "dataset item that calls sys.exit": (MLP + "data: {kind: 'fixtures:ExitingItems'}\n" + CPU, [],
                                         "data: item 0 of the ExitingItems dataset raised SystemExit "
                                         "(sys.exit('no more items'))"),
    "forward that calls sys.exit": ("model: {name: 'fixtures:ExitingForward'}\ndata: {kind: 'fixtures:Pairs'}\n" + CPU, [],
                                    "model.name: fixtures:ExitingForward raised SystemExit (sys.exit(1)) (inputs (2, 8)"),
    "dataset whose length fails": (MLP + "data: {kind: 'fixtures:NegativeLength'}\n" + CPU, [],
                                   "data.kind: the length of fixtures:NegativeLength's dataset raised ValueError"),
    "tokens past the vocabulary": ("model: {name: transformer, vocab_size: 50, d_model: 16, layers: 1, heads: 2}\n"
                                   "data: {kind: 'fixtures:TokenIds'}\n" + CPU, [],
                                   "IndexError: index out of range in self; the transformer takes token ids from 0 "
                                   "to below model.vocab_size (50) and sequences up to model.seq_len (128) long"),
    # Found in the first trial, after its progress line (-q leaves it out).
    "loss cut off from the model": (MLP + "data: {kind: 'fixtures:Pairs'}\ntrain: {loss: 'fixtures:detached_loss'}\n"
                                    + CPU, ["-q"], "the loss from train.loss fixtures:detached_loss does not depend on the "
                                    "model's trainable parameters (no grad_fn: made under torch.no_grad(), or from "
                                    "detached tensors): nothing to train"),
    "output made without gradients": ("model: {name: 'fixtures:Inference'}\ndata: {kind: 'fixtures:Pairs'}\n" + CPU,
                                      ["-q"], "the model's output does not depend on the model's trainable parameters"),
    "model on the meta device": ("model: {name: 'fixtures:on_meta'}\ndata: {kind: 'fixtures:Pairs'}\n" + CPU, [],
                                 "model.name: fixtures:on_meta returned a model with 2 tensors on the meta device "
                                 "(weight, bias): shapes without data; materialize them first"),
    **{f"model whose own {method}() raises": (f"model: {{name: 'fixtures:Broken', kwargs: {{method: {method}}}}}\n"
                                             "data: {kind: 'fixtures:Pairs'}\n" + CPU, [],
                                             f"model.name: fixtures:Broken's {method}({arg}) raised RuntimeError: "
                                             f"{method} is broken here")
       for method, arg in [("train", ""), ("to", "cpu"), ("parameters", "")]},
    "sparse gradients for adam": ("model: {name: 'fixtures:SparseBag'}\ndata: {input_shape: [5], input_dtype: int64, "
                                  "vocab_size: 50, num_classes: 4}\ntrain: {optimizer: adam}\n" + CPU, [],
                                  "train.optimizer: adam takes no sparse gradients, and the model's bag gives them"),
    "sparse gradients for weight decay": ("model: {name: 'fixtures:SparseBag'}\ndata: {input_shape: [5], input_dtype: "
                                          "int64, vocab_size: 50, num_classes: 4}\ntrain: {optimizer: sgd, "
                                          "weight_decay: 0.01}\n" + CPU, [],
                                          "train.weight_decay: sgd with weight decay takes no sparse gradients"),
    "key that YAML reads as a boolean": ("model: {name: 'fixtures:on_meta', kwargs: {on: 1}}\n", [],
                                         "config.yaml: model.kwargs: key True is not a string (YAML reads true, false, "
                                         "yes, no, on, off and numbers unquoted as such): quote it"),
    "labels past the classes of a model's own loss": ("model: {name: 'fixtures:OwnLoss'}\ndata: {inputs: {x: {shape: [8]}, "
                                                      "labels: {shape: [], dtype: int64, low: 4, high: 8}}}\n" + CPU, [],
                                                      "data: labels range over [4, 7] but the model outputs 4 classes"),
    "mse against classes": ("model: {name: 'fixtures:normed_mlp'}\ndata: {input_shape: [8], num_classes: 4}\n"
                            "train: {loss: mse}\n" + CPU, [],
                            "train.loss: mse of an output of shape (2, 4) against targets of shape (2,): they must have "
                            "the same shape; with train.loss mse the synthetic targets are floats, and data.num_classes "
                            "is not used"),
    "optimizer that needs a closure": (MLP + "train: {optimizer: 'torch.optim:LBFGS'}\n" + CPU, ["-q"],
                                       "train.optimizer: torch.optim:LBFGS: its step raised TypeError: LBFGS.step() "
                                       "missing 1 required positional argument: 'closure'; an optimizer that calls a "
                                       "closure (LBFGS) needs a step of your own that passes one: train.step"),
    "factory optimizer and sparse gradients": ("model: {name: 'fixtures:SparseBag'}\ndata: {input_shape: [5], input_dtype: "
                                               "int64, vocab_size: 50, num_classes: 4}\ntrain: {optimizer: "
                                               "'torch.optim:AdamW'}\n" + CPU, ["-q"],
                                               "train.optimizer: torch.optim:AdamW: its step raised RuntimeError: Adam "
                                               "does not support sparse gradients"),
    "fp16 scaling of float16 parameters": ("model: {name: 'fixtures:half_linear'}\ndata: {input_shape: [8], num_classes: 4}\n"
                                           "train: {precision: fp16}\n" + CPU, ["-q"],
                                           "train.optimizer: sgd: its step raised ValueError: Attempting to unscale FP16 "
                                           "gradients.; train.precision fp16 scales gradients"),
    "model that moves its inputs to cuda itself": ("model: {name: 'fixtures:OnCuda'}\ndata: {input_shape: [8], "
                                                   "num_classes: 4}\n" + CPU, [],
                                                   "model.name: fixtures:OnCuda moves tensors to a GPU itself, and this "
                                                   "probe runs on cpu: "),
    "a tuple's output without a position": ("model: {name: 'fixtures:TwoOut'}\ndata: {kind: 'fixtures:Pairs'}\n"
                                            + CPU, [], "the model returned a tuple of 2: not a tensor and no loss; set "
                                            "train.output to the position to score (a number: 0 for the first)"),
    "a dict batch's target passed to the model": ("model: {name: 'fixtures:Linear'}\ndata: {kind: 'fixtures:Keyed'}\n"
                                                  + CPU, [], "got an unexpected keyword argument 'y'; if y is the "
                                                  "target, name it in train.target and it is kept from the model"),
    "token ids past a model's embedding": ("model: {name: 'fixtures:Embedded'}\ndata: {input_shape: [5], input_dtype: "
                                           "int64, vocab_size: 100, num_classes: 4}\n" + CPU, [],
                                           "index out of range in self; an embedding was looked up past its size: token "
                                           "ids must lie below the model's vocabulary (synthetic ids are drawn below "
                                           "data.vocab_size) and sequences within its positions"),
    "output field a NamedTuple lacks": ("model: {name: 'fixtures:Named'}\ndata: {kind: 'fixtures:Pairs'}\n"
                                        "train: {output: logit}\n" + CPU, [],
                                        "train.output: the model returned Out with fields logits, features: no field "
                                        "'logit'"),
    "inputs as one argument": ("model: {name: 'fixtures:TakesOne'}\ndata: {kind: 'fixtures:Triples'}\n" + CPU, [],
                               "TakesOne.forward() takes 2 positional arguments but 3 were given; a model that takes "
                               "its inputs as one argument is called so with train.call: single"),
    "items on the meta device": (MLP + "data: {kind: 'fixtures:MetaItems'}\n" + CPU, [],
                                 "data: items of the MetaItems dataset hold tensors on the meta device"),
    "forward argument the model does not take": (MLP + "data: {kind: 'fixtures:Pairs'}\n"
                                                 "train: {forward_kwargs: {mask: [1, 2]}}\n" + CPU, [],
                                                 "train.forward_kwargs: mask: mlp refused it: TypeError: "
                                                 "Sequential.forward() got an unexpected keyword argument 'mask'"),
    "forward argument given twice": ("model: {name: 'fixtures:Trap'}\ndata: {kind: 'fixtures:Pairs'}\n"
                                     "train: {forward_kwargs: {x: 1}}\n" + CPU, [],
                                     "train.forward_kwargs: x: fixtures:Trap refused it: TypeError: "),
    "own loss of class labels given floats": (MLP + "train: {loss: 'fixtures:labelled_cross_entropy'}\n" + CPU, [],
                                              # torch's own words in between differ between versions
                                              "targets are floats: set data.num_classes for class labels"),
    "image that does not decode": ("model: {name: cnn, image_size: 8, width: 4, depth: 1, stages: 1, classes: 2}\n"
                                   "data: {kind: imagefolder, path: images}\n" + CPU, [],
                                   "config.yaml: data.path: cannot decode image"),
    "image folder of splits": ("model: {name: cnn, image_size: 8, width: 4, depth: 1, stages: 1, classes: 2}\n"
                               "data: {kind: imagefolder, path: split_images}\n" + CPU, [],
                               "split_images holds train, val: a dataset's splits, not its classes; point data.path at "
                               "the one to train on ("),
    # Opened, a FIFO waits for a writer: the probe hung at set-up.
    "tensor file that is a FIFO": (MLP + "data: {kind: tensors, path: fifo.pt}\n" + CPU, [],
                                   "fifo.pt is not a regular file (a FIFO, a device or a socket), expected a .pt"),
    "tensor file in a loop of links": (MLP + "data: {kind: tensors, path: loop_a.pt}\n" + CPU, [],
                                       "loop_a.pt: Too many levels of symbolic links"),
    "image that is a FIFO": ("model: {name: cnn, image_size: 8, width: 4, depth: 1, stages: 1, classes: 2}\n"
                             "data: {kind: imagefolder, path: fifo_images}\n" + CPU, [],
                             "0.png is not a regular file (a FIFO, a device or a socket)"),
    # Pillow's refusal of an image claiming 10^10 pixels is no OSError: it named no file.
    "image that claims too many pixels": ("model: {name: cnn, image_size: 8, width: 4, depth: 1, stages: 1, "
                                          "classes: 2}\ndata: {kind: imagefolder, path: bomb_images}\n" + CPU, [],
                                          "0.png: Image size (10000000000 pixels) exceeds limit"),
    "cuda without a gpu": (MLP + "probe: {device: cuda}\n", [], "probe.device: cuda requested but this torch sees no"),
    "cuda:7": (MLP + "probe: {device: 'cuda:7'}\n", [], "probe.device: cuda:7 requested"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path):
    if "cuda" in name and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    text, args, expected = CASES[name]
    config = tmp_path / ("config.toml" if "toml" in name else "config.json" if "JSON" in name else "config.yaml")
    config.write_text(text)
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 8), dtype="float32"))
    torch.save({"inputs": torch.zeros(4, 8), "targets": argparse.Namespace()}, tmp_path / "objects.pt")
    (tmp_path / "text.npz").write_text("inputs,targets\n")
    torch.save({"inputs": torch.zeros(4, 8), "targets": torch.zeros(4, dtype=torch.long)}, tmp_path / "data.pt")
    (tmp_path / "images" / "cats").mkdir(parents=True)
    (tmp_path / "images" / "cats" / "0.png").write_bytes(b"\x89PNG not really")
    os.mkfifo(tmp_path / "fifo.pt")
    os.symlink("loop_b.pt", tmp_path / "loop_a.pt")
    os.symlink("loop_a.pt", tmp_path / "loop_b.pt")
    (tmp_path / "fifo_images" / "cats").mkdir(parents=True)
    os.mkfifo(tmp_path / "fifo_images" / "cats" / "0.png")
    for split in ("train", "val"):
        (tmp_path / "split_images" / split / "cats").mkdir(parents=True)
    (tmp_path / "bomb_images" / "cats").mkdir(parents=True)
    # A PNG of 100000 × 100000 pixels and no pixel data: Pillow reads the size first.
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    (tmp_path / "bomb_images" / "cats" / "0.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", b"\x00\x01\x86\xa0" * 2 + b"\x08\x02\x00\x00\x00") + chunk(b"IEND", b""))
    args = [a.replace("{dir}", str(tmp_path)).replace("{config}", str(config)) for a in args]
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative data paths resolve against the config anyway
    try:
        result = runner.invoke(app, ["probe", str(config), *args])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.output and "weights_only=False" not in result.output
    if args[:1] != ["--max-batch"]:  # typer's own usage errors come with the usage lines
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        # It names the file (errors found while building the model and data too), or the option typed.
        assert str(config) in lines[0] or any(a.startswith("-") and a in lines[0] for a in args), lines[0]
        assert len(lines[0]) < 500  # what it echoes is cut short


def test_a_module_that_crashes_as_it_is_imported_is_named(tmp_path, monkeypatch):
    (tmp_path / "crashes_on_import.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    config = tmp_path / "config.yaml"
    config.write_text(MLP + "train: {loss: 'crashes_on_import:loss'}\n" + CPU)
    monkeypatch.chdir(tmp_path)  # the working directory's modules import, as for the user
    result = runner.invoke(app, ["probe", str(config)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (f"error: {config}: train.loss: importing 'crashes_on_import' ended the worker "
                                     "(killed by SIGSEGV)")


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


def test_what_the_users_code_prints_shows_under_debug_and_never_on_stdout(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model: {name: 'fixtures:chatty'}\ndata: {input_shape: [8], num_classes: 4, size: 64}\n"
                      "probe: {device: cpu, warmup_steps: 0, steps: 1, max_batch: 2, min_time_s: 0, max_time_s: 0}\n")
    for debug, shown in (([], False), (["--debug"], True)):
        run = subprocess.run([sys.executable, "-m", "batchfind", "probe", str(config), "--json", "-q", *debug],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        json.loads(run.stdout)  # the JSON alone
        assert ("hello from the model factory" in run.stderr) is shown, run.stderr


def test_debug_shows_the_traceback_of_a_failed_trial(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model: {name: 'fixtures:Trap', kwargs: {at: 4, how: error}}\n"
                      "data: {input_shape: [8], num_classes: 4, size: 64}\nprobe: {device: cpu}\n")
    for debug, shown in (([], False), (["--debug"], True)):
        run = subprocess.run([sys.executable, "-m", "batchfind", "check", str(config), "--batch", "8", *debug],
                             capture_output=True, text=True)
        assert run.returncode == 1, run.stderr
        assert run.stdout.strip() == "batch 8: error — in forward: ValueError: a bug in the model"
        assert ("Traceback (most recent call last)" in run.stderr) is shown, run.stderr
        assert ('tests/fixtures.py", line' in run.stderr and "in forward" in run.stderr) is shown, run.stderr


def test_debug_shows_what_a_worker_said_and_still_reads_its_last_words(tmp_path):
    # A worker that dies of a failed allocation ran out of memory, with --debug as without it.
    config = tmp_path / "config.yaml"
    config.write_text("model: {name: 'fixtures:crashes', kwargs: {how: bad_alloc}}\n"
                      "data: {input_shape: [8], num_classes: 4, size: 64}\nprobe: {device: cpu}\n")
    for debug in ([], ["--debug"]):
        run = subprocess.run([sys.executable, "-m", "batchfind", "check", str(config), "--batch", "4", *debug],
                             capture_output=True, text=True)
        assert run.returncode == 3, run.stdout + run.stderr
        assert run.stdout.startswith("batch 4: oom — ") and "std::bad_alloc" in run.stdout, run.stdout
        assert ("terminate called after throwing" in run.stderr) is bool(debug), run.stderr


def test_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model: {name: mlp, width: 3}\n")
    quiet = runner.invoke(app, ["probe", str(config)])
    assert quiet.exit_code == 2 and "Traceback" not in quiet.output
    # The traceback comes on top of the one-line error, and the exit code stays that of bad input.
    for loud in (runner.invoke(app, ["probe", str(config), "--debug"]),
                 runner.invoke(app, ["probe", str(config)], env={"BATCHFIND_DEBUG": "1"})):
        assert loud.exit_code == 2 and "Traceback" in loud.stderr and "InputError" in loud.stderr
        assert loud.stderr.rstrip().endswith("model.width: unknown key")
    for off in ("0", "false", "No", "off", ""):  # what reads as off is off
        quiet = runner.invoke(app, ["probe", str(config)], env={"BATCHFIND_DEBUG": off})
        assert quiet.exit_code == 2 and isinstance(quiet.exception, SystemExit), off


def test_a_syntax_error_in_the_users_module_names_its_place():
    from batchfind.models import raised

    with pytest.raises(SyntaxError) as info:
        compile("def f(:\n", "mymodels.py", "exec")
    assert raised(info.value) == "SyntaxError: invalid syntax (mymodels.py, line 1)"


def test_a_real_ctrl_c_is_not_taken_for_the_users_code():
    """Where Ctrl-C is not ignored (anywhere but a worker), a KeyboardInterrupt stays one."""
    import signal

    from batchfind.errors import UserExit, exits_are_errors

    # Set here, whatever the test runner left: a runner's worker may ignore Ctrl-C itself.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with exits_are_errors():
                raise KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with pytest.raises(UserExit, match=r"^KeyboardInterrupt$"):
            with exits_are_errors():
                raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, previous)
