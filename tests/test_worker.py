"""Trials in worker processes: out-of-memory, a killed worker, a hang and bad setup never crash the probe."""

import json
import math
import re
import select

import jsonschema
import numpy as np
import psutil
import pytest
from typer.testing import CliRunner

from batchfind.cli import app
from batchfind.config import load_config
from batchfind.errors import InputError
from batchfind.probing import check, probe
from batchfind.report import LoaderTiming, NoiseScaleEstimate, json_schema
from batchfind.group import Group
from batchfind.worker import SetupFailed, Worker

from conftest import TINY


MiB = 1024**2
# Only a hang waits this long: far above any worker's start or trial here, even on a loaded machine.
HANG_S = 300


def trap_config(write_config, how, at, extra=", refine: false", more=""):
    return load_config(write_config(
        f"model: {{name: 'fixtures:Trap', kwargs: {{how: {how}, at: {at}}}}}\n"
        "data: {kind: synthetic, size: 4096, input_shape: [8], num_classes: 4}\n"
        f"probe: {{warmup_steps: 0, steps: 1, device: cpu {extra}}}\n" + more
    ))


def test_worker_runs_trials_and_reports_its_setup(write_config):
    cfg = load_config(write_config(TINY))
    worker = Group(cfg.model_dump(mode="json"), None, None, generation=1)
    try:
        assert worker.ready["dataset_len"] == 64 and worker.ready["device"] == "cpu"
        assert worker.ready["memory_limit_bytes"] > 0
        first, second = worker.run(4, "throughput", HANG_S), worker.run(8, "fit", HANG_S)
        # What it holds of its own leaves out the library pages it shares with other processes.
        held, resident = worker.private_bytes(), psutil.Process(worker.workers[0]._proc.pid).memory_info().rss
    finally:
        worker.close()
    assert 0 < held < resident
    assert first["status"] == second["status"] == "ok"
    assert first["fresh_process"] and not second["fresh_process"]
    # A fit check runs just the steps that reach the steady peak; a throughput trial at least its steps.
    assert (first["purpose"], second["purpose"]) == ("throughput", "fit")
    assert second["steps"] == cfg.probe.fit_steps and first["steps"] >= cfg.probe.warmup_steps + cfg.probe.steps
    # A later trial says what the worker held beyond its first trial's memory; a first trial has
    # nothing to compare with.
    assert "retained_bytes" not in first and isinstance(second["retained_bytes"], int)


def test_a_trial_does_not_read_a_thread_started_in_it_as_data(write_config):
    # A worker whose first team of threads started in its second trial read 366 MiB of data
    # segment there, its resident peak 317 MiB: a thread's heap maps 128 MiB of address space and
    # keeps 64. What a trial reads as data stays within what it held. The sizes are large enough
    # (inputs of 16-256 MiB) that each later trial passes the peaks before it, so each reads one.
    cfg = load_config(write_config("model: {name: 'torch.nn:Linear', kwargs: {in_features: 256, out_features: 4}}\n"
                                   "data: {size: 300000, input_shape: [256], num_classes: 4}\n"
                                   "probe: {device: cpu, warmup_steps: 1, steps: 2}\n"))
    worker = Group(cfg.model_dump(mode="json"), None, None, generation=1)
    try:
        results = [worker.run(size, "throughput", HANG_S, None) for size in (16384, 32768, 65536, 131072, 262144)]
    finally:
        worker.close()
    assert all(r["status"] == "ok" for r in results)
    read = [(r["capped_peak_bytes"], r["peak_bytes"]) for r in results if r["capped_peak_bytes"] is not None]
    assert read and read[-1][0] == results[-1]["capped_peak_bytes"], read
    assert all(data <= resident + 16 * MiB for data, resident in read), read


