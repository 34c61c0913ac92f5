"""Builtin models, datasets and batches, OOM classification and step statistics (in-process, CPU)."""

import math
import statistics
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F

from batchfind.config import MAX_STEPS, load_config
from batchfind.data import build_batches, read_item
from batchfind.devices import CappedPeak, is_oom, looks_like_oom
from batchfind.errors import InputError
from batchfind.measure import CONFIDENCE, SETTLE_HALF, StepPlan, measure, median_interval, settling, step_stats
from batchfind.models import build_model
import batchfind.measure as measure_module
import batchfind.session as session_module
from batchfind.session import check_fit
from batchfind.step import Step, class_dim, compute_loss

CPU = torch.device("cpu")


def built(write_config, text):
    cfg = load_config(write_config(text))
    model = build_model(cfg.model)
    batches = build_batches(cfg, CPU)
    return cfg, model, batches


@pytest.mark.parametrize(
    "text, out_shape",
    [
        ("model: {name: mlp, in_features: 5, hidden: 7, layers: 2, classes: 3}", (4, 3)),
        ("model: {name: cnn, image_size: 16, width: 4, classes: 6}", (4, 6)),
        ("model: {name: cnn, image_size: 64, width: 4, depth: [1, 1], block: bottleneck, stem: imagenet}", (4, 10)),
        ("model: {name: transformer, vocab_size: 50, d_model: 16, heads: 2, layers: 1, seq_len: 12}", (4, 12, 50)),
        ("model: {name: transformer, vocab_size: 50, d_model: 16, heads: 2, layers: 1, seq_len: 12, causal: false}",
         (4, 12, 50)),
    ],
)
def test_builtin_models_train_on_their_synthetic_batches(write_config, text, out_shape):
    cfg, model, batches = built(write_config, text)
    x, y = batches.batch(4)
    assert model(x).shape == out_shape
    step = Step(model, cfg.train, CPU)
    assert torch.isfinite(step((x, y)))


@pytest.mark.parametrize("config", ["configs/gpt-small.yaml",
                                    pytest.param("configs/bert-base.yaml", marks=pytest.mark.slow)])
def test_a_fresh_transformer_predicts_tokens_nearly_uniformly(config):
    """Its initial loss on random tokens is near ln(vocab), as for any untrained classifier over the vocabulary."""
    cfg = load_config(config, {"--device": "cpu"})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    x, y = build_batches(cfg, CPU).batch(2)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    assert loss == pytest.approx(math.log(cfg.model.vocab_size), rel=0.2)


def test_resnet50_config_is_resnet50():
    model = build_model(load_config("configs/resnet50.yaml").model)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's resnet50


def test_synthetic_length_and_batch_sizes(write_config):
    _, _, batches = built(write_config, "model: {name: mlp}\ndata: {size: 1234}")
    assert len(batches) == 1234
    x, y = batches.batch(33)
    assert x.shape == (33, 64) and y.shape == (33,) and int(y.max()) < 10


def test_tensors_pt_and_npz(write_config, tmp_path):
    torch.save({"inputs": torch.randn(20, 5), "targets": torch.randint(0, 3, (20,))}, tmp_path / "d.pt")
    np.savez(tmp_path / "d.npz", inputs=np.random.randn(30, 5).astype("float32"), targets=np.arange(30) % 3)
    for name, n in (("d.pt", 20), ("d.npz", 30)):
        cfg, model, batches = built(
            write_config, f"model: {{name: mlp, in_features: 5, classes: 3}}\ndata: {{kind: tensors, path: {name}}}"
        )
        assert len(batches) == n
        x, y = batches.batch(8)
        assert x.shape == (8, 5)
        check_fit(model, batches, cfg, CPU)


