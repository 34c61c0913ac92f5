from pathlib import Path

import pytest

from batchfind.config import CNNModel, FactoryModel, TransformerModel, load_config
from batchfind.errors import InputError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.probe.min_batch >= 1


def test_defaults_and_types(write_config):
    cfg = load_config(write_config("model: {name: cnn}\n"))
    assert isinstance(cfg.model, CNNModel)
    assert cfg.probe.device == "auto" and cfg.probe.memory_limit is None
    assert cfg.train.optimizer == "sgd" and cfg.data.kind == "synthetic"


def test_toml_and_sizes(write_config):
    path = write_config('[model]\nname = "transformer"\n[probe]\nmemory_limit = "512MiB"\n', "c.toml")
    cfg = load_config(path)
    assert isinstance(cfg.model, TransformerModel)
    assert cfg.probe.memory_limit == 512 * 1024**2


def test_factory_model_and_relative_data_path(write_config, tmp_path):
    cfg = load_config(write_config(
        "model: {name: 'pkg.mod:make', kwargs: {depth: 2}}\ndata: {kind: tensors, path: data/x.pt}\n"
    ))
    assert isinstance(cfg.model, FactoryModel) and cfg.model.kwargs == {"depth": 2}
    assert cfg.data.path == (tmp_path / "data/x.pt").resolve()


def test_overrides_win_and_errors_name_the_option(write_config):
    path = write_config("model: {name: mlp}\nprobe: {min_batch: 4}\n")
    cfg = load_config(path, {"--min-batch": 16, "--memory-limit": "1GiB", "--max-batch": None})
    assert cfg.probe.min_batch == 16 and cfg.probe.memory_limit == 1024**3
    with pytest.raises(InputError, match=r"^--min-batch: must be greater than 0 \(got 0\)$"):
        load_config(path, {"--min-batch": 0})
    with pytest.raises(InputError, match=r"^--memory-limit: expected a size like 2GiB"):
        load_config(path, {"--memory-limit": "lots"})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model: {name: cnn, width: -3}\n", "model.width: must be greater than 0 (got -3)"),
        ("model: {name: cnn, widht: 3}\n", "model.widht: unknown key"),
        ("model: {name: mlp}\nextra: 1\n", "extra: unknown key"),
        ("model: {name: resnet}\n", "model.name: expected one of mlp, cnn, transformer or package.module:factory"),
        ("model: {name: mlp}\ntrain: {optimizer: lamb}\n", "train.optimizer: must be 'sgd', 'adam', 'adamw' or 'rmsprop'"),
        ("model: {name: mlp}\ntrain: {precision: fp8}\n", "train.precision: must be 'fp32', 'bf16' or 'fp16'"),
        ("model: {name: mlp}\ntrain: {loss: hinge}\n", "train.loss: must be 'cross_entropy' or 'mse'"),
        ("model: {name: mlp}\ntrain: {lr: fast}\n", "train.lr: must be a valid number"),
        ("model: {name: mlp}\nprobe: {min_batch: 8, max_batch: 4}\n", "min_batch (8) must be <= max_batch (4)"),
        ("model: {name: mlp}\nprobe: {memory_limit: 2XB}\n", "probe.memory_limit: expected a size like 2GiB"),
        ("model: {name: mlp}\nprobe: {memory_limit: -1}\n", "probe.memory_limit: must be > 0 bytes"),
        ("model: {name: mlp}\nprobe: {device: tpu}\n", "probe.device: expected auto, cpu, cuda or cuda:N"),
        ("model: {name: mlp}\nprobe: {steps: 0}\n", "probe.steps: must be greater than 0 (got 0)"),
        ("model: {name: mlp}\ndata: {kind: parquet}\n", "data.kind: expected one of synthetic, tensors, imagefolder"),
        ("model: {name: mlp}\ndata: {kind: tensors}\n", "data.kind tensors needs data.path"),
        ("model: {name: transformer, d_model: 10, heads: 3}\n", "d_model (10) must be divisible by heads (3)"),
        ("model: {name: mlp}\nprobe: 5\n", "probe: must be a valid dictionary"),
        ("probe: {}\n", "model: required"),
        ("model: [1, 2\n", "invalid YAML at line 2"),
        ("", "empty config"),
        ("- a\n- b\n", "expected a mapping of sections"),
    ],
)
def test_invalid_configs_give_one_line_per_problem(write_config, text, expected):
    path = write_config(text)
    with pytest.raises(InputError) as info:
        load_config(path)
    message = str(info.value)
    assert expected in message
    assert all(line.startswith(str(path)) for line in message.splitlines())


def test_every_problem_is_listed(write_config):
    path = write_config("model: {name: cnn, width: 0, bogus: 1}\ntrain: {optimizer: lamb}\n")
    with pytest.raises(InputError) as info:
        load_config(path)
    assert len(str(info.value).splitlines()) == 3


def test_bad_toml_missing_file_and_directory(write_config, tmp_path):
    with pytest.raises(InputError, match="invalid TOML"):
        load_config(write_config("[model\n", "c.toml"))
    with pytest.raises(InputError, match="no such file"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(InputError, match="is a directory"):
        load_config(tmp_path)