def test_a_standby_started_before_anything_was_learned_stands_by_then_runs(write_config):
    """A probe's first standby starts beside the first worker, before that worker has learned
    anything of the data: it says when it stands by, and runs once activated."""
    raw = load_config(write_config(TINY)).model_dump(mode="json")
    first = Group(raw, None, None, generation=1)
    standby = Group(raw, None, None, generation=2, standby=True)
    try:
        assert standby.standing_by() and standby.standing_by()  # asked again, it does not wait again
        standby.activate(first.ready["learned"])
        result = standby.run(8, "fit", HANG_S)
    finally:
        first.close()
        standby.close()
    assert result["status"] == "ok" and result["fresh_process"] and result["steps"] == 2


def test_a_standby_that_failed_its_setup_says_so(write_config):
    cfg = trap_config(write_config, "error", 1)
    standby = Group(cfg.model_dump(mode="json"), None, None, generation=1, standby=True)
    try:
        assert not standby.standing_by()
        with pytest.raises(SetupFailed, match="a bug in the model"):
            standby.activate()
    finally:
        standby.close()


@pytest.mark.parametrize(
    "how, status, error",
    [
        ("oom", "oom", "in forward: OutOfMemoryError"),
        ("backward_oom", "oom", "in backward: OutOfMemoryError"),
        ("onednn", "oom", "could not create a primitive"),
        ("kill", "killed", "SIGKILL"),
        ("segv", "error", "SIGSEGV"),  # a crash, not memory: probing stops there
        ("error", "error", "ValueError: a bug in the model"),
    ],
)
@pytest.mark.slow
def test_failures_at_a_size_end_the_doubling_and_are_reported(write_config, how, status, error):
    report = probe(trap_config(write_config, how, 16))
    # After doubling, the limit (which ran in a reused worker) is re-run in a fresh process. (A size
    # measured again beside its neighbour depends on how noisy the machine's timings were.)
    kept = [t for t in report.trials if t.phase != "remeasure"]
    assert [(t.batch_size, t.phase) for t in kept] == [
        (1, "double"), (2, "double"), (4, "double"), (8, "double"), (16, "double"), (8, "verify")]
    failed = kept[4]
    assert failed.status == status and error in failed.error
    assert report.limit.batch_size == 8 and report.limit.verified
    assert report.limit.first_oom == (16 if status in ("oom", "killed") else None)
    # A crash or a bug is not the memory edge, and the report says so.
    said = [w for w in report.warnings if "not for lack of memory" in w]
    assert len(said) == (status == "error")
    if said:
        assert said[0].startswith("batch 16 failed with an error, not for lack of memory: ") and error in said[0]
        assert said[0].endswith("; the probe stopped there, so larger sizes may fit")


def test_a_hung_step_is_stopped_at_the_trial_timeout(write_config):
    # The worker's start has its own, generous bound here: only the hung trial meets the 3 s.
    worker = Group(trap_config(write_config, "hang", 4).model_dump(mode="json"), None, None, generation=1)
    try:
        assert worker.run(2, "throughput", HANG_S)["status"] == "ok"
        hung = worker.run(4, "fit", 3)
    finally:
        worker.close()
    assert hung["status"] == "timeout" and hung["error"] == "no result within 3 s; worker stopped"
    assert hung["wall_s"] >= 3