def test_tensor_file_problems(write_config, tmp_path):
    torch.save({"x": torch.zeros(3)}, tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a tensor file")
    np.savez(tmp_path / "scalars.npz", inputs=np.float32(3), targets=np.int64(1))
    for name, message in (("bad.pt", "expected 'inputs' and 'targets'"), ("junk.pt", "not a file torch.save wrote"),
                          ("none.pt", "no such file"), ("scalars.npz", r"must have a first dimension.* \(\) and \(\)")):
        cfg = load_config(write_config(f"model: {{name: mlp}}\ndata: {{kind: tensors, path: {name}}}"))
        with pytest.raises(InputError, match=message):
            build_batches(cfg, CPU)


def test_unsigned_token_ids_read_as_int64_and_uint64_is_refused(write_config, tmp_path):
    # Token ids as many pipelines store them: uint16 inputs and uint32 targets train once widened.
    np.savez(tmp_path / "ids.npz", inputs=np.arange(40, dtype=np.uint16).reshape(10, 4) % 50,
             targets=np.arange(10, dtype=np.uint32) % 3)
    cfg, model, batches = built(write_config, "model: {name: mlp, in_features: 4, classes: 3}\n"
                                              "data: {kind: tensors, path: ids.npz}")
    x, y = batches.batch(4)
    assert x.dtype == y.dtype == torch.int64 and y.tolist() == [0, 1, 2, 0]
    torch.save({"inputs": torch.randn(6, 4), "targets": torch.zeros(6, dtype=torch.uint64)}, tmp_path / "u64.pt")
    cfg = load_config(write_config("model: {name: mlp}\ndata: {kind: tensors, path: u64.pt}"))
    with pytest.raises(InputError, match=r"u64.pt: targets are uint64, which torch's operations do not take"):
        build_batches(cfg, CPU)


def test_float64_data_for_a_float32_model_says_to_save_it_as_float32(write_config, tmp_path):
    np.savez(tmp_path / "f64.npz", inputs=np.random.randn(6, 5), targets=np.arange(6) % 3)  # numpy's float64
    cfg, model, batches = built(write_config, "model: {name: mlp, in_features: 5, classes: 3}\n"
                                              "data: {kind: tensors, path: f64.npz}")
    with pytest.raises(InputError, match=r"float64 data \(numpy's default\) meets a float32 model: save the data as "
                                         r"float32$"):
        check_fit(model, batches, cfg, CPU)
    # Images into a convolution, whose words differ; and the other way round (float32 data, a
    # float64 model), where saving the data as float32 is no advice.
    torch.save({"inputs": torch.rand(4, 3, 8, 8, dtype=torch.float64), "targets": torch.zeros(4, dtype=torch.long)},
               tmp_path / "images.pt")
    cfg, model, batches = built(write_config, "model: {name: cnn, image_size: 8, width: 4, classes: 2}\n"
                                              "data: {kind: tensors, path: images.pt}")
    with pytest.raises(InputError, match="save the data as float32$"):
        check_fit(model, batches, cfg, CPU)
    np.savez(tmp_path / "f32.npz", inputs=np.random.randn(6, 5).astype("float32"), targets=np.arange(6) % 3)
    cfg, model, batches = built(write_config, "model: {name: mlp, in_features: 5, classes: 3}\n"
                                              "data: {kind: tensors, path: f32.npz}")
    with pytest.raises(InputError) as raised:
        check_fit(model.double(), batches, cfg, CPU)
    assert "Double" in str(raised.value) and "save the data as float32" not in str(raised.value)


@pytest.mark.parametrize("name", ["cut.pt", "cut.npz"])
def test_a_zip_archive_cut_short_is_said_so(write_config, tmp_path, name):
    torch.save({"inputs": torch.randn(6, 4), "targets": torch.zeros(6, dtype=torch.long)}, tmp_path / "whole.pt")
    (tmp_path / name).write_bytes((tmp_path / "whole.pt").read_bytes()[:200])  # a copy that stopped early
    cfg = load_config(write_config(f"model: {{name: mlp}}\ndata: {{kind: tensors, path: {name}}}"))
    with pytest.raises(InputError, match=f"{name} is a zip archive cut short"):
        build_batches(cfg, CPU)


def test_imagefolder_decodes_and_resizes(write_config, tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40 + i, 30), (i * 40, 100, 200)).save(tmp_path / "imgs" / label / f"{i}.png")
    cfg, model, batches = built(
        write_config, "model: {name: cnn, image_size: 16, width: 4, classes: 2}\ndata: {kind: imagefolder, path: imgs}"
    )
    assert len(batches) == 6
    x, y = batches.batch(6)
    assert x.shape == (6, 3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    # Grayscale, as the builtin cnn's in_channels asks, or as data.channels says for a model of one's own.
    for text in ("model: {name: cnn, in_channels: 1, image_size: 16, width: 4, classes: 2}\n"
                 "data: {kind: imagefolder, path: imgs}",
                 "model: {name: 'fixtures:segmenter', kwargs: {channels: 1, classes: 2}}\n"
                 "data: {kind: imagefolder, path: imgs, image_size: 8, channels: 1}\ntrain: {loss: mse}"):
        cfg = load_config(write_config(text))
        x, _ = build_batches(cfg, CPU).batch(2)
        assert x.shape[:2] == (2, 1), text
    gray = 0.299 * 0 + 0.587 * 100 + 0.114 * 200  # Pillow's L of the first image's (0, 100, 200)
    assert float(x[0].mean()) == pytest.approx(gray / 255, abs=1 / 255)
    cfg = load_config(write_config("model: {name: cnn, in_channels: 2}\ndata: {kind: imagefolder, path: imgs}"))
    with pytest.raises(InputError, match=r"model.in_channels: 2, but imagefolder images have 1 \(grayscale\), 3"):
        build_batches(cfg, CPU)


def test_imagefolder_without_pillow_says_what_to_install(write_config, tmp_path, monkeypatch):
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL raises ImportError, as where it is missing
    cfg = load_config(write_config("model: {name: cnn, image_size: 16}\ndata: {kind: imagefolder, path: imgs}"))
    with pytest.raises(InputError, match=r"data.kind: imagefolder decodes images with Pillow, which is not installed: "
                                         r"pip install Pillow"):
        build_batches(cfg, CPU)


def test_factory_dataset_and_model(write_config):
    cfg, model, batches = built(
        write_config, "model: {name: 'fixtures:Trap', kwargs: {features: 8}}\ndata: {kind: 'fixtures:Pairs', kwargs: {n: 50}}"
    )
    assert len(batches) == 50
    check_fit(model, batches, cfg, CPU)


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: {name: 'nowhere_at_all:make'}", "model.name: cannot import 'nowhere_at_all' (No module named "
         "'nowhere_at_all'); install it, or run from its folder or add that to PYTHONPATH"),
        ("model: {name: 'fixtures:absent'}", "model.name: module 'fixtures' has no attribute 'absent'"),
        ("model: {name: 'fixtures:raises'}", "model.name: fixtures:raises(**kwargs) raised ValueError: factory is broken"),
        ("model: {name: 'fixtures:not_a_model'}", "returned int, expected a torch.nn.Module"),
    ],
)
def test_model_factory_problems(write_config, text, message):
    cfg = load_config(write_config(text))
    with pytest.raises(InputError) as info:
        build_model(cfg.model)
    assert message in str(info.value)


