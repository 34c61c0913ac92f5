"""Models people train, from YAML: Hugging Face BERT and GPT-2 built from small configs (no
downloads), dict batches and datasets, two-input models, a loss, an optimizer and a step of your
own, a LightningModule; and the errors when a model and its data do not go together."""

import collections
import math
import os
import re
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from batchfind.cli import app
from batchfind.config import load_config
from batchfind.data import Batches, build_batches, collate, pad_collate, to_device
from batchfind.errors import InputError
from batchfind.devices import CappedPeak
from batchfind.measure import StepPlan, gradient_sq_norms, measure, measure_loader
from batchfind.models import build_model, instantiate
from batchfind.session import check_fit
from batchfind.step import CustomStep, LightningStep, Step, make_step

CPU = torch.device("cpu")
ROOT = Path(__file__).parent.parent
PROBE = "probe: {device: cpu, warmup_steps: 0, steps: 1, max_batch: 4, refine: false}\n"

BERT = """
model:
  name: transformers:BertForSequenceClassification
  kwargs:
    config:
      _target_: transformers.BertConfig
      vocab_size: 100
      hidden_size: 16
      num_hidden_layers: 1
      num_attention_heads: 2
      intermediate_size: 32
      max_position_embeddings: 32
      num_labels: 3
      hidden_dropout_prob: 0.0          # so the loss a step reports can be recomputed
      attention_probs_dropout_prob: 0.0
"""
BERT_SYNTHETIC = BERT + """
data:
  size: 64
  inputs:
    input_ids: {shape: [12], dtype: int64, high: 100}
    attention_mask: {shape: [12], dtype: int64, low: 1, high: 2}
    labels: {shape: [], dtype: int64, high: 3}
train:
  optimizer: adamw
  lr: 0.001
"""
GPT2 = """
model:
  name: transformers:GPT2LMHeadModel
  kwargs:
    config: {_target_: 'transformers:GPT2Config', vocab_size: 100, n_embd: 16, n_layer: 1, n_head: 2, n_positions: 32}
data: {kind: 'zoo:Tokens', kwargs: {n: 20, vocab: 100}}
train: {optimizer: adamw, lr: 0.001}
"""
MLP_PAIRS = "model: {name: mlp, in_features: 8, hidden: 16, layers: 1, classes: 4}\ndata: {kind: 'fixtures:Pairs', kwargs: {n: 32}}\n"


@pytest.fixture
def built(write_config):
    def build(text: str):
        cfg = load_config(write_config(text))
        torch.manual_seed(0)
        return cfg, build_model(cfg.model).train(), build_batches(cfg, CPU)

    return build


