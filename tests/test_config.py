import json
from pathlib import Path

import pytest

from batchfind.config import CNNModel, FactoryModel, TransformerModel, load_config
from batchfind.errors import InputError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_build(path):
    from batchfind.models import build_model

    cfg = load_config(path)
    assert sum(p.numel() for p in build_model(cfg.model).parameters()) > 0


def test_sections_with_every_key_commented_out_are_empty(write_config):
    cfg = load_config(write_config("model: {name: mlp}\nprobe:\n  # device: cpu\n"))
    assert cfg.probe.device == "auto"
    with pytest.raises(InputError, match="unknown override '--bogus'"):
        load_config(write_config("model: {name: mlp}\n"), {"--bogus": 1})


def test_defaults_and_types(write_config):
    cfg = load_config(write_config("model: {name: cnn}\n"))
    assert isinstance(cfg.model, CNNModel)
    assert cfg.probe.device == "auto" and cfg.probe.memory_limit is None
    assert cfg.train.optimizer == "sgd" and cfg.data.kind == "synthetic"
    # What an epoch of synthetic data was is filled in (the report's config says it); a dataset's own length is not.
    assert cfg.data.size == 50_000
    assert load_config(write_config("model: {name: cnn}\ndata: {kind: tensors, path: x.pt}\n")).data.size is None


def test_toml_and_sizes(write_config):
    path = write_config('[model]\nname = "transformer"\n[probe]\nmemory_limit = "512MiB"\n', "c.toml")
    cfg = load_config(path)
    assert isinstance(cfg.model, TransformerModel)
    assert cfg.probe.memory_limit == 512 * 1024**2


def test_json_reads_any_json_number(write_config):
    # What json.dump writes: 1e-05 and 2000000000.0 (YAML 1.1 would read 1e-05 as text).
    config = {"model": {"name": "mlp"}, "train": {"lr": 0.00001}, "probe": {"memory_limit": 2e9, "max_batch": 64}}
    cfg = load_config(write_config(json.dumps(config), "c.json"))
    assert (cfg.train.lr, cfg.probe.memory_limit, cfg.probe.max_batch) == (1e-05, 2_000_000_000, 64)


def test_yaml_reads_numbers_with_an_exponent_as_numbers_everywhere(write_config):
    # PyYAML alone reads 1e-8 as text, which reached AdamW as eps='1e-8'; a quoted one stays text.
    cfg = load_config(write_config(
        "model: {name: 'pkg.mod:make', kwargs: {layer_norm_eps: 1e-12, tag: '1e-3'}}\ndata: {size: 1e5}\n"
        "train: {optimizer: 'torch.optim:AdamW', optimizer_kwargs: {eps: 1e-8, lr: 3E-4}}\n"))
    assert cfg.model.kwargs == {"layer_norm_eps": 1e-12, "tag": "1e-3"}
    assert cfg.train.optimizer_kwargs == {"eps": 1e-8, "lr": 3e-4}
    assert cfg.data.size == 100_000 and isinstance(cfg.data.size, int)


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


def test_a_misspelt_model_name_is_the_one_error(write_config):
    # The mlp's own fields are not "unknown keys" of the model that was not named.
    path = write_config("model: {name: mpl, in_features: 64, hidden: 256}\n")
    with pytest.raises(InputError) as info:
        load_config(path)
    assert str(info.value).count("\n") == 0 and "model.name: expected one of mlp" in str(info.value)


def test_a_switch_is_overridden_by_either_of_its_names(write_config):
    path = write_config("model: {name: mlp}\n")
    assert load_config(path, {"--no-refine": True}).probe.refine is False
    assert load_config(path, {"--refine": False}).probe.refine is False
    assert load_config(path, {"--refine/--no-refine": False}).probe.refine is False
    assert load_config(path, {"--no-refine": False}).probe.refine is True


def test_a_check_across_fields_blames_where_each_came_from(write_config):
    both = write_config("model: {name: mlp}\n")
    with pytest.raises(InputError, match=r"^--min-batch \(16\) must be <= --max-batch \(8\)$"):
        load_config(both, {"--min-batch": 16, "--max-batch": 8})
    one = write_config("model: {name: mlp}\nprobe: {max_batch: 4}\n", "one.yaml")
    with pytest.raises(InputError, match=rf"^{one}: probe: --min-batch \(16\) must be <= max_batch \(4\)$"):
        load_config(one, {"--min-batch": 16})


def test_errors_found_later_name_the_option_that_set_the_field(write_config):
    path = write_config("model: {name: mlp}\nprobe: {max_batch: 64}\n")
    cfg = load_config(path, {"--min-batch": 64, "--device": None})
    assert str(cfg.named(InputError("probe.min_batch: 64 is larger than the dataset"))) == (
        "--min-batch: 64 is larger than the dataset")
    assert str(cfg.named(InputError("probe.max_batch: 64, but ..."))) == f"{path}: probe.max_batch: 64, but ..."
    assert str(cfg.named(InputError("probe.device: no GPU"))) == f"{path}: probe.device: no GPU"  # not given


@pytest.mark.parametrize("text, field", [
    ("model: {name: mlp, hidden: true}", "model.hidden"),
    ("model: {name: mlp}\nprobe: {min_batch: yes}", "probe.min_batch"),
    ("model: {name: mlp}\nprobe: {time_budget_s: true}", "probe.time_budget_s"),
    ("model: {name: mlp}\ndata: {input_shape: [4, false]}", "data.input_shape"),
    ("model: {name: mlp}\ntrain: {output: true}", "train.output"),
])
def test_a_boolean_is_not_taken_for_a_number(write_config, text, field):
    # pydantic alone reads `true` as 1: `min_batch: yes` would probe from 1 without a word.
    with pytest.raises(InputError, match=rf": {field}: expected (a name or )?a number, not a boolean"):
        load_config(write_config(text + "\n"))
    assert load_config(write_config("model: {name: transformer, causal: false}\nprobe: {refine: no}\n")).probe.refine is False


def test_a_depth_list_sets_the_number_of_stages(write_config):
    # The report's config, read back as a config, must agree with itself.
    model = load_config(write_config("model: {name: cnn, depth: [3, 4, 6, 3]}\n")).model
    assert model.stages == 4 and model.blocks_per_stage == [3, 4, 6, 3]
    assert load_config(write_config(json.dumps({"model": model.model_dump()}), "again.json")).model == model


def test_every_problem_is_listed(write_config):
    path = write_config("model: {name: cnn, width: 0, bogus: 1}\ntrain: {optimizer: lamb}\n")
    with pytest.raises(InputError) as info:
        load_config(path)
    assert len(str(info.value).splitlines()) == 3


def test_a_byte_order_mark_is_no_content(write_config):
    assert load_config(write_config('\ufeff[model]\nname = "mlp"\n', "bom.toml")).model.name == "mlp"
    assert load_config(write_config("\ufeffmodel: {name: cnn}\n", "bom.yaml")).model.name == "cnn"


def test_bad_toml_missing_file_and_directory(write_config, tmp_path):
    with pytest.raises(InputError, match="invalid TOML"):
        load_config(write_config("[model\n", "c.toml"))
    with pytest.raises(InputError, match="no such file"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(InputError, match="is a directory"):
        load_config(tmp_path)
