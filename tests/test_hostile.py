"""Hostile and careless use: odd output targets, closed or narrow streams, hostile files, non-finite
numbers, inherited environments. Each ends in the file written or one line and exit 2, never in a
lost report, a clobbered file, a hang or an "internal error"."""

import dataclasses
import json
import math
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from batchfind import distributed, probing
from batchfind.cli import _check_output, app
from batchfind.config import load_config
from batchfind.data import build_batches
from batchfind.errors import STACKED_RAN_OUT, InputError
from batchfind.files import MAX_DEPTH
from batchfind.models import build_model
from batchfind.report import Trial, atomic_path, load_report, replace_target, write_atomic
from batchfind.session import check_fit, setup_failure
from test_fuzz import fake_probe

runner = CliRunner()
TESTS = Path(__file__).parent
MLP = "model: {name: mlp, in_features: 8, classes: 4}\n"
EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _one_line(result, *expected):
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(e in lines[0] for e in expected), lines[0]
    assert "internal error" not in result.output and "Traceback" not in result.output


# ---- where a report may be written -------------------------------------------------------


def _regular(folder, mode):
    path = folder / "old.json"
    path.write_text("old")
    path.chmod(mode)
    return path, path


def _link(folder, mode):
    target, _ = _regular(folder, mode)
    link = folder / "link.json"
    link.symlink_to(target)
    return link, target


def _new(folder, mode):
    return folder / "new.json", folder / "new.json"


@EXAMPLES
@given(kind=st.sampled_from([_regular, _link, _new]), mode=st.sampled_from([0o600, 0o640, 0o644, 0o444]),
       text=st.text(max_size=200))
def test_files_are_replaced_atomically_keeping_mode_and_links(tmp_path_factory, kind, mode, text):
    folder = tmp_path_factory.mktemp("out")
    path, target = kind(folder, mode)
    existed = target.exists()
    write_atomic(path, text)
    assert target.read_bytes().decode("utf-8") == text
    if existed:
        assert stat.S_IMODE(target.stat().st_mode) == mode
    assert path.is_symlink() == (kind is _link)
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) == []  # no temporary left


@pytest.mark.skipif(not os.path.exists("/dev/tty"), reason="no /dev/tty here")
def test_a_terminal_that_is_not_there_is_found_before_the_run(write_config):
    # A process in a session of its own has no controlling terminal: /dev/tty does not open.
    run = subprocess.run([sys.executable, "-m", "batchfind", "check", str(write_config(MLP)), "--batch", "2",
                          "-o", "/dev/tty"], capture_output=True, text=True, start_new_session=True)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: --output: cannot write /dev/tty: "), run.stderr
    assert "batch 2" not in run.stdout + run.stderr  # before the run, not after it


def test_a_read_only_file_is_replaced_and_stays_read_only(tmp_path):
    # Its mode goes on the temporary once written: on before, it refused a user other than root
    # the writing, after the whole run, and the report was lost.
    target = tmp_path / "r.json"
    target.write_text("old")
    target.chmod(0o444)
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.stat().st_mode & stat.S_IWUSR
        tmp.write_text("new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o444


@pytest.mark.parametrize("special", ["fifo", "pipe", "devnull"])
def test_special_targets_are_written_in_place_not_replaced(tmp_path, special):
    got = []
    if special == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
        reader = threading.Thread(target=lambda: got.append(path.read_bytes()))
        reader.start()
    elif special == "pipe":  # what a shell's >(cmd) passes: /dev/fd/N, a pipe
        read_end, write_end = os.pipe()
        path = Path(f"/dev/fd/{write_end}")
    else:
        path = Path(os.devnull)
    assert replace_target(path) is None
    _check_output(path)  # the up-front check lets it through
    write_atomic(path, '{"a": 1}\n')
    if special == "fifo":
        reader.join(timeout=30)
        assert got == [b'{"a": 1}\n'] and stat.S_ISFIFO(path.stat().st_mode)
    elif special == "pipe":
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            assert f.read() == b'{"a": 1}\n'
    else:
        assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_dev_stdout_goes_through_this_process_own_descriptor(tmp_path):
    out = tmp_path / "out.txt"
    code = ("import sys; from batchfind.report import write_atomic; print('before', flush=True); "
            "write_atomic('/dev/stdout', 'report\\n'); print('after')")
    with open(out, "w") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, check=True)
    assert out.read_text() == "before\nreport\nafter\n"  # nothing truncated, nothing overwritten
    assert Path("/dev/stdout").is_symlink()


@pytest.mark.parametrize("option", ["-o", "--plot"])
def test_the_config_being_probed_is_never_an_output(write_config, option, monkeypatch):
    monkeypatch.setattr(probing, "probe", fake_probe)
    path = write_config(MLP)
    before = path.read_text()
    _one_line(runner.invoke(app, ["probe", str(path), option, str(path)]), "would overwrite", str(path))
    assert path.read_text() == before


