"""What people read: the table at any width, piped output, help, compare, info and the plot."""

import dataclasses
import io
import re
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text

from batchfind.render import print_report, step_text, table, trial_notes
from batchfind.report import Environment, Limit, Recommendation, Report, StepTimes, Trial

MiB = 1024**2
GiB = 1024**3
LIMIT = 2048 * MiB

# A cnn-small probe under a 2 GiB cap on a 2-core CPU (README's example): (batch, status, phase,
# median step ms, p10, p90, peak MiB, fresh process).
RUN = [
    (1, "ok", "double", 11.6, 10.8, 12.6, 323.6, True),
    (2, "ok", "double", 10.4, 10.2, 10.6, 336.5, False),
    (4, "ok", "double", 13.3, 13.0, 13.6, 342.7, False),
    (8, "ok", "double", 19.3, 19.1, 19.5, 352.8, False),
    (16, "ok", "double", 31.6, 31.0, 32.2, 371.5, False),
    (32, "ok", "double", 62.4, 56.2, 68.6, 416.4, False),
    (64, "ok", "double", 123.0, 119.3, 126.7, 496.7, False),
    (128, "ok", "double", 238.9, 234.1, 243.7, 645.2, False),
    (256, "ok", "double", 505.7, 434.9, 576.5, 877.5, False),
    (512, "ok", "double", 1554.4, 1445.6, 1663.2, 1331.2, False),
    (1024, "oom", "double", None, None, None, 1945.6, False),
    (829, "ok", "refine", 2138.9, 2010.6, 2267.2, 1740.8, True),
    (958, "ok", "refine", 2649.4, 2411.0, 2887.8, 1966.1, True),
    (1010, "oom", "refine", None, None, None, 2048.0, True),
    (1003, "oom", "refine", None, None, None, 1986.6, True),
    (1002, "ok", "refine", 3223.8, 3127.1, 3320.5, 1966.1, True),
]
DATASET = 50_000


