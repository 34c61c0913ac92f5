"""Distributed probes on CPU: 2 ranks over gloo, DDP and FSDP, a failure on one rank only, torchrun."""

import json
import os
import re
import subprocess
import sys

import pytest
from torch import nn

from batchfind.config import load_config
from batchfind.errors import InputError
from batchfind.distributed import Agreement, AgreementLost, Topology
from batchfind.group import _first_failure, merge_trial
from batchfind.models import build_model
from batchfind.parallel import _fully_shard, repeated_blocks
from batchfind.probing import probe
from batchfind.report import Report

from conftest import ROOT

# Every test here starts several processes; none may hang the suite. Only a hang comes near
# these bounds, on a loaded machine too: they include every worker's start.
pytestmark = pytest.mark.timeout(900)
TRIAL_TIMEOUT_S = 120


def trap(write_config, how, at, extra=""):
    return write_config(
        f"model: {{name: 'fixtures:Trap', kwargs: {{how: {how}, at: {at}, rank: 1}}}}\n"
        "data: {kind: synthetic, size: 4096, input_shape: [8], num_classes: 4}\n"
        f"probe: {{warmup_steps: 0, steps: 1, device: cpu, trial_timeout_s: {TRIAL_TIMEOUT_S}{extra}}}\n"
    )


def ok(rank, median, peak, **more):
    return {"rank": rank, "status": "ok", "step_ms": {"median": median, "p10": median, "p90": median, "samples": [median]},
            "peak_bytes": peak, "loss": 1.0, "loss_finite": True, "joules_per_sample": None, **more}


# ---- merging the ranks' replies (pure) ----------------------------------------------------


def test_fsdp_is_found_where_each_torch_keeps_it(monkeypatch):
    from torch.distributed._composable.fsdp import fully_shard

    monkeypatch.setitem(sys.modules, "torch.distributed.fsdp", None)  # torch 2.4 and 2.5 have no public path
    assert _fully_shard() is fully_shard
    monkeypatch.setitem(sys.modules, "torch.distributed._composable.fsdp", None)  # before 2.4: none at all
    with pytest.raises(InputError, match=r"^probe.strategy: fsdp needs torch 2.4 or later \(this is .+\); ddp works"):
        _fully_shard()


def test_a_trial_across_ranks_is_the_worst_rank_and_the_slowest_step():
    merged = merge_trial([ok(0, 10.0, 500), ok(1, 20.0, 700)], batch_size=8, dataset_len=1000)
    assert merged["status"] == "ok" and merged["peak_bytes"] == 700
    assert merged["step_ms"]["median"] == 20.0
    assert merged["samples_per_s"] == pytest.approx(8 * 2 / 0.020)  # every rank's batch per slowest step
    assert merged["epoch_s"] == pytest.approx(63 * 0.020)  # ceil(1000 / 16) steps
    assert [(r["rank"], r["peak_bytes"], r["step_ms"]) for r in merged["ranks"]] == [(0, 500, 10.0), (1, 700, 20.0)]


def test_the_rank_that_failed_decides_not_the_one_it_stopped():
    stopped = {"rank": 0, "status": "stopped", "error": "stopped: another rank failed first"}
    oom = {"rank": 1, "status": "oom", "error": "in backward: OutOfMemoryError", "peak_bytes": 900,
           "failed_alloc_bytes": 1 << 30}
    merged = merge_trial([stopped, oom], batch_size=16, dataset_len=1000)
    assert merged["status"] == "oom" and merged["error"] == "rank 1: in backward: OutOfMemoryError"
    assert merged["peak_bytes"] == 900 and merged["failed_alloc_bytes"] == 1 << 30
    assert [r["status"] for r in merged["ranks"]] == ["stopped", "oom"]
    assert "samples_per_s" not in merged


