"""The CI and pipe contract: JSON Schema, thresholds, compare, init/validate, plot, the Python API."""

import copy
import json
import os
import re
import subprocess
import sys

import jsonschema
import pytest
from typer.testing import CliRunner

from batchfind.cli import app
from batchfind.report import json_schema

from conftest import TINY

runner = CliRunner()


@pytest.fixture(scope="module")
def real_report(tmp_path_factory):
    """One real probe of a tiny model, shared by the tests that read reports."""
    folder = tmp_path_factory.mktemp("report")
    config = folder / "tiny.yaml"
    config.write_text(TINY)
    result = runner.invoke(app, ["probe", str(config), "--json", "--max-batch", "8", "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # --quiet: nothing but the JSON
    path = folder / "report.json"
    path.write_text(result.stdout)
    return path, json.loads(result.stdout), config


# A tiny model's resident peak may not grow over sizes 1-8, and then a real report has no memory
# model; on a loaded machine its fastest size may be 2, and then there is no curve.
MEMORY_MODEL = {"fixed_bytes": 1.5e8, "per_sample_bytes": 2.0e6, "ceiling_bytes": 2**31, "points": 3,
                "ceiling_from": "limit", "predicted_edge": 998}
CURVE = {"fixed_ms": 10.0, "sample_ms": 1.0, "doubling_ms": 0.0, "plateau_samples_per_s": 444.4,
         "points": [{"batch_size": b, "samples_per_s": v, "fitted_samples_per_s": v, "deviation": 0.0, "uncertainty": 0.01}
                    for b, v in ((1, 90.9), (2, 166.7), (4, 285.7), (8, 444.4))]}


def with_parts(report: dict) -> dict:
    """The report with a memory model and a curve of known shape, whatever the run gave."""
    return report | {"memory_model": MEMORY_MODEL, "recommendation": report["recommendation"] | {"curve": CURVE}}


def test_real_reports_validate_against_the_schema(real_report):
    _, report, _ = real_report
    jsonschema.validate(report, json_schema())
    jsonschema.validate(with_parts(report), json_schema())


@pytest.mark.parametrize(
    "breakage",
    [
        lambda r: r.pop("trials"),
        lambda r: r["trials"][0].update(status="exploded"),
        lambda r: r["trials"][0].update(batch_size="eight"),
        lambda r: r["limit"].pop("batch_size"),
        lambda r: r.update(schema_version="one"),
        lambda r: r.update(schema_version=3),  # a later version is not this schema
        lambda r: r["memory_model"].update(ceiling_from="guess"),
        lambda r: r["recommendation"]["curve"]["points"][0].pop("deviation"),
    ],
)
def test_broken_reports_do_not_validate(real_report, breakage):
    report = copy.deepcopy(with_parts(real_report[1]))
    breakage(report)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, json_schema())


def test_schema_command_prints_the_schema():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0 and json.loads(result.stdout) == json.loads(json.dumps(json_schema()))


def write(path, report):
    path.write_text(json.dumps(report))
    return str(path)


def test_compare_no_regression_exits_0(real_report, tmp_path):
    path, report, _ = real_report
    result = runner.invoke(app, ["compare", str(path), str(path), "--json"])
    assert result.exit_code == 0
    out = json.loads(result.stdout)
    assert out["regressed"] is False and any(c["metric"] == "limit" for c in out["changes"])
    assert "no regression" in result.stderr


def test_compare_regression_exits_4_and_names_it(real_report, tmp_path):
    _, report, _ = real_report
    slower = copy.deepcopy(report)
    size = slower["trials"][1]["batch_size"]
    for t in slower["trials"]:
        if t["batch_size"] == size and t["samples_per_s"]:
            t["samples_per_s"] *= 0.5
    result = runner.invoke(app, ["compare", write(tmp_path / "a.json", report), write(tmp_path / "b.json", slower),
                                 "--max-regression", "10%"])
    assert result.exit_code == 4
    assert f"samples/s @ {size}" in result.stdout and "regressed" in result.stdout
    # Within a looser bound the same drop is fine.
    result = runner.invoke(app, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                 "--max-regression", "0.6"])
    assert result.exit_code == 0


@pytest.mark.parametrize("bound, expected", [
    ("5", "a bare number is a fraction below 1 (0.05 is 5%); write 5% for a percentage"),
    ("10", "write 10% for a percentage"),
    ("2000%", "expected a percentage from 0% up to 1000%"),
    ("2000", "a bare number is a fraction below 1 (0.05 is 5%) (got '2000')"),  # 2000% is refused too
    ("inf", "a bare number is a fraction below 1 (0.05 is 5%) (got 'inf')"),
    ("nan", "expected a percentage from 0% up to 1000% (got 'nan')"),
    ("ten", "expected a fraction like 10% or 0.1"),
])
def test_compare_refuses_a_bound_it_would_have_to_guess(real_report, tmp_path, bound, expected):
    # A bare 5 used to be read as 500%: a 15% drop in throughput passed.
    path = write(tmp_path / "a.json", real_report[1])
    result = runner.invoke(app, ["compare", path, path, "--max-regression", bound])
    assert result.exit_code == 2 and expected in result.stderr, result.output


def test_compare_takes_the_bounds_its_message_names(real_report, tmp_path):
    path = write(tmp_path / "a.json", real_report[1])
    for bound in ("0%", "1000%"):
        assert runner.invoke(app, ["compare", path, path, "--max-regression", bound]).exit_code == 0, bound
    # The title says the bound in force, not a rounding of it.
    assert "regression bound 0.5%" in runner.invoke(app, ["compare", path, path, "--max-regression", "0.5%"]).stdout


def test_compare_a_batch_that_no_longer_fits_is_a_regression(real_report, tmp_path):
    _, report, _ = real_report
    broken = copy.deepcopy(report)
    broken["limit"]["batch_size"] = None
    broken["recommendation"]["batch_size"] = None
    broken["trials"] = [dict(t, status="oom", samples_per_s=None) for t in broken["trials"]]
    result = runner.invoke(app, ["compare", write(tmp_path / "a.json", report), write(tmp_path / "b.json", broken)])
    assert result.exit_code == 4


