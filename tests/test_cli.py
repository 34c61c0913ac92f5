"""The command line: output streams, JSON, exit codes, interrupts."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest
import torch
from typer.testing import CliRunner

from batchfind.cli import app

from conftest import TINY

runner = CliRunner()


def test_help_and_version_do_not_import_torch():
    code = "import sys; from batchfind.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("batchfind ")


@pytest.mark.slow
def test_probe_json_is_the_only_thing_on_stdout(write_config, tmp_path):
    path = write_config(TINY)
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["probe", str(path), "--json", "--max-batch", "16", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads(out.read_text())
    assert report["schema_version"] == 2 and report["tool"]["name"] == "batchfind"
    # A busy machine may add remeasures of sizes too close to call; the plan's own trials stay.
    planned = [(t["batch_size"], t["phase"]) for t in report["trials"] if t["phase"] != "remeasure"]
    assert planned == [(1, "double"), (2, "double"), (4, "double"), (8, "double"), (16, "double"), (16, "verify")]
    assert report["limit"]["batch_size"] == 16 and report["limit"]["first_oom"] is None
    assert report["limit"]["verified"] is True
    assert report["recommendation"]["batch_size"] in (1, 2, 4, 8, 16)
    trial = report["trials"][0]
    assert set(trial["step_ms"]) == {"median", "p10", "p90", "samples", "ci_low", "ci_high"}
    assert trial["step_ms"]["ci_low"] <= trial["step_ms"]["median"] <= trial["step_ms"]["ci_high"]
    assert trial["samples_per_s"] > 0 and trial["epoch_s"] > 0 and trial["peak_bytes"] > 0
    assert report["environment"]["device"] == "cpu" and report["config"]["probe"]["max_batch"] == 16
    assert "probing batch 1" in result.stderr  # progress goes to stderr
    assert not list(tmp_path.glob(".report.json.*"))  # no temporary file left behind


@pytest.mark.slow
def test_probe_table_marks_the_recommendation(write_config):
    result = runner.invoke(app, ["probe", str(write_config(TINY)), "--max-batch", "8"])
    assert result.exit_code == 0
    assert "recommended batch:" in result.stdout and "largest that fits: 8" in result.stdout
    assert "samples/s" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["probe", "missing.yaml"], "missing.yaml: no such file"),
        (["probe", "{cfg}", "--memory-limit", "2XB"], "--memory-limit: expected a size like 2GiB"),
        (["probe", "{cfg}", "--min-batch", "0"], "--min-batch: must be greater than 0"),
        (["probe", "{cfg}", "--device", "tpu"], "--device: expected auto, cpu, cuda or cuda:N"),
        (["probe", "{cfg}", "-o", "/nonexistent/dir/r.json"], "--output: folder /nonexistent/dir does not exist"),
        (["check", "{cfg}", "--batch", "1000"], "--batch: 1000 is larger than the dataset (64 samples)"),
        # Two copies of the report on standard output are no JSON.
        (["check", "{cfg}", "--batch", "4", "--json", "-o", "/dev/stdout"],
         "--output: /dev/stdout is standard output, where --json already writes the report"),
        (["probe", "{cfg}", "--json", "--plot", "/dev/stdout"],
         "--plot: /dev/stdout is standard output, where --json already writes the report"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(write_config, args, message):
    cfg = str(write_config(TINY))
    result = runner.invoke(app, [a.replace("{cfg}", cfg) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in result.output


def test_nothing_fits_exits_3(write_config):
    path = write_config(
        "model: {name: 'fixtures:Trap', kwargs: {at: 4}}\n"
        "data: {input_shape: [8], num_classes: 4, size: 64}\nprobe: {device: cpu, steps: 1, warmup_steps: 0}\n"
    )
    result = runner.invoke(app, ["probe", str(path), "--json", "--min-batch", "4"])
    assert result.exit_code == 3
    assert json.loads(result.stdout)["limit"]["batch_size"] is None
    assert "nothing fits" in result.stderr


def test_nothing_fits_with_a_size_for_data_that_has_its_own(write_config, tmp_path):
    # Set-up ran out of memory building the model: the warning that data.size is not used cannot
    # name the data's length, which set-up never read.
    torch.save({"inputs": torch.randn(64, 8), "targets": torch.randint(0, 4, (64,))}, tmp_path / "d.pt")
    path = write_config(
        "model: {name: 'fixtures:crashes', kwargs: {how: bad_alloc}}\n"
        f"data: {{kind: tensors, path: '{tmp_path / 'd.pt'}', size: 32}}\n"
        "probe: {device: cpu, steps: 1, warmup_steps: 0}\n"
    )
    for command, phase in ((["probe", str(path), "--json"], "double"), (["check", str(path), "--batch", "4", "--json"], "verify")):
        result = runner.invoke(app, command)
        assert result.exit_code == 3, result.output
        report = json.loads(result.stdout)
        assert "data.size: not used; the tensors data's own length sets" in report["warnings"][-1]
        # A check's one trial is a check's (what `compare` tells a check by) even when set-up failed.
        assert [(t["status"], t["phase"]) for t in report["trials"]] == [("oom", phase)]


@pytest.mark.parametrize("how, code, line", [
    ("error", 1, "error: even batch 4 failed (error): in forward: ValueError: a bug in the model"),
    ("hang", 3, "nothing fits: even batch 4 failed (timeout): no result within 2 s; worker stopped; if its steps are only slow, "
                "raise probe.trial_timeout_s"),
])
def test_quiet_still_says_why_the_smallest_batch_failed(write_config, how, code, line):
    # The timeout bounds only the hung step: the worker's start has its own bound.
    path = write_config(
        f"model: {{name: 'fixtures:Trap', kwargs: {{at: 4, how: {how}}}}}\n"
        "data: {input_shape: [8], num_classes: 4, size: 64}\nprobe: {device: cpu, trial_timeout_s: 2}\n"
    )
    result = runner.invoke(app, ["probe", str(path), "--quiet", "--min-batch", "4"])
    assert result.exit_code == code
    assert result.stdout == "" and result.stderr.strip() == line
    # `check` of that size says the same in its result line.
    checked = runner.invoke(app, ["check", str(path), "--batch", "4", "--quiet"])
    assert checked.exit_code == code and checked.stdout.strip().endswith(line.split("): ", 1)[1]), checked.output


def test_a_check_that_writes_its_report_to_stdout_keeps_stdout_json(write_config):
    # The line that says why a batch failed goes to stderr there, as under --json.
    path = write_config(
        "model: {name: 'fixtures:Trap', kwargs: {at: 32}}\n"
        "data: {input_shape: [8], num_classes: 4, size: 64}\nprobe: {device: cpu, steps: 1, warmup_steps: 0}\n"
    )
    run = subprocess.run([sys.executable, "-m", "batchfind", "check", str(path), "--batch", "32", "-o", "/dev/stdout",
                          "--quiet"], capture_output=True, text=True)
    assert run.returncode == 3, run.stderr
    assert json.loads(run.stdout)["trials"][0]["status"] == "oom"
    assert run.stderr.startswith("batch 32: oom"), run.stderr


def test_check_exit_codes(write_config):
    path = write_config(
        "model: {name: 'fixtures:Trap', kwargs: {at: 32}}\n"
        "data: {input_shape: [8], num_classes: 4, size: 64}\nprobe: {device: cpu, steps: 1, warmup_steps: 0}\n"
    )
    ok = runner.invoke(app, ["check", str(path), "--batch", "16", "--memory-limit", "3GiB"])
    assert ok.exit_code == 0 and "batch 16: ok" in ok.stdout
    # How close to the limit it came, for a CI job to read.
    assert re.search(r", peak \S+ \S+ \(\d+% of the 3\.0 GiB limit\)$", ok.stdout.strip()), ok.stdout
    oom = runner.invoke(app, ["check", str(path), "--batch", "32", "--json"])
    assert oom.exit_code == 3 and json.loads(oom.stdout)["trials"][0]["status"] == "oom"
    # --quiet: a batch that fits says nothing; one that does not still says why.
    quiet = runner.invoke(app, ["check", str(path), "--batch", "16", "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == "", quiet.output
    quiet = runner.invoke(app, ["check", str(path), "--batch", "32", "-q"])
    assert quiet.exit_code == 3 and "batch 32: oom" in quiet.stdout, quiet.output


def test_a_check_shows_its_warnings_on_stderr(write_config):
    # A strategy for several ranks in a one-process check: warned of in the report and on screen.
    path = write_config(TINY.replace("device: cpu}", "device: cpu, strategy: ddp}"))
    result = runner.invoke(app, ["check", str(path), "--batch", "4"])
    assert result.exit_code == 0, result.output
    assert "batch 4: ok" in result.stdout
    assert re.search(r"^warning: probe\.strategy ddp applies to several ranks; this run was one process",
                     result.stderr, re.M), result.stderr
    as_json = runner.invoke(app, ["check", str(path), "--batch", "4", "--json"])
    assert json.loads(as_json.stdout)["warnings"][0].startswith("probe.strategy ddp")
    assert "warning: probe.strategy" in as_json.stderr
    quiet = runner.invoke(app, ["check", str(path), "--batch", "4", "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == "", quiet.output


def test_check_writes_its_report_to_a_file(write_config, tmp_path):
    path = write_config(
        "model: {name: 'fixtures:Trap', kwargs: {at: 32}}\n"
        "data: {input_shape: [8], num_classes: 4, size: 64}\nprobe: {device: cpu, steps: 1, warmup_steps: 0}\n"
    )
    out = tmp_path / "check.json"
    result = runner.invoke(app, ["check", str(path), "--batch", "32", "-o", str(out)])
    assert result.exit_code == 3 and "batch 32: oom" in result.stdout
    trial = json.loads(out.read_text())["trials"][0]
    assert (trial["batch_size"], trial["status"], trial["phase"]) == (32, "oom", "verify")
    # A folder that is not there is found before the check runs, as for a probe.
    missing = tmp_path / "no-such-folder" / "check.json"
    result = runner.invoke(app, ["check", str(path), "--batch", "16", "-o", str(missing)])
    assert result.exit_code == 2 and "--output" in result.stderr and "batch 16" not in result.stdout


def test_info_json():
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0
    facts = json.loads(result.stdout)
    assert facts["cpu"]["cores_logical"] >= 1 and facts["cpu"]["ram_total_bytes"] > 0
    assert isinstance(facts["gpus"], list) and "torch" in facts


# Ctrl-C; a cancelled CI job or torchrun stopping; and each sent twice in quick succession, as an
# impatient double Ctrl-C does: the second must not cut the report's writing short.
@pytest.mark.parametrize("sig, times", [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGINT, 2), (signal.SIGTERM, 2),
                                        (signal.SIGHUP, 1)])
def test_interrupt_writes_the_partial_report_and_exits_130(write_config, tmp_path, sig, times):
    path = write_config(
        "model: {name: 'fixtures:Trap', kwargs: {how: hang, at: 8}}\n"
        "data: {input_shape: [8], num_classes: 4, size: 64}\nprobe: {device: cpu, steps: 1, warmup_steps: 0}\n"
    )
    out = tmp_path / "partial.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchfind", "probe", str(path), "-o", str(out), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        # Ctrl-C and a hang-up as at a terminal: a suite started in the background (`cmd &` in a
        # script, or under nohup) passes SIGINT or SIGHUP on ignored, and Python keeps them so.
        preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGHUP)],
    )
    deadline = time.monotonic() + 300  # a safety net: the CLI's start under load is far below it
    err = b""
    while b"probing batch 8" not in err and time.monotonic() < deadline:
        err += proc.stderr.read1(4096)
    time.sleep(0.5)
    for _ in range(times):
        proc.send_signal(sig)
        time.sleep(0.005)
    try:
        stdout, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # the fault handler prints where every thread is stuck
        _, late = proc.communicate()
        pytest.fail(f"still running 30 s after the signal:\n{(err + late).decode(errors='replace')[-8000:]}")
    assert proc.returncode == 130
    report = json.loads(out.read_text())
    assert report == json.loads(stdout)
    assert report["interrupted"] is True and report["stopped_because"] == "interrupted"
    assert [t["batch_size"] for t in report["trials"]] == [1, 2, 4]
    assert report["limit"]["verified"] is False


def test_a_terminal_that_closes_mid_probe_is_an_interrupt_and_the_report_is_written(write_config, tmp_path):
    # The kernel hangs up the session, and the table's writes to the terminal then fail (EIO).
    import pty
    import select

    path = write_config(
        "model: {name: 'fixtures:Trap', kwargs: {how: hang, at: 8}}\n"
        "data: {input_shape: [8], num_classes: 4, size: 64}\nprobe: {device: cpu, steps: 1, warmup_steps: 0}\n"
    )
    out = tmp_path / "partial.json"
    pid, fd = pty.fork()
    if pid == 0:  # the child: a probe on a terminal of its own, SIGHUP as a shell leaves it
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        os.execv(sys.executable, [sys.executable, "-m", "batchfind", "probe", str(path), "-o", str(out)])
    seen, deadline = b"", time.monotonic() + 300  # a safety net: the CLI's start under load is far below it
    while b"probing batch 8" not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 1)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    time.sleep(0.5)
    os.close(fd)  # the terminal goes away
    while time.monotonic() < deadline + 60:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"still running after the hang-up:\n{seen.decode(errors='replace')[-4000:]}")
    assert os.waitstatus_to_exitcode(status) == 130, seen.decode(errors="replace")[-4000:]
    report = json.loads(out.read_text())
    assert report["interrupted"] is True and [t["batch_size"] for t in report["trials"]] == [1, 2, 4]


def test_a_cancelled_check_writes_its_report_and_exits_130(write_config, tmp_path):
    import psutil

    path = write_config(
        "model: {name: 'fixtures:Trap', kwargs: {how: hang, at: 8}}\n"
        "data: {input_shape: [8], num_classes: 4, size: 64}\nprobe: {device: cpu, steps: 1, warmup_steps: 0}\n"
    )
    out = tmp_path / "check.json"
    proc = subprocess.Popen([sys.executable, "-m", "batchfind", "check", str(path), "--batch", "8", "-o", str(out),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Its worker runs (and hangs) only once the command handles the signal.
    deadline = time.monotonic() + 300  # a safety net: the CLI's start under load is far below it
    while proc.poll() is None and not psutil.Process(proc.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # a cancelled CI job
    try:
        stdout, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("still running 30 s after SIGTERM")
    assert proc.returncode == 130
    report = json.loads(out.read_text())
    assert report["interrupted"] is True and report["trials"] == []
    # It may have begun: the batch did not finish.
    assert "stopped: interrupted before batch 8 finished" in stderr.decode(), stderr
    assert json.loads(stdout) == report  # --json: the pipe gets the same report


def test_an_unwritable_output_still_prints_the_report(write_config, monkeypatch):
    import batchfind.report
    from test_fuzz import fake_probe

    from batchfind import probing

    def refuse(path, text):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(probing, "probe", fake_probe)
    monkeypatch.setattr(batchfind.report, "write_atomic", refuse)
    path = write_config(TINY)
    result = runner.invoke(app, ["probe", str(path), "--json", "-o", str(path.parent / "r.json")])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["recommendation"]["batch_size"] == 1
    assert result.stderr.strip().endswith("Permission denied")
    assert "--output: cannot write" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["probe", "{cfg}", "--min-batch", "abc"], "error: Invalid value for '--min-batch'"),
    (["probe"], "error: Missing argument 'CONFIG'."),
    (["probx"], "error: No such command 'probx'."),
    (["probe", "{cfg}", "--bogus"], "error: No such option: --bogus"),
    # An empty path (an unset shell variable: `-o "$REPORT"`) would read as ".", this folder.
    (["validate", ""], "error: Invalid value for 'CONFIG': an empty path"),
    (["init", ""], "error: Invalid value for 'PATH': an empty path"),
    (["compare", "", "{cfg}"], "error: Invalid value for 'BASE': an empty path"),
    (["probe", "{cfg}", "-o", ""], "error: Invalid value for '--output' / '-o': an empty path"),
    (["check", "{cfg}", "--batch", "2", "--output="], "error: Invalid value for '--output' / '-o': an empty path"),
    (["probe", "{cfg}", "--plot", ""], "error: Invalid value for '--plot': an empty path"),
    (["plot", "{cfg}", "-o", ""], "error: Invalid value for '--output' / '-o': an empty path"),
])
def test_usage_errors_are_one_line_with_where_help_is(monkeypatch, capsys, write_config, args, message):
    from batchfind.cli import main

    cfg = str(write_config("model: {name: mlp}\n"))
    monkeypatch.setattr(sys, "argv", ["batchfind", *(a.replace("{cfg}", cfg) for a in args)])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(message) and err.rstrip().endswith("--help)"), err


def test_main_without_a_command_shows_help_and_with_help_exits_0(monkeypatch, capsys):
    from batchfind.cli import main

    monkeypatch.setattr(sys, "argv", ["batchfind"])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("Usage: ") and "COMMAND [ARGS]" in err
    monkeypatch.setattr(sys, "argv", ["batchfind", "probe", "--help"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0 and "--memory-limit" in capsys.readouterr().out


def test_an_interrupt_repeated_at_once_is_ignored_and_an_ignored_one_stays_so(monkeypatch):
    from batchfind import cli

    def signal_self(sig=signal.SIGINT):
        os.kill(os.getpid(), sig)
        time.sleep(0.05)  # the handler runs in the main thread, between bytecodes

    # The handler's own clock, so a slow machine cannot stretch "at once" past the window.
    now = [0.0]
    monkeypatch.setattr(cli, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    # As in a terminal, whatever the tests were started from (a background job ignores SIGINT).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with cli._interrupt_once():
            with pytest.raises(KeyboardInterrupt):
                signal_self()
            now[0] = cli.REPEAT_S / 2
            signal_self()  # the same impatient keypress: nothing
            signal_self(signal.SIGTERM)
            now[0] = cli.REPEAT_S * 2
            with pytest.raises(KeyboardInterrupt):
                signal_self()  # later: the user means it
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a job started in the background
        with cli._interrupt_once():
            signal_self()  # still ignored
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_interrupt_while_the_cli_loads_is_exit_130_not_a_traceback(monkeypatch):
    import builtins

    from batchfind.__main__ import main

    real = builtins.__import__

    def interrupted(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 1 and name == "cli":  # `from .cli import ...`: typer and rich still loading
            raise KeyboardInterrupt
        return real(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # main() takes SIGTERM and SIGHUP as interrupts
    assert info.value.code == 130
    # SIGTERM in that moment too (a cancelled CI job), in a process of its own: without the
    # handler it would end the process that receives it; and once loaded, while typer builds the
    # command, before any command handles the signal.
    hooks = {
        "builtins.__import__": "def hook(name, globals=None, locals=None, fromlist=(), level=0):\n"
                               "    if level == 1 and name == 'cli':\n"
                               "        os.kill(os.getpid(), signal.SIGTERM)\n"
                               "    return real(name, globals, locals, fromlist, level)\n",
        "typer.main.get_command": "def hook(app):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return real(app)\n",
    }
    for target, hook in hooks.items():
        code = (f"import builtins, os, signal, sys, typer.main\nfrom batchfind.__main__ import main\nreal = {target}\n"
                f"{hook}{target} = hook\nsys.argv = ['batchfind', 'info']\nmain()\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 130 and "Traceback" not in done.stderr, (target, done.stderr)


def test_a_probe_stopped_by_its_time_budget_says_larger_sizes_may_fit(write_config):
    # The first trial always runs; the budget is spent by then.
    result = runner.invoke(app, ["probe", str(write_config(TINY)), "--json", "-q", "--time-budget", "0.001"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [t["batch_size"] for t in report["trials"]] == [1]
    assert report["stopped_because"] == "time budget of 0.001 s spent"
    assert report["limit"]["batch_size"] == 1 and report["limit"]["first_oom"] is None
    assert ("the time budget ran out before any size was found not to fit: 1 is the largest size tried, and larger "
            "sizes may fit") in report["warnings"]


def test_every_command_takes_debug_after_it():
    # The README's rule: `--debug` after the command or before it, for every command.
    import typer.main

    commands = typer.main.get_command(app).commands
    assert {name for name, command in commands.items() if "debug" not in {p.name for p in command.params}} == set()
    result = runner.invoke(app, ["schema", "--debug"])
    assert result.exit_code == 0 and json.loads(result.stdout)["title"], result.output


def test_init_without_a_path_writes_batchfind_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    written = (tmp_path / "batchfind.yaml").read_text()
    assert written.startswith("#") and "name: cnn" in written
