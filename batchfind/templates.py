"""Commented starter configs for `batchfind init`."""

_COMMON = """\
train:
  optimizer: {optimizer}        # sgd | adam | adamw | rmsprop
  lr: {lr}                 # the learning rate tuned at reference_batch
  reference_batch: {reference}      # with it, every batch size gets its scaled learning rate
  weight_decay: 0.0
  loss: cross_entropy        # cross_entropy | mse
  precision: fp32            # fp32 | bf16 | fp16 (autocast)
probe:
  device: auto               # auto | cpu | cuda | cuda:N
  min_batch: 1               # then 2x, 4x, ... until out of memory
  max_batch: null            # null: up to the dataset size
  warmup_steps: 2            # unmeasured steps per size
  steps: 5                   # measured steps per size (median and p10-p90 reported)
  memory_limit: null         # e.g. 2GiB; CPU default: 80% of available RAM; GPU: the whole card
  refine: true               # search the exact edge between powers of two
  multiple_of: 1             # refined sizes are multiples of this (8 suits tensor cores)
  time_budget_s: 600         # no new trial starts after this
  trial_timeout_s: 300       # a trial taking longer is stopped
  nproc_per_node: null       # e.g. 8: one rank per GPU, the same batch per device (or use torchrun)
  strategy: ddp              # ddp | fsdp: how the ranks train
recommend:
  tolerance: 0.02            # "as fast" = within 2% of the best samples/s
  headroom: 0.10             # the recommended size leaves 10% of the memory limit free
  lr_rule: auto              # auto | linear | sqrt | none
  target_batch: null         # e.g. 1024: sizes below it get accumulation steps
  noise_scale: false         # estimate the gradient noise scale
"""

TEMPLATES = {
    "mlp": """\
# batchfind config: an MLP on tabular features (synthetic data of the right shape).
model:
  name: mlp
  in_features: 64            # input features
  hidden: 256                # width of each hidden layer
  layers: 3                  # hidden layers
  classes: 10
data:
  kind: synthetic            # synthetic | tensors | imagefolder | package.module:factory
  size: 100000               # samples per epoch
""" + _COMMON.format(optimizer="adam", lr="0.001", reference="256"),
    "cnn": """\
# batchfind config: a ResNet-like CNN on images.
model:
  name: cnn
  in_channels: 3
  image_size: 32             # square images of this size
  width: 32                  # channels of the first stage, doubling per stage
  depth: 2                   # blocks per stage, or a list such as [3, 4, 6, 3]
  stages: 3
  block: basic               # basic | bottleneck
  stem: cifar                # cifar (3x3) | imagenet (7x7 stride 2 + max-pool)
  classes: 10
data:
  kind: synthetic            # or: kind: imagefolder, path: train/ (one subfolder per class)
  size: 50000
""" + _COMMON.format(optimizer="sgd", lr="0.1", reference="256"),
    "gpt": """\
# batchfind config: a GPT-like decoder predicting the next token.
model:
  name: transformer
  vocab_size: 8192
  d_model: 256
  layers: 4
  heads: 4                   # must divide d_model
  seq_len: 128
  dropout: 0.0
  causal: true               # false: BERT-style bidirectional attention
data:
  kind: synthetic            # or a package.module:factory returning (tokens, targets) items
  size: 100000               # sequences per epoch
""" + _COMMON.format(optimizer="adamw", lr="0.0003", reference="64"),
    "custom": """\
# batchfind config: your own model and dataset, built by your code.
# Configs that name package.module:factory run that code: treat configs as code.
model:
  name: mypackage.models:build_model   # a callable returning a torch.nn.Module
  kwargs: {}                           # passed to it
data:
  kind: mypackage.data:build_dataset   # a callable returning a map-style Dataset of (input, target)
  kwargs: {}
  workers: 4                           # DataLoader workers for the loader timing
""" + _COMMON.format(optimizer="adamw", lr="0.0003", reference="32"),
}