@pytest.mark.parametrize("config, running", [
    ("model: {name: 'fixtures:hangs'}\ndata: {input_shape: [8], num_classes: 4, size: 64}\n",
     "model.name: fixtures:hangs(**kwargs)"),
    ("model: {name: mlp, in_features: 8, classes: 4}\ndata: {kind: 'fixtures:SlowItems'}\n",
     "data.kind: fixtures:SlowItems's items, read for their lengths"),
    ("model: {name: 'fixtures:HangsAbove'}\ndata: {input_shape: [8], num_classes: 4, size: 64}\n",
     "model.name: fixtures:HangsAbove's step on two samples"),
])
def test_a_setup_that_never_ends_names_the_users_code_it_waits_on(write_config, config, running):
    # Not taken for memory: no batch ran.
    cfg = load_config(write_config(config + "probe: {device: cpu}\n"))
    worker = Worker({"config": cfg.model_dump(mode="json"), "standby": False, "learned": None, "rank": None})
    try:
        # However long its start takes, wait until it says it runs that code; then its start's
        # bound has run out.
        replies = []
        while worker.running != running and not replies:
            if not select.select([worker], [], [], HANG_S)[0]:  # reading now would wait forever
                pytest.fail(f"the worker said nothing for {HANG_S} s (running: {worker.running})")
            replies = worker.read()
        assert not replies, replies
        hung = worker.stop("timeout", "no result within 600 s; worker stopped")
    finally:
        worker.close()
    assert hung == {"status": "input", "error": f"{running} did not return: no result within 600 s; worker stopped"}


def test_a_child_on_its_way_out_is_told_from_one_still_running():
    # A rank the kernel's OOM killer ends closes its sockets before it can be reaped: a peer may
    # report it lost first, and stopping it then must still find that it died on its own.
    import os
    import signal
    import subprocess

    worker = object.__new__(Worker)
    worker._proc = subprocess.Popen(["sleep", "600"])
    try:
        assert not worker._exiting()
        os.kill(worker._proc.pid, signal.SIGKILL)
        stat = f"/proc/{worker._proc.pid}/stat"
        while open(stat).read().rsplit(")", 1)[1].split()[0] != "Z":  # dead, not yet reaped
            select.select([], [], [], 0.01)
        assert worker._exiting()
    finally:
        worker._proc.kill()
        worker._proc.wait()


@pytest.mark.slow
def test_a_probe_counts_a_timeout_as_a_failure_and_goes_on_in_a_fresh_process(write_config):
    # A worker's start has its own bound (group.START_S): only the hung trial meets the 3 s.
    report = probe(trap_config(write_config, "hang", 4, ", trial_timeout_s: 3, refine: false"))
    assert [t.status for t in report.trials] == ["ok", "ok", "timeout", "ok"]
    assert "no result within 3 s" in report.trials[2].error
    assert report.trials[3].fresh_process and report.limit.batch_size == 2 and report.limit.first_oom == 4


def test_after_a_failure_the_next_trial_gets_a_fresh_process(write_config):
    cfg = trap_config(write_config, "oom", 4)
    report = check(cfg, 2)
    assert report.trials[0].fresh_process and report.trials[0].fits
    report = probe(cfg)
    assert [t.fresh_process for t in report.trials] == [True, False, False, True]


@pytest.mark.slow
def test_non_finite_loss_is_reported_not_recommended(write_config):
    report = probe(trap_config(write_config, "nan", 8, ", max_batch: 16, refine: false"))
    nan_sizes = sorted({t.batch_size for t in report.trials if t.loss_finite is False})
    assert nan_sizes == [8, 16]
    assert report.recommendation.batch_size in (1, 2, 4)
    assert any("not finite" in w for w in report.warnings)
    assert len(report.warnings) == len(set(report.warnings))  # 16 ran twice (verified), said once


@pytest.mark.slow
def test_setup_failures_map_to_errors(write_config):
    with pytest.raises(InputError, match="model.name: fixtures:raises"):
        probe(load_config(write_config("model: {name: 'fixtures:raises'}\nprobe: {device: cpu}")))
    with pytest.raises(InputError, match="probe.device: cuda:3 requested"):
        probe(load_config(write_config("model: {name: mlp}\nprobe: {device: 'cuda:3'}")))
    with pytest.raises(InputError, match="min_batch: 128 is larger than the dataset"):
        probe(load_config(write_config("model: {name: mlp}\ndata: {size: 100}\nprobe: {min_batch: 128, device: cpu}")))
    with pytest.raises(SetupFailed):
        Group(load_config(write_config("model: {name: 'fixtures:not_a_model'}")).model_dump(mode="json"), None, None, 1)