@pytest.mark.parametrize("command", [["probe", "-o"], ["probe", "--plot"], ["check", "--batch", "1", "-o"]])
def test_the_data_file_being_read_is_never_an_output(write_config, command, tmp_path, monkeypatch):
    monkeypatch.setattr(probing, "probe", fake_probe)
    monkeypatch.setattr(probing, "check", fake_probe)
    data = tmp_path / "data.npz"
    data.write_bytes(b"PK\x05\x06" + bytes(18))  # whatever it holds is the user's and stays so
    path = write_config(MLP + "data: {kind: tensors, path: data.npz}\n")
    _one_line(runner.invoke(app, [command[0], str(path), *command[1:], str(data)]), "would overwrite", str(data))
    assert data.read_bytes() == b"PK\x05\x06" + bytes(18)


@pytest.mark.parametrize("command", [["probe", "{config}", "-o", "-"], ["probe", "{config}", "--plot", "-"],
                                     ["check", "{config}", "--batch", "1", "-o", "-"], ["plot", "r.json", "-o", "-"],
                                     ["init", "-"]])
def test_a_dash_is_no_file_name_by_accident(write_config, command, tmp_path, monkeypatch):
    # Elsewhere `-` means standard output: a file named "-" would be a surprise, found only later.
    monkeypatch.chdir(tmp_path)
    config = str(write_config(MLP))
    result = runner.invoke(app, [config if part == "{config}" else part for part in command])
    _one_line(result, "'-' would be a file named '-': for standard output write /dev/stdout, for that file ./-")
    assert not (tmp_path / "-").exists()


def test_plot_never_overwrites_the_report_it_reads(tmp_path):
    report = tmp_path / "r.json"
    report.write_text("{}")
    _one_line(runner.invoke(app, ["plot", str(report), "-o", str(report)]), "would overwrite")
    assert report.read_text() == "{}"


# ---- streams the reader closed, or cannot encode -------------------------------------------

# A real process, with the probe replaced by a fake: the streams are the point, not the probe.
FAKE = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); from test_fuzz import fake_probe; "
        "from batchfind import probing; probing.probe = fake_probe; from batchfind.cli import main; main()")


@pytest.mark.parametrize("how", ["head", "closed stdout", "closed stderr", "ascii", "stderr head"])
def test_the_file_is_written_whatever_happens_to_the_streams(tmp_path, how):
    config = tmp_path / "c.yaml"
    config.write_text(MLP)
    out = tmp_path / "r.json"
    run = f"{sys.executable} -c {FAKE!r} probe {config} -o {out}"
    shell = {
        "head": f"{run} --json | true; exit ${{PIPESTATUS[0]}}",  # the reader is gone before the first write
        "closed stdout": f"{run} --json >&-",
        "closed stderr": f"{run} 2>&- >/dev/null",
        "ascii": f"PYTHONIOENCODING=ascii {run} >/dev/null",  # the table and progress hold non-ASCII
        "stderr head": f"{run} --json 2>&1 >/dev/null | true; exit ${{PIPESTATUS[0]}}",
    }[how]
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr and "Traceback" not in result.stderr
    assert json.loads(out.read_text())["recommendation"]["batch_size"] == 1


def test_a_full_disk_on_stdout_is_one_line_after_the_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(MLP)
    out = tmp_path / "r.json"
    shell = f"{sys.executable} -c {FAKE!r} probe {config} --json -q -o {out} >/dev/full"
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: cannot write to stdout: No space left on device"]
    assert out.exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
@pytest.mark.parametrize("args", [["--version"], ["--help"], ["probe", "--help"]])
def test_what_is_printed_before_any_command_runs_fails_in_one_line_too(args):
    run = " ".join([sys.executable, "-m", "batchfind", *args])
    full = subprocess.run(["bash", "-c", f"{run} >/dev/full"], capture_output=True, text=True)
    assert full.returncode == 1 and full.stderr == "error: cannot write to stdout: No space left on device\n"
    # A reader that stops reading changes no exit code.
    gone = subprocess.run(["bash", "-c", f"{run} | (exec 0<&-; true); exit ${{PIPESTATUS[0]}}"],
                          capture_output=True, text=True)
    assert gone.returncode == 0 and gone.stderr == "", gone.stderr


# ---- numbers JSON does not have ------------------------------------------------------------


finite_floats = st.floats(allow_nan=False, allow_infinity=False)


@EXAMPLES
@given(value=finite_floats, nested=st.booleans())
def test_any_finite_float_in_the_config_round_trips_through_the_report(tmp_path_factory, value, nested):
    path = tmp_path_factory.mktemp("f") / "c.yaml"
    kwargs = {"x": [value]} if nested else {"x": value}
    path.write_text(yaml.safe_dump({"model": {"name": "fixtures:Trap", "kwargs": kwargs}}))
    report = fake_probe(load_config(path))
    assert json.loads(report.to_json())["config"]["model"]["kwargs"] == kwargs


@EXAMPLES
@given(value=st.sampled_from([math.nan, math.inf, -math.inf]),
       where=st.sampled_from(["model.kwargs", "data.kwargs", "train.lr", "recommend.tolerance"]),
       suffix=st.sampled_from([".yaml", ".toml"]))