def trains(step, batch, model) -> float:
    """Runs one step; asserts the backward reached the weights and the optimizer stepped (at learning
    rate 0, leaving them as they were), and returns the loss."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    before = [p.detach().clone() for p in model.parameters()]
    stepped = []
    hook = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: stepped.append(optimizer))
    try:
        loss = step(batch)
    finally:
        hook.remove()
    assert loss.dim() == 0 and not loss.requires_grad and torch.isfinite(loss)
    assert stepped, "the optimizer stepped"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()), "gradients reached the weights"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "at learning rate 0"
    return float(loss)


def probe(write_config, text: str, *args: str):
    """Exit code, stdout (the JSON report) and stderr (errors) of a probe."""
    result = CliRunner().invoke(app, ["probe", str(write_config(text)), "--json", *args])
    return result.exit_code, result.stdout, result.stderr


# ---- batches of any structure -------------------------------------------------------------


def test_nested_batches_move_to_the_device_keeping_their_structure():
    batch = {"a": torch.zeros(3, 2), "pair": (torch.ones(3), [torch.zeros(3, 1)]), "text": ["x"] * 3}
    moved = to_device(batch, torch.device("meta"))
    assert moved["a"].device.type == "meta" and moved["pair"][1][0].device.type == "meta"
    assert moved["text"] == ["x"] * 3 and isinstance(moved["pair"], tuple) and isinstance(moved["pair"][1], list)
    # A namedtuple takes its fields one by one: a dataset of them used to fail as its first batch moved.
    Pair = collections.namedtuple("Pair", "x y")
    pair = to_device(Pair(torch.zeros(3), torch.ones(3)), torch.device("meta"))
    assert isinstance(pair, Pair) and pair.y.device.type == "meta"


def test_dict_items_collate_to_tensors_padding_labels_with_the_ignore_index():
    items = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7], "meta": {"id": 0}},
             {"input_ids": [8], "labels": [8], "meta": {"id": 1}}]
    batch = collate(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert batch["meta"]["id"].tolist() == [0, 1]


def test_items_of_any_structure_pad_every_field_whose_length_varies():
    # (ids, mask, label): three parts; ({ids, mask}, label): lengths inside a dict inside a tuple.
    three = pad_collate([(torch.tensor([1, 2, 3]), [1, 1, 1], 0), (torch.tensor([4]), [1], 1)])
    assert three[0].tolist() == [[1, 2, 3], [4, 0, 0]] and three[1].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert three[2].tolist() == [0, 1]
    nested = pad_collate([({"ids": [1, 2], "mask": [1, 1]}, [7, 8]), ({"ids": [3], "mask": [1]}, [9])])
    assert nested[0]["ids"].tolist() == [[1, 2], [3, 0]] and nested[1].tolist() == [[7, 8], [9, -100]]
    # Only integer targets are padded to be ignored: a mask stays a mask, a float target gets 0.
    masked = pad_collate([(torch.tensor([1, 2]), torch.tensor([True, True])), (torch.tensor([3]), torch.tensor([True]))])
    assert masked[1].tolist() == [[True, True], [True, False]]
    floats = pad_collate([(torch.tensor([1, 2]), torch.tensor([0.5, 0.5])), (torch.tensor([3]), torch.tensor([0.5]))])
    assert floats[1].tolist() == [[0.5, 0.5], [0.5, 0.0]]
    for narrow in (torch.uint8, torch.int8, torch.int16):  # -100 fits none of them as they are
        labels = pad_collate([(torch.tensor([1, 2]), torch.tensor([1, 2], dtype=narrow)),
                              (torch.tensor([3]), torch.tensor([2], dtype=narrow))])[1]
        assert labels.dtype == torch.int64 and labels.tolist() == [[1, 2], [2, -100]], narrow
    words = pad_collate([(["a", "b"], [1, 2]), (["c"], [3])])
    assert words[0] == [["a", "b"], ["c"]]  # text stays text
    with pytest.raises(InputError, match=r"field 0 varies in shape .* only the first dimension"):
        pad_collate([(torch.zeros(2, 3), 0), (torch.zeros(2, 4), 1)])
    with pytest.raises(InputError, match=r"field 0 holds 2 elements in one item and 1 in another"):
        pad_collate([([torch.zeros(1), torch.zeros(1)], [1, 2]), ([torch.zeros(1)], [1])])


def test_the_target_key_pads_as_a_target_and_numpy_arrays_vary_in_length():
    # train.target names the key: its padding is ignored by cross-entropy, as `labels`' is.
    tagged = pad_collate([{"ids": [1, 2], "tags": [3, 4]}, {"ids": [5], "tags": [6]}], target="tags")
    assert tagged["tags"].tolist() == [[3, 4], [6, -100]] and tagged["ids"].tolist() == [[1, 2], [5, 0]]

    # Audio-like items: numpy arrays of (time, features), the time varying.
    class Clips(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return np.ones((3 + i, 2), dtype=np.float32), i % 2

    batches = Batches(Clips(), None, 6, CPU)
    assert batches.lengths == {"longest": 8, "shortest": 3, "scanned": 6, "total": 6}
    x, y = batches.batch(3)
    assert x.shape == (3, 8, 2) and y.tolist() == [1, 0, 1]


def test_items_of_one_length_collate_as_torch_does():
    # (feature, label) of Python numbers, a namedtuple, numpy arrays: default_collate's batches,
    # dtypes and types; dicts of lists (a tokenizer's) become tensors.
    pair = collate([(0.5, 1), (0.25, 0)])
    assert pair[0].dtype == torch.float64 and pair[1].tolist() == [1, 0]
    Item = collections.namedtuple("Item", "x y")
    assert type(collate([Item(torch.zeros(2), 1), Item(torch.ones(2), 0)])) is Item
    arrays = collate([(np.zeros(3, dtype=np.float32), 1), (np.ones(3, dtype=np.float32), 0)])
    assert arrays[0].dtype == torch.float32 and arrays[0].shape == (2, 3)
    assert collate([{"ids": [1, 2]}, {"ids": [3, 4]}])["ids"].tolist() == [[1, 2], [3, 4]]


def test_an_item_is_as_long_as_its_longest_varying_field():
    class Tagged(torch.utils.data.Dataset):
        # A fixed 64-wide feature beside tokens of 3 to 12: only the tokens make items long.
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"features": torch.zeros(64), "ids": list(range(3 + i))}, i % 2

    batches = Batches(Tagged(), None, 10, CPU)
    assert batches.lengths == {"longest": 12, "shortest": 3, "scanned": 10, "total": 10}
    assert batches.batch(2)[0]["ids"].shape == (2, 12)


def test_a_batch_meets_every_fields_longest_when_the_fields_do_not_grow_together():
    class Summaries(torch.utils.data.Dataset):
        # Long articles with short summaries, and short ones with long summaries (an encoder-decoder's).
        def __len__(self):
            return 10

        def __getitem__(self, i):
            long_input = i < 8
            return {"input_ids": [1] * (200 - i if long_input else 20), "labels": [2] * (10 if long_input else 150 - i)}

    batches = Batches(Summaries(), None, 10, CPU)
    assert batches.lengths == {"longest": 200, "shortest": 141, "scanned": 10, "total": 10}
    one = batches.batch(1)
    assert one["input_ids"].shape == (1, 200) and one["labels"].shape == (1, 10)  # the longest item alone
    two = batches.batch(2)
    assert two["input_ids"].shape == (2, 200) and two["labels"].shape == (2, 142)


def test_a_model_given_its_labels_may_return_the_loss_as_a_bare_scalar(built):
    inputs = "data: {inputs: {x: {shape: [8]}, y: {shape: [], dtype: int64, high: 4}}}\n"
    cfg, model, batches = built("model: {name: 'zoo:ScoresItself'}\n" + inputs)
    batch = batches.batch(4)
    step = make_step(model, cfg.train, CPU)
    with torch.no_grad():
        expected = float(model(**batch))
    assert trains(step, batch, model) == pytest.approx(expected, rel=1e-5)
    # A scalar that no gradient reaches (an accuracy, or a loss made under no_grad) trains nothing.
    cfg, model, batches = built("model: {name: 'zoo:ScoresItself', kwargs: {accuracy: true}}\n" + inputs)
    with pytest.raises(InputError, match=r"^the model's output does not depend on the model's trainable parameters "
                                         r"\(no grad_fn"):
        make_step(model, cfg.train, CPU)(batches.batch(4))
    # Logits without a target are no loss, and the error shows what came back.
    cfg, model, batches = built("model: {name: 'zoo:ScoresItself'}\ndata: {inputs: {x: {shape: [8]}}}\n")
    with pytest.raises(InputError, match=r"output \(a tensor of shape \(2, 4\)\) is not a loss"):
        check_fit(model, batches, cfg, CPU)


# ---- Hugging Face transformers, built from YAML ---------------------------------------------


def test_nested_targets_build_objects_and_name_the_field_when_they_fail():
    transformers = pytest.importorskip("transformers")
    config = instantiate({"config": {"_target_": "transformers.BertConfig", "hidden_size": 16}}, "model.kwargs")["config"]
    assert isinstance(config, transformers.BertConfig) and config.hidden_size == 16
    with pytest.raises(InputError, match=r"model.kwargs.config._target_: cannot import 'nowhere'"):
        instantiate({"config": {"_target_": "nowhere:Config"}}, "model.kwargs")
    with pytest.raises(InputError, match=r"model.kwargs.config.inner._target_: .*raised TypeError"):
        instantiate({"config": {"inner": {"_target_": "torch.nn.Linear", "bogus": 1}}}, "model.kwargs")


def test_hydra_positional_arguments_and_partials_build_as_hydra_builds_them():
    import functools

    layer = instantiate({"layer": {"_target_": "torch.nn.Linear", "_args_": [4, {"_target_": "builtins.int", "_args_":
                                                                                  ["3"]}], "bias": False}}, "model.kwargs")
    assert tuple(layer["layer"].weight.shape) == (3, 4) and layer["layer"].bias is None
    made = instantiate({"_target_": "torch.optim:SGD", "_partial_": True, "lr": 0.5}, "model.kwargs.optimizer")
    assert isinstance(made, functools.partial) and made.keywords == {"lr": 0.5}
    assert made(torch.nn.Linear(2, 2).parameters()).defaults["lr"] == 0.5
    for value, message in (({"_target_": "torch.nn.Linear", "_args_": 4}, r"model.kwargs._args_: expected a list"),
                           ({"_target_": "torch.nn.Linear", "_partial_": "yes"}, r"_partial_: expected true or false"),
                           ({"_target_": "torch.nn.Linear", "_recursive_": False},
                            r"model.kwargs._recursive_: not one of the keys batchfind takes")):
        with pytest.raises(InputError, match=message):
            instantiate(value, "model.kwargs")


def test_bert_trains_on_named_synthetic_inputs_with_its_own_loss(built):
    pytest.importorskip("transformers")
    cfg, model, batches = built(BERT_SYNTHETIC)
    batch = batches.batch(4)
    assert set(batch) == {"input_ids", "attention_mask", "labels"} and batch["input_ids"].shape == (4, 12)
    assert int(batch["attention_mask"].min()) == 1 and int(batch["labels"].max()) < 3
    check_fit(model, batches, cfg, CPU)
    step = make_step(model, cfg.train, CPU)
    with torch.no_grad():  # the model's own loss is the one trained on
        expected = float(model(**batch).loss)
    assert trains(step, batch, model) == pytest.approx(expected, rel=1e-5)


def test_gpt2_trains_on_a_dataset_of_token_dicts(built):
    pytest.importorskip("transformers")
    cfg, model, batches = built(GPT2)
    assert batches.lengths["longest"] > batches.lengths["shortest"]
    batch = batches.batch(3)  # the longest items, padded: labels with -100, which the model ignores
    assert batch["input_ids"].shape[1] == batches.lengths["longest"]
    check_fit(model, batches, cfg, CPU)
    step = make_step(model, cfg.train, CPU)
    trains(step, batch, model)
    loader = batches.loader(4, workers=0, pin_memory=False)
    result = measure_loader(step, loader, 4, warmup=0, steps=2, dataset_len=len(batches), device=CPU)
    assert result["status"] == "ok" and len(result["step_ms"]["samples"]) == 2


def test_the_loader_timing_leaves_out_the_batches_that_wait_for_its_workers_to_start(built):
    cfg, model, batches = built(MLP_PAIRS)
    for workers, drawn in ((0, 3), (2, 4)):  # one warm-up batch, or one from each worker, then the two timed
        calls = []
        loader = batches.loader(4, workers=workers, pin_memory=False)
        result = measure_loader(lambda b: calls.append(b) or torch.zeros(()), loader, 4, warmup=0, steps=2,
                                dataset_len=len(batches), device=CPU)
        assert len(calls) == drawn and len(result["step_ms"]["samples"]) == 2
        assert loader.persistent_workers == (workers > 0)  # no workers started anew at an epoch's end


def test_the_loader_timing_runs_its_minimum_time_as_throughput_trials_do(built):
    import time

    cfg, model, batches = built(MLP_PAIRS)
    loader = batches.loader(4, workers=0, pin_memory=False)
    # Each step takes at least 10 ms: 50 ms of them is reached by the fifth, never before the second.
    result = measure_loader(lambda b: time.sleep(0.01) or torch.zeros(()), loader, 4, warmup=0, steps=2,
                            dataset_len=len(batches), device=CPU, min_time_s=0.05)
    samples = result["step_ms"]["samples"]
    assert 2 <= len(samples) <= 5 and sum(samples) >= 50


def test_bert_probe_from_yaml_runs_every_size(write_config):
    pytest.importorskip("transformers")
    code, out, err = probe(write_config, BERT_SYNTHETIC + PROBE)
    assert code == 0, err
    report = json.loads(out)
    assert [t["batch_size"] for t in report["trials"] if t["phase"] == "double"] == [1, 2, 4]
    assert all(t["status"] == "ok" and t["loss_finite"] for t in report["trials"])
    assert report["parameters"] > 0


def test_bert_logits_scored_by_the_configured_loss_against_a_named_target(built):
    pytest.importorskip("transformers")
    text = BERT_SYNTHETIC.replace("    labels: {", "    label: {") + "  output: logits\n  target: label\n"
    cfg, model, batches = built(text)
    check_fit(model, batches, cfg, CPU)
    batch = batches.batch(4)
    with torch.no_grad():
        expected = float(torch.nn.functional.cross_entropy(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["label"]))
    assert trains(make_step(model, cfg.train, CPU), batch, model) == pytest.approx(expected, rel=1e-5)


# ---- two inputs, your own loss, optimizer and step -------------------------------------------


def test_two_input_model_from_named_inputs_and_from_tuples(built):
    named = """