def test_an_abort_on_a_failed_allocation_is_nothing_fits_not_bad_input(write_config):
    # C++ code that cannot allocate throws std::bad_alloc, and the process aborts: memory, not a bug.
    path = write_config("model: {name: 'fixtures:crashes', kwargs: {how: bad_alloc}}\nprobe: {device: cpu}\n")
    report = probe(load_config(path))
    assert report.limit.batch_size is None and report.trials[0].status == "oom", report.trials
    assert "killed by SIGABRT: terminate called after throwing an instance of 'std::bad_alloc'" in report.trials[0].error


def test_a_model_of_ones_own_too_big_for_the_limit_is_nothing_fits_not_bad_input(write_config, worker_data_bytes):
    # 16384 x 16384 float32 weights, 1 GiB, built by a factory in a cap with room for a quarter of it.
    path = write_config("model: {name: 'torch.nn:Linear', kwargs: {in_features: 16384, out_features: 16384}}\n"
                        "data: {input_shape: [16384], target_shape: [16384]}\ntrain: {loss: mse}\n"
                        f"probe: {{device: cpu, memory_limit: {worker_data_bytes + 256 * MiB}}}")
    result = CliRunner().invoke(app, ["probe", str(path), "--json"])
    # Set-up ran out of memory: no batch ran, and the line does not say one failed.
    assert result.exit_code == 3, result.output
    assert "nothing fits: setting up (Python, torch, the model) ran out of memory before any batch ran" in result.stderr
    report = json.loads(result.stdout)
    assert [t["status"] for t in report["trials"]] == ["oom"]
    assert report["stopped_because"] == "oom while setting up, before batch 1 ran"


def test_a_data_file_too_big_for_the_limit_is_nothing_fits_naming_the_file(write_config, worker_data_bytes, tmp_path):
    # 512 MiB of inputs, compressed to under a MiB, loaded whole at set-up in a cap with room for half.
    data = tmp_path / "big.npz"
    np.savez_compressed(data, inputs=np.zeros((64, 2**21), dtype=np.float32), targets=np.zeros(64, dtype=np.int64))
    path = write_config(f"model: {{name: mlp, in_features: {2**21}, hidden: 4, layers: 1, classes: 4}}\n"
                        f"data: {{kind: tensors, path: {data}}}\n"
                        f"probe: {{device: cpu, memory_limit: {worker_data_bytes + 256 * MiB}}}")
    result = CliRunner().invoke(app, ["check", str(path), "--batch", "2"])
    assert result.exit_code == 3, result.output  # it was "cannot load", exit 2: the file is fine
    assert f"make the model or the data smaller ({data}, " in result.output and "is loaded whole)" in result.output


