"""Fuzzing: generated configs and option combinations never crash and never print a traceback.

500 examples in the normal run; BATCHFIND_FUZZ_EXAMPLES=5000 for a longer one.
"""

import json
import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from batchfind import probing
from batchfind.cli import app
from batchfind.config import load_config
from batchfind.errors import InputError
from batchfind.report import Environment, Limit, Recommendation, Report, Trial

SCALE = int(os.environ.get("BATCHFIND_FUZZ_EXAMPLES", "500")) / 500
FIELDS = {
    "model": ["name", "in_features", "hidden", "layers", "classes", "width", "depth", "stages", "block", "stem",
              "image_size", "vocab_size", "d_model", "heads", "seq_len", "dropout", "causal", "kwargs"],
    "data": ["kind", "size", "path", "image_size", "channels", "input_shape", "input_dtype", "vocab_size", "num_classes",
             "target_shape", "workers", "pin_memory", "kwargs"],
    "train": ["optimizer", "lr", "weight_decay", "momentum", "loss", "precision", "reference_batch"],
    "probe": ["device", "min_batch", "max_batch", "warmup_steps", "steps", "memory_limit", "refine",
              "multiple_of", "time_budget_s", "trial_timeout_s"],
    "recommend": ["tolerance", "headroom", "lr_rule", "target_batch", "noise_scale"],
}
values = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["mlp", "cnn", "transformer", "a.b:c", "synthetic", "tensors", "imagefolder", "sgd", "adamw",
                     "bf16", "2GiB", "-1MiB", "cuda:0", "cpu", "auto", "", "mse", "x" * 300]),
    st.text(max_size=20), st.lists(st.integers(-2, 64), max_size=4), st.dictionaries(st.text(max_size=5),
                                                                                        st.integers(), max_size=2),
)
sections = st.fixed_dictionaries(
    {},
    optional={
        section: st.one_of(st.dictionaries(st.sampled_from(fields + ["bogus"]), values, max_size=6), values)
        for section, fields in FIELDS.items()
    } | {"extra": values},
)


@settings(max_examples=int(400 * SCALE), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=sections, suffix=st.sampled_from([".yaml", ".toml", ".json"]))
def test_any_config_loads_or_fails_with_lines_naming_the_file(tmp_path_factory, raw, suffix):
    path = tmp_path_factory.mktemp("fuzz") / f"c{suffix}"
    text = {".yaml": yaml.safe_dump, ".toml": _toml, ".json": json.dumps}[suffix](raw)
    path.write_text(text)
    _loads_or_names_the_file(path)


def _loads_or_names_the_file(path):
    """A config, or an InputError whose every line starts with the file's name."""
    try:
        load_config(path)
    except InputError as exc:
        lines = str(exc).splitlines()
        assert lines and all(line.startswith(str(path)) for line in lines), str(exc)


def _toml(raw: dict) -> str:
    # A crude writer is enough: malformed TOML is an input the loader must survive too.
    out = []
    for section, body in raw.items():
        if isinstance(body, dict):
            out.append(f"[{section}]")
            out += [f"{k} = {v!r}".replace("None", '""').replace("True", "true").replace("False", "false")
                    for k, v in body.items()]
        else:
            out.append(f"{section} = {body!r}")
    return "\n".join(out)


def fake_probe(config, **_):
    """Stands in for the real probe: this test is about parsing options, not about probing."""
    trial = Trial(batch_size=config.probe.min_batch, status="ok", samples_per_s=1.0, loss_finite=True,
                  fresh_process=True)
    return Report(tool={"name": "batchfind", "version": "0"}, environment=Environment("t", "cpu", "cpu", 1, 1),
                  config=config.model_dump(mode="json"), dataset_len=10, parameters=1, input_lengths=None,
                  trials=[trial], limit=Limit(trial.batch_size, None, True),
                  recommendation=Recommendation(trial.batch_size, "fake"))


option_values = st.one_of(st.integers(-5, 1 << 40).map(str), st.sampled_from(["2GiB", "0", "-3", "1e3", "nan", "",
                                                                                 "cuda:9", "auto", "x", "inf", "-inf",
                                                                                 "9" * 400, "9" * 400 + "MiB",
                                                                                 "cpu\n", "1e400"]))
OPTIONS = ["--device", "--min-batch", "--max-batch", "--steps", "--warmup", "--memory-limit", "--time-budget",
           "--multiple-of", "--tolerance", "--headroom", "--lr-rule", "--target-batch", "--require-batch",
           "--require-throughput", "--require-on"]


@settings(max_examples=int(150 * SCALE), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=st.lists(st.tuples(st.sampled_from(OPTIONS), option_values), max_size=5),
       flags=st.lists(st.sampled_from(["--json", "--quiet", "--no-refine", "--refine", "--noise-scale"]), max_size=3))
def test_any_options_parse_or_fail_cleanly(monkeypatch, tmp_path_factory, options, flags):
    monkeypatch.setattr(probing, "probe", fake_probe)
    config = tmp_path_factory.mktemp("opts") / "c.yaml"
    config.write_text("model: {name: mlp}\n")
    args = ["probe", str(config), *[part for pair in options for part in pair], *flags]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 2, 4), (args, result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
    assert "Traceback" not in result.output


@settings(max_examples=int(300 * SCALE), deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("{}[]:,&*!<>|-'\"\n\t #=.0123456789abcmodelnprx\0")), max_size=200),
       suffix=st.sampled_from([".yaml", ".toml", ".json"]))
def test_any_text_loads_or_fails_in_lines_naming_the_file(tmp_path_factory, text, suffix):
    """Arbitrary text (anchors, aliases, duplicate keys, deep brackets, NUL): InputError or a config."""
    path = tmp_path_factory.mktemp("text") / f"c{suffix}"
    path.write_text(text)
    _loads_or_names_the_file(path)