def test_data_that_does_not_fit_the_model_names_both(write_config):
    cfg, model, batches = built(write_config, "model: {name: mlp, in_features: 5}\ndata: {kind: 'fixtures:Pairs'}")
    with pytest.raises(InputError, match=r"inputs \(2, 8\) torch.float32.*into mlp"):
        check_fit(model, batches, cfg, CPU)


def test_labels_are_checked_a_few_items_at_a_time_and_all_of_them(write_config, monkeypatch):
    # A batch of all 256 items was the largest allocation of the set-up: 805 MB of 512x512
    # images, where the limit let batch 4 train.
    from batchfind.data import Batches
    from batchfind.session import LABEL_CHUNK

    sizes = []
    batch = Batches.batch
    monkeypatch.setattr(Batches, "batch", lambda self, size, start=0: sizes.append(size) or batch(self, size, start))
    cfg, model, batches = built(write_config, "model: {name: mlp, in_features: 8, classes: 4}\n"
                                              "data: {kind: 'fixtures:LateLabel'}")
    with pytest.raises(InputError, match=r"targets range over \[0, 7\] but the model outputs 4 classes"):
        check_fit(model, batches, cfg, CPU)
    assert max(sizes) == LABEL_CHUNK and sum(sizes) >= 256


def test_the_set_up_check_sees_what_training_sees(write_config):
    # In eval mode this model returns bare logits; the trials train it, and get its dict.
    cfg, model, batches = built(write_config, "model: {name: 'fixtures:Auxiliary'}\ntrain: {output: logits}\n"
                                              "data: {kind: 'fixtures:Pairs'}")
    check_fit(model, batches, cfg, CPU)
    # A loss left per sample is one value in a batch of one: two samples show it is no scalar.
    cfg, model, batches = built(write_config, "model: {name: 'fixtures:PerSampleLoss'}\n"
                                              "data: {inputs: {x: {shape: [8]}, labels: {shape: [], dtype: int64, high: 4}}}")
    with pytest.raises(InputError, match=r"returned a tensor of shape \(2,\), expected the loss"):
        check_fit(model, batches, cfg, CPU)


def test_forward_kwargs_reach_every_forward_call(write_config):
    cfg, model, batches = built(write_config, "model: {name: 'fixtures:Tempered'}\ndata: {kind: 'fixtures:Pairs'}")
    with pytest.raises(InputError, match=r"missing 1 required keyword-only argument: 'temperature'; an argument the "
                                         r"batches do not hold can be set in train.forward_kwargs"):
        check_fit(model, batches, cfg, CPU)
    cfg, model, batches = built(write_config, "model: {name: 'fixtures:Tempered'}\ndata: {kind: 'fixtures:Pairs'}\n"
                                              "train: {forward_kwargs: {temperature: 2.0}}")
    check_fit(model, batches, cfg, CPU)
    x, y = batches.batch(4)
    with torch.no_grad():
        expected = float(F.cross_entropy(model.linear(x) / 2.0, y))
    assert float(Step(model, cfg.train, CPU)(batches.batch(4))) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(InputError, match="train.step calls the model itself"):
        load_config(write_config("model: {name: mlp}\ntrain: {step: 'fixtures:step', forward_kwargs: {t: 1}}"))


def test_labels_out_of_range(write_config):
    cfg, model, batches = built(write_config, "model: {name: mlp, in_features: 8, classes: 2}\ndata: {kind: 'fixtures:Pairs', kwargs: {classes: 50}}")
    torch.manual_seed(0)
    with pytest.raises(InputError, match="the model outputs 2 classes"):
        check_fit(model, batches, cfg, CPU)


@pytest.mark.parametrize("output, target, classes_at", [
    ((2, 5, 7), (2, 5), -1),  # a sequence model: (batch, time, classes)
    ((2, 4, 8, 8), (2, 8, 8), 1),  # a segmentation map: (batch, classes, height, width)
    ((2, 8, 8, 8), (2, 8, 8), 1),  # as many classes as pixels a side: a map
    ((2, 6, 6), (2, 6), -1),  # as many classes as steps: a sequence
])
def test_cross_entropy_finds_the_classes_where_the_target_says(output, target, classes_at):
    torch.manual_seed(0)
    logits = torch.randn(output)
    labels = torch.randint(0, output[classes_at], target)
    expected = (F.cross_entropy(logits.movedim(1, -1).flatten(0, -2), labels.flatten()) if classes_at == 1
                else F.cross_entropy(logits.flatten(0, -2), labels.flatten()))
    assert class_dim(logits, labels) == classes_at
    assert compute_loss(logits, labels, "cross_entropy").item() == pytest.approx(expected.item(), rel=1e-6)