def test_a_rank_that_lost_its_peer_is_not_blamed():
    # rank 1 was killed; gloo then failed rank 0's all-reduce, often before rank 1's death was seen.
    lost = {"rank": 0, "status": "error", "error": "in backward: RuntimeError: [gloo] Connection reset by peer"}
    killed = {"rank": 1, "status": "killed", "error": "worker killed by SIGKILL"}
    merged = merge_trial([lost, killed], batch_size=4, dataset_len=100)
    assert merged["status"] == "killed"
    # It only waited on rank 1, as a rank stopped in time would have: the report says so either way.
    assert [(r["status"], r["error"]) for r in merged["ranks"]] == [
        ("stopped", "stopped: another rank failed first"), ("killed", "worker killed by SIGKILL")]
    # Where every failure is a lost peer, nothing is known to have caused it: each keeps its own.
    alone = merge_trial([lost, {**lost, "rank": 1}], batch_size=4, dataset_len=100)
    assert [r["status"] for r in alone["ranks"]] == ["error", "error"]
    # A rank that could not set up is the cause, not the rank stopped while waiting for it.
    bad = {"rank": 1, "status": "input", "error": "model.name: broken"}
    assert _first_failure([{"rank": 0, "status": "stopped"}, bad]) is bad
    # Ranks waiting on each other time out together: no single rank is named.
    hung = [{"rank": r, "status": "timeout", "error": "no result within 60 s"} for r in (0, 1)]
    assert merge_trial(hung, batch_size=4, dataset_len=100)["error"] == "every rank: no result within 60 s"


def test_drivers_stop_waiting_when_one_gives_up_or_goes_silent():
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)

    def driver(rank):
        topo = Topology(world_size=2, ranks=[rank], local_ranks=[0], local_world_size=1, nodes=2,
                        addr="127.0.0.1", port=store.port, launcher="torchrun", store=store)
        return Agreement(topo, timeout_s=0.5)

    zero, one = driver(0), driver(1)
    zero.next_round()
    with pytest.raises(AgreementLost, match="no word from rank 1 within 0.5 s"):
        zero.exchange({0: {"status": "ok"}})
    one.abandon("interrupted")
    zero.next_round()
    with pytest.raises(AgreementLost, match="stopped early: rank 1: interrupted"):
        zero.exchange({0: {"status": "ok"}})
    assert zero.flag_raised()  # a worker waiting on rank 1's would be stopped too


def test_one_rank_passes_through():
    reply = ok(0, 10.0, 500, samples_per_s=800.0)
    assert merge_trial([reply], batch_size=8, dataset_len=100) is reply


def test_fsdp_shards_the_repeated_blocks_innermost_first(write_config):
    gpt = build_model(load_config(write_config("model: {name: transformer, layers: 3, d_model: 32, heads: 2}")).model)
    blocks = repeated_blocks(gpt)
    assert len(blocks) == 3 and len({type(b) for b in blocks}) == 1
    def block():
        return nn.Sequential(nn.Linear(2, 2), nn.ReLU())

    class Stage(nn.Sequential):
        pass

    nested = nn.Sequential(Stage(block(), block()), Stage(block(), block()), nn.Linear(2, 2))
    order = repeated_blocks(nested)
    assert len(order) == 6  # 2 stages, 4 blocks; never a lone Linear
    # Each block comes before the stage holding it.
    assert all(order.index(inner) < order.index(stage) for stage in nested[:2] for inner in stage)
    assert repeated_blocks(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))) == []