def test_plot_flag_does_not_hide_nothing_fits(write_config, tmp_path):
    path = write_config(
        "model: {name: 'fixtures:Trap', kwargs: {at: 4}}\n"
        "data: {input_shape: [8], num_classes: 4, size: 64}\nprobe: {device: cpu, steps: 1, warmup_steps: 0}\n"
    )
    result = runner.invoke(app, ["probe", str(path), "--min-batch", "4", "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 3 and not (tmp_path / "p.png").exists()
    assert f"no plot: no batch size ran, so {tmp_path / 'p.png'} was not written" in result.stderr, result.stderr


def test_a_probe_with_no_finite_loss_says_why_nothing_is_recommended(write_config, tmp_path):
    path = write_config(
        "model: {name: 'fixtures:Trap', kwargs: {how: nan, at: 1}}\n"
        "data: {input_shape: [8], num_classes: 4, size: 64}\n"
        "probe: {device: cpu, steps: 1, warmup_steps: 0, max_batch: 2, min_time_s: 0, max_time_s: 0}\n"
    )
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["probe", str(path), "-o", str(out)])
    assert result.exit_code == 0 and "no recommended batch: no batch size ran with a finite loss" in result.stdout
    # A report where nothing ran is no plot, and the message names the report.
    report = json.loads(out.read_text())
    report["trials"] = [dict(t, status="oom") for t in report["trials"]]
    none_ran = write(tmp_path / "none.json", report)
    result = runner.invoke(app, ["plot", none_ran, "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 2 and result.stderr.strip() == (
        f"error: {none_ran}: no batch size ran in this report: there is nothing to plot"), result.stderr


def test_validate_with_a_non_finite_loss_says_so(write_config):
    path = write_config(
        "model: {name: 'fixtures:Trap', kwargs: {how: nan, at: 1}}\n"
        "data: {input_shape: [8], num_classes: 4, size: 64}\n"
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and "the loss was not finite" in result.stdout


def test_compare_warns_across_devices_and_configs(real_report, tmp_path):
    _, report, _ = real_report
    other = copy.deepcopy(report)
    other["environment"]["device_name"] = "NVIDIA H100"
    other["config"]["probe"]["steps"] = 99
    result = runner.invoke(app, ["compare", write(tmp_path / "a.json", report), write(tmp_path / "b.json", other)])
    # Warnings go to stderr: the comparison on stdout is the data.
    assert "different devices" in result.stderr and "probe.steps" in result.stderr
    assert "warning:" not in result.stdout


def test_compare_says_when_a_report_is_not_a_whole_probe(real_report, tmp_path):
    report = copy.deepcopy(real_report[1])
    for t in report["trials"]:  # as if the machine was quiet: a busy one is warned of as well
        t |= {"other_cpu_share": 0.0, "steal_share": 0.0}
    base = write(tmp_path / "a.json", report)
    interrupted = copy.deepcopy(report) | {"interrupted": True}
    check = copy.deepcopy(report) | {"trials": [dict(report["trials"][0], phase="verify")]}
    budget = copy.deepcopy(report) | {"stopped_because": "time budget of 5 s spent"}
    for other, expected in ((interrupted, "the new report was interrupted"),
                            (check, f"the new report is a check of batch {report['trials'][0]['batch_size']}"),
                            (budget, "the new report stopped early (time budget of 5 s spent)")):
        result = runner.invoke(app, ["compare", base, write(tmp_path / "b.json", other)])
        assert expected in result.stderr, result.stderr
    result = runner.invoke(app, ["compare", base, base])
    assert "warning:" not in result.stderr
    # A check recommends nothing and its limit is the size it ran: only a size that no longer fits
    # is a regression.
    result = runner.invoke(app, ["compare", base, write(tmp_path / "b.json", check)])
    assert result.exit_code == 0 and "recommended batch" not in result.stdout, result.stdout
    failed = copy.deepcopy(check)
    failed["trials"][0].update(status="oom", samples_per_s=None)
    failed["limit"].update(batch_size=None)
    result = runner.invoke(app, ["compare", base, write(tmp_path / "b.json", failed)])
    assert result.exit_code == 4 and re.search(r"limit .*regressed", result.stdout), result.stdout
    # A size the base never fitted failing a check is no change; nor is one check against another of
    # a size that never fitted. A size a base check fitted that a probe now puts past its limit is.
    past = report["limit"]["batch_size"] + 1  # never shown to fit
    beyond = copy.deepcopy(failed)
    beyond["trials"][0].update(batch_size=past)
    result = runner.invoke(app, ["compare", base, write(tmp_path / "b.json", beyond)])
    assert result.exit_code == 0 and "regressed" not in result.stdout, result.stdout
    result = runner.invoke(app, ["compare", write(tmp_path / "c.json", check), str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.stdout
    smaller = copy.deepcopy(report)
    smaller["limit"]["batch_size"] = check["trials"][0]["batch_size"] - 1 or None
    result = runner.invoke(app, ["compare", str(tmp_path / "c.json"), write(tmp_path / "d.json", smaller)])
    assert result.exit_code == 4, result.stdout


def test_compare_judges_a_run_cut_short_only_by_the_sizes_it_reached(real_report, tmp_path):
    _, report, _ = real_report
    base = write(tmp_path / "a.json", report)
    # A check interrupted before its batch ran, and a probe stopped before its larger sizes, lost
    # nothing the base fitted: their lower limits say only where they stopped.
    unstarted = copy.deepcopy(report) | {"trials": [], "interrupted": True, "stopped_because": "interrupted"}
    unstarted["limit"]["batch_size"] = unstarted["recommendation"]["batch_size"] = None
    smallest = min(t["batch_size"] for t in report["trials"])
    reached = [t for t in report["trials"] if t["batch_size"] == smallest]
    for stop in ({"interrupted": True, "stopped_because": "interrupted"},
                 {"stopped_because": "time budget of 5 s spent"}):
        early = copy.deepcopy(report) | {"trials": reached} | stop
        early["limit"]["batch_size"] = early["recommendation"]["batch_size"] = smallest
        for cut in (unstarted, early):
            result = runner.invoke(app, ["compare", base, write(tmp_path / "b.json", cut)])
            assert result.exit_code == 0 and "regressed" not in result.stdout, result.stdout
        # A size the base fitted failing before the stop is a regression still.
        early["trials"] = reached + [dict(reached[0], batch_size=smallest + 1, status="oom", samples_per_s=None)]
        early["limit"]["first_oom"] = smallest + 1
        result = runner.invoke(app, ["compare", base, write(tmp_path / "b.json", early)])
        assert result.exit_code == 4 and re.search(r"limit .*regressed", result.stdout), result.stdout
        assert not re.search(r"recommended batch .*regressed", result.stdout), result.stdout


def test_compare_judges_a_limit_stopped_at_a_cap_only_by_what_failed_below_it(real_report, tmp_path):
    # A new report stopped at a lower max_batch (or a smaller dataset) before any size failed says
    # only that its limit fits, and recommends what it can below it.
    _, report, _ = real_report
    base = copy.deepcopy(report)
    base["limit"]["batch_size"], base["limit"]["first_oom"] = 8, 9
    base["recommendation"] |= {"batch_size": 8, "interval": [8, 8]}
    smallest = min(t["batch_size"] for t in report["trials"])
    capped = copy.deepcopy(report) | {"trials": [t for t in report["trials"] if t["batch_size"] == smallest],
                                      "stopped_because": f"reached max_batch ({smallest})"}
    capped["limit"]["batch_size"], capped["limit"]["first_oom"] = smallest, None
    capped["recommendation"] |= {"batch_size": smallest, "interval": [smallest, smallest]}
    result = runner.invoke(app, ["compare", write(tmp_path / "a.json", base), write(tmp_path / "b.json", capped)])
    assert result.exit_code == 0 and "regressed" not in result.stdout, result.stdout
    # The same limit with a failure just above it is the edge, lower than the base's.
    capped["limit"]["first_oom"] = smallest + 1
    capped["trials"] = capped["trials"] + [dict(capped["trials"][0], batch_size=smallest + 1, status="oom",
                                                samples_per_s=None)]
    result = runner.invoke(app, ["compare", str(tmp_path / "a.json"), write(tmp_path / "b.json", capped)])
    assert result.exit_code == 4 and re.search(r"limit .*regressed", result.stdout), result.stdout


def test_compare_reads_each_sizes_peak_from_its_first_run(real_report, tmp_path):
    # On a CPU a size timed again after larger ones ran in a worker holding what they left: its
    # peak is no measure of the size (cnn-small's 8: 355 MiB at first, 464 MiB after 64).
    _, report, _ = real_report
    first = next(t for t in report["trials"] if t["status"] == "ok" and t["peak_bytes"])
    again = dict(first, phase="remeasure", peak_bytes=2 * first["peak_bytes"], fresh_process=False)
    remeasured = copy.deepcopy(report) | {"trials": report["trials"] + [again]}
    a, b = write(tmp_path / "a.json", report), write(tmp_path / "b.json", remeasured)
    for pair in ((a, b), (b, a)):
        result = runner.invoke(app, ["compare", *pair, "--json"])
        assert result.exit_code == 0, result.stdout
        peak = next(c for c in json.loads(result.stdout)["changes"] if c["metric"] == f"peak bytes @ {first['batch_size']}")
        assert peak["base"] == peak["new"] == first["peak_bytes"], peak
    # A first run that peaks higher is a regression, whatever ran after it.
    grown = copy.deepcopy(remeasured)
    next(t for t in grown["trials"] if t["batch_size"] == first["batch_size"])["peak_bytes"] = first["peak_bytes"] * 3 // 2
    result = runner.invoke(app, ["compare", b, write(tmp_path / "c.json", grown)])
    assert result.exit_code == 4 and f"peak memory @ {first['batch_size']}" in result.stdout, result.stdout


def test_compare_shows_but_does_not_judge_cpu_peaks_from_different_kinds_of_process(real_report, tmp_path):
    # A check runs its size in a brand-new process; a probe ran it in a worker holding what smaller
    # sizes left. On a CPU the worker's peak is the higher one for that alone.
    _, report, _ = real_report
    assert report["environment"]["device"] == "cpu"
    size = next(t for t in report["trials"] if t["status"] == "ok" and not t["fresh_process"])["batch_size"]
    fresh = dict(next(t for t in report["trials"] if t["batch_size"] == size), phase="verify",
                 fresh_process=True, purpose="fit")
    check = copy.deepcopy(report) | {"trials": [fresh | {"peak_bytes": fresh["peak_bytes"] * 3 // 4}]}
    check["limit"] |= {"batch_size": size, "first_oom": None}
    a, b = write(tmp_path / "check.json", check), write(tmp_path / "probe.json", report)
    result = runner.invoke(app, ["compare", a, b, "--json"])
    assert result.exit_code == 0, result.stdout
    peak = next(c for c in json.loads(result.stdout)["changes"] if c["metric"] == f"peak bytes @ {size}")
    assert peak["change"] > 0.3 and peak["regressed"] is False and peak["judged"] is False, peak
    assert f"warning: peak memory at {size}: one report ran it in a brand-new process" in result.stderr
    row = next(line for line in result.stderr.splitlines() if f"peak memory @ {size} " in line)
    assert "not judged" in row and " ok" not in row, row  # the table says so too, not "ok"
    # The same kind of process in both: judged.
    grown = copy.deepcopy(check)
    grown["trials"][0]["peak_bytes"] = fresh["peak_bytes"]
    result = runner.invoke(app, ["compare", a, write(tmp_path / "grown.json", grown)])
    assert result.exit_code == 4 and f"peak memory @ {size}" in result.stdout, result.stdout
    assert "one report ran it in a brand-new process" not in result.stderr


def test_compare_does_not_hold_a_recommendation_the_base_could_not_tell_apart_against_it(real_report, tmp_path):
    _, report, _ = real_report
    base = copy.deepcopy(report)
    base["recommendation"] |= {"batch_size": 8, "interval": [2, 8], "tied": [2, 8]}
    a = write(tmp_path / "a.json", base)
    # 4 lies between the tied sizes but was slower than them: a recommendation of 4 is a regression,
    # unless the base is a report from before `tied`, whose span is all it has.
    untied = write(tmp_path / "untied.json", base | {"recommendation": base["recommendation"] | {"tied": None}})
    for base_path, new_batch, code in ((a, 2, 0), (a, 4, 4), (a, 1, 4), (untied, 4, 0), (untied, 1, 4)):
        new = copy.deepcopy(report)
        new["recommendation"] |= {"batch_size": new_batch, "interval": [new_batch, new_batch], "tied": [new_batch]}
        result = runner.invoke(app, ["compare", base_path, write(tmp_path / "b.json", new)])
        assert result.exit_code == code and bool(re.search(r"recommended batch .*regressed", result.stdout)) is bool(code)


def test_compare_says_when_a_report_was_timed_on_a_busy_machine(real_report, tmp_path):
    quiet, busy = copy.deepcopy(real_report[1]), copy.deepcopy(real_report[1])
    for trials, share in ((quiet["trials"], 0.0), (busy["trials"], 0.74)):
        for t in trials:
            t |= {"other_cpu_share": share, "steal_share": 0.0}
    result = runner.invoke(app, ["compare", write(tmp_path / "a.json", quiet), write(tmp_path / "b.json", busy)])
    assert ("warning: the new report was timed on a busy machine (other processes used 74% of the CPUs): its "
            "throughput, and the batch it recommends, may differ from run to run") in result.stderr, result.stderr
    assert "the base report was timed on a busy machine" not in result.stderr


def test_compare_takes_the_failures_the_new_report_took(real_report, tmp_path):
    # The new probe stopped at max_batch 4 after a worker's failure at 4 that a brand-new process
    # then fitted with room to spare: its limit is a lower bound, not judged against the base's 8.
    _, report, _ = real_report
    new = copy.deepcopy(report)
    fitted = next(t for t in new["trials"] if t["batch_size"] == 4 and t["status"] == "ok")
    failed = copy.deepcopy(fitted) | {"status": "oom", "fresh_process": False, "step_ms": None, "samples_per_s": None,
                                      "epoch_s": None, "error": "out of memory"}
    new["trials"] = [t for t in new["trials"] if t["batch_size"] < 4] + [failed, fitted | {"phase": "refine"}]
    new["limit"] |= {"batch_size": 4, "first_oom": None}
    new["stopped_because"] = "reached max_batch (4)"
    new["recommendation"] |= {"batch_size": 4, "interval": [4, 4], "tied": [4]}
    base = copy.deepcopy(report)
    base["recommendation"] |= {"batch_size": 4, "interval": [4, 4], "tied": [4]}
    result = runner.invoke(app, ["compare", write(tmp_path / "a.json", base), write(tmp_path / "b.json", new), "--json"])
    limit = next(c for c in json.loads(result.stdout)["changes"] if c["metric"] == "limit")
    assert (limit["base"], limit["new"], limit["judged"], limit["regressed"]) == (8, 4, False, False), result.output


def test_compare_does_not_judge_a_limit_under_less_memory(real_report, tmp_path):
    _, report, _ = real_report
    report = copy.deepcopy(report)
    report["recommendation"] |= {"batch_size": report["limit"]["batch_size"], "interval": [report["limit"]["batch_size"]] * 2}
    base = write(tmp_path / "a.json", report)
    cap = report["environment"]["memory_limit_bytes"]  # the default: a share of the RAM free at the start
    capped = copy.deepcopy(report)
    capped["environment"]["memory_limit_bytes"] = cap // 2
    capped["limit"]["batch_size"] = report["limit"]["batch_size"] // 2
    capped["limit"]["first_oom"] = capped["limit"]["batch_size"] + 1  # an edge, not a cap
    # A recommendation above the lower limit drops with it, and is judged against the limit.
    capped["recommendation"]["batch_size"] = capped["limit"]["batch_size"]
    capped["recommendation"]["interval"] = [capped["limit"]["batch_size"]] * 2
    result = runner.invoke(app, ["compare", base, write(tmp_path / "b.json", capped)])
    assert result.exit_code == 0 and "different memory limits" in result.stderr and "is not judged" in result.stderr
    capped["recommendation"] |= {"batch_size": 1, "interval": [1, 1]}
    result = runner.invoke(app, ["compare", base, write(tmp_path / "b.json", capped)])
    assert result.exit_code == 4 and re.search(r"recommended batch .*regressed", result.stdout), result.stdout
    capped["recommendation"]["batch_size"] = capped["limit"]["batch_size"]
    capped["recommendation"]["interval"] = [capped["limit"]["batch_size"]] * 2
    # The same drop under the same cap is a regression.
    capped["environment"] = report["environment"]
    result = runner.invoke(app, ["compare", base, write(tmp_path / "b.json", capped)])
    assert result.exit_code == 4 and re.search(r"limit .*regressed", result.stdout), result.stdout

    # So for a check of the base's limit that failed: excused under less memory only.
    size = report["limit"]["batch_size"]
    failed = dict(copy.deepcopy(report), trials=[dict(report["trials"][-1], batch_size=size, status="oom",
                                                      phase="verify", samples_per_s=None)],
                  limit=dict(report["limit"], batch_size=None), stopped_because=None)

    def compared(new_cap: int):
        failed["environment"] = dict(report["environment"], memory_limit_bytes=new_cap)
        return runner.invoke(app, ["compare", base, write(tmp_path / "c.json", failed)])

    result = compared(cap // 2)
    assert result.exit_code == 0 and not re.search(r"limit .*regressed", result.stdout), result.stdout
    # No limit (a GPU's whole card; here the RAM, more than the cap); the same; more; the default's drift.
    for more in (None, cap, cap * 2, cap + cap // 500):
        result = compared(more)
        assert result.exit_code == 4 and re.search(r"limit .*regressed", result.stdout), (more, result.stdout)
    assert "different memory limits" not in result.stderr  # the default cap in both, 0.2% apart


def test_compare_reads_a_synthetic_epoch_left_null_as_its_default(real_report, tmp_path):
    _, report, _ = real_report
    older = copy.deepcopy(report)
    assert older["config"]["data"]["size"] == 64  # TINY's
    older["config"]["data"]["size"] = None
    newer = copy.deepcopy(older)
    newer["config"]["data"]["size"] = 50_000
    result = runner.invoke(app, ["compare", write(tmp_path / "a.json", older), write(tmp_path / "b.json", newer)])
    assert result.exit_code == 0 and "different configs" not in result.stderr, result.stderr


@pytest.mark.parametrize("where, value, field", [
    (("limit", "batch_size"), -3, "limit.batch_size: must be greater than or equal to 1"),
    (("limit", "first_oom"), 0, "limit.first_oom: must be greater than or equal to 1"),
    (("recommendation", "batch_size"), 0, "recommendation.batch_size: must be greater than or equal to 1"),
    (("wall_s",), -10, "wall_s: must be greater than or equal to 0"),
    (("trials", 0, "wall_s"), -1, "trials.0.wall_s: must be greater than or equal to 0"),
    (("trials", 0, "steps"), -1, "trials.0.steps: must be greater than or equal to 0"),
    (("environment", "memory_limit_bytes"), -5, "environment.memory_limit_bytes: must be greater than or equal to 0"),
    (("dataset_len",), -1, "dataset_len: must be greater than or equal to 0"),
    (("parameters",), -1, "parameters: must be greater than or equal to 0"),
    # A rate of steps that ran is above 0 (a zero would drop the size from the comparison), and
    # nothing torch or the kernel counts passes a signed 64-bit integer.
    (("trials", 0, "samples_per_s"), 0, "trials.0.samples_per_s: must be greater than 0"),
    (("trials", 0, "peak_bytes"), 2**63, "trials.0.peak_bytes: must be less than or equal to 9223372036854775807"),
    (("limit", "batch_size"), 2**63, "limit.batch_size: must be less than or equal to 9223372036854775807"),
])
def test_compare_and_plot_refuse_a_size_count_or_time_out_of_range(real_report, tmp_path, where, value, field):
    _, report, _ = real_report
    broken = copy.deepcopy(report)
    part = broken
    for key in where[:-1]:
        part = part[key]
    part[where[-1]] = value
    path = write(tmp_path / "broken.json", broken)
    for command in (["compare", path, path], ["plot", path, "-o", str(tmp_path / "p.png")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and f"broken.json: {field}" in result.stderr, (command, result.stderr)


def test_compare_refuses_a_report_missing_a_part_or_with_a_batch_below_1(real_report, tmp_path):
    _, report, _ = real_report
    negative = copy.deepcopy(report)
    negative["trials"][0]["batch_size"] = -3
    missing = {k: v for k, v in report.items() if k != "tool"}
    for name, broken, message in (("neg.json", negative, "neg.json: trials.0.batch_size: must be greater than or equal to 1"),
                                  ("tool.json", missing, "tool.json: tool: required"),
                                  ("limit.json", report | {"limit": None}, "limit.json: limit: expected an object (got null)"),
                                  ("trials.json", report | {"trials": {}}, "trials.json: trials: expected an array (got an object)")):
        result = runner.invoke(app, ["compare", write(tmp_path / name, broken), write(tmp_path / name, broken)])
        assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_compare_says_when_no_size_ran_in_both(real_report, tmp_path):
    _, report, _ = real_report
    empty = copy.deepcopy(report) | {"trials": []}
    result = runner.invoke(app, ["compare", write(tmp_path / "a.json", report), write(tmp_path / "b.json", empty)])
    assert "no batch size ran in both reports: no throughput or peak memory is compared" in result.stderr
    assert "samples/s @" not in result.stdout and "peak bytes @" not in result.stdout
    result = runner.invoke(app, ["compare", write(tmp_path / "a.json", report), write(tmp_path / "c.json", report)])
    assert "no batch size ran in both" not in result.stderr


def test_compare_names_every_difference_it_leaves_out_and_the_model_first(real_report, tmp_path):
    _, report, _ = real_report
    other = copy.deepcopy(report)
    other["config"]["model"]["name"] = "cnn"
    other["config"]["probe"].update(steps=99, warmup_steps=9, min_time_s=9.0, max_time_s=9.0, fit_steps=9)
    nothing = copy.deepcopy(report)
    nothing["environment"].update(device=None, device_name=None)  # nothing fitted: no device learned
    result = runner.invoke(app, ["compare", write(tmp_path / "a.json", report), write(tmp_path / "b.json", other)])
    assert "different configs (model.name, " in result.stderr and " and 1 more)" in result.stderr
    result = runner.invoke(app, ["compare", write(tmp_path / "a.json", report), write(tmp_path / "c.json", nothing)])
    assert "different devices" not in result.stderr
    # A report written before some settings were added (probe.fit_steps, train.call) is of the same
    # config; a keyword argument in one report only is a change.
    older = copy.deepcopy(report)
    del older["config"]["probe"]["fit_steps"], older["config"]["train"]["call"]
    result = runner.invoke(app, ["compare", write(tmp_path / "old.json", older), write(tmp_path / "b.json", report)])
    assert "different configs" not in result.stderr, result.stderr
    argued = copy.deepcopy(report)
    argued["config"]["train"]["optimizer_kwargs"] = {"nesterov": True}
    with_none = copy.deepcopy(report)
    with_none["config"]["train"]["optimizer_kwargs"] = {}
    result = runner.invoke(app, ["compare", write(tmp_path / "a.json", with_none), write(tmp_path / "b.json", argued)])
    assert "different configs (train.optimizer_kwargs.nesterov)" in result.stderr, result.stderr


def test_compare_reads_version_1_baselines(real_report, tmp_path):
    from batchfind.report import load_report

    _, report, _ = real_report
    old = copy.deepcopy(report)
    old["schema_version"] = 1
    del old["distributed"], old["optimizer"]
    for part in [*old["trials"], old["recommendation"]]:
        del part["global_batch_size"]
        part.pop("ranks", None)
        part["effective_batch_size"] = None  # version 1 set it only with accumulation
    base = write(tmp_path / "v1.json", old)
    result = runner.invoke(app, ["compare", base, write(tmp_path / "v2.json", report)])
    assert result.exit_code == 0, result.stderr
    loaded = load_report(base)
    assert loaded.distributed is None and loaded.optimizer is None and [t.global_batch_size for t in loaded.trials] == [
        t["batch_size"] for t in report["trials"]]
    # A version 2 report written before `optimizer` was added reads with it null.
    assert report["optimizer"] == "SGD"
    earlier = {key: value for key, value in report.items() if key != "optimizer"}
    assert load_report(write(tmp_path / "earlier.json", earlier)).optimizer is None


def test_compare_rejects_what_is_not_a_report(tmp_path):
    (tmp_path / "x.json").write_text('{"schema_version": 2, "trials": "no"}')
    (tmp_path / "y.json").write_text("not json")
    # Numbers JSON can write but no report holds: infinity by another name, an integer no float holds.
    (tmp_path / "inf.json").write_text('{"schema_version": 2, "wall_s": 1e999}')
    (tmp_path / "big.json").write_text('{"schema_version": 2, "dataset_len": 1' + "0" * 400 + "}")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "null.json").write_text("null")
    (tmp_path / "true.json").write_text('{"schema_version": true}')  # Python's 1, not JSON's
    for name, message in (("x.json", "x.json: "), ("y.json", "not a JSON report"), ("z.json", "no such file"),
                          ("true.json", "true.json: schema_version: expected 2 or 1 (got true)"),
                          ("inf.json", "1e999 is beyond any float"), ("big.json", "0… is beyond any float"),
                          ("list.json", "list.json: not a JSON report: expected an object at the top level (got an array)"),
                          ("null.json", "null.json: not a JSON report: expected an object at the top level (got null)")):
        result = runner.invoke(app, ["compare", str(tmp_path / name), str(tmp_path / name)])
        assert result.exit_code == 2 and message in result.stderr


def test_a_whole_number_written_with_a_point_is_an_integer_as_json_schema_reads_it(real_report, tmp_path):
    report = copy.deepcopy(real_report[1])
    report["trials"][0]["batch_size"] = float(report["trials"][0]["batch_size"])  # written as 1.0
    jsonschema.validate(report, json_schema())
    path = write(tmp_path / "a.json", report)
    assert runner.invoke(app, ["compare", path, path]).exit_code == 0


@pytest.mark.parametrize("where, value, message", [
    (("interrupted",), "no", "interrupted: expected a boolean (got a string)"),
    (("limit", "batch_size"), True, "limit.batch_size: expected an integer (got a boolean)"),
    (("trials", 0, "batch_size"), "64", "trials.0.batch_size: expected an integer (got a string)"),
    (("trials", 0, "loss_finite"), 1, "trials.0.loss_finite: expected a boolean (got a number)"),
    (("trials", 0, "batch_size"), 1.5, "trials.0.batch_size: expected an integer (got a number)"),
])
def test_compare_and_plot_read_a_report_as_its_schema_does(real_report, tmp_path, where, value, message):
    # Read loosely, an interrupted report marked "interrupted": "no" was judged as a whole probe.
    report = copy.deepcopy(real_report[1])
    part = report
    for key in where[:-1]:
        part = part[key]
    part[where[-1]] = value
    path = write(tmp_path / "b.json", report)
    for command in (["compare", write(tmp_path / "a.json", real_report[1]), path], ["plot", path, "-o", str(tmp_path / "p.png")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and result.stderr.strip() == f"error: {path}: {message}", result.output


@pytest.mark.slow
def test_thresholds_exit_4_and_are_recorded(real_report):
    _, _, config = real_report
    result = runner.invoke(app, ["probe", str(config), "--json", "--max-batch", "4", "--quiet",
                                 "--require-batch", "64", "--require-on", "limit", "--require-throughput", "1e12"])
    assert result.exit_code == 4
    reqs = json.loads(result.stdout)["requirements"]
    assert [(r["name"], r["passed"]) for r in reqs] == [("limit", False), ("samples/s at the recommended batch", False)]
    # Nothing ran out of memory below max_batch: the limit is a lower bound, and --quiet keeps the
    # warning that would say so.
    assert ("requirement failed: limit: 4 (required ≥ 64; a lower bound: no larger size was found not to fit, "
            "reached max_batch (4))") in result.stderr
    result = runner.invoke(app, ["probe", str(config), "--json", "--max-batch", "4", "--quiet",
                                 "--require-batch", "1", "--require-throughput", "1"])
    assert result.exit_code == 0 and all(r["passed"] for r in json.loads(result.stdout)["requirements"])


@pytest.mark.parametrize("template", ["mlp", "cnn", "gpt", "custom"])
def test_init_then_validate(tmp_path, template):
    path = tmp_path / f"{template}.yaml"
    result = runner.invoke(app, ["init", str(path), "--template", template])
    assert result.exit_code == 0 and path.read_text().startswith("# batchfind config")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.stderr
    assert "valid" in result.stdout and "one training step on CPU ran" in result.stdout
    assert "warning" not in result.stderr  # the templates set nothing their model leaves unused
    assert runner.invoke(app, ["init", str(path)]).exit_code == 2  # no silent overwrite


def test_validate_says_how_its_step_failed_in_one_line(write_config):
    # Set-up's check runs no backward pass: the step is where this fails.
    path = write_config("model: {name: 'fixtures:Trap', kwargs: {at: 2, how: backward_oom}}\n"
                        "data: {input_shape: [8], num_classes: 4, size: 64}\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and result.stderr.startswith(
        f"error: {path}: one training step on CPU failed (oom): in backward: OutOfMemoryError: CUDA out of memory. "
        "Tried to allocate 1.00 GiB (fake, in backward)"), result.stderr
    assert result.stderr.count("error") == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("command", [["validate"], ["probe", "-q"], ["check", "--batch", "2"]])
def test_a_loss_that_cannot_train_the_model_is_bad_input_everywhere(write_config, command):
    path = write_config("model: {name: mlp, in_features: 8, classes: 4}\n"
                        "data: {input_shape: [8], num_classes: 4, size: 64}\ntrain: {loss: 'fixtures:detached_loss'}\n")
    result = runner.invoke(app, [command[0], str(path), *command[1:]])
    assert result.exit_code == 2 and result.stderr == (
        f"error: {path}: the loss from train.loss fixtures:detached_loss does not depend on the model's trainable "
        "parameters (no grad_fn: made under torch.no_grad(), or from detached tensors): nothing to train\n"), result.stderr


def test_a_dataset_item_that_raises_in_a_trial_is_bad_input(write_config):
    path = write_config("model: {name: mlp, in_features: 8, classes: 4}\ndata: {kind: 'fixtures:BreaksAt'}\n"
                        "probe: {device: cpu}\n")
    result = runner.invoke(app, ["check", str(path), "--batch", "10010"])
    assert result.exit_code == 2 and result.stderr == (
        f"error: {path}: data: item 10005 of the BreaksAt dataset raised ValueError: item 10005 is corrupt\n"), result.stderr


@pytest.mark.slow
def test_a_dataset_item_that_raises_after_sizes_ran_keeps_what_they_measured(write_config, tmp_path):
    # The doubling reaches item 10005 only at the dataset's whole size: the sizes before it stand.
    path = write_config("model: {name: mlp, in_features: 8, classes: 4}\ndata: {kind: 'fixtures:BreaksAt'}\n"
                        "probe: {device: cpu, warmup_steps: 0, steps: 1, min_time_s: 0, max_time_s: 0}\n")
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["probe", str(path), "--json", "-o", str(out)])
    error = f"error: {path}: data: item 10005 of the BreaksAt dataset raised ValueError: item 10005 is corrupt"
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1] == error, result.stderr
    report = json.loads(out.read_text())
    assert json.loads(result.stdout) == report
    assert report["interrupted"] is True and report["stopped_because"] == "bad input: " + error.removeprefix("error: ")
    assert [t["batch_size"] for t in report["trials"] if t["phase"] == "double"][-1] == 8192
    assert report["limit"]["batch_size"] == 8192 and report["limit"]["verified"] is False
    import batchfind  # from Python: the error, holding the same report

    with pytest.raises(batchfind.StoppedByInput) as caught:
        batchfind.probe(batchfind.load_config(path))
    assert isinstance(caught.value, batchfind.InputError) and caught.value.report.limit.batch_size == 8192
    if os.path.exists("/dev/full"):  # a report that cannot be written: both are told
        full = runner.invoke(app, ["probe", str(path), "-q", "-o", "/dev/full"])
        assert full.exit_code == 2 and full.stderr.strip().splitlines()[-2:] == [
            error, "error: --output: cannot write /dev/full: No space left on device"], full.stderr


def test_validate_warns_of_a_learning_rate_rule_with_nothing_to_scale(write_config):
    path = write_config("model: {name: mlp}\ndata: {size: 10}\nrecommend: {lr_rule: sqrt}\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and result.stderr.strip() == (
        "warning: recommend.lr_rule: sqrt scales train.lr from the batch it was tuned for, train.reference_batch, "
        "which is not set: no learning rate is given"), result.stderr
    path.write_text("model: {name: mlp}\ndata: {size: 10}\nrecommend: {lr_rule: sqrt}\ntrain: {reference_batch: 8}\n")
    assert runner.invoke(app, ["validate", str(path)]).stderr == ""
    # The default written out (as every template writes it), and a rule that scales nothing: no warning.
    for rule in ("auto", "none"):
        path.write_text(f"model: {{name: mlp}}\ndata: {{size: 10}}\nrecommend: {{lr_rule: {rule}}}\n")
        assert runner.invoke(app, ["validate", str(path)]).stderr == "", rule


def test_validate_warns_of_a_size_for_data_that_has_its_own(write_config):
    path = write_config("model: {name: mlp, in_features: 8, classes: 4}\n"
                        "data: {kind: 'fixtures:Pairs', kwargs: {n: 10}, size: 1000}\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and result.stderr.strip() == (
        "warning: data.size: not used; the fixtures:Pairs data's own length (10) sets the steps per epoch"), result.stderr


def test_validate_warns_of_shapes_a_builtin_model_sets_itself(write_config):
    # The samples are 64 features of 10 classes, the mlp's own: the 5 and 3 asked for were silently not.
    path = write_config("model: {name: mlp}\ndata: {size: 10, input_shape: [5], num_classes: 3}\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and result.stderr.strip() == (
        "warning: data.input_shape, data.num_classes: not used; the builtin mlp's synthetic samples follow "
        "model.in_features and model.classes"), result.stderr
    # With a loss of its own, num_classes says whether targets are classes: it is used.
    path.write_text("model: {name: mlp}\ndata: {size: 10, num_classes: 3}\ntrain: {loss: 'fixtures:summed_cross_entropy'}\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and result.stderr == "", result.stderr


def test_validate_says_nothing_of_probing(write_config):
    # One process on a CPU is what `validate` always runs: a strategy for several ranks is not
    # "unused", as a probe of one process would say.
    path = write_config("model: {name: mlp}\ndata: {size: 10}\nprobe: {strategy: fsdp, nproc_per_node: 2}\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and result.stderr == "", result.stderr


def test_validate_prints_a_config_path_as_it_is(tmp_path):
    # Brackets are rich markup and an escape is a terminal command: neither may act on the output.
    for name in ("a[/b].yaml", "x[bold].yaml", "e\x1b[31mx.yaml"):
        path = tmp_path / name.replace("/", "_")
        path.write_text("model: {name: mlp}\ndata: {size: 10}\n")
        result = runner.invoke(app, ["validate", str(path)])
        assert result.exit_code == 0, result.output
        shown = str(path) if path.name.isprintable() else repr(str(path))
        assert result.stdout.startswith(f"{shown}: valid"), result.stdout


def test_validate_reports_data_that_does_not_fit(write_config):
    path = write_config("model: {name: mlp, in_features: 5}\ndata: {kind: 'fixtures:Pairs'}\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "data and model do not fit together" in result.stderr


def test_plot_writes_the_format_its_file_names_and_refuses_one_it_cannot(real_report, tmp_path):
    pytest.importorskip("matplotlib")
    path, _, _ = real_report
    # An .svg used to get PNG bytes.
    for name, start in (("plot.svg", b"<?xml"), ("plot.pdf", b"%PDF")):
        result = runner.invoke(app, ["plot", str(path), "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.stderr
        assert (tmp_path / name).read_bytes().startswith(start)
    result = runner.invoke(app, ["plot", str(path), "-o", str(tmp_path / "plot.jpg")])
    assert result.exit_code == 2 and "--output: plot.jpg: expected a .png, .svg or .pdf file" in result.stderr
    assert not (tmp_path / "plot.jpg").exists()


@pytest.mark.slow
def test_a_probe_says_where_it_drew_its_plot(write_config, tmp_path):
    pytest.importorskip("matplotlib")
    path, out = write_config(TINY), tmp_path / "p.svg"
    result = runner.invoke(app, ["probe", str(path), "--max-batch", "2", "--plot", str(out)])
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes().startswith(b"<?xml") and f"wrote {out}" in result.stderr, result.stderr
    quiet = runner.invoke(app, ["probe", str(path), "--max-batch", "2", "--plot", str(out), "--quiet"])
    assert quiet.exit_code == 0 and "wrote" not in quiet.output, quiet.output


def test_a_plot_under_a_home_matplotlib_cannot_write_to_says_only_where_it_wrote(real_report, tmp_path):
    pytest.importorskip("matplotlib")
    path, _, _ = real_report
    home = tmp_path / "home"
    home.write_text("a file, where matplotlib wants its cache folder")
    # Where matplotlib would look before HOME, unset: HOME is then where it must make its folder.
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    out = tmp_path / "p.png"
    done = subprocess.run([sys.executable, "-m", "batchfind", "plot", str(path), "-o", str(out)], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0 and done.stderr == f"wrote {out}\n", done.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_a_plot_that_cannot_be_written_is_one_line(real_report):
    pytest.importorskip("matplotlib")
    path, _, _ = real_report
    result = runner.invoke(app, ["plot", str(path), "-o", "/dev/full"])
    assert result.exit_code == 2 and result.stderr.strip() == (
        "error: --output: cannot write /dev/full: No space left on device"), result.stderr


def test_a_plot_whose_reader_stops_early_is_no_error(real_report):
    # `batchfind plot r.json -o /dev/stdout | head -c 8`: the reader chose to stop.
    pytest.importorskip("matplotlib")
    path, _, _ = real_report
    process = subprocess.Popen([sys.executable, "-m", "batchfind", "plot", str(path), "-o", "/dev/stdout"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before it writes (it imports matplotlib first), whatever the image's size
    _, err = process.communicate()
    assert process.returncode == 0 and b"error" not in err, err


def test_plot_writes_a_real_png(real_report, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    path, _, _ = real_report
    out = tmp_path / "plot.png"
    result = runner.invoke(app, ["plot", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] >= 800 and image.size[1] >= 600
        darkest, lightest = image.convert("L").getextrema()
        assert lightest - darkest > 100  # drawn, not blank


@pytest.mark.slow
def test_python_api_returns_the_same_report_as_the_cli(real_report):
    import batchfind

    _, cli_report, config = real_report
    report = batchfind.probe(batchfind.load_config(config, {"--max-batch": 8}))
    assert isinstance(report, batchfind.Report)
    api = report.to_dict()
    assert api.keys() == cli_report.keys()
    assert api["config"] == cli_report["config"]
    # Which sizes are measured again turns on timings, which a loaded machine moves.
    sizes = lambda trials: [(t["batch_size"], t["status"], t["phase"]) for t in trials  # noqa: E731
                            if t["phase"] != "remeasure"]
    assert sizes(api["trials"]) == sizes(cli_report["trials"])
    # The prediction and the variation allowed for follow from the RAM free at the time (the default cap).
    measured = lambda limit: {k: v for k, v in limit.items()  # noqa: E731
                              if k not in ("predicted_batch_size", "variation_bytes", "safe_batch_size")}
    assert measured(api["limit"]) == measured(cli_report["limit"])


def test_a_factory_optimizer_given_no_lr_reports_the_rate_it_trains_at(write_config):
    # AdamW's own default, 1e-3, not train.lr's 0.1 that nothing passed to it.
    path = write_config("model: {name: mlp, in_features: 8, classes: 4}\ndata: {size: 1000}\n"
                        "train: {optimizer: 'torch.optim:AdamW', reference_batch: 64}\n"
                        "probe: {device: cpu, max_batch: 4, warmup_steps: 0, steps: 1, refine: false}\n")
    result = runner.invoke(app, ["probe", str(path), "--json", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["recommendation"]["lr"] == pytest.approx(0.001)
    assert [t["lr"] for t in report["trials"]] == pytest.approx([0.001] * len(report["trials"]))


def test_the_python_api_refuses_what_is_not_a_config_or_a_batch_size_in_one_line(write_config):
    from batchfind import InputError, check, load_config, probe
    from batchfind.probing import validate

    config = load_config(write_config(TINY))
    for size in (0, -3, 2.5, "8", True):
        with pytest.raises(InputError, match=r"^batch_size: expected a whole number of at least 1 \(got "):
            check(config, size)
    for call in (probe, validate, lambda c: check(c, 2)):
        with pytest.raises(InputError, match=r"^config: expected the Config that batchfind.load_config returns \(got "
                                             r"str\)"):
            call("cfg.yaml")


def test_a_report_that_cannot_be_written_still_tells_the_thresholds_that_failed(real_report):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    _, _, config = real_report
    result = runner.invoke(app, ["probe", str(config), "--json", "--quiet", "--max-batch", "2", "--no-refine",
                                 "-o", "/dev/full", "--require-batch", "100"])
    assert result.exit_code == 2 and "error: --output: cannot write /dev/full" in result.stderr, result.stderr
    assert "requirement failed: recommended batch: " in result.stderr and "(required ≥ 100)" in result.stderr
