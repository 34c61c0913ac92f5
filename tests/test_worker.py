"""Trials in worker processes: out-of-memory, a killed worker, a hang and bad setup never crash the probe."""

import pytest

from batchfind.config import load_config
from batchfind.errors import InputError, NothingFits
from batchfind.probe import check, probe
from batchfind.worker import SetupFailed, Worker

from conftest import TINY


def trap_config(write_config, how, at, extra=""):
    return load_config(write_config(
        f"model: {{name: 'fixtures:Trap', kwargs: {{how: {how}, at: {at}}}}}\n"
        "data: {kind: synthetic, size: 4096, input_shape: [8], num_classes: 4}\n"
        f"probe: {{warmup_steps: 0, steps: 1, device: cpu, trial_timeout_s: 20 {extra}}}\n"
    ))


def test_worker_runs_trials_and_reports_its_setup(write_config):
    cfg = load_config(write_config(TINY))
    worker = Worker(cfg.model_dump(mode="json"), timeout_s=60)
    try:
        assert worker.ready["dataset_len"] == 64 and worker.ready["device"] == "cpu"
        assert worker.ready["memory_limit_bytes"] > 0
        first, second = worker.run(4, 60), worker.run(8, 60)
    finally:
        worker.close()
    assert first["status"] == second["status"] == "ok"
    assert first["fresh_process"] and not second["fresh_process"]


@pytest.mark.parametrize(
    "how, status, error",
    [
        ("oom", "oom", "OutOfMemoryError"),
        ("onednn", "oom", "could not create a primitive"),
        ("kill", "killed", "SIGKILL"),
        ("segv", "killed", "SIGSEGV"),
        ("error", "error", "ValueError: a bug in the model"),
    ],
)
def test_failures_at_a_size_end_the_doubling_and_are_reported(write_config, how, status, error):
    report = probe(trap_config(write_config, how, 16))
    assert [t.batch_size for t in report.trials] == [1, 2, 4, 8, 16]
    last = report.trials[-1]
    assert last.status == status and error in last.error
    assert report.limit.batch_size == 8
    assert report.limit.first_oom == (16 if status in ("oom", "killed") else None)


def test_a_hung_step_is_stopped_at_the_trial_timeout(write_config):
    report = probe(trap_config(write_config, "hang", 4, ", trial_timeout_s: 3"))
    assert [t.status for t in report.trials] == ["ok", "ok", "timeout"]
    assert "no result within 3 s" in report.trials[-1].error


def test_after_a_failure_the_next_trial_gets_a_fresh_process(write_config):
    cfg = trap_config(write_config, "oom", 4)
    report = check(cfg, 2)
    assert report.trials[0].fresh_process and report.trials[0].fits
    report = probe(cfg)
    assert [t.fresh_process for t in report.trials] == [True, False, False]


def test_non_finite_loss_is_reported_not_recommended(write_config):
    report = probe(trap_config(write_config, "nan", 8, ", max_batch: 16"))
    nan_sizes = [t.batch_size for t in report.trials if t.loss_finite is False]
    assert nan_sizes == [8, 16]
    assert report.recommendation.batch_size in (1, 2, 4)
    assert any("not finite" in w for w in report.warnings)


def test_setup_failures_map_to_errors(write_config):
    with pytest.raises(InputError, match="model.name: fixtures:raises"):
        probe(load_config(write_config("model: {name: 'fixtures:raises'}\nprobe: {device: cpu}")))
    with pytest.raises(InputError, match="probe.device: cuda:3 requested"):
        probe(load_config(write_config("model: {name: mlp}\nprobe: {device: 'cuda:3'}")))
    with pytest.raises(InputError, match="min_batch: 128 is larger than the dataset"):
        probe(load_config(write_config("model: {name: mlp}\ndata: {size: 100}\nprobe: {min_batch: 128, device: cpu}")))
    with pytest.raises(SetupFailed):
        Worker(load_config(write_config("model: {name: 'fixtures:not_a_model'}")).model_dump(mode="json"), 60)


def test_a_model_too_big_for_the_limit_is_nothing_fits(write_config):
    cfg = load_config(write_config(
        "model: {name: mlp, in_features: 8192, hidden: 8192, layers: 4}\nprobe: {device: cpu, memory_limit: 600MiB}"
    ))
    with pytest.raises(NothingFits, match="does not fit in memory before any batch"):
        probe(cfg)


def test_real_out_of_memory_under_a_memory_cap(write_config):
    """A real allocation failure: a wide input under a 450 MiB cap runs out within a few doublings."""
    cfg = load_config(write_config(
        "model: {name: mlp, in_features: 4096, hidden: 64, layers: 1}\ndata: {size: 1000000}\n"
        "probe: {device: cpu, memory_limit: 450MiB, min_batch: 256, warmup_steps: 1, steps: 2}"
    ))
    report = probe(cfg)
    statuses = [t.status for t in report.trials]
    assert statuses[-1] == "oom" and set(statuses[:-1]) == {"ok"}
    assert report.limit.first_oom == 2 * report.limit.batch_size
    assert report.environment.memory_limit_bytes == 450 * 1024**2
    fitting = [t for t in report.trials if t.fits]
    # Peak memory grows with the batch and the largest fitting size came close to the cap.
    assert fitting[-1].peak_bytes > fitting[0].peak_bytes
    assert fitting[-1].peak_bytes > 0.5 * 450 * 1024**2