def test_an_npz_file_is_read_for_its_two_arrays_only(write_config, tmp_path):
    # An array of objects beside them (which numpy will not load without pickle) is not read.
    data = tmp_path / "extra.npz"
    np.savez(data, inputs=np.zeros((4, 8), dtype=np.float32), targets=np.zeros(4, dtype=np.int64),
             notes=np.array([{"a": 1}], dtype=object))
    path = write_config(f"model: {{name: mlp, in_features: 8, classes: 4}}\ndata: {{kind: tensors, path: {data}}}\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_a_size_that_fits_only_in_shared_memory_the_limit_does_not_count_does_not_fit(write_config, worker_data_bytes):
    # RLIMIT_DATA does not count shared memory: at batch 4 the model holds as much again as the cap.
    cap = worker_data_bytes + 256 * MiB
    path = write_config(f"model: {{name: 'fixtures:Trap', kwargs: {{how: shared, at: 4, shared_bytes: {cap}}}}}\n"
                        "data: {input_shape: [8], num_classes: 4}\n"
                        f"probe: {{device: cpu, memory_limit: {cap}, warmup_steps: 0, steps: 1}}")
    checked = CliRunner().invoke(app, ["check", str(path), "--batch", "4", "--json"])
    assert checked.exit_code == 3, checked.output
    trial = json.loads(checked.stdout)["trials"][0]
    assert trial["status"] == "oom" and re.fullmatch(
        r"the steps hold \S+ \S+ of shared memory, which the \S+ \S+ limit does not count, beside \S+ \S+ that it "
        r"does", trial["error"]), trial
    # Below the size that makes it, the same model fits.
    assert CliRunner().invoke(app, ["check", str(path), "--batch", "2"]).exit_code == 0


def test_only_shared_memory_the_trial_made_counts_against_the_cap(monkeypatch):
    import resource

    import torch

    from batchfind import devices

    cap, cpu = 1024 * MiB, torch.device("cpu")
    monkeypatch.setattr(resource, "getrlimit", lambda which: (cap, cap))

    def check(own: int, machine: int, data: int) -> None:
        monkeypatch.setattr(devices, "shared_memory", lambda device: (own, machine))
        devices.check_shared(cpu, (0, 0), data)

    with pytest.raises(devices.PastTheCap, match=r"hold 800\.0 MiB of shared memory, which the 1\.0 GiB limit"):
        check(800 * MiB, 800 * MiB, 900 * MiB)
    check(800 * MiB, 0, 900 * MiB)  # a tmpfs file mapped in: the machine held it already
    check(800 * MiB, 800 * MiB, 100 * MiB)  # with the data segment, still under the cap
    check(80 * MiB, 80 * MiB, 1000 * MiB)  # within the slack, a tenth of the cap
    devices.check_shared(cpu, None, 1000 * MiB)  # nothing to compare with (no /proc)


def test_a_model_too_big_for_the_limit_is_nothing_fits_and_still_a_report(write_config, worker_data_bytes, tmp_path):
    # 4 layers of 8192 x 8192 float32 weights: 1 GiB, in a cap with room for a quarter of it.
    cap = worker_data_bytes + 256 * MiB
    path = write_config(
        "model: {name: mlp, in_features: 8192, hidden: 8192, layers: 4}\n"
        f"probe: {{device: cpu, memory_limit: {cap}}}"
    )
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["probe", str(path), "-o", str(out), "--json"])
    assert result.exit_code == 3 and json.loads(out.read_text()) == json.loads(result.stdout)
    report = json.loads(result.stdout)
    assert report["limit"]["batch_size"] is None and [t["status"] for t in report["trials"]] == ["oom"]
    assert re.search(r"ran out of memory before any batch ran: .*; raise the memory limit", report["trials"][0]["error"])
    assert "nothing fits: setting up (Python, torch, the model) ran out of memory before any batch ran" in result.stderr
    # The advice is whole, however long the allocator's own words.
    assert result.stderr.rstrip().endswith("or make the model smaller"), result.stderr
    # `check` says so of the size it was asked about.
    checked = CliRunner().invoke(app, ["check", str(path), "--batch", "7", "--json"])
    assert checked.exit_code == 3 and [(t["batch_size"], t["status"]) for t in json.loads(checked.stdout)["trials"]] == [
        (7, "oom")]


@pytest.mark.slow
def test_real_out_of_memory_under_a_memory_cap(write_config, worker_data_bytes):
    """A real allocation failure: wide inputs (16 KiB a sample) under a cap with 160 MiB of room
    above an idle worker run out within a few doublings."""
    room = 160 * MiB
    cap = worker_data_bytes + room
    cfg = load_config(write_config(
        "model: {name: mlp, in_features: 4096, hidden: 64, layers: 1}\ndata: {size: 1000000}\n"
        f"probe: {{device: cpu, memory_limit: {cap}, min_batch: 256, warmup_steps: 1, steps: 2, refine: false}}"
    ))
    report = probe(cfg)
    doubled = [t for t in report.trials if t.phase == "double"]
    assert doubled[-1].status == "oom" and {t.status for t in doubled[:-1]} == {"ok"}
    assert report.limit.first_oom == 2 * report.limit.batch_size
    assert report.environment.memory_limit_bytes == cap
    fitting = [t for t in report.trials if t.fits]
    # Peak memory grows with the batch, and the largest fitting size used a good part of the room.
    assert fitting[-1].peak_bytes - fitting[0].peak_bytes > 0.25 * room