def trial(batch, status, phase, median, p10, p90, peak_mib, fresh):
    ok = status == "ok"
    return Trial(
        batch_size=batch, status=status, phase=phase, fresh_process=fresh, peak_bytes=int(peak_mib * MiB),
        step_ms=StepTimes(median, p10, p90, [p10, median, p90]) if ok else None,
        samples_per_s=batch / median * 1000 if ok else None,
        epoch_s=-(-DATASET // batch) * median / 1000 if ok else None,
        loss=2.3 if ok else None, loss_finite=True if ok else None,
        error=None if ok else "in forward: RuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. "
                              "DefaultCPUAllocator: can't allocate memory: you tried to allocate 51380224 bytes.",
    )


def make_report(run=RUN, recommended=128, fastest=128, limit=1002, warnings=()):
    return Report(
        tool={"name": "batchfind", "version": "0"},
        environment=Environment("2.13.0", "cpu", "AMD EPYC 7B13", 24 * 1024 * MiB, LIMIT, 2),
        config={}, dataset_len=DATASET, parameters=700_000, input_lengths=None,
        trials=[trial(*row) for row in run],
        limit=Limit(limit, 1003, verified=True, refined=True),
        recommendation=Recommendation(recommended, "fastest timed", fastest_batch_size=fastest,
                                      largest_batch_size=limit),
        warnings=list(warnings), stopped_because="oom at batch 1024",
    )


def rendered(report, width):
    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    print_report(report, console)
    return console.file.getvalue()


@pytest.mark.parametrize("width", [80, 100, 200])
def test_every_header_and_number_is_readable_at_any_width(width):
    report = make_report(warnings=[WARNING])
    text = rendered(report, width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text
    header = next(line for line in lines if line.startswith("┃"))
    assert header.strip("┃").split("┃")[0].strip() == "batch"
    layout = table(report, width).columns
    for column in layout:
        assert f" {column.header} " in header, (column.header, header)
    assert {"batch", "step ms", "samples/s", "note"} <= {c.header for c in layout}
    assert any(c.header.startswith("peak") for c in layout)
    # Every cell but the note (which may wrap between its phrases) appears whole on its trial's row.
    rows = [line for line in lines if re.match(r"│\s+\d+\s+│", line)]  # a trial's first line
    assert len(rows) == len(report.trials)
    for column in layout[:-1]:
        for row, cell in zip(rows, column.cells):
            assert Text.from_markup(cell).plain in row, (column.header, cell, row)
    for number in ("11.6 ±8%", "86.2", "3223.8 ±3%", "1.9 GiB", "96%"):  # spot checks, as printed
        assert number in text


def test_a_distributed_probe_with_a_training_plan_fits_80_columns_too():
    from batchfind.report import Distributed

    report = make_report()
    report = dataclasses.replace(
        report, distributed=Distributed("fsdp", 8, 1, "nccl", "batchfind"),
        trials=[dataclasses.replace(t, lr=1e-4 * (t.batch_size * 8 / 256) ** 0.5, accumulation_steps=4,
                                    global_batch_size=t.batch_size * 8 * 4, joules_per_sample=0.0123)
                for t in report.trials])
    wide = rendered(report, 250)
    assert "lr" in wide and "global batch" in wide and "J/sample" in wide and "1002×8×4 = 32064" in wide
    text = rendered(report, 80)
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert "batch/device" in text and "samples/s" in text


def test_a_narrow_terminal_drops_the_bar_and_phase_first_a_wide_one_keeps_them():
    wide, narrow = table(make_report(), 200), table(make_report(), 80)
    wide_headers = [c.header for c in wide.columns]
    narrow_headers = [c.header for c in narrow.columns]
    assert "phase" in wide_headers and "" in wide_headers  # the throughput bar
    assert "phase" not in narrow_headers and "" not in narrow_headers
    assert "peak (of limit)" in narrow_headers


def test_labels_go_on_the_last_trial_at_a_size_and_fastest_means_fastest_measured():
    # 64 re-run for verification; the recommendation's fastest-within-headroom (64) is not the fastest (128).
    run = RUN[:8] + [RUN[10], (64, "ok", "verify", 123.0, 119.3, 126.7, 496.7, True)]
    report = make_report(run, recommended=64, fastest=64, limit=128)
    notes = dict(enumerate(trial_notes(report)))
    assert notes[6] == "" and notes[9] == "fastest within headroom, [bold]recommended[/bold]"
    assert notes[7] == "largest fits, verified, fastest"
    assert notes[8] == "out of memory"
    # When they agree, one label says it.
    assert "fastest, [bold]recommended[/bold]" in trial_notes(make_report())


def test_the_sizes_that_cannot_be_told_apart_are_named_not_spanned():
    report = make_report()
    tied = dataclasses.replace(report.recommendation, interval=[32, 128], tied=[32, 128])
    assert "cannot be told apart from the fastest: batch 32, 128\n" in rendered(
        dataclasses.replace(report, recommendation=tied), 200)
    # A report from before the sizes were kept gives only its span.
    spanned = dataclasses.replace(tied, tied=None)
    assert "cannot be told apart from the fastest: batch 32–128\n" in rendered(
        dataclasses.replace(report, recommendation=spanned), 200)
    alone = dataclasses.replace(tied, interval=[128, 128], tied=[128])
    assert "told apart" not in rendered(dataclasses.replace(report, recommendation=alone), 200)


def test_a_verification_fit_check_does_not_take_the_fastest_label():
    # The doubling stopped at max_batch with its largest size the fastest, and that size was re-run
    # as a fit check in a brand-new process: two steps, the first touching fresh memory.
    report = make_report(RUN[:8] + [(128, "ok", "verify", 900.0, 800.0, 1000.0, 700.0, True)], recommended=128,
                         fastest=128, limit=128)
    report.trials[-1] = dataclasses.replace(report.trials[-1], purpose="fit")
    notes = trial_notes(report)
    assert notes[7] == "fastest, [bold]recommended[/bold]" and notes[8] == "largest fits, verified"


def test_compare_ranks_throughput_only_where_both_reports_timed_the_size():
    from batchfind.compare import compare

    base = make_report(RUN[:8], recommended=128, fastest=128, limit=128)
    new = make_report(RUN[:8], recommended=64, fastest=64, limit=128)
    # In the new report 128 is past the throughput peak: a fit check, its two steps far slower.
    new.trials[7] = dataclasses.replace(trial(128, "ok", "double", 900.0, 800.0, 1000.0, 645.2, False),
                                        purpose="fit")
    metrics = [c.metric for c in compare(base, new, 0.10).changes]
    assert "samples/s @ 64" in metrics and "samples/s @ 128" not in metrics and "peak bytes @ 128" in metrics


def test_without_a_status_column_failures_name_their_status():
    run = RUN[:3] + [(8, "timeout", "double", None, None, None, 352.8, False)]
    report = make_report(run, limit=4)
    report.trials[3] = dataclasses.replace(report.trials[3], error="no result within 300 s; worker stopped")
    assert trial_notes(report)[3] == "no result within 300 s; worker stopped"
    assert trial_notes(report, with_status=True)[3] == "[yellow]timeout[/]: no result within 300 s; worker stopped"


def test_the_plot_draws_what_the_limit_counts_beside_the_limit():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from batchfind.plot import figure

    base = make_report()
    # A CPU's resident peak holds code and files the data segment (what the cap counts) does not.
    trials = [dataclasses.replace(t, capped_peak_bytes=t.peak_bytes - 300 * MiB if t.peak_bytes else None)
              for t in base.trials]
    fig = figure(dataclasses.replace(base, trials=trials))
    try:
        _, bottom, search = fig.axes
        lines = {line.get_label(): line for line in bottom.get_lines()}
        fitting = {t.batch_size: t for t in trials if t.fits}
        counted = lines["what the limit counts"]
        assert list(counted.get_xdata()) == sorted(fitting)
        assert list(counted.get_ydata()) == [fitting[s].capped_peak_bytes / GiB for s in sorted(fitting)]
        searched = [t for t in trials if t.phase != "double"]
        drawn = [line.get_ydata()[0] for line in search.get_lines() if line.get_label() != "memory limit"]
        assert drawn == [t.capped_peak_bytes / GiB for t in searched]
    finally:
        plt.close(fig)
    # Where the two are the same measure (a GPU's reserved bytes), one line.
    same = [dataclasses.replace(t, capped_peak_bytes=t.peak_bytes) for t in base.trials]
    fig = figure(dataclasses.replace(base, trials=same))
    try:
        assert "what the limit counts" not in {line.get_label() for line in fig.axes[1].get_lines()}
    finally:
        plt.close(fig)


def test_the_plot_labels_batch_sizes_spreads_and_what_was_probed():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    from batchfind.plot import figure

    report = dataclasses.replace(make_report(), config={"model": {"name": "cnn"},
                                                        "train": {"optimizer": "sgd", "precision": "fp32"}})
    fig = figure(report, "cnn-small.yaml")
    try:
        top, bottom, search = fig.axes
        assert fig.get_suptitle() == "cnn-small.yaml: cnn, sgd, fp32 · AMD EPYC 7B13 · limit 2.0 GiB"
        from batchfind.plot import title

        # A run cut short says so: its edge and curve are partial.
        assert title(dataclasses.replace(report, interrupted=True), "c.yaml").endswith("limit 2.0 GiB · interrupted")
        budget = dataclasses.replace(report, stopped_because="time budget of 5 s spent")
        assert title(budget, "c.yaml").endswith(" · stopped by its time budget")
        doubled = [str(t.batch_size) for t in report.trials if t.phase == "double"]
        assert [label.get_text() for label in bottom.get_xticklabels()] == doubled
        bars = [c for c in top.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 1 and len(bars[0].lines[0].get_xdata()) == sum(t.fits for t in report.trials)
        searched = [t for t in report.trials if t.phase != "double"]
        assert [label.get_text().split("\n")[0] for label in search.get_xticklabels()] == [
            str(t.batch_size) for t in searched]
        assert len(fig.legends) == 1 and all(axis.get_legend() is None for axis in fig.axes)
    finally:
        plt.close(fig)
    # The optimizer the trials stepped, where the report names it (a LightningModule's own).
    fig = figure(dataclasses.replace(report, optimizer="Adam"), "lit.yaml")
    try:
        assert fig.get_suptitle().startswith("lit.yaml: cnn, Adam, fp32 · ")
    finally:
        plt.close(fig)
    # A `$` pair in the config's name would be matplotlib mathtext, and `\foo` no symbol it knows.
    fig = figure(report, "cost$\\foo$.yaml")
    try:
        fig.savefig(io.BytesIO(), format="png")
        assert fig.get_suptitle().startswith("cost\\$\\foo\\$.yaml: cnn")
    finally:
        plt.close(fig)
    # Fourteen doublings (a tabular model's 64 to 524288): every second size is written, the
    # largest among them, so the numbers do not run into each other.
    sizes = [64 * 2**k for k in range(14)]
    run = [(b, "ok", "double", 10.0, 9.0, 11.0, 400.0, b == 64) for b in sizes]
    fig = figure(make_report(run, recommended=64, fastest=64, limit=sizes[-1]), "mlp.yaml")
    try:
        labels = [label.get_text() for label in fig.axes[1].get_xticklabels()]
        assert labels == [str(b) if i % 2 else "" for i, b in enumerate(sizes)]
    finally:
        plt.close(fig)


WARNING = ("step times varied by more than 25% (p10 to p90) at batch 256, 1000: throughput there is uncertain; "
           "more --steps or a quieter machine will tell")


def test_a_pipe_gets_the_full_table_and_unbroken_lines(monkeypatch):
    from batchfind.cli import _console

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    console = _console()
    print_report(make_report(warnings=[WARNING]), console)
    text = sys.stdout.getvalue()
    assert "phase" in text and "█" in text  # the full layout, bar included
    assert f"warning: {WARNING}\n" in text


def test_the_table_goes_to_stdout_and_its_warnings_to_stderr(monkeypatch):
    # `probe cfg.yaml | grep batch` reads the table; warnings are for the person at the terminal.
    from batchfind.cli import _console

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    print_report(make_report(warnings=[WARNING]), _console(), _console(stderr=True))
    assert "recommended batch" in sys.stdout.getvalue() and "warning" not in sys.stdout.getvalue()
    assert f"warning: {WARNING}\n" in sys.stderr.getvalue()


def fake_probe(report):
    """A probe that reports `report`'s trials to the progress callbacks and returns it."""

    def run(config, on_trial_start=None, on_trial_end=None, **_):
        for t in report.trials:
            if on_trial_start:
                on_trial_start(t.batch_size, t.phase)
            if on_trial_end:
                on_trial_end(t)
        return report

    return run


def test_quiet_without_json_prints_nothing_and_progress_keeps_brackets(monkeypatch, write_config):
    from typer.testing import CliRunner

    from batchfind import probing
    from batchfind.cli import app

    monkeypatch.setattr(probing, "probe", fake_probe(make_report()))
    path = write_config("model: {name: mlp}\n")
    quiet = CliRunner().invoke(app, ["probe", str(path), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""
    loud = CliRunner().invoke(app, ["probe", str(path)])
    assert "batchfind · AMD EPYC 7B13" in loud.stdout
    oom = next(line for line in loud.stderr.splitlines() if "batch 1024: oom" in line)
    assert oom.endswith("batch 1024: oom — in forward: RuntimeError: DefaultCPUAllocator: can't allocate memory: "
                        "you tried to allocate 51380224 bytes.")


def test_enforce_fail_noise_is_cleaned_from_errors():
    from batchfind.devices import clean_error

    raw = ("RuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
           "you tried to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)")
    assert clean_error(raw) == ("RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                "1073741824 bytes. Error code 12 (Cannot allocate memory)")
    assert clean_error("ValueError: [1, 2] is not a shape") == "ValueError: [1, 2] is not a shape"


def test_cpu_name_is_the_model_name_where_linux_gives_one():
    from batchfind.devices import cpu_name, host_info

    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    assert cpu_name() == (names[0] if names else cpu_name()) and cpu_name()
    assert host_info()["cpu"]["name"] == cpu_name()


@pytest.mark.parametrize("command", ["", "probe", "check", "info", "compare", "init", "validate", "plot", "schema"])
def test_help_fits_80_columns_without_cutting_names(command):
    from typer.testing import CliRunner

    from batchfind.cli import app

    result = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0
    text = result.stdout
    assert "<bool>" not in text and "…" not in text and "..." not in text.split("Commands:")[-1]
    assert all(len(line) <= 80 for line in text.splitlines())
    usage = text.splitlines()[0]
    assert usage == usage.replace("{config}", "").replace("{base}", "")  # arguments in capitals, like REPORT
    if command == "probe":
        for option in ("--require-throughput", "--nproc-per-node", "--memory-limit", "--lr-rule", "--quiet"):
            assert re.search(rf"^\s+(-\w, )?{option}\b", text, re.M), option
    if command == "info":
        assert "table" not in text


def test_compare_shows_small_rates_memory_and_a_header_for_every_column(tmp_path):
    from batchfind.compare import compare
    from batchfind.render import print_comparison

    slow = [(1, "ok", "double", 2500.0, 2400.0, 2600.0, 900.0, True), (2, "ok", "double", 4600.0, 4500.0, 4700.0,
                                                                        1000.0, False)]
    base = make_report(slow, recommended=2, fastest=2, limit=2)
    new = make_report([slow[0], (2, "ok", "double", 6000.0, 5900.0, 6100.0, 1200.0, False)], recommended=1,
                      fastest=1, limit=2)
    console = Console(width=100, file=io.StringIO(), color_system=None)
    print_comparison(compare(base, new, 0.10), console)
    text = console.file.getvalue()
    assert re.search(r"samples/s @ 2\s+│\s+0\.435\s+│\s+0\.333\s+│\s+-23\.3%\s+│ regressed", text), text
    assert re.search(r"peak memory @ 2\s+│\s+1000\.0 MiB\s+│\s+1\.2 GiB", text) and "peak bytes" not in text
    header = next(line for line in text.splitlines() if "metric" in line)
    assert [h.strip() for h in header.strip("┃").split("┃")] == ["metric", "base", "new", "change", "verdict"]
    # Too narrow for the table, a line per metric: no column cut to an ellipsis.
    narrow = Console(width=60, file=io.StringIO(), color_system=None)
    print_comparison(compare(base, new, 0.10), narrow)
    lines = narrow.file.getvalue().splitlines()
    assert "samples/s @ 2: 0.435 → 0.333 (-23.3%) regressed" in lines and "…" not in narrow.file.getvalue()
    assert "limit: 2 → 2 (+0.0%) ok" in lines


def test_a_single_measured_step_shows_no_interval():
    # A throughput trial stopped at its bar measured one step: "±0%" would claim a precision it lacks.
    one = Trial(128, "ok", StepTimes(250.4, 250.4, 250.4, [250.4], 250.4, 250.4), samples_per_s=511, purpose="fit")
    two = Trial(128, "ok", StepTimes(300.0, 250.0, 350.0, [250.0, 350.0], 250.0, 350.0), samples_per_s=427, purpose="fit")
    assert step_text(one) == "250.4" and step_text(two) == "300.0 ±17%"


def test_an_interval_wider_than_the_step_says_only_that():
    # One step of three stalled for seconds: "±2374%" would be a precise figure for no precision.
    stalled = Trial(8, "ok", StepTimes(100.0, 100.0, 4000.0, [100.0, 100.0, 5000.0], 100.0, 5000.0),
                    samples_per_s=80, purpose="throughput")
    whole = Trial(8, "ok", StepTimes(100.0, 50.0, 250.0, [50.0, 100.0, 250.0], 50.0, 250.0),
                  samples_per_s=80, purpose="throughput")
    assert step_text(stalled) == "100.0 ±>100%" and step_text(whole) == "100.0 ±100%"


def test_the_share_of_the_limit_is_of_what_the_limit_counts():
    # A CPU worker's resident peak holds code and files beside the data segment the cap counts.
    report = make_report()
    edge = dataclasses.replace(report.trials[-1], peak_bytes=LIMIT + 40 * MiB, capped_peak_bytes=LIMIT - 20 * MiB)
    report = dataclasses.replace(report, trials=[*report.trials[:-1], edge])
    row = next(line for line in rendered(report, 250).splitlines() if line.startswith("│  1002 "))
    assert "2.0 GiB" in row and "99%" in row and "102%" not in row


def test_a_terminal_too_narrow_for_any_table_gets_a_line_per_trial():
    report = make_report()
    assert table(report, 40) is None
    text = rendered(report, 40)
    assert max(len(line) for line in text.splitlines()) <= 40
    flat = " ".join(text.split())  # the lines wrap; what they say is whole
    assert "verify" not in flat and flat.count("refine: batch") == 5 and flat.count("double: batch") == 11
    assert "batch 1002: ok, 3223.8 ±3% ms/step, 311 samples/s, peak 1.9 GiB — largest fits, verified" in flat


def test_a_report_interrupted_before_any_worker_was_ready_says_so_in_its_title():
    report = make_report()
    env = dataclasses.replace(report.environment, device=None, device_name=None)
    assert "batchfind · no worker started · limit 2.0 GiB" in rendered(dataclasses.replace(report, environment=env), 200)


def test_a_terminal_said_to_be_zero_columns_wide_still_gets_output(monkeypatch):
    from batchfind.cli import _console

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setenv("COLUMNS", "0")
    console = _console()
    console.print("recommended batch: 32")
    assert console.width > 0 and "recommended batch: 32" in sys.stdout.getvalue()


def test_the_memory_model_is_shown_as_an_estimate_where_nothing_ran_out():
    model = {"fixed_bytes": 400 * MiB, "per_sample_bytes": MiB, "ceiling_bytes": 2048 * MiB, "ceiling_from": "limit",
             "points": 4, "predicted_edge": 1648}
    stopped = dataclasses.replace(make_report(), memory_model=model, limit=Limit(1024, None, verified=True),
                                  stopped_because="reached max_batch (1024)")
    line = next(line for line in rendered(stopped, 300).splitlines() if line.startswith("memory model:"))
    assert line == ("memory model: 400.0 MiB + 1.0 MiB × batch, ceiling 2.0 GiB (from the limit) → predicted edge "
                    "1648 (an estimate: no size up to 1024 was found not to fit)")
    small = dataclasses.replace(stopped, dataset_len=1024)
    assert rendered(small, 300).count("predicted edge 1648 (an estimate, past the 1024 samples of the dataset a device "
                                      "gets: memory is not what bounds the batch)") == 1
    assert "(an estimate: no size up to 1024 was found not to fit)" in rendered(dataclasses.replace(stopped, dataset_len=None), 300)
    edge = dataclasses.replace(stopped, limit=Limit(1002, 1003, verified=True))
    assert "→ predicted edge 1648\n" in rendered(edge, 300)


def test_a_terminal_counts_the_seconds_of_set_up_until_the_first_trial(monkeypatch):
    import time

    from batchfind import cli

    class Status:
        def __init__(self):
            self.texts = []

        def update(self, text):
            self.texts.append(text)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    status = Status()
    console = type("Terminal", (), {"is_terminal": True, "status": lambda self, text: status,
                                    "print": lambda self, text: None})()
    monkeypatch.setattr(cli, "SETUP_TICK_S", 0.01)
    with cli._progress(console, quiet=False) as (on_start, _, _):
        deadline = time.monotonic() + 30  # a tick is due every 10 ms; this only bounds a stalled machine
        while not status.texts and time.monotonic() < deadline:
            time.sleep(0.01)
        assert status.texts and re.fullmatch(r"starting the workers \(torch, the model, the data\) · \d+ s",
                                             status.texts[0]), status.texts
        on_start(1, "double")
        time.sleep(0.05)  # five ticks' time: none of them may say set-up again
    assert status.texts[-1] == "batch 1 · trial 1 · starting", status.texts[-3:]


@pytest.mark.parametrize("rank, doing", [(None, "starting the workers"),
                                         (0, "meeting the other ranks, then starting the workers")])
def test_elsewhere_a_line_says_set_up_is_still_under_way(monkeypatch, rank, doing):
    # A CI log or a pipe: no status line, so a set-up that hangs would be silence until its timeout.
    # Under torchrun it may be the other ranks that are waited for.
    import time

    from batchfind import cli, distributed

    printed = []
    console = type("Log", (), {"is_terminal": False, "print": lambda self, text: printed.append(text)})()
    monkeypatch.setattr(cli, "SETUP_NOTE_S", 0.01)
    monkeypatch.setattr(distributed, "launcher_rank", lambda: rank)
    with cli._progress(console, quiet=False) as (on_start, _, on_step):
        deadline = time.monotonic() + 30  # a note is due every 10 ms; this only bounds a stalled machine
        while not printed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert printed and printed[0].endswith(f" still {doing} (torch, the model, the data) …"), printed
        assert on_step is None  # steps are followed on a terminal only
        on_start(1, "double")
        time.sleep(0.05)  # five notes' time: none of them may come after the first trial's line
    assert printed[-1].endswith(" probing batch 1 …"), printed[-3:]


def test_the_safe_size_says_it_allows_for_variation_not_that_it_measured_it():
    report = make_report()
    report = dataclasses.replace(report, limit=dataclasses.replace(report.limit, safe_batch_size=995,
                                                                   variation_bytes=10 * MiB))
    assert ("fits on every run: 995 (allowing 10.0 MiB for memory that varies between runs; larger sizes may fail "
            "on a later run)") in " ".join(rendered(report, 200).split())