def test_segmentation_labels_are_checked_against_the_classes_channel(write_config):
    # 3 classes over 8 x 8 maps: a label of 5 is out of range though the map is 8 wide.
    cfg, model, batches = built(write_config, "model: {name: 'fixtures:segmenter', kwargs: {classes: 3}}\n"
                                "data: {input_shape: [2, 8, 8], target_shape: [8, 8], num_classes: 6}")
    torch.manual_seed(0)
    with pytest.raises(InputError, match="the model outputs 3 classes"):
        check_fit(model, batches, cfg, CPU)


def test_an_item_too_large_for_memory_is_out_of_memory_not_bad_input():
    # A 12000 x 10000 image decoded under a cap: the batch runs out of memory, as a batch too large does.
    class Huge(torch.utils.data.Dataset):
        def __getitem__(self, i):
            raise MemoryError() if i == 0 else RuntimeError("DefaultCPUAllocator: can't allocate memory")

    for index in (0, 1):
        with pytest.raises((MemoryError, RuntimeError)) as caught:
            read_item(Huge(), index, "Huge")
        assert is_oom(caught.value)


def test_oom_classification():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(MemoryError())
    for text in ("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory",
                 "could not create a primitive", "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
                 "HIP out of memory", "XPU out of memory", "MPS backend out of memory"):
        assert is_oom(RuntimeError(text)), text
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    # A batch whose bytes pass 2**63 fits in no memory: torch says so before asking for any.
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**42, 2**20)
    assert is_oom(caught.value), caught.value
    assert not is_oom(ValueError("out of memory"))  # only runtime errors carry allocator messages
    assert looks_like_oom("Traceback ... MemoryError") and not looks_like_oom("ValueError: bad")
    # oneDNN without a kernel for a layer (an fp16 LSTM on a CPU) fails at any size: no memory is short.
    unsupported = "could not create a primitive descriptor for the LSTM forward propagation primitive"
    assert not is_oom(RuntimeError(unsupported)) and not looks_like_oom(f"RuntimeError: {unsupported}")


@pytest.mark.parametrize("runtime", [0, RuntimeError("CUDA driver initialization failed"), None])
def test_a_gpu_that_nvml_sees_and_cuda_cannot_use_is_no_gpu(monkeypatch, runtime):
    """NVML (how workers count GPUs) sees a card that a driver too old for this torch's CUDA cannot
    run: `auto` probes the CPU, `cuda` is one line saying why."""
    from batchfind.devices import resolve_device, unusable_gpus, wants_cuda

    def count():
        if isinstance(runtime, Exception):
            raise runtime
        return runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if runtime is None:  # a build without the runtime's count at all
        monkeypatch.delattr(torch._C, "_cuda_getDeviceCount", raising=False)
    else:
        monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", count, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert not wants_cuda("auto") and wants_cuda("cuda")
    assert resolve_device("auto").type == "cpu"
    assert unusable_gpus("auto", resolve_device("auto")).startswith(
        "probe.device: auto probed the CPU: NVML sees 2 GPU(s) that this torch's CUDA")
    assert unusable_gpus("cpu", resolve_device("cpu")) is None
    with pytest.raises(InputError, match=r"^probe.device: cuda requested but this torch's CUDA .* cannot use the GPUs"):
        resolve_device("cuda")


@pytest.mark.parametrize("spec, seen, cpu", [("cpu", 1, True), ("cuda", 0, False), ("cuda:1", 0, False),
                                             ("auto", 0, True), ("auto", 2, False), ("auto", None, True)])
def test_whether_a_probe_surely_runs_on_the_cpu_is_known_without_torch(monkeypatch, spec, seen, cpu):
    """The probe forks its fit checks' workers where it surely runs on the CPU: `auto` where NVML
    counts no GPU, or fails (`None`: no driver)."""
    import types

    from batchfind.devices import surely_cpu

    def init():
        if seen is None:
            raise RuntimeError("NVML Shared Library Not Found")

    fake = types.SimpleNamespace(nvmlInit=init, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: seen)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert surely_cpu(spec) is cpu


@pytest.mark.parametrize("limit, ceiling", [(None, 70), (40, 40), (80, 70)])
def test_a_gpus_ceiling_is_what_the_card_can_still_give_within_the_limit(monkeypatch, limit, ceiling):
    """60 free and 10 held by this process's allocator: a limit at the card's size cannot be reached
    (the CUDA context and other processes hold the rest)."""
    from batchfind.devices import memory_ceiling

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (60, 100))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 10)
    assert memory_ceiling(torch.device("cuda", 0), limit) == ceiling
    assert memory_ceiling(torch.device("cpu"), limit) == limit


