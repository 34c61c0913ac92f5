"""Workers forked from a launcher stand in for workers started from nothing: same answers, same
memory, same ways of ending."""

import os
import signal

import psutil
import pytest

from batchfind.config import load_config
from batchfind.forks import Launcher
from batchfind.group import Group
from batchfind.probing import probe
from batchfind.worker import SetupFailed, environment

from conftest import TINY

# Only a hang waits this long: far above any worker's start or trial here, even on a loaded machine.
HANG_S = 300
MiB = 1024**2


@pytest.fixture
def launcher():
    started = Launcher(environment("cpu", fits_only=True))
    yield started
    started.close()


def data_segment(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))


def standing_by(raw, generation, launcher=None):
    group = Group(raw, None, None, generation, standby=True, fits_only=True, smallest=False, launcher=launcher)
    assert group.standing_by()
    return group


def test_a_forked_worker_holds_what_one_started_from_nothing_holds_and_runs_alike(write_config, launcher):
    raw = load_config(write_config(TINY)).model_dump(mode="json")
    forked, started = standing_by(raw, 1, launcher), standing_by(raw, 2)
    try:
        pids = forked.workers[0]._proc.pid, started.workers[0]._proc.pid
        assert psutil.Process(pids[0]).ppid() == launcher._proc.pid
        assert psutil.Process(pids[1]).ppid() == os.getpid()
        # What the memory cap counts, set up and waiting: the threads numpy's OpenBLAS ends before a
        # fork are started again (without, an OpenMP thread took a dead one's stack: 8 MiB less).
        held = [data_segment(pid) for pid in pids]
        threads = [psutil.Process(pid).num_threads() for pid in pids]
        for group in (forked, started):
            group.activate()
        results = [group.run(8, "fit", HANG_S) for group in (forked, started)]
    finally:
        forked.close()
        started.close()
    assert abs(held[0] - held[1]) < 4 * MiB, held
    assert threads[0] == threads[1]
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert results[0]["steps"] == results[1]["steps"] == 2 and all(r["fresh_process"] for r in results)


def test_a_forked_worker_killed_from_outside_reads_as_the_kernels_oom_killer(write_config, launcher):
    raw = load_config(write_config(TINY)).model_dump(mode="json")
    group = standing_by(raw, 1, launcher)
    try:
        group.activate()
        os.kill(group.workers[0]._proc.pid, signal.SIGKILL)
        result = group.run(8, "fit", HANG_S)
    finally:
        group.close()
    assert result["status"] == "killed" and "killed by SIGKILL" in result["error"]


@pytest.mark.parametrize("how, said", [("exit", "exited with code 7"), ("segv", "killed by SIGSEGV")])
def test_how_a_forked_worker_ended_is_told_as_for_one_started_from_nothing(write_config, launcher, how, said):
    raw = load_config(write_config(f"model: {{name: 'fixtures:crashes', kwargs: {{how: {how}}}}}\n"
                                   "data: {kind: synthetic, size: 64, input_shape: [8], num_classes: 4}\n"
                                   "probe: {device: cpu}\n")).model_dump(mode="json")
    for generation, given in enumerate([launcher, None]):
        with pytest.raises(SetupFailed, match=f"ended the worker \\({said}\\)"):
            Group(raw, None, None, generation, fits_only=True, launcher=given)


def test_without_its_launcher_a_worker_starts_from_nothing(write_config, launcher):
    raw = load_config(write_config(TINY)).model_dump(mode="json")
    launcher.close()
    group = Group(raw, None, None, 1, fits_only=True, launcher=launcher)
    try:
        assert psutil.Process(group.workers[0]._proc.pid).ppid() == os.getpid()
        assert group.run(8, "fit", HANG_S)["status"] == "ok"
    finally:
        group.close()


def test_a_launcher_takes_its_workers_with_it(write_config, launcher):
    raw = load_config(write_config(TINY)).model_dump(mode="json")
    group = standing_by(raw, 1, launcher)
    try:
        child = psutil.Process(group.workers[0]._proc.pid)
        launcher.close()
        child.wait(timeout=60)  # killed as its parent dies, not waited for
        assert group.workers[0]._proc.poll() == -signal.SIGKILL
    finally:
        group.close()


def test_a_worker_whose_launcher_died_before_forking_it_reads_as_killed(write_config):
    raw = load_config(write_config(TINY)).model_dump(mode="json")
    launcher = Launcher(environment("cpu", fits_only=True))
    try:
        standby = Group(raw, None, None, 1, standby=True, fits_only=True, launcher=launcher)
        launcher._proc.kill()  # still importing torch: the fork asked for never comes (or its child dies with it)
        assert not standby.standing_by()
        assert standby.standby_failure["status"] == "killed"
        standby.close()  # signals no process group of its own: it has none
    finally:
        launcher.close()


def test_a_probe_forks_its_fit_checks_near_the_edge_and_leaves_no_process_behind(write_config, monkeypatch):
    forked = []
    fork = Launcher.fork
    monkeypatch.setattr(Launcher, "fork", lambda self, *fds: forked.append(fork(self, *fds)) or forked[-1])
    cfg = load_config(write_config("model: {name: 'fixtures:Trap', kwargs: {how: oom, at: 48}}\n"
                                   "data: {kind: synthetic, size: 4096, input_shape: [8], num_classes: 4}\n"
                                   "probe: {warmup_steps: 0, steps: 1, device: cpu}\n"))
    report = probe(cfg)
    assert report.limit.batch_size == 47 and report.limit.verified
    checks = [t for t in report.trials if t.fresh_process and t.purpose == "fit" and t.phase != "double"]
    assert checks and len(forked) == len(checks)
    # Not its workers, nor the launcher its fit checks near the edge were forked from.
    assert psutil.Process().children(recursive=True) == []