@pytest.mark.slow
def test_refinement_finds_the_exact_edge_and_it_is_verified(write_config):
    report = probe(trap_config(write_config, "oom", 13, ", refine: true"))
    assert report.limit.batch_size == 12 and report.limit.first_oom == 13
    assert report.limit.refined and report.limit.verified
    assert {t.phase for t in report.trials} >= {"double", "refine"}
    refined = [t.batch_size for t in report.trials if t.phase == "refine"]
    assert all(8 < s < 16 for s in refined) and 12 in refined and 13 in refined


@pytest.mark.slow
def test_multiple_of_and_a_failed_verification_steps_down(write_config):
    """Flaky fits 16 in a reused worker but only 12 in a fresh one: the search steps down to 12."""
    report = probe(load_config(write_config(
        "model: {name: 'fixtures:Flaky', kwargs: {fresh_limit: 12}}\n"
        "data: {kind: synthetic, size: 4096, input_shape: [8], num_classes: 4}\n"
        "probe: {warmup_steps: 0, steps: 1, device: cpu, multiple_of: 4, min_batch: 4}\n"
    )))
    assert report.limit.batch_size == 12 and report.limit.verified and report.limit.first_oom == 16
    assert any(t.fresh_process and t.batch_size == 16 and t.status == "oom" for t in report.trials)
    assert all(t.batch_size % 4 == 0 for t in report.trials)
    assert any("batch 16 fitted in a long-lived worker but ran out of memory in another" in w for w in report.warnings)
    # Batches 4 and 8 were timed and 4 ran first in a brand-new process: something fits.
    rec = report.recommendation
    assert rec.batch_size is not None and rec.batch_size <= 12, (rec.reason, report.limit)


@pytest.mark.slow
def test_variable_length_data_is_probed_with_the_longest_items(write_config, tmp_path):
    log = tmp_path / "reads"
    report = probe(load_config(write_config(
        "model: {name: transformer, vocab_size: 64, d_model: 16, heads: 2, layers: 1, seq_len: 40}\n"
        f"data: {{kind: 'fixtures:Sentences', kwargs: {{n: 30, longest: 40, log: '{log}'}}}}\n"
        # No minimum time: the DataLoader's timed steps then read a few batches, not 0.5 s of them.
        "probe: {warmup_steps: 0, steps: 1, min_time_s: 0, device: cpu, max_batch: 4, refine: false}\n"
    )))
    assert report.input_lengths == {"longest": 40, "shortest": 5, "scanned": 30, "total": 30}
    assert report.limit.batch_size == 4 and report.limit.verified
    # The first worker read every item for their lengths. The standby started beside it (it verified
    # 4) waited to be told them before its set-up, as a worker started later (the one that timed
    # the DataLoader at the recommended size) was told them: each read only what its batches hold.
    reads: dict[str, int] = {}
    for line in log.read_text().splitlines():
        pid = line.split()[0]
        reads[pid] = reads.get(pid, 0) + 1
    *later, first = sorted(reads.values())
    assert first >= 30 and len(later) == 2 and all(n < 30 for n in later), reads