def test_a_layer_without_a_kernel_at_the_precision_names_the_precision(write_config):
    lstm = torch.nn.LSTM(4, 4, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            lstm(torch.zeros(1, 2, 4))
    except RuntimeError as exc:
        assert "could not create a primitive descriptor" in str(exc), exc
    else:
        pytest.skip("this torch has an fp16 LSTM on a CPU")
    cfg, model, batches = built(write_config, "model: {name: 'fixtures:Recurrent'}\n"
                                "data: {input_shape: [5, 4], num_classes: 3}\ntrain: {precision: fp16}")
    with pytest.raises(InputError, match=r"^train.precision: fp16: this device has no kernel for one of "
                                         r"fixtures:Recurrent's layers at that precision: RuntimeError: could not"):
        check_fit(model, batches, cfg, CPU)


def test_each_step_gets_its_own_batch_containers(write_config):
    # Trainer's compute_loss pops the labels from its batch: the second step found none.
    cfg, model, batches = built(write_config, "model: {name: 'fixtures:PerSampleLoss'}\n"
                                              "data: {inputs: {x: {shape: [8]}, labels: {shape: [], dtype: int64, high: 4}}}")

    def popping(batch):
        labels = batch.pop("labels")
        return torch.nn.functional.cross_entropy(model.linear(batch["x"]), labels).detach()

    result = measure(popping, batches.batch, 4, StepPlan("throughput", warmup=1, min_steps=3), dataset_len=100,
                     device=CPU, meter=CappedPeak(CPU))
    assert result["status"] == "ok" and result["steps"] == 4


def test_step_stats_percentiles():
    stats = step_stats([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats["median"] == 3.0 and stats["p10"] == pytest.approx(1.4) and stats["p90"] == pytest.approx(4.6)
    assert stats["samples"] == [5.0, 1.0, 3.0, 2.0, 4.0]


def test_measure_runs_real_steps(write_config):
    cfg, model, batches = built(write_config, "model: {name: mlp, in_features: 8, hidden: 8, layers: 1}\ndata: {size: 100}")
    step = Step(model, cfg.train, CPU)
    before = [p.detach().clone() for p in model.parameters()]
    result = measure(step, batches.batch, 10, StepPlan("throughput", warmup=1, min_steps=4), dataset_len=100,
                     device=CPU, meter=CappedPeak(CPU))
    assert result["status"] == "ok" and len(result["step_ms"]["samples"]) == 4 and result["steps"] == 5
    assert result["epoch_s"] == pytest.approx(10 * result["step_ms"]["median"] / 1000)
    assert result["samples_per_s"] == pytest.approx(10 / (result["step_ms"]["median"] / 1000))
    assert result["peak_bytes"] > 0 and result["loss_finite"] is True
    # The optimizer stepped (its momentum buffers exist), at learning rate 0: the weights stay put.
    assert len(step.optimizers[0].state) == len(before)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_throughput_trials_repeat_short_steps_until_the_minimum_time(write_config):
    cfg, model, batches = built(write_config, "model: {name: mlp, in_features: 8, hidden: 8, layers: 1}\ndata: {size: 100}")
    step, seen = Step(model, cfg.train, CPU), []
    plan = StepPlan("throughput", warmup=1, min_steps=2, min_time_s=0.2, max_steps=50)
    result = measure(step, batches.batch, 4, plan, dataset_len=100, device=CPU, meter=CappedPeak(CPU),
                     on_step=lambda done, planned: seen.append((done, planned)))
    # Steps of well under a millisecond: far more than the minimum, up to the cap.
    assert 2 < len(result["step_ms"]["samples"]) <= 50
    assert seen[0] == (1, 3) and seen[-1][0] == result["steps"]


def test_a_throughput_trial_that_cannot_beat_its_bar_stops_as_a_fit_check(write_config):
    cfg, model, batches = built(write_config, "model: {name: mlp, in_features: 8, hidden: 8, layers: 1}\ndata: {size: 100}")
    step = Step(model, cfg.train, CPU)

    def run(bar_ms):
        plan = StepPlan("throughput", warmup=1, min_steps=3, bar_ms=bar_ms)
        return measure(step, batches.batch, 4, plan, dataset_len=100, device=CPU, meter=CappedPeak(CPU))

    # No step is quicker than a nanosecond: outclassed after the warm-up and one measured step, a
    # fit check's two.
    stopped = run(1e-6)
    assert stopped["purpose"] == "fit" and stopped["steps"] == 2 and len(stopped["step_ms"]["samples"]) == 1
    # Every step is quicker than an hour: measured in full.
    full = run(3_600_000.0)
    assert full["purpose"] == "throughput" and len(full["step_ms"]["samples"]) >= 3


def test_a_bar_is_judged_only_once_a_fit_checks_steps_have_run():
    # Without a warm-up the first measured step touches fresh memory: two steps are judged, by the quicker.
    plan = StepPlan("throughput", warmup=0, min_steps=3, bar_ms=100.0)
    assert not plan.outclassed([150.0]) and plan.more([150.0])
    assert plan.outclassed([150.0, 120.0]) and not plan.more([150.0, 120.0])
    assert not plan.outclassed([150.0, 90.0]) and plan.more([150.0, 90.0])
    assert not StepPlan("throughput", warmup=1, min_steps=3).outclassed([1e9])  # no bar


def test_a_cpu_first_step_of_a_quarter_second_far_past_the_bar_dismisses_its_size():
    def plan(bar_ms=300.0, warmup=1, first_step_bar=True, fit_steps=2):
        return StepPlan("throughput", warmup=warmup, min_steps=3, bar_ms=bar_ms, first_step_bar=first_step_bar,
                        fit_steps=fit_steps)

    assert plan().dismissed(525.0) and not plan().dismissed(524.0)
    # Steps of milliseconds run their first step up to twice as long as later ones: never judged on it.
    assert not plan(bar_ms=100.0).dismissed(249.0) and plan(bar_ms=100.0).dismissed(250.0)
    assert not plan(bar_ms=None).dismissed(1e9)  # no bar
    assert not plan(bar_ms=1.0, warmup=0).dismissed(1e9)  # no warm-up to judge
    assert not plan(bar_ms=1.0, first_step_bar=False).dismissed(1e9)  # a GPU's, or a brand-new process's
    assert not plan(bar_ms=1.0, fit_steps=3).dismissed(1e9)  # fit checks were asked for more steps


@pytest.mark.parametrize("first_s, steps, samples", [(0.6, 1, [600.0]), (0.5, 2, [500.0])])
def test_a_trial_dismissed_on_its_first_step_reports_that_step(monkeypatch, write_config, first_s, steps, samples):
    cfg, model, batches = built(write_config, "model: {name: mlp, in_features: 8, hidden: 8, layers: 1}\ndata: {size: 100}")
    step = Step(model, cfg.train, CPU)
    clock = [0.0]

    def timed_step(batch):  # every step takes `first_s`, on a clock of its own
        clock[0] += first_s
        return step(batch)

    monkeypatch.setattr(measure_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    plan = StepPlan("throughput", warmup=1, min_steps=3, bar_ms=300.0, first_step_bar=True)
    seen = []
    result = measure(timed_step, batches.batch, 4, plan, dataset_len=100, device=CPU, meter=CappedPeak(CPU),
                     on_step=lambda done, planned: seen.append(done))
    # 600 ms is twice the bar: that step is the trial. 500 ms is less than `GLANCE_FACTOR` times it: the
    # warm-up and one measured step, outclassed as before.
    assert result["purpose"] == "fit" and result["steps"] == steps and seen == list(range(1, steps + 1))
    assert result["step_ms"]["samples"] == pytest.approx(samples) and result["settling_steps"] == 0
    assert result["samples_per_s"] == pytest.approx(4 / (samples[0] / 1000))


def test_a_cpu_worker_judges_first_steps_on_the_bar_once_it_has_stepped(monkeypatch, write_config):
    # No cap on this test's own process; the plans are what is looked at.
    monkeypatch.setattr(session_module.devices, "apply_memory_limit", lambda *args, **kwargs: None)
    plans = []

    def recorded(step, batch, batch_size, plan, **kwargs):
        plans.append(plan)
        return measure(step, batch, batch_size, plan, **kwargs)

    monkeypatch.setattr(session_module, "measure", recorded)
    cfg = load_config(write_config("model: {name: mlp, in_features: 8, hidden: 8, layers: 1}\ndata: {size: 100}"))
    session = session_module.Session(cfg.model_dump(mode="json"))
    session.start()
    # Its first trial starts the optimizer: a first step of that is not judged alone.
    assert session.serve("trial", {"batch_size": 4, "bar": 10.0})["status"] == "ok"
    assert session.serve("trial", {"batch_size": 8, "bar": 10.0})["status"] == "ok"
    fit = session.serve("trial", {"batch_size": 8, "purpose": "fit"})
    assert [p.first_step_bar for p in plans] == [False, True, False] and plans[1].bar_ms == pytest.approx(800.0)
    assert fit["steps"] == 2


def test_a_fit_check_runs_just_its_steps():
    plan = StepPlan("fit", warmup=0, min_steps=2)
    assert [plan.more([1.0] * done) for done in range(3)] == [True, True, False]


def test_a_throughput_trial_runs_on_while_its_interval_is_wide_up_to_its_time_cap():
    plan = StepPlan("throughput", warmup=0, min_steps=3, min_time_s=0.0, precision=0.01, max_time_s=1.0)
    steady, jumpy = [100.0] * 5, [100.0, 150.0, 100.0, 150.0, 100.0]
    assert not plan.more(steady)  # the median is known within 1%: done
    assert plan.more(jumpy)  # ±25%: another step of ~120 ms fits in the second left
    assert not plan.more(jumpy * 2)  # 1.2 s measured: the cap
    assert not StepPlan("throughput", warmup=0, min_steps=3, precision=0.01).more(jumpy)  # no cap: no more


def test_the_medians_interval_covers_it_with_the_confidence_asked_for_at_any_number_of_steps():
    def covered(n, k):  # the chance that the k-th smallest and k-th largest of n values hold the median
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    for n in range(1, 120):
        low, high = median_interval(list(range(n)))
        k = low + 1
        assert high == n - k and k <= max(1, n // 2)
        # The largest such k: one more would cover less than asked (min and max for n up to 7).
        assert k == 1 or covered(n, k) >= CONFIDENCE
        assert k == max(1, n // 2) or covered(n, k + 1) < CONFIDENCE
    # A trial of the most steps `probe.steps` takes: the order statistic where the normal
    # approximation puts it, worked out once.
    n = MAX_STEPS
    k = median_interval(list(range(n)))[0] + 1
    assert abs(k - (n / 2 - 1.645 * math.sqrt(n) / 2)) <= 2


# cnn-small's 64, first timed after 32 in a worker on a 2-core CPU (ms per step, after two warm-up steps).
SETTLING_64 = [114.0, 107.0, 95.0, 94.0, 92.0, 81.0, 81.0, 86.0, 76.0, 85.0]


def test_the_first_steps_of_a_size_still_settling_are_left_out():
    assert settling(SETTLING_64) == 5
    # Steps that settle over more than half of them: halved again within what is left.
    assert settling([300.0, 280.0, 260.0, 240.0, 220.0, 200.0, 180.0, 160.0,
                     150.0, 140.0, 130.0, 120.0, 100.0, 100.0, 101.0, 99.0]) == 12
    # A stall among steady steps is not a trend, nor is noise.
    assert settling([50.0, 52.0, 51.0, 49.0, 76.0, 52.0, 51.0, 52.0, 53.0, 50.0, 52.0, 52.0]) == 0
    assert settling([45.0, 43.0, 43.0, 45.0, 43.0, 45.0, 45.0, 44.0, 46.0, 43.0, 42.0, 42.0]) == 0
    # Too few steps to tell a trend from noise.
    assert settling([300.0, 200.0, 100.0, 100.0, 100.0]) == 0


def test_steps_still_settling_count_as_warm_up_until_the_rest_meet_the_plan():
    plan = StepPlan("throughput", warmup=2, min_steps=5, min_time_s=0.5, max_time_s=1.0, precision=0.01)
    # 0.91 s of steps, of which the five settled ones take 0.41 s: short of the minimum time.
    assert plan.counted(SETTLING_64) == SETTLING_64[5:] and plan.more(SETTLING_64)
    times = list(SETTLING_64)
    while plan.more(times):
        times.append(80.0)
    counted = plan.counted(times)
    assert len(times) - len(counted) >= 5 and counted == times[-len(counted):]
    assert statistics.median(counted) == 80.0 and sum(counted) >= 500.0
    # Ranks of a distributed trial run a fixed number of steps (no time bound): nothing is left out.
    fixed = StepPlan("throughput", warmup=2, min_steps=10)
    assert fixed.counted(SETTLING_64) == SETTLING_64 and not fixed.more(SETTLING_64)


@settings(deadline=None)
@given(st.lists(st.floats(1.0, 400.0), min_size=1, max_size=200), st.integers(1, 8),
       st.floats(0.0, 1.0), st.floats(0.0, 1.5))
def test_a_throughput_trial_keeps_its_bounds_whatever_its_steps_take(steps, min_steps, min_time_s, max_time_s):
    plan = StepPlan("throughput", warmup=0, min_steps=min_steps, min_time_s=min_time_s, max_time_s=max_time_s,
                    precision=0.01, max_steps=60)
    times: list[float] = []
    for ms in steps:
        if not plan.more(times):
            break
        times.append(ms)
    else:
        return  # the steps ran out before the plan did
    assert len(times) >= min(min_steps, plan.max_steps) and len(times) <= plan.max_steps
    if max_time_s > 0 and len(times) > min_steps:
        # At most twice the time bound, give or take the one step that crossed it.
        assert sum(times) / 1000 <= 2 * max(max_time_s, min_time_s) + max(times) / 1000
    # Whatever is left out, enough steps remain to judge the median by.
    assert len(plan.counted(times)) >= min(len(times), SETTLE_HALF)


def test_a_trial_reports_the_steps_left_out_as_settling(monkeypatch, write_config):
    cfg, model, batches = built(write_config, "model: {name: mlp, in_features: 8, hidden: 8, layers: 1}\ndata: {size: 100}")
    step = Step(model, cfg.train, CPU)
    clock, durations = [0.0], iter([0.0] * 2 + [ms / 1000 for ms in SETTLING_64] + [0.080] * 40)

    def timed_step(batch):  # each step takes the next of the durations, on a clock of its own
        clock[0] += next(durations)
        return step(batch)

    monkeypatch.setattr(measure_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    plan = StepPlan("throughput", warmup=2, min_steps=5, min_time_s=0.5, max_time_s=1.0, precision=0.01)
    result = measure(timed_step, batches.batch, 4, plan, dataset_len=100, device=CPU, meter=CappedPeak(CPU))
    kept = result["step_ms"]["samples"]
    assert result["settling_steps"] >= 5 and result["steps"] == 2 + result["settling_steps"] + len(kept)
    assert max(kept) <= 86.0 and result["step_ms"]["median"] == pytest.approx(80.0)


def test_cpu_workers_hold_the_allocator_steady_unless_told_otherwise():
    from batchfind.worker import MMAP_THRESHOLD, steady_allocator

    env = steady_allocator({"PATH": "/bin"}, fits_only=True)
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(MMAP_THRESHOLD) and env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert "MALLOC_TRIM_THRESHOLD_" not in env
    # Workers that time steps map on small pages and keep their heap's top.
    timing = steady_allocator({"PATH": "/bin"}, fits_only=False)
    assert timing["MALLOC_MMAP_THRESHOLD_"] == str(MMAP_THRESHOLD) and "GLIBC_TUNABLES" not in timing
    assert int(timing["MALLOC_TRIM_THRESHOLD_"]) >= 1 << 40
    mine = steady_allocator({"MALLOC_MMAP_THRESHOLD_": "131072", "GLIBC_TUNABLES": "glibc.malloc.arena_max=1"},
                            fits_only=True)
    assert mine["MALLOC_MMAP_THRESHOLD_"] == "131072"
    assert mine["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=1:glibc.malloc.hugetlb=1"
    assert steady_allocator({"MALLOC_TRIM_THRESHOLD_": "0"}, fits_only=False)["MALLOC_TRIM_THRESHOLD_"] == "0"
    off = steady_allocator({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, fits_only=True)
    assert off["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0"


def test_the_host_load_counts_other_processes_and_not_this_one():
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from batchfind.devices import HostLoad

    cpus = os.cpu_count() or 1
    n = min(cpus, 4)
    # Other processes, not this one's children (which are its own work, a DataLoader's workers): the
    # shell that starts them exits at once, and they go on without a parent here.
    burn = f"{sys.executable} -c 'while True: pass' > /dev/null 2>&1 < /dev/null & echo $!;" * n
    burners = [int(pid) for pid in subprocess.run(["sh", "-c", burn], capture_output=True, text=True,
                                                   check=True).stdout.split()]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                sum(psutil.Process(pid).cpu_times()[:2]) > 0.1 for pid in burners):
            time.sleep(0.05)  # each has started and runs its loop
        load = HostLoad()
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:  # this process is busy too, and is not counted
            pass
        shares = load.read()
    finally:
        for pid in burners:
            os.kill(pid, signal.SIGKILL)
    # n burners beside this loop get n/(n+1) of n CPUs, or of fewer where a container's quota caps
    # them (half of them, say), and more where the machine has other load.
    assert shares["other_cpu_share"] >= 0.25 * n / cpus
    assert 0 <= shares["steal_share"] <= 1


@pytest.mark.parametrize("cap, read", [(2500, 2500), (None, 2900)])
def test_a_capped_peak_never_reads_above_the_cap_in_force(monkeypatch, cap, read):
    import resource

    from batchfind import devices

    # Mappings other than data that shrank after the peak make VmPeak less them read high.
    statuses = iter([{"VmPeak": 100}, {"VmPeak": 3000, "VmSize": 1000, "VmData": 900}])
    monkeypatch.setattr(devices, "_vm_status", lambda: next(statuses))
    limit = resource.RLIM_INFINITY if cap is None else cap
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limit, limit))
    assert CappedPeak(CPU).read() == read


def test_cross_entropy_takes_narrow_integer_labels_and_refuses_what_cannot_train():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 2])
    for dtype in (torch.int32, torch.int16, torch.uint8):  # numpy's int32 labels, say
        assert torch.equal(compute_loss(logits, labels.to(dtype), "cross_entropy"),
                           compute_loss(logits, labels, "cross_entropy"))
    with pytest.raises(InputError, match=r"cross_entropy over one class \(the model's output has shape \(4, 1\)\) "
                                         r"is always 0 and trains nothing: use train.loss: mse"):
        compute_loss(torch.randn(4, 1), torch.zeros(4, dtype=torch.long), "cross_entropy")
    with pytest.raises(InputError, match="cross_entropy over one class"):  # float targets: soft labels over one
        compute_loss(torch.randn(4, 1), torch.rand(4, 1), "cross_entropy")
    with pytest.raises(InputError, match="the model returned a scalar: a model that computes its own loss returns"):
        compute_loss(torch.tensor(0.5), labels, "cross_entropy")
    # A class dimension the target's shape does not place is not taken for one class: torch says
    # what is wrong with the shapes (5 classes in (4, 5, 1, 1) against (4,) labels).
    with pytest.raises(ValueError, match="Expected input batch_size"):
        compute_loss(torch.randn(4, 5, 1, 1), torch.zeros(4, dtype=torch.long), "cross_entropy")
    with pytest.raises(InputError, match="cross_entropy over one class"):  # one class in a map, placed
        compute_loss(torch.randn(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), "cross_entropy")
    # Sequences with classes last, maps with classes second: more than one class trains.
    assert compute_loss(torch.randn(2, 5, 3), torch.randint(0, 3, (2, 5)), "cross_entropy") > 0
    assert compute_loss(torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4)), "cross_entropy") > 0


def test_validate_refuses_a_one_class_model_scored_with_cross_entropy(write_config):
    from typer.testing import CliRunner

    from batchfind.cli import app

    result = CliRunner().invoke(app, ["validate", str(write_config("model: {name: mlp, classes: 1}\n"))])
    assert result.exit_code == 2 and "cross_entropy over one class" in result.stderr, result.output