# ---- real ranks over gloo -------------------------------------------------------------------


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to leave one out")
def test_a_cpu_rank_takes_its_threads_from_the_cpus_it_may_run_on(write_config):
    # Under taskset or a container's cpuset, threads for CPUs it may not use would only take turns.
    config = write_config("model: {name: mlp, in_features: 8, classes: 4}\ndata: {size: 64}\n"
                          "probe: {device: cpu, nproc_per_node: 1, warmup_steps: 0, steps: 1}\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    run = subprocess.run([sys.executable, "-m", "batchfind", "check", str(config), "--batch", "2", "--json"],
                         capture_output=True, text=True, env=env,
                         preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["distributed"]["world_size"] == 1 and report["environment"]["threads"] == 1


@pytest.mark.slow
def test_an_oom_in_backward_on_rank_1_stops_rank_0_and_both_move_on(write_config):
    # Rank 0 sits in DDP's gradient all-reduce waiting for rank 1, which ran out of memory in
    # backward: only a stop from outside ends that wait. The OOM must be agreed before the trial
    # timeout would have ended it.
    report = probe(load_config(trap(write_config, "backward_oom", 12, ", nproc_per_node: 2")))
    assert report.distributed.world_size == 2 and report.distributed.strategy == "ddp"
    assert report.distributed.backend == "gloo" and report.distributed.launcher == "batchfind"
    failed = [t for t in report.trials if not t.fits]
    assert failed and all(t.status == "oom" and t.error.startswith("rank 1: in backward") for t in failed)
    for t in failed:
        assert [(r.rank, r.status) for r in t.ranks] == [(0, "stopped"), (1, "oom")]
        assert t.wall_s < TRIAL_TIMEOUT_S
    assert report.limit.batch_size == 11 and report.limit.first_oom == 12 and report.limit.verified
    for t in report.trials:
        assert t.global_batch_size == t.batch_size * 2
        assert len(t.ranks) == 2
    fits = [t for t in report.trials if t.fits]
    assert all(t.peak_bytes == max(r.peak_bytes for r in t.ranks) for t in fits)
    assert all(t.step_ms.median == max(r.step_ms for r in t.ranks) for t in fits)
    assert all(t.samples_per_s == pytest.approx(2 * t.batch_size / (t.step_ms.median / 1000)) for t in fits)


@pytest.mark.slow
def test_a_rank_killed_by_a_signal_is_agreed_too(write_config):
    # The kernel's OOM killer ends a rank's worker with SIGKILL: its peers are stopped, not left waiting.
    report = probe(load_config(trap(write_config, "kill", 4, ", nproc_per_node: 2, refine: false, max_batch: 8")))
    killed = next(t for t in report.trials if not t.fits)
    assert killed.batch_size == 4 and killed.status == "killed" and killed.wall_s < TRIAL_TIMEOUT_S
    assert [r.status for r in killed.ranks] == ["stopped", "killed"]
    assert report.limit.batch_size == 2


@pytest.mark.slow
def test_a_rank_that_cannot_build_its_model_fails_the_probe_naming_it(write_config):
    path = write_config("model: {name: 'fixtures:broken_on_rank'}\n"
                        "data: {input_shape: [8], num_classes: 4, size: 64}\n"
                        f"probe: {{device: cpu, nproc_per_node: 2, trial_timeout_s: {TRIAL_TIMEOUT_S}}}\n")
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: rank 1: model.name: fixtures:broken_on_rank.*broken on this rank"):
        probe(load_config(path))


@pytest.mark.slow
def test_ddp_looks_for_parameters_that_get_no_gradient_and_says_so(write_config):
    # Without it DDP's second step fails ("Expected to have finished reduction in the prior iteration").
    path = write_config("model: {name: 'fixtures:UnusedHead'}\ndata: {input_shape: [8], num_classes: 4, size: 64}\n"
                        "probe: {device: cpu, nproc_per_node: 2, max_batch: 4, refine: false, warmup_steps: 1, "
                        f"steps: 2, trial_timeout_s: {TRIAL_TIMEOUT_S}}}\n")
    report = probe(load_config(path))
    assert [(t.batch_size, t.status) for t in report.trials if t.phase == "double"] == [(1, "ok"), (2, "ok"), (4, "ok")]
    assert ("2 trainable parameters of the model get no gradient (pooler.weight, pooler.bias): DDP ran with "
            "find_unused_parameters=True") in " ".join(report.warnings)


@pytest.mark.slow
def test_fsdp_probe_with_accumulation_and_noise_scale(write_config):
    path = write_config(
        "model: {name: transformer, vocab_size: 64, d_model: 32, layers: 2, heads: 2, seq_len: 16}\n"
        "data: {kind: synthetic, size: 512}\n"
        "train: {optimizer: sgd, lr: 0.1, reference_batch: 8}\n"
        "probe: {warmup_steps: 1, steps: 2, device: cpu, max_batch: 8, refine: false, strategy: fsdp, nproc_per_node: 2}\n"
        "recommend: {target_batch: 48, noise_scale: true}\n"
    )
    report = probe(load_config(path))
    assert report.distributed.strategy == "fsdp" and report.distributed.world_size == 2
    # Sharded parameters still count in full.
    assert report.parameters == sum(p.numel() for p in build_model(load_config(path).model).parameters())
    assert [t.batch_size for t in report.trials if t.phase == "double"] == [1, 2, 4, 8]
    assert all(t.fits and t.loss_finite for t in report.trials)
    rec = report.recommendation
    steps = -(-48 // (rec.batch_size * 2))
    assert rec.accumulation_steps == steps and rec.global_batch_size == rec.batch_size * 2 * steps
    assert rec.lr == pytest.approx(0.1 * rec.global_batch_size / 8)
    noise = rec.noise_scale
    # Measured on the global batch: each rank's samples count.
    assert noise["status"] == "ok" and noise["big_batch"] == 2 * min(max(rec.batch_size, 4), 8)


@pytest.mark.slow
@pytest.mark.parametrize("how, status", [("oom", "oom"), ("kill", "killed")])
def test_torchrun_launch_prints_one_report_from_rank_0(tmp_path, how, status):
    # Each rank's driver is its own process here: they agree through torchrun's store.
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{name: 'fixtures:Trap', kwargs: {{how: {how}, at: 6, rank: 1}}}}\n"
        "data: {kind: synthetic, size: 4096, input_shape: [8], num_classes: 4}\n"
        f"probe: {{warmup_steps: 0, steps: 1, device: cpu, trial_timeout_s: {TRIAL_TIMEOUT_S}}}\n"
    )
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "batchfind", "probe", str(config), "--json", "-o", str(out)],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)  # one JSON document: rank 1 printed nothing
    assert report == json.loads(out.read_text())
    assert report["distributed"] == {"strategy": "ddp", "world_size": 2, "nodes": 1, "backend": "gloo",
                                     "launcher": "torchrun"}
    assert report["limit"]["batch_size"] == 5 and report["limit"]["first_oom"] == 6
    assert done.stderr.count("probing batch 1 …") == 1
    failed = report["trials"][3]  # batch 8, failed on rank 1
    assert failed["status"] == status and failed["ranks"][1]["status"] == status
    assert failed["ranks"][0]["status"] in ("stopped", "error")  # a dead peer fails gloo's collective


def test_nproc_per_node_is_refused_under_torchrun(write_config, monkeypatch):
    for var, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(InputError, match=r"nproc_per_node \(--nproc-per-node\): not used under torchrun"):
        probe(load_config(write_config("model: {name: mlp}\nprobe: {device: cpu}"), {"--nproc-per-node": 2}))


@pytest.mark.slow
def test_the_report_matches_its_schema_and_reads_back_with_its_ranks(write_config, tmp_path):
    import jsonschema

    from batchfind.report import json_schema, load_report

    report = probe(load_config(trap(write_config, "oom", 4, ", nproc_per_node: 2, refine: false")))
    jsonschema.validate(json.loads(report.to_json()), json_schema())
    path = tmp_path / "r.json"
    path.write_text(report.to_json())
    again = load_report(path)
    assert isinstance(again, Report) and again.distributed == report.distributed
    failed = next(i for i, t in enumerate(report.trials) if not t.fits)
    assert again.trials[failed].ranks == report.trials[failed].ranks and again.trials[failed].status == "oom"
    assert [r.status for r in again.trials[failed].ranks] == ["stopped", "oom"]