@pytest.mark.slow
def test_noise_scale_and_dataloader_timing_at_the_recommended_size(write_config):
    report = probe(load_config(write_config(
        "model: {name: mlp, in_features: 8, hidden: 16, layers: 1, classes: 4}\n"
        "data: {kind: 'fixtures:Pairs', kwargs: {n: 600}, workers: 1}\n"
        "train: {optimizer: adam, lr: 0.001, reference_batch: 16}\n"
        "probe: {warmup_steps: 1, steps: 3, device: cpu, max_batch: 64}\n"
        "recommend: {noise_scale: true, target_batch: 128}\n"
    )))
    rec = report.recommendation
    assert rec.batch_size is not None and rec.global_batch_size >= 128
    assert rec.accumulation_steps == -(-128 // rec.batch_size)
    assert rec.lr == pytest.approx(0.001 * (rec.global_batch_size / 16) ** 0.5)
    loader = rec.loader
    assert loader["status"] == "ok" and loader["workers"] == 1 and loader["batch_size"] == rec.batch_size
    assert 0 <= loader["data_share"] <= 1 and loader["step_ms"]["median"] >= loader["data_wait_ms"]["median"]
    timed = loader["step_ms"]["samples"]  # min_time_s (0.5 s) of them, or the most a trial takes
    assert len(timed) >= 3 and (sum(timed) >= 500 or len(timed) == 100), timed
    scale = rec.noise_scale
    assert scale["status"] == "ok" and scale["batches"] == 12
    assert scale["big_batch"] > scale["small_batch"] >= 2
    assert scale["samples"] == 12 * (scale["big_batch"] + scale["small_batch"])
    assert scale["b_simple"] is None or scale["b_simple"] > 0
    assert math.isfinite(scale["grad_sq"]) and math.isfinite(scale["trace_cov"])
    jsonschema.validate(json.loads(report.to_json()), json_schema())  # the two shapes, field by field
    # and no key the schema does not name
    assert set(loader) == set(LoaderTiming.__annotations__) and set(scale) == set(NoiseScaleEstimate.__annotations__)


def test_a_model_that_cannot_train_on_one_sample_is_probed_from_two(write_config):
    cfg = load_config(write_config(
        "model: {name: 'fixtures:normed_mlp'}\n"
        "data: {kind: synthetic, size: 256, input_shape: [8], num_classes: 4}\n"
        "probe: {warmup_steps: 0, steps: 1, device: cpu, max_batch: 4, refine: false}\n"
    ))
    report = probe(cfg)
    assert [t.batch_size for t in report.trials if t.phase == "double"] == [2, 4]
    assert all(t.fits for t in report.trials)
    assert any("cannot train on a batch below 2" in w and "started at 2" in w for w in report.warnings)
    with pytest.raises(InputError, match=r"^--batch: 1, but the model cannot train on a batch below 2"):
        check(cfg, 1)
    assert not any("started at" in w for w in check(cfg, 2).warnings)  # a check starts nothing
    with pytest.raises(InputError, match=r"probe.max_batch: 1, but the model cannot train on a batch below 2"):
        probe(cfg.model_copy(update={"probe": cfg.probe.model_copy(update={"max_batch": 1})}))


def test_a_check_runs_no_step_of_one_sample_that_training_would_not(write_config, tmp_path):
    """Set-up's step of one sample, which tells whether a BatchNorm model trains on one, left a
    heap that raised a brand-new process's peak near the edge: the probe's first worker runs it,
    a check of a larger size does not (two samples check the data, then the trial's steps)."""
    log = tmp_path / "sizes.txt"
    cfg = load_config(write_config(
        f"model: {{name: 'fixtures:NormedLog', kwargs: {{out: '{log}'}}}}\n"
        "data: {kind: synthetic, size: 256, input_shape: [8], num_classes: 4}\n"
        "probe: {warmup_steps: 0, steps: 1, device: cpu, max_batch: 4, refine: false}\n"
    ))
    assert check(cfg, 4).trials[0].fits
    # Set-up's steps run without oneDNN, whose kernels built for their shapes no training step uses.
    assert set(log.read_text().splitlines()) == {"2 False", "4 True"}
    log.unlink()
    assert probe(cfg).trials[0].batch_size == 2
    # The probe's first worker learned that it starts at 2; the standby beside it was told.
    assert [line.split()[0] for line in log.read_text().splitlines()].count("1") == 1


def test_a_real_out_of_memory_in_the_optimizer_step(write_config, worker_data_bytes):
    """Weights and gradients fit under the cap, Adam's two state tensors per weight do not."""
    weights = 4 * (4096 * 4096 + 4096) * 4  # four 4096 x 4096 float32 layers with biases
    cap = worker_data_bytes + 3 * weights  # room for weights, gradients and one more copy
    cfg = load_config(write_config(
        "model: {name: mlp, in_features: 4096, hidden: 4096, layers: 3, classes: 4096}\n"
        "train: {optimizer: adam, lr: 0.001}\n"
        f"probe: {{device: cpu, memory_limit: {cap}, warmup_steps: 0, steps: 1, min_batch: 1, max_batch: 1}}"
    ))
    report = check(cfg, 1)
    trial = report.trials[0]
    assert trial.status == "oom" and trial.error.startswith("in optimizer step: "), trial.error


@pytest.mark.slow
def test_noise_scale_needs_room_for_two_sizes(write_config):
    report = probe(trap_config(write_config, "oom", 3, more="recommend: {noise_scale: true}\n"))
    assert report.limit.batch_size == 2
    assert report.recommendation.noise_scale["status"] == "skipped"
    assert ("the gradient noise scale was not estimated (skipped): needs a batch of at least 4 that fits (limit 2)"
            in report.warnings), report.warnings
    # Where the dataset is what caps the sizes, it is named, not the memory limit.
    small = probe(load_config(write_config("model: {name: mlp, in_features: 8, classes: 4}\ndata: {size: 3}\n"
                                           "probe: {device: cpu, warmup_steps: 0, steps: 1}\n"
                                           "recommend: {noise_scale: true}\n")))
    assert ("the gradient noise scale was not estimated (skipped): needs a batch of at least 4 that fits (the dataset "
            "holds 3)" in small.warnings), small.warnings
    jsonschema.validate(json.loads(report.to_json()), json_schema())


def test_a_noise_scale_from_gradients_that_are_not_finite_is_an_error_the_schema_reads(write_config):
    report = probe(load_config(write_config(
        "model: {name: 'fixtures:Trap', kwargs: {at: 1, how: nan_grad}}\n"
        "data: {input_shape: [8], num_classes: 4, size: 64}\n"
        "probe: {device: cpu, warmup_steps: 0, steps: 1, max_batch: 8, min_time_s: 0, max_time_s: 0}\n"
        "recommend: {noise_scale: true}\n")))
    assert report.recommendation.noise_scale["status"] == "error", report.recommendation.noise_scale
    assert any(w.startswith("the gradient noise scale was not estimated (error): the gradients were not finite")
               for w in report.warnings), report.warnings
    jsonschema.validate(json.loads(report.to_json()), json_schema())


def test_a_folder_named_batchfind_in_the_working_directory_does_not_replace_it_in_workers(write_config, tmp_path,
                                                                                          monkeypatch):
    cfg = load_config(write_config(TINY))
    shadow = tmp_path / "cwd" / "batchfind"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the folder in the working directory was imported')\n")
    (tmp_path / "cwd" / "mymodels.py").write_text("import torch\n\ndef build():\n    return torch.nn.Linear(16, 4)\n")
    monkeypatch.chdir(tmp_path / "cwd")
    # A factory module in the working directory still imports.
    raw = cfg.model_dump(mode="json")
    raw = raw | {"model": {"name": "mymodels:build", "kwargs": {}},
                 "data": raw["data"] | {"input_shape": [16], "num_classes": 4}}
    worker = Group(raw, None, None, generation=1)
    try:
        assert worker.ready["device"] == "cpu" and worker.ready["parameters"] == 68
        assert worker.run(2, "fit", HANG_S, None)["status"] == "ok"
    finally:
        worker.close()