def test_a_non_finite_float_in_the_config_is_one_line(tmp_path_factory, value, where, suffix):
    section, key = where.split(".")
    raw = {"model": {"name": "fixtures:Trap"}}
    raw.setdefault(section, {})[key] = {"deep": {"x": value}} if key == "kwargs" else value
    path = tmp_path_factory.mktemp("f") / f"c{suffix}"
    path.write_text(yaml.safe_dump(raw) if suffix == ".yaml" else _toml(raw))
    with pytest.raises(InputError) as caught:
        load_config(path)
    assert len(str(caught.value).splitlines()) == 1
    assert str(caught.value).startswith(f"{path}: {where}") and "finite" in str(caught.value)


@pytest.mark.parametrize("where", ["model.kwargs", "data.kwargs", "train.optimizer_kwargs"])
@pytest.mark.parametrize("value, message", [
    ("{x: !!binary /w==}", "x: expected text, a number, true or false, null, a list or a mapping (got binary data"),
    ("{x: [1, {y: !!set {a}}]}", "x[1].y: expected text, a number, true or false, null, a list or a mapping (got a set"),
    ("{x: !!pairs [a: .inf]}", "x[0]: expected text, a number, true or false, null, a list or a mapping (got pairs"),
    ("{x: {.nan: 1}}", "x: key nan is neither text nor a whole number"),
    ("{x: {on: b}}", "x: key True is neither text nor a whole number"),
])
def test_what_json_cannot_hold_in_kwargs_is_one_line(write_config, where, value, message):
    # Binary data made the report's writing fail after the run (UnicodeDecodeError); a NaN key
    # or a set went into it as "None" or null.
    section, key = where.split(".")
    model = "model: {name: 'fixtures:Trap'" + (f", kwargs: {value}}}\n" if section == "model" else "}\n")
    path = write_config(model if section == "model" else model + f"{section}: {{{key}: {value}}}\n")
    with pytest.raises(InputError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: {where}: {message}"), caught.value


def test_whole_numbers_are_keys_in_kwargs(write_config):
    # Hugging Face's `id2label: {0: cat}`: written as text in the report, as the worker reads them.
    config = load_config(write_config("model: {name: 'fixtures:Trap', kwargs: {id2label: {0: cat, 1: dog}}}\n"))
    report = fake_probe(config)
    assert json.loads(report.to_json())["config"]["model"]["kwargs"] == {"id2label": {"0": "cat", "1": "dog"}}


def _toml(raw):
    def value(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(v)

    return "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {value(v)}" for k, v in body.items()) for s, body in raw.items())


@EXAMPLES
@given(budget=st.one_of(st.just("inf"), st.floats(min_value=1e-3, max_value=1e12).map(repr)))
def test_time_budget_inf_means_none_and_any_budget_serialises(write_config, monkeypatch, budget):
    monkeypatch.setattr(probing, "probe", fake_probe)
    result = runner.invoke(app, ["probe", str(write_config(MLP)), "--json", "-q", "--time-budget", budget])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)["config"]["probe"]["time_budget_s"]
    assert written == (None if budget == "inf" else float(budget))


@pytest.mark.parametrize("written", ["inf", ".inf", "Infinity"])
def test_time_budget_inf_in_a_config_means_none(write_config, written):
    assert load_config(write_config(MLP + f"probe: {{time_budget_s: {written}}}\n")).probe.time_budget_s is None


@pytest.mark.parametrize("budget", ["nan", "-inf", "0", "-1"])
def test_time_budget_that_is_no_duration_is_one_line(write_config, budget):
    _one_line(runner.invoke(app, ["probe", str(write_config(MLP)), "--time-budget", budget]), "--time-budget")


@EXAMPLES
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_a_report_never_holds_bare_nan(value):
    report = fake_probe(load_config_text(MLP))
    trial = Trial(batch_size=1, status="ok", samples_per_s=value, loss=value, peak_bytes=1)
    text = dataclasses.replace(report, trials=[trial]).to_json()
    data = json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in the report"))
    assert data["trials"][0]["loss"] == (value if math.isfinite(value) else None)


@EXAMPLES
@given(text=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))  # one: two may pair into a character
def test_a_report_with_text_that_is_no_utf8_reads_back(tmp_path_factory, text):
    # A data file in a folder whose name is not UTF-8 (`na\xefve/`: Python reads it as
    # `na\udcefve`), or a model's error with such a character: the report was written with an
    # escape that strict JSON readers refuse, and compare and plot refused batchfind's own report.
    report = fake_probe(load_config_text(MLP))
    trial = Trial(batch_size=2, status="error", error=f"in forward: {text}", fresh_process=False)
    report = dataclasses.replace(report, trials=report.trials + [trial],
                                 config={**report.config, "data": {"kind": "tensors", "path": f"/tmp/na{text}ve/d.pt"}})
    path = tmp_path_factory.mktemp("u") / "r.json"
    path.write_text(report.to_json())
    read = load_report(path)
    assert read.trials[1].error == "in forward: " + text.encode("unicode_escape").decode("ascii")
    result = runner.invoke(app, ["compare", str(path), str(path)])
    assert result.exit_code == 0, result.output
    # One written with the escapes as they were: read too, the halves shown as escapes.
    path.write_text(json.dumps(report.to_dict()))
    assert load_report(path).config["data"]["path"] == "/tmp/na" + text.encode("unicode_escape").decode() + "ve/d.pt"