model: {name: 'zoo:TwoTower', kwargs: {classes: 3}}
data:
  inputs: {a: {shape: [8]}, b: {shape: [6]}, y: {dtype: int64, high: 3}}
train: {target: y}
"""
    cfg, model, batches = built(named)
    check_fit(model, batches, cfg, CPU)
    trains(make_step(model, cfg.train, CPU), batches.batch(5), model)
    positional = named.replace("{target: y}", "{target: y, call: positional}").replace("a: {", "first: {")
    cfg, model, batches = built(positional)
    trains(make_step(model, cfg.train, CPU), batches.batch(5), model)
    # A flat (a, b, target) tuple batch: the model gets model(a, b).
    step = Step(model, cfg.train.model_copy(update={"target": None}), CPU)
    trains(step, (torch.randn(5, 8), torch.randn(5, 6), torch.randint(0, 3, (5,))), model)


def test_a_contrastive_loss_of_your_own_scores_an_output_with_no_target(built):
    from zoo import info_nce

    cfg, model, batches = built("""
model: {name: 'zoo:TwoTower'}
data: {inputs: {a: {shape: [8]}, b: {shape: [6]}}}
train: {loss: 'zoo:info_nce'}
""")
    check_fit(model, batches, cfg, CPU)
    batch = batches.batch(6)
    with torch.no_grad():
        expected = float(info_nce(model(**batch)))
    assert trains(make_step(model, cfg.train, CPU), batch, model) == pytest.approx(expected, rel=1e-5)


def test_optimizers_of_your_own_are_built_with_their_arguments(built, write_config):
    cfg, model, _ = built(MLP_PAIRS + "train: {optimizer: 'torch.optim:Adagrad', optimizer_kwargs: {lr: 0.05, lr_decay: 0.1}}")
    step = make_step(model, cfg.train, CPU)
    (optimizer,) = step.optimizers
    assert isinstance(optimizer, torch.optim.Adagrad) and optimizer.defaults["lr_decay"] == 0.1
    assert cfg.train.lr == 0.05  # the learning rate that lr scaling starts from
    cfg = load_config(write_config(MLP_PAIRS + "train: {optimizer: 'torch.optim:Adagrad', lr: 0.02}"))
    assert cfg.train.optimizer_kwargs == {"lr": 0.02}
    with pytest.raises(InputError, match=r"train: lr \(0.02\) and optimizer_kwargs.lr \(0.05\) differ"):
        load_config(write_config(MLP_PAIRS + "train: {optimizer: 'torch.optim:Adagrad', lr: 0.02, optimizer_kwargs: {lr: 0.05}}"))
    with pytest.raises(InputError, match="optimizer_kwargs and optimizer_takes are for a package.module:factory optimizer"):
        load_config(write_config(MLP_PAIRS + "train: {optimizer: adam, optimizer_kwargs: {lr: 0.05}}"))
    cfg, model, batches = built(MLP_PAIRS + "train: {optimizer: 'zoo:grouped_adamw', optimizer_takes: model, optimizer_kwargs: {lr: 0.01}}")
    step = make_step(model, cfg.train, CPU)
    assert [g["weight_decay"] for g in step.optimizers[0].param_groups] == [0.01, 0.0]
    trains(step, batches.batch(4), model)
    assert step.optimizers[0].state, "the optimizer's state exists, so its memory is measured"


def test_sparse_gradients_train_under_plain_sgd(built):
    # The optimizers that refuse them are refused at set-up (test_bad_input); sgd with momentum takes them.
    cfg, model, batches = built("model: {name: 'fixtures:SparseBag'}\ndata: {size: 64, input_shape: [5], input_dtype: "
                                "int64, vocab_size: 50, num_classes: 4}\ntrain: {optimizer: sgd}\n" + PROBE)
    step = make_step(model, cfg.train, CPU)
    trains(step, batches.batch(4), model)
    assert model.bag.weight.grad.is_sparse


def test_a_factory_optimizer_gets_no_learning_rate_it_was_not_given(write_config):
    # The worker's config is rebuilt from the parent's: an `lr` left at its default must stay unset
    # there too, or the factory is called with lr=0.1 it does not take.
    result = CliRunner().invoke(app, ["validate", str(write_config(MLP_PAIRS + "train: {optimizer: 'zoo:fixed_sgd'}\n"))])
    assert result.exit_code == 0, result.output


def test_a_step_of_your_own_trains_measures_and_gives_gradients_without_updating(built):
    cfg, model, batches = built(MLP_PAIRS + "train: {step: 'zoo:clipped_step', optimizer: adam}\n")
    check_fit(model, batches, cfg, CPU)
    step = make_step(model, cfg.train, CPU)
    assert isinstance(step, CustomStep)
    before = [p.detach().clone() for p in model.parameters()]
    norms = gradient_sq_norms(model, batches.sample, 8, 3, step.gradients)
    assert len(norms) == 3 and all(n > 0 for n in norms)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "no update while measuring gradients"
    assert not step.optimizer.state, "nor an optimizer step"
    result = measure(step, batches.batch, 8, StepPlan("throughput", warmup=1, min_steps=2), dataset_len=len(batches),
                     device=CPU, meter=CappedPeak(CPU))
    assert result["status"] == "ok" and result["loss_finite"]
    assert step.optimizer.state, "a measured step updates (at learning rate 0)"


@pytest.mark.parametrize("step", ["reports_the_loss", "reports_the_loss_in_numpy"])
def test_a_step_may_return_its_loss_as_a_number(built, step):
    cfg, model, batches = built(MLP_PAIRS + f"train: {{step: 'zoo:{step}', optimizer: adam}}\n")
    check_fit(model, batches, cfg, CPU)
    step = make_step(model, cfg.train, CPU)
    result = measure(step, batches.batch, 8, StepPlan("throughput", warmup=1, min_steps=2), dataset_len=len(batches),
                     device=CPU, meter=CappedPeak(CPU))
    assert result["status"] == "ok" and result["loss_finite"] and result["loss"] > 0, result


def test_a_step_that_returns_no_loss_is_bad_input(built):
    cfg, model, batches = built(MLP_PAIRS + "train: {step: 'zoo:forgets_the_loss'}\n")
    with pytest.raises(InputError, match=r"train.step zoo:forgets_the_loss returned NoneType, expected the loss \(a tensor with one element, or a number\)"):
        check_fit(model, batches, cfg, CPU)


@pytest.mark.parametrize("spec", ["train: {step: 'zoo:closure_step', optimizer: 'torch.optim:LBFGS'}",
                                  "train: {step: 'zoo:scheduled_step', optimizer: adam}"],
                         ids=["optimizer that calls a closure", "scheduler built on the optimizer"])
def test_a_step_of_your_own_gets_a_real_optimizer_that_does_not_update(built, spec):
    # The gradient alone (set-up's check, the noise scale): torch's own code still takes the optimizer.
    cfg, model, batches = built(MLP_PAIRS + spec + "\n")
    check_fit(model, batches, cfg, CPU)
    step = make_step(model, cfg.train, CPU)
    before = [p.detach().clone() for p in model.parameters()]
    norms = gradient_sq_norms(model, batches.sample, 8, 2, step.gradients)
    assert len(norms) == 2 and all(n > 0 for n in norms), "the closure ran and computed a gradient"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert "step" not in vars(step.optimizer), "the optimizer's own step is back"
    trains(step, batches.batch(4), model)


def test_a_step_that_fails_in_its_own_code_is_named_not_blamed_on_the_data(built):
    cfg, model, batches = built(MLP_PAIRS + "train: {step: 'zoo:fails_in_its_own_code'}\n")
    with pytest.raises(InputError) as info:
        check_fit(model, batches, cfg, CPU)
    assert str(info.value).startswith("train.step zoo:fails_in_its_own_code raised ValueError: the scheduler is not "
                                      "set (inputs (2, 8) torch.float32"), info.value


def test_custom_step_probe_with_noise_scale(write_config):
    code, out, err = probe(write_config, MLP_PAIRS + "train: {step: 'zoo:clipped_step'}\nrecommend: {noise_scale: true}\n" + PROBE)
    assert code == 0, err
    report = json.loads(out)
    assert all(t["status"] == "ok" for t in report["trials"])
    scale = report["recommendation"]["noise_scale"]
    assert scale["status"] == "ok" and scale["batches"] > 0 and scale["samples"] > 0, scale


# ---- Lightning ------------------------------------------------------------------------------


def test_a_lightning_module_trains_with_its_own_step_and_optimizers(built):
    pytest.importorskip("lightning")
    cfg, model, batches = built(MLP_PAIRS.replace("mlp, in_features: 8, hidden: 16, layers: 1, classes: 4", "'zoo:lightning_classifier'"))
    check_fit(model, batches, cfg, CPU)
    step = make_step(model, cfg.train, CPU)
    assert isinstance(step, LightningStep) and isinstance(step.optimizers[0], torch.optim.Adam)
    calls = model.training_steps
    trains(step, batches.batch(8), model)
    assert model.training_steps == calls + 1


@pytest.mark.parametrize("kwargs", ["{built_in: setup}", "{built_in: configure_model}", "{batch_idx: false}"])
def test_a_lightning_module_trains_as_lightning_would_call_it(built, kwargs):
    pytest.importorskip("lightning")
    cfg, model, batches = built(MLP_PAIRS.replace("mlp, in_features: 8, hidden: 16, layers: 1, classes: 4",
                                                  f"'zoo:lightning_classifier', kwargs: {kwargs}"))
    check_fit(model, batches, cfg, CPU)
    trains(make_step(model, cfg.train, CPU), batches.batch(8), model)


@pytest.mark.parametrize("hook", ["configure_optimizers", "training_step"])
def test_a_lightning_hook_that_reads_its_trainer_is_named(built, hook):
    pytest.importorskip("lightning")
    cfg, model, batches = built(MLP_PAIRS.replace("mlp, in_features: 8, hidden: 16, layers: 1, classes: 4",
                                                  f"'zoo:lightning_classifier', kwargs: {{reads_trainer: {hook}}}"))
    called = "configure_optimizers()" if hook == "configure_optimizers" else hook
    with pytest.raises(InputError, match=rf"^model.name: the LightningModule's {re.escape(called)} raised RuntimeError: "
                                         r".*Classifier is not attached to a `Trainer`.; a probe runs no Trainer: "
                                         r"describe the step with train.step$"):
        check_fit(model, batches, cfg, CPU)


def test_a_lightning_module_with_two_optimizers_is_refused_as_lightning_refuses_it(built):
    pytest.importorskip("lightning")
    cfg, model, _ = built(MLP_PAIRS.replace("mlp, in_features: 8, hidden: 16, layers: 1, classes: 4",
                                            "'zoo:lightning_classifier', kwargs: {optimizers: 2}"))
    with pytest.raises(InputError, match="configure_optimizers returned 2 optimizers; Lightning steps more than "
                                         "one only under manual optimization"):
        make_step(model, cfg.train, CPU)


# ---- errors that name the problem -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        (BERT_SYNTHETIC.replace("    labels: {", "    label: {"), "the model returned SequenceClassifierOutput with fields logits: not a tensor and no loss; set train.output "
         "to the field to score (such as logits) and give the batches a target (train.target names its key in dict "
         "batches; or (input, target) items)"),
        (BERT_SYNTHETIC + "  target: label\n", "train.target: batches have no key 'label' (they have input_ids, attention_mask, labels)"),
        (BERT_SYNTHETIC.replace("input_ids:", "ids:"), "data and model do not fit together: batch {ids: (2, 12) torch.int64"),
        ("model: {name: mlp, in_features: 8}\ndata: {kind: 'zoo:Tokens', kwargs: {longest: 8, shortest: 8}}\n",
         "data and model do not fit together: batch {input_ids: (2, 8) torch.int64, attention_mask: (2, 8) torch.int64, labels: (2, 8) torch.int64} into mlp"),
        ("model: {name: mlp}\ndata: {kind: 'zoo:Tokens', kwargs: {vocab: 0}}\n", "data: item 0 of the Tokens dataset raised RuntimeError"),
        # Items 0 and 1 have labels 0 and 1, in range: the model's own loss would fail a later batch.
        (BERT + "data: {kind: 'zoo:Tokens', kwargs: {classes: 9, longest: 12}}\n",
         "data: labels range over [0, 8] but the model outputs 3 classes"),
        # Not the data's doing: the model's configuration lacks what its forward reads.
        ("model: {name: 'zoo:ReadsItsConfig'}\ndata: {input_shape: [8], num_classes: 4}\n",
         "model.name: zoo:ReadsItsConfig reads scale from its TinyConfig, which does not set it: set it where the "
         "model is built (AttributeError: 'TinyConfig' object has no attribute 'scale')"),
    ],
    ids=["output with no loss", "missing target key", "missing input name", "dict where a pair was expected",
         "a dataset that raises", "labels past a model's own classes", "a setting the model's config lacks"],
)
def test_a_model_and_data_that_do_not_go_together_is_one_line_and_exit_2(write_config, text, message):
    if "transformers" in text:
        pytest.importorskip("transformers")
    code, _, err = probe(write_config, text + "probe: {device: cpu}\n")
    assert code == 2, err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "text, message",
    [
        ("data: {inputs: {ids: {shape: [4], dtype: int64}}}", "data.inputs.ids: an int64 input needs `high`"),
        ("data: {inputs: {ids: {dtype: int64, low: 5, high: 5}}}", "data.inputs.ids: high (5) must be > low (5)"),
        ("data: {kind: 'zoo:Tokens', inputs: {a: {}}}", "config.yaml: data.inputs describes synthetic data; data.kind is zoo:Tokens"),
        ("train: {step: 'zoo:clipped_step', precision: bf16}", "config.yaml: train.step owns its precision"),
        ("train: {step: clipped_step}", "train.step: expected package.module:function (got 'clipped_step')"),
        ("train: {loss: hinge}", "train.loss: must be 'cross_entropy' or 'mse', or package.module:function (got 'hinge')"),
        ("train: {call: kwargs}", "train.call: must be 'auto', 'positional' or 'single'"),
    ],
)
def test_new_fields_are_checked_when_the_config_is_read(write_config, text, message):
    with pytest.raises(InputError) as info:
        load_config(write_config("model: {name: mlp}\n" + text))
    assert message in str(info.value)


@pytest.mark.parametrize("before", [False, True])
def test_debug_shows_the_workers_own_traceback(write_config, monkeypatch, before):
    monkeypatch.delenv("BATCHFIND_DEBUG", raising=False)
    config = write_config("model: {name: mlp, in_features: 8}\ndata: {kind: 'zoo:Tokens'}\nprobe: {device: cpu}\n")
    args = ["--debug", "probe", str(config)] if before else ["probe", str(config), "--debug"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    message = result.stderr
    assert f"error: {config}: data and model do not fit together" in message and "Traceback (most recent call last)" in message
    assert "batchfind/session.py" in message and "in check_fit" in message
    assert "torch/nn/modules/" in message  # the model's own frames, where it failed
    # The worker's traceback, once, above the one-line error, as without --debug the error is all
    # there is; this process's own, which only passes the message on, is left out.
    assert message.strip().splitlines()[-1].startswith(f"error: {config}: data and model do not fit together")
    # Written as Python writes a traceback: only the message is an error line.
    assert message.startswith("Traceback (most recent call last)") and message.count("error: ") == 1, message
    assert "batchfind/cli.py" not in message and "batchfind/group.py" not in message
    # What the command asked for ends with it: the calling process is left as it was.
    assert "BATCHFIND_DEBUG" not in os.environ


def test_the_readme_examples_build_and_fit(built, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    for name in ("hf-bert.yaml", "mixup.yaml"):
        cfg, model, batches = built((ROOT / "examples" / name).read_text())
        check_fit(model, batches, cfg, CPU)


@pytest.mark.parametrize(
    "library, model",
    [
        ("torchvision", "{name: 'torchvision.models:resnet18', kwargs: {num_classes: 4}}"),
        ("timm", "{name: 'timm:create_model', kwargs: {model_name: resnet18, pretrained: false, num_classes: 4}}"),
    ],
)
def test_vision_libraries_where_they_import(built, library, model):
    try:
        __import__(library)
    except Exception as exc:  # noqa: BLE001 - a build for another torch fails in many ways
        pytest.skip(f"{library} does not import beside this torch: {type(exc).__name__}: {exc}")
    cfg, model, batches = built(f"model: {model}\ndata: {{input_shape: [3, 32, 32], num_classes: 4, size: 16}}\n")
    check_fit(model, batches, cfg, CPU)
    trains(make_step(model, cfg.train, CPU), batches.batch(2), model)


def test_trials_step_at_learning_rate_0_so_one_repeated_batch_cannot_drive_the_weights_to_nan(write_config):
    # A plain MLP under SGD at 0.1 with momentum 0.9, as a bare `model: {name: mlp}` config trains:
    # a hundred steps on one batch used to run its loss off to NaN at every size from 4 or 8 up.
    cfg = load_config(write_config("model: {name: mlp}\n"))
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    before = [p.detach().clone() for p in model.parameters()]
    step = make_step(model, cfg.train, torch.device("cpu"))
    batches = build_batches(cfg, torch.device("cpu"))
    batch = batches.batch(256)
    losses = [float(step(batch)) for _ in range(100)]
    assert all(math.isfinite(x) for x in losses) and losses[0] == pytest.approx(losses[-1])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # The update ran all the same: its state (the momentum buffers) holds the memory training does.
    optimizer = step.optimizers[0]
    assert len(optimizer.state) == len(before) and cfg.train.lr == 0.1 and cfg.train.momentum == 0.9


def test_mse_takes_one_value_per_sample_as_b_by_1_and_refuses_shapes_it_would_broadcast():
    from batchfind.step import compute_loss

    out, target = torch.randn(4, 1), torch.randn(4)
    # torch alone broadcasts (4, 1) against (4,) into a 4 × 4 loss, and only warns.
    assert compute_loss(out, target, "mse") == pytest.approx(float(((out.squeeze(-1) - target) ** 2).mean()))
    with pytest.raises(InputError, match=r"train.loss: mse of an output of shape \(4, 2\) against targets of shape \(4,\)"):
        compute_loss(torch.randn(4, 2), target, "mse")


def test_a_lightning_module_gets_no_learning_rate_it_never_used(write_config):
    pytest.importorskip("lightning")
    text = (MLP_PAIRS.replace("mlp, in_features: 8, hidden: 16, layers: 1, classes: 4", "'zoo:lightning_classifier'")
            + "train: {lr: 0.5, reference_batch: 4, loss: mse, forward_kwargs: {scale: 2}}\nrecommend: {lr_rule: sqrt}\n"
            + PROBE)
    code, out, err = probe(write_config, text)
    assert code == 0, err
    report = json.loads(out)
    # Its Adam at 0.01 from configure_optimizers, not train.lr under SGD's linear rule, is what trains.
    assert [t["lr"] for t in report["trials"]] == [None] * len(report["trials"]) and report["recommendation"]["lr"] is None
    # The report names the optimizer that stepped, which the config's train.optimizer is not.
    assert report["optimizer"] == "Adam" and report["config"]["train"]["optimizer"] != "adam"
    unused = "train.lr, train.reference_batch, recommend.lr_rule: not used; the LightningModule's configure_optimizers"
    assert any(w.startswith(unused) for w in report["warnings"])
    # Its training_step scores its output itself.
    assert ("train.loss, train.forward_kwargs: not used; the LightningModule's training_step calls the model and "
            "computes the loss itself") in report["warnings"]
    # `validate` says so too, before any probe.
    checked = CliRunner().invoke(app, ["validate", str(write_config(text))])
    assert checked.exit_code == 0 and f"warning: {unused}" in checked.stderr
    assert " parameters, Adam), " in checked.stdout


@pytest.mark.parametrize("text, warning", [
    ("model: {name: 'fixtures:OwnLoss'}\ndata: {inputs: {x: {shape: [8]}, labels: {shape: [], dtype: int64, high: 4}}}\n"
     "train: {output: logits, loss: mse}\n",
     "train.output, train.loss: not used; the model's output has its own `loss`, and that is what trains"),
    ("model: {name: 'fixtures:normed_mlp', kwargs: {classes: 1}}\ndata: {input_shape: [8], num_classes: 4}\n"
     "train: {loss: mse}\n",
     "data.num_classes: not used; with train.loss mse the synthetic targets are floats"),
    ("model: {name: mlp}\ndata: {workers: 4, pin_memory: false}\n",
     "data.pin_memory, data.workers: not used; synthetic data is made on the device, and no DataLoader is timed"),
    ("model: {name: mlp, in_features: 8, classes: 4}\ndata: {kind: 'fixtures:Pairs', input_shape: [99, 7], "
     "num_classes: 2}\n",
     "data.input_shape, data.num_classes: not used; the fixtures:Pairs data's items have shapes of their own"),
    ("model: {name: mlp}\ntrain: {optimizer: 'torch.optim:SGD', lr: 0.1, momentum: 0.9, weight_decay: 0.0005}\n",
     "train.momentum, train.weight_decay: not used; the factory optimizer torch.optim:SGD takes its settings from "
     "train.optimizer_kwargs"),
    ("model: {name: mlp}\ntrain: {optimizer: adam, momentum: 0.5}\n",
     "train.momentum: not used; adam has no momentum (its betas stand in for it)"),
    ("model: {name: mlp, in_features: 8, classes: 4}\ndata: {kind: 'fixtures:Pairs', path: ./x}\n",
     "data.path: not used; the dataset factory fixtures:Pairs is called with data.kwargs only (give it the path there)"),
    ("model: {name: 'fixtures:normed_mlp', kwargs: {classes: 4}}\ndata: {input_shape: [8], num_classes: 4, "
     "image_size: 64, channels: 1}\n",
     "data.channels, data.image_size: not used; a model of one's own takes synthetic samples of data.input_shape"),
    ("model: {name: 'fixtures:OwnLoss'}\ndata: {inputs: {x: {shape: [8]}, labels: {shape: [], dtype: int64, high: 4}}, "
     "num_classes: 3, vocab_size: 100}\n",
     "data.num_classes, data.vocab_size: not used; data.inputs names every tensor of the samples"),
    ("model: {name: mlp, in_features: 8, classes: 4}\ndata: {kind: 'fixtures:Pairs'}\n"
     "train: {step: 'zoo:clipped_step', output: 0, loss: mse, target: y, call: single}\n",
     "train.output, train.loss, train.call: not used; train.step zoo:clipped_step calls the model and "
     "computes the loss itself"),
    # On synthetic data the loss still decides whether the targets are classes or floats.
    ("model: {name: mlp}\ntrain: {step: 'zoo:clipped_step', loss: cross_entropy, call: single}\n",
     "train.call: not used; train.step zoo:clipped_step calls the model and computes the loss itself"),
], ids=["scoring for a model that scores itself", "classes for float targets", "a DataLoader for synthetic data",
        "synthetic shapes for a dataset of one's own", "momentum for a factory optimizer", "momentum for adam",
        "a path for a dataset factory", "image shapes for a model of one's own", "shapes beside named inputs",
        "scoring for a step of one's own", "a step of one's own on synthetic data"])
def test_settings_that_the_model_and_loss_leave_unused_are_named(write_config, text, warning):
    checked = CliRunner().invoke(app, ["validate", str(write_config(text + PROBE))])
    assert checked.exit_code == 0, checked.output
    assert f"warning: {warning}\n" in checked.stderr


def test_a_position_written_in_quotes_is_told_to_be_a_number():
    from batchfind.config import TrainConfig

    step = Step(torch.nn.Linear(2, 2), TrainConfig.model_validate({"output": "1"}), CPU)
    with pytest.raises(InputError, match=r"the model returned a tuple of 2: no field '1' \(a position is a number: output: 1\)"):
        step._scored((torch.zeros(1), torch.zeros(1)))
    assert Step(torch.nn.Linear(2, 2), TrainConfig.model_validate({"output": 1}), CPU)._scored((1, 2)) == 2


@pytest.mark.parametrize("kwargs, labels", [("{classes: 6}", "shape: [16, 16], dtype: int64, high: 6"),
                                            ("{regression: true}", "shape: [], dtype: int64, high: 10")],
                         ids=["maps smaller than their labels", "integer labels scored as numbers"])
def test_a_model_scoring_its_own_labels_is_held_to_no_class_count_its_shapes_do_not_give(write_config, kwargs,
                                                                                          labels):
    text = (f"model: {{name: 'fixtures:SmallMaps', kwargs: {kwargs}}}\n"
            f"data: {{inputs: {{pixels: {{shape: [3, 16, 16]}}, labels: {{{labels}}}}}}}\n")
    checked = CliRunner().invoke(app, ["validate", str(write_config(text + PROBE))])
    assert checked.exit_code == 0, checked.output


def test_label_classes_reads_the_class_dimension_only_where_the_shapes_give_it():
    from batchfind.step import label_classes

    labels = torch.zeros(2, dtype=torch.long)
    assert label_classes(torch.zeros(2, 5), labels) == 5
    assert label_classes(torch.zeros(2, 7, 5), torch.zeros(2, 7, dtype=torch.long)) == 5  # tokens
    assert label_classes(torch.zeros(2, 7, 5), torch.zeros(14, dtype=torch.long)) == 5  # flattened, as our loss takes
    assert label_classes(torch.zeros(2, 7, 5), torch.zeros(14, dtype=torch.long), own_loss=True) is None
    assert label_classes(torch.zeros(2, 5, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long)) == 5  # maps
    assert label_classes(torch.zeros(2, 5, 2, 2), torch.zeros(2, 8, 8, dtype=torch.long)) is None  # resized to score
    assert label_classes(torch.zeros(2, 1), labels) == 1  # cross-entropy over one class: labels must be 0
    assert label_classes(torch.zeros(2, 1), labels, own_loss=True) is None  # a model's own regression
    assert label_classes(torch.zeros(2, 5), labels.float()) is None
    assert label_classes(torch.zeros(2, 5), None) is None


def test_an_error_describes_what_the_model_got_apart_from_the_target():
    from batchfind.data import describe_batch

    batch = {"y": torch.zeros(2, 3), "x": torch.zeros(2, 8), "labels": torch.zeros(2, dtype=torch.long)}
    assert describe_batch(batch) == ("batch {y: (2, 3) torch.float32, x: (2, 8) torch.float32, "
                                     "labels: (2,) torch.int64}")
    assert describe_batch(batch, "labels") == ("batch {y: (2, 3) torch.float32, x: (2, 8) torch.float32}, "
                                               "target labels (2,) torch.int64")
    # Called positionally, the order the model got them in is what a swapped pair shows.
    assert describe_batch(batch, "labels", "positional") == (
        "batch {y: (2, 3) torch.float32, x: (2, 8) torch.float32} as model(y, x), target labels (2,) torch.int64")
    assert describe_batch((torch.zeros(2, 8), torch.zeros(2))) == "inputs (2, 8) torch.float32, targets (2,) torch.float32"


def test_a_model_output_with_no_loss_is_told_what_scoring_it_needs():
    from batchfind.config import TrainConfig

    step = Step(torch.nn.Linear(2, 2), TrainConfig(), CPU)
    output = {"logits": torch.zeros(2, 3)}
    with pytest.raises(InputError) as raised:
        step.score(output, torch.zeros(2, dtype=torch.long))  # the target is there: only the field is missing
    assert str(raised.value) == ("the model returned dict with fields logits: not a tensor and no loss; set "
                                 "train.output to the field to score (such as logits), or give the model its labels "
                                 "so it computes its own loss")


def test_keyword_arguments_for_data_read_from_a_path_are_named_unused():
    from batchfind.config import Config
    from batchfind.probing import _unused_warnings

    config = Config.model_validate({"model": {"name": "mlp"},
                                    "data": {"kind": "tensors", "path": "d.pt", "kwargs": {"mmap": True}}})
    assert "data.kwargs: not used; tensors data is read from data.path as it is" in _unused_warnings(config, {})


def test_a_loss_class_is_built_with_its_defaults_and_called(write_config):
    # `torch.nn:CrossEntropyLoss` was called as CrossEntropyLoss(output, target): "Boolean value of
    # Tensor with more than one value is ambiguous".
    checked = CliRunner().invoke(app, ["validate", str(write_config(
        "model: {name: mlp, classes: 10}\ndata: {num_classes: 10}\ntrain: {loss: 'torch.nn:CrossEntropyLoss'}\n"
        + PROBE))])
    assert checked.exit_code == 0, checked.output
    refused = CliRunner().invoke(app, ["validate", str(write_config(
        "model: {name: mlp}\ntrain: {loss: 'torch.nn:Bilinear'}\n" + PROBE))])
    assert refused.exit_code == 2
    assert ("train.loss: torch.nn:Bilinear is a class, built with no arguments to call as loss(output, target), and "
            "building it raised TypeError:") in refused.stderr


def test_labels_that_are_not_whole_numbers_are_told_how_cross_entropy_takes_them(write_config, tmp_path):
    import numpy as np

    # pandas-style labels: float64 class numbers; then, as told, float32: the same advice both times.
    for dtype in ("float64", "float32"):
        np.savez(tmp_path / "d.npz", inputs=np.random.randn(10, 8).astype("float32"),
                 targets=(np.arange(10) % 3).astype(dtype))
        checked = CliRunner().invoke(app, ["validate", str(write_config(
            "model: {name: mlp, in_features: 8, classes: 3}\ndata: {kind: tensors, path: d.npz}\n" + PROBE))])
        assert checked.exit_code == 2
        assert ("cross-entropy takes class labels as whole numbers: save the targets as int64, or use train.loss: "
                "mse for values to regress, not classes") in checked.stderr
        assert "save the data as float32" not in checked.stderr
    named = CliRunner().invoke(app, ["validate", str(write_config(
        "model: {name: mlp, in_features: 8, classes: 4}\ndata: {kind: 'fixtures:NamedLabels'}\n" + PROBE))])
    assert named.exit_code == 2 and "Traceback" not in named.output
    assert ("train.loss: cross_entropy scores the model's output against the batches' targets, which are text "
            "('") in named.stderr and "not tensors: give class labels as whole numbers" in named.stderr