def load_config_text(text):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_text(text)
        return load_config(path)


def test_compare_json_is_json_even_when_a_change_overflows(tmp_path):
    base, new = fake_probe(load_config_text(MLP)), fake_probe(load_config_text(MLP))
    paths = []
    for name, report, speed in (("a", base, 5e-324), ("b", new, 1e308)):
        trial = Trial(batch_size=1, status="ok", samples_per_s=speed, peak_bytes=1, loss_finite=True)
        path = tmp_path / f"{name}.json"
        path.write_text(dataclasses.replace(report, trials=[trial]).to_json())
        paths.append(str(path))
    result = runner.invoke(app, ["compare", *paths, "--json"])
    assert result.exit_code == 0, result.output
    changes = json.loads(result.stdout, parse_constant=lambda token: pytest.fail(token))["changes"]
    assert [c["change"] for c in changes if c["metric"] == "samples/s @ 1"] == [None]


def test_compare_shows_numbers_of_any_size_in_a_cell(tmp_path):
    """A report read back may hold any rate, and sizes up to 2**63 - 1: the table shows them
    compactly and exactly, not as hundreds of digits or a float's rounding."""
    base, new = fake_probe(load_config_text(MLP)), fake_probe(load_config_text(MLP))
    paths = []
    for name, report, speed, limit in (("a", base, 50.0, 8), ("b", new, 1e300, 2**63 - 1)):
        trial = Trial(batch_size=1, status="ok", samples_per_s=speed, peak_bytes=1, loss_finite=True)
        report = dataclasses.replace(report, trials=[trial], limit=dataclasses.replace(report.limit, batch_size=limit))
        path = tmp_path / f"{name}.json"
        path.write_text(report.to_json())
        paths.append(str(path))
    result = CliRunner().invoke(app, ["compare", *paths], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "9,223,372,036,854,775,807" in result.stdout and " 1e+300 " in result.stdout
    assert "+2e+300%" in result.stdout and not re.search(r"\d{4}", result.stdout.replace(",", "").replace("9223372036854775807", ""))


def test_a_report_with_nan_tokens_is_not_json(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(fake_probe(load_config_text(MLP)).to_json().replace('"dataset_len": 10', '"dataset_len": NaN'))
    _one_line(runner.invoke(app, ["compare", str(path), str(path)]), str(path), "NaN is not a JSON number")


# ---- files that are not what they claim ----------------------------------------------------


@pytest.mark.parametrize("command", [["validate", "/dev/zero"], ["probe", "/dev/zero"],
                                     ["compare", "/dev/zero", "/dev/zero"], ["plot", "/dev/zero", "-o", "x.png"]])
def test_endless_files_end_quickly(command):
    _one_line(runner.invoke(app, command), "/dev/zero: larger than")


@EXAMPLES
@given(depth=st.integers(1, 3000), fmt=st.sampled_from(["yaml", "toml", "json"]))
def test_any_nesting_depth_loads_or_is_one_line(tmp_path_factory, depth, fmt):
    folder = tmp_path_factory.mktemp("deep")
    nested = "[" * depth + "]" * depth
    if fmt == "json":
        path = folder / "r.json"
        path.write_text(nested)
        with pytest.raises(InputError) as caught:
            load_report(path)
    else:
        path = folder / f"c.{fmt}"
        path.write_text(MLP + f"data: {{kind: 'data:Factory', kwargs: {{x: {nested}}}}}\n" if fmt == "yaml"
                        else f"[model]\nname = 'mlp'\n[data]\nkind = 'data:Factory'\n[data.kwargs]\nx = {nested}\n")
        if depth + 3 <= MAX_DEPTH:  # the top level, data, kwargs
            load_config(path)
            return
        with pytest.raises(InputError) as caught:
            load_config(path)
    assert len(str(caught.value).splitlines()) == 1 and str(caught.value).startswith(str(path))


@pytest.mark.parametrize("levels", [3, 9])
def test_a_yaml_alias_bomb_is_refused_before_it_expands(write_config, levels):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    path = write_config(MLP + "data:\n  kind: 'data:Factory'\n  kwargs:\n" + "".join(f"    {line}\n" for line in lines))
    if levels == 3:  # 9 + 81 + 729 values: a config may use aliases
        assert load_config(path).data.kwargs["a2"][0][0] == ["x"] * 9
    else:
        _one_line(runner.invoke(app, ["validate", str(path)]), "YAML aliases")


def test_yaml_aliases_of_long_text_are_refused_before_they_reach_the_report(write_config):
    # 500 uses of 900 KB: under a thousand values, and a 450 MB report.
    long = "x" * 900_000
    path = write_config(f"model: {{name: 'fixtures:Trap', kwargs: {{s: &s '{long}', l: [{', '.join(['*s'] * 500)}]}}}}\n")
    _one_line(runner.invoke(app, ["validate", str(path)]), "more than 1 MiB of text once YAML aliases are expanded")
    few = write_config(f"model: {{name: 'fixtures:Trap', kwargs: {{s: &s '{'x' * 1000}', l: [*s, *s]}}}}\n")
    assert load_config(few).model.kwargs["l"] == ["x" * 1000] * 2  # a config may use aliases


def test_a_yaml_alias_that_holds_itself_is_refused(write_config):
    _one_line(runner.invoke(app, ["validate", str(write_config(MLP + "data: {kwargs: {a: &a [*a]}}\n"))]),
              "nested more than")


def test_yaml_merge_keys_may_override(write_config):
    path = write_config("base: &base {name: mlp, hidden: 8}\nmodel: {<<: *base, hidden: 16}\n")
    with pytest.raises(InputError, match="base: unknown key"):  # the merge itself is fine
        load_config(path)


@pytest.mark.parametrize("name", ["x" * 300 + ".yaml", "a/" * 2100 + "c.yaml"])
def test_unnameable_paths_are_one_line(name):
    _one_line(runner.invoke(app, ["validate", name]))
    _one_line(runner.invoke(app, ["compare", name, name]))
    _one_line(runner.invoke(app, ["init", name]))
    _one_line(runner.invoke(app, ["plot", "r.json", "-o", name]))


@pytest.mark.parametrize("path", ["a\\0b.pt", "{}.pt".format("y" * 300)])
def test_unnameable_data_paths_are_one_line(write_config, path):
    config = write_config(MLP + f'data: {{kind: tensors, path: "{path}"}}\n')
    _one_line(runner.invoke(app, ["validate", str(config)]), f"{config}: data.path:")


def test_control_characters_from_a_model_or_a_report_reach_no_terminal(write_config, tmp_path):
    config = write_config("model: {name: 'fixtures:Trap', kwargs: {at: 4, how: escape}}\n"
                          "data: {input_shape: [8], num_classes: 4, size: 64}\nprobe: {device: cpu}\n")
    result = runner.invoke(app, ["check", str(config), "--batch", "4", "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 1 and "\x1b" not in result.output
    assert "ValueError: \\x1b[2Ja bug in the model" in result.stdout, result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    # A key in both reports (one only would be a setting added between versions: no difference).
    report["config"]["model"]["\x1b]0;title\x07"] = 0
    (tmp_path / "base.json").write_text(json.dumps(report))
    report["environment"]["device_name"] = "EPYC\x1b[2J"
    report["config"]["model"]["\x1b]0;title\x07"] = 1
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(report))
    result = runner.invoke(app, ["compare", str(tmp_path / "base.json"), str(hostile)])
    assert "different devices" in result.stderr and "different configs" in result.stderr, result.stderr
    assert "\x1b" not in result.output and "\x07" not in result.output and "EPYC\\x1b[2J" in result.stderr


def test_only_what_steers_a_terminal_is_escaped():
    from batchfind.errors import printable

    assert printable("a\x1b[2Jb\x9bc\u202ed\re") == "a\\x1b[2Jb\\x9bc\\u202ed\\re"
    kept = "line\nnext\ttab, non\u00a0breaking, 👩\u200d💻, 中文"
    assert printable(kept) == kept


def test_plot_of_a_report_with_a_peak_not_measured(tmp_path):
    pytest.importorskip("matplotlib")
    report = fake_probe(load_config_text(MLP))  # its one trial has peak_bytes null
    assert report.trials[0].peak_bytes is None
    path = tmp_path / "r.json"
    path.write_text(report.to_json())
    result = runner.invoke(app, ["plot", str(path), "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


json_values = st.recursive(st.none() | st.booleans() | st.integers(-9, 9) | st.text(max_size=3),
                           lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner,
                                                                                       max_size=2), max_leaves=4)
times = st.floats(-10, 1e6, allow_nan=False) | st.floats(allow_nan=False, allow_infinity=False)


@given(median=times, p10=times, p90=times, rate=times, model=json_values, train=json_values)
@example(median=1.0, p10=1.0, p90=1.0, rate=1e308, model=None, train=None)
@example(median=10.0, p10=1e-300, p90=20.0, rate=50.0, model=None, train=None)  # a spread past any float
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_plot_of_a_report_edited_by_hand_draws_or_is_one_line(tmp_path, median, p10, p90, rate, model, train):
    pytest.importorskip("matplotlib")
    report = json.loads(fake_probe(load_config_text(MLP)).to_json())
    report["trials"][0].update(samples_per_s=rate, step_ms={"median": median, "p10": p10, "p90": p90,
                                                            "samples": [median], "ci_low": None, "ci_high": None})
    report["config"].update(model=model, train=train)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    result = runner.invoke(app, ["plot", str(path), "-o", str(tmp_path / "p.svg")])
    if min(median, p10, p90) < 0:
        _one_line(result, "r.json: trials.0.step_ms.", "must be greater than or equal to 0")
    elif rate <= 0:  # steps that ran go at some rate
        _one_line(result, "r.json: trials.0.samples_per_s", "must be greater than 0")
    elif result.exit_code == 2:  # numbers no axis can draw: a rate near the largest float, or its spread
        _one_line(result, "r.json: trials.0.samples_per_s: ", "past what an axis can draw")
        assert (rate * max(1.0, median / p10) if p10 > 0 else rate) > 1e299, (rate, median, p10)
    else:
        assert result.exit_code == 0, result.output


# ---- processes and environments ------------------------------------------------------------


def test_the_distributed_store_listens_on_loopback_only():
    import psutil

    topo = distributed.topology(2, 30)
    listening = [c.laddr for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == topo.port]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening


def test_inherited_torchrun_variables_fail_in_one_line(monkeypatch, write_config):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(distributed, "MEET_S", 1.0)
    for var, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(var, value)
    result = runner.invoke(app, ["check", str(write_config(MLP)), "--batch", "1"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "did not meet within 1 s" in lines[0] and "unset them" in lines[0]


def test_an_inherited_master_addr_that_does_not_resolve_fails_at_once_in_one_line(monkeypatch, write_config):
    monkeypatch.setattr(distributed, "MEET_S", 1.0)
    for var, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "no.such.host.invalid",
                       "MASTER_PORT": "29555"}.items():
        monkeypatch.setenv(var, value)
    result = runner.invoke(app, ["check", str(write_config(MLP)), "--batch", "1"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: MASTER_ADDR=no.such.host.invalid: torchrun's variables are set, but this name "
                               "did not resolve within 1 s"), lines[0]


def test_a_master_addr_that_resolves_late_is_waited_for(monkeypatch):
    import socket

    # A pod's name resolves once the pod is up: a second of failures, then the address.
    real, started = socket.getaddrinfo, time.monotonic()

    def late(host, *args, **kwargs):
        if time.monotonic() - started < 1.0:
            raise socket.gaierror(-2, "Name or service not known")
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", late)
    distributed._resolve("master-0.svc", 29500, time.monotonic() + 10)  # returns, no error
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize("var,value", [("RANK", "x"), ("MASTER_PORT", "-1"), ("RANK", "5"), ("RANK", "²"),
                                       ("MASTER_PORT", "0"), ("MASTER_PORT", "99999")])
def test_malformed_torchrun_variables_fail_in_one_line(monkeypatch, write_config, var, value):
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for name, setting in {**env, var: value}.items():
        monkeypatch.setenv(name, setting)
    result = runner.invoke(app, ["check", str(write_config(MLP)), "--batch", "1"])
    assert result.exit_code == 2 and f"{var}=" in result.stderr and "unset" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_setup_that_fails_under_a_tight_cap_is_out_of_memory(monkeypatch):
    import resource


    assert setup_failure(SystemError("error return without exception set"))["status"] == "error"  # no cap
    monkeypatch.setattr(resource, "getrlimit", lambda which: (200 << 20, 200 << 20))
    failure = setup_failure(SystemError("error return without exception set"))
    assert failure["status"] == "oom" and "too little for Python and torch" in failure["error"]
    assert setup_failure(ImportError("libx.so: failed to map segment from shared object"))["status"] == "oom"
    assert setup_failure(ValueError("a bug"))["status"] == "error"
    # The line a user reads keeps the cause and the advice however long the library's path.
    long = setup_failure(ImportError(f"/{'x' * 300}/libtorch_cpu.so: failed to map segment from shared object"))
    line = probing._nothing_fits(long["error"], load_config_text(MLP).data)
    assert "too little for Python and torch themselves" in line and line.endswith("or make the model smaller"), line


def test_a_library_the_memory_limit_leaves_no_room_to_map_is_out_of_memory_not_a_bad_install(
        tmp_path, monkeypatch):
    import resource

    from batchfind.models import resolve

    # What a compiled library's import raises under a small RAM cap (transformers' regex at 150 MiB).
    (tmp_path / "needs_a_library.py").write_text(
        'raise ImportError("/site-packages/regex/_regex.so: failed to map segment from shared object")\n')
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(InputError, match="model.name: cannot import 'needs_a_library'"):
        resolve("needs_a_library:Model", "model.name")  # no cap: the install's doing
    monkeypatch.delitem(sys.modules, "needs_a_library", raising=False)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (150 << 20, 150 << 20))
    with pytest.raises(ImportError) as raised:
        resolve("needs_a_library:Model", "model.name")
    failure = setup_failure(raised.value)
    assert failure["status"] == "oom" and "the memory limit leaves too little for Python and torch" in failure["error"]


@pytest.mark.parametrize("shape, dtype, failed, blamed", [
    ([100000, 100000], "float32", 80_000_000_000, "samples smaller (data.inputs.x holds 37.3 GiB per sample)"),
    ([100000, 100000], "bool", 20_000_000_000, "samples smaller (data.inputs.x holds 9.3 GiB per sample)"),
    ([8], "float32", 4_000_000_000, "model smaller"),  # far more than two samples: the model's allocation
])
def test_a_setup_that_runs_out_on_its_samples_blames_the_data(shape, dtype, failed, blamed):
    data = load_config_text(MLP + f"data: {{inputs: {{x: {{shape: {shape}, dtype: {dtype}}}, "
                                  "y: {shape: [], dtype: int64, high: 4}}}\n").data
    message = f"RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate {failed} bytes."
    assert probing._nothing_fits(message, data).endswith("or make the " + blamed)
    assert probing._nothing_fits("MemoryError", data).endswith("or make the model smaller")  # size not given


def test_samples_that_run_out_as_they_are_stacked_blame_the_data_not_the_model(write_config, tmp_path):
    # Samples that are views of one value (stride 0): a small file, whose two samples stacked need 8 TiB.
    torch.save({"inputs": torch.zeros(1, 1, 1).expand(2, 2**20, 2**20), "targets": torch.zeros(2, dtype=torch.long)},
               tmp_path / "views.pt")
    cfg = load_config(write_config("model: {name: mlp}\ndata: {kind: tensors, path: views.pt}"))
    batches = build_batches(cfg, torch.device("cpu"))
    with pytest.raises(MemoryError) as raised:
        check_fit(build_model(cfg.model), batches, cfg, torch.device("cpu"))
    line = probing._nothing_fits(setup_failure(raised.value)["error"], cfg.data)
    assert line.startswith(probing.SETUP_RAN_OUT + ": two of the data's samples, stacked into a batch, ran out of "
                           "memory (8.0 TiB in one allocation), more than all of this machine's memory"), line
    assert line.endswith(f"make the samples of {tmp_path / 'views.pt'} smaller") and "model" not in line.split(":", 1)[1]
    # Under a limit the machine could give, raising it is the other way out.
    fits = probing._nothing_fits(f"MemoryError: {STACKED_RAN_OUT}: RuntimeError: DefaultCPUAllocator: can't "
                                 "allocate memory: you tried to allocate 1000000 bytes.", cfg.data)
    assert fits.endswith(f"raise the memory limit (probe.memory_limit, or --memory-limit on probe and check), or "
                         f"make the samples of {tmp_path / 'views.pt'} smaller"), fits


def test_a_setup_that_runs_out_on_one_allocation_larger_than_the_machine_says_no_limit_helps():
    data = load_config_text(MLP).data
    message = f"RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate {2**42} bytes."
    line = probing._nothing_fits(message, data)
    assert line.endswith("look at what the model allocates for two samples") and "(4.0 TiB) is more than all" in line
    assert "raise the memory limit" not in line
    # A GPU's memory is not the machine's RAM: a limit on a larger card may well hold it.
    cuda = f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {2**42 / 2**30:.2f} GiB"
    assert probing._nothing_fits(cuda, data).endswith("raise the memory limit (probe.memory_limit, or --memory-limit "
                                                      "on probe and check), or make the model smaller")
    # Without a limit the GPU's whole memory ran out: there is no limit to raise.
    for gpu in (cuda, "RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED"):
        whole = probing._nothing_fits(gpu, data, limited=False)
        assert whole.endswith("no memory limit was set, so the whole GPU ran out: a GPU with more memory, "
                              "train.precision bf16 or fp16 where it is fp32, or make the model smaller"), whole
        assert "raise the memory limit" not in whole
    # A CPU without a limit set still has one (a share of the memory available): raising it may help.
    assert "raise the memory limit" in probing._nothing_fits("MemoryError", data, limited=False)


def test_a_synthetic_sample_larger_than_the_limit_is_named(write_config):
    path = write_config("model: {name: 'torch.nn:Linear', kwargs: {in_features: 100000, out_features: 4}}\n"
                        "data: {inputs: {x: {shape: [100000, 100000]}}}\ntrain: {loss: 'fixtures:detached_loss'}\n"
                        "probe: {device: cpu, memory_limit: 4GiB}\n")
    result = runner.invoke(app, ["probe", str(path), "-q"])
    assert result.exit_code == 3, result.output
    line = result.stderr.rstrip()
    assert "two of the data's samples, stacked into a batch, ran out of memory (74.5 GiB in one allocation)" in line
    assert line.endswith("make the samples smaller (data.inputs.x holds 37.3 GiB per sample)"), line


def test_dataloader_workers_past_a_few_per_cpu_are_not_started(write_config):
    cpus = len(os.sched_getaffinity(0))
    path = write_config(MLP + f"data: {{kind: 'fixtures:Pairs', workers: {4 * cpus + 1}}}\n"
                        "probe: {device: cpu, max_batch: 2, warmup_steps: 0, steps: 1, min_time_s: 0, max_time_s: 0}\n")
    result = runner.invoke(app, ["probe", str(path), "--json"])
    assert result.exit_code == 0, result.output
    error = (f"data.workers: {4 * cpus + 1} is more than 4 per CPU ({cpus} CPUs here): set at most {4 * cpus} to "
             "time the DataLoader")
    assert json.loads(result.stdout)["recommendation"]["loader"] == {"status": "skipped", "error": error}
    assert f"warning: the DataLoader was not timed: {error}" in result.stderr



def test_a_dataloader_that_fails_names_the_dataset_and_item_in_one_line(write_config):
    path = write_config(MLP + "data: {kind: 'fixtures:NoWorkers', workers: 1}\n"
                        "probe: {device: cpu, max_batch: 2, warmup_steps: 0, steps: 1, min_time_s: 0, max_time_s: 0}\n")
    result = runner.invoke(app, ["probe", str(path), "--json"])
    assert result.exit_code == 0, result.output
    loader = json.loads(result.stdout)["recommendation"]["loader"]
    # Not the worker's traceback: the error inside it, and where it ran.
    assert loader["status"] == "input" and "\n" not in loader["error"]
    assert re.fullmatch(r"data: item \d+ of the NoWorkers dataset raised OSError: the file handle was opened in another "
                        r"process \(in DataLoader worker process 0\)", loader["error"])
    assert f"warning: the DataLoader timing failed: {loader['error']}\n" in result.stderr


def test_items_that_change_format_past_those_read_fail_the_loader_naming_the_dataset(write_config):
    cfg = load_config(write_config(MLP + "data: {kind: 'fixtures:Reshaped'}\n"))
    batches = build_batches(cfg, torch.device("cpu"))
    batches.batch(4)  # the trials' items come first, and are pairs
    with pytest.raises(InputError, match="^data: items of the Reshaped dataset do not stack into a batch: "):
        for _ in batches.loader(100, workers=0, pin_memory=False):
            pass


# ---- templates ------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["mlp", "cnn", "gpt", "custom"])
def test_init_writes_the_format_its_suffix_names_and_both_say_the_same(tmp_path, template):
    import tomllib

    configs = {}
    for fmt, parse in (("yaml", yaml.safe_load), ("toml", tomllib.loads)):
        path = tmp_path / f"c.{fmt}"
        assert runner.invoke(app, ["init", str(path), "--template", template]).exit_code == 0
        text = path.read_text()
        assert isinstance(parse(text), dict) and text.count("# ") > 10  # the format named, commented
        configs[fmt] = load_config(path)
        # Set for one process it would only make every probe warn that it was not used.
        assert "strategy" not in configs[fmt].probe.model_fields_set
    assert configs["yaml"].model_dump() == configs["toml"].model_dump()
    # JSON has no comments, and a .json config is read as JSON: a template there would not load.
    _one_line(runner.invoke(app, ["init", str(tmp_path / "c.json"), "--template", template]),
              "a template is a commented config, YAML or TOML; name it .yaml or .toml")
    assert not (tmp_path / "c.json").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_init_onto_a_full_device_is_one_line():
    result = runner.invoke(app, ["init", "/dev/full"])
    assert result.exit_code == 2 and result.stderr.strip() == "error: /dev/full: cannot write: No space left on device"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc here")
def test_an_output_folder_that_takes_no_files_is_refused_before_the_probe(write_config, monkeypatch):
    monkeypatch.setattr(probing, "probe", lambda *args, **kwargs: pytest.fail("the probe ran"))
    result = runner.invoke(app, ["probe", str(write_config(MLP)), "-o", "/proc/r.json"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --output:") and "/proc" in result.stderr


def test_an_output_through_a_link_names_the_folder_it_leads_to(tmp_path, write_config):
    link = tmp_path / "report.json"
    link.symlink_to(tmp_path / "missing" / "r.json")
    result = runner.invoke(app, ["probe", str(write_config(MLP)), "-o", str(link)])
    assert result.exit_code == 2 and f"--output: folder {tmp_path / 'missing'} does not exist" in result.stderr


def test_a_path_ending_in_a_slash_is_refused_and_nothing_is_written(write_config, tmp_path):
    # As a Path the slash would go: `report.json/` would replace report.json, `plots/` become a PNG.
    config = write_config(MLP)
    (tmp_path / "report.json").write_text("the earlier report")
    for args in (["validate", f"{config}/"], ["probe", str(config), "-o", f"{tmp_path}/report.json/"],
                 ["init", f"{tmp_path}/new.yaml/"], ["plot", str(config), "-o", f"{tmp_path}/plots/"],
                 ["compare", f"{tmp_path}/report.json/", str(config)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "ends in /, which names a folder: expected a file" in result.stderr, result.stderr
    assert (tmp_path / "report.json").read_text() == "the earlier report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "report.json"]


def test_escape_sequences_in_a_file_name_are_shown_not_sent_to_the_terminal(tmp_path):
    named = tmp_path / "esc\x1b[2Jred.yaml"  # would clear the screen
    named.write_text("probe: {steps: -1}\n")
    for args in (["validate", str(named)], ["compare", str(tmp_path / "r\x1b[2J.json"), str(named)],
                 ["plot", str(named), "-o", str(tmp_path / "x\x1b[2J.gif")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "\x1b" not in result.stderr and "\\x1b[2J" in result.stderr, result.stderr
    # Characters Python would break a line at, but a line feed: the name stays whole, with its problem.
    for odd in ("\x0b", "\x1c", "\x85", "\u2028", "\r"):
        named = tmp_path / f"a{odd}b.yaml"
        named.write_text("model: {name: mlp}\nprobe: {steps: -1}\n")
        result = runner.invoke(app, ["validate", str(named)])
        shown = str(named).replace(odd, odd.encode("unicode_escape").decode("ascii"))
        assert result.stderr == f"error: {shown}: probe.steps: must be greater than 0 (got -1)\n", (odd, result.stderr)
