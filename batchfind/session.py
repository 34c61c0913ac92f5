"""Inside a worker: the model, data and step built once, then trials at any batch size."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import time
import traceback
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import torch

from . import devices, parallel
from .config import FLOAT_TARGETS, Config, TransformerModel, classes_unused
from .data import IGNORE_INDEX, Batches, build_batches, describe_batch, tensors_in
from .errors import STACKED_RAN_OUT, InputError, UserExit, debugging, described, unwrapped
from .forks import imports_first
from .measure import StepPlan, gradient_sq_norms, measure, measure_loader
from .memory import failed_allocation
from .models import build_model, raised, run_user_code, running
from .step import CustomStep, LightningStep, Step, given_labels, make_step, split


class Session:
    """`rank` is None for a plain probe; for a distributed one, this worker's place among the ranks.

    Built in two stages so a standby worker can be started early: the constructor imports, checks
    the config and, outside a distributed probe, builds the model in host memory; `start()` touches
    the device (memory cap, weights, data, the first forward). A standby waits between the two,
    costing its peers nothing. A rank builds its model in `start()`, once it has joined the others
    (`parallel.wrap` puts it on the device the way the job trains it).
    """

    def __init__(self, raw_config: dict[str, Any], rank: dict[str, Any] | None = None,
                 learned: dict[str, Any] | None = None, smallest: bool = True, fits_only: bool = False):
        self.config = Config.model_validate(raw_config)
        # What the probe's first worker learned of the data and the model (`facts["learned"]`): a
        # later worker neither reads the dataset for its lengths nor checks its labels again.
        self.rank, self.learned = rank, learned
        # Whether set-up learns the smallest batch a BatchNorm model trains on, with a step of one
        # sample. Training runs no such step, and what it leaves in the heap raised a brand-new
        # process's peak by 14-16 MiB near the edge (docs/benchmarks.md): processes that prove a
        # limit are told it instead, or do not need it.
        self.smallest = smallest
        self.model: torch.nn.Module | None = None
        self.limit: int | None = None
        # CPU: the data segment, and the allocator's free bytes within it, after the first trial.
        self.settled: tuple[int | None, int | None] | None = None
        if fits_only:  # as forked ones are (`forks.imports_first`)
            for name in imports_first(self.config.train.optimizer):
                importlib.import_module(name)
        if rank is None:
            probe = self.config.probe
            if not self.wants_gpu:
                # A CPU cap touches no other process: set it first, so a model that does not fit
                # at all is an out-of-memory too.
                self.limit = devices.apply_memory_limit(torch.device("cpu"), probe.memory_limit)
            torch.manual_seed(0)
            self.model = self._built()

    def _built(self) -> torch.nn.Module:
        self.model = build_model(self.config.model)
        self._own("train")  # in place, whatever an override returns
        return self.model

    def _own(self, method: str, *args: Any, gather: Callable[[Any], Any] = lambda value: value) -> Any:
        """The model's own `method(*args)` (a model's class may define it anew), with what it
        returns `gather`ed: a failure there is the model's, named as such."""
        shown = ", ".join(map(str, args))
        return run_user_code(f"model.name: {self.config.model.name}'s {method}({shown})",
                             lambda: gather(getattr(self.model, method)(*args)))

    @property
    def reads_items(self) -> bool:
        """Whether set-up reads the items of a dataset of the user's for their lengths: no worker
        before this one has told it what they are."""
        return self.learned is None and self.config.data.kind not in ("synthetic", "tensors", "imagefolder")

    @property
    def wants_gpu(self) -> bool:
        return devices.wants_cuda(self.config.probe.device)

    def start(self) -> dict[str, Any]:
        """Set up on the device; returns the facts the probe needs."""
        config, rank = self.config, self.rank
        probe = config.probe
        self.device = devices.resolve_device(probe.device, rank["local_rank"] if rank else None)
        limit = self.limit
        if self.model is None or self.device.type == "cuda":
            # The cap comes before the model where it can, so a model that does not fit at all is
            # an out-of-memory too. Ranks on one node share its RAM: a default CPU cap is split.
            limit = devices.apply_memory_limit(self.device, probe.memory_limit,
                                               share=rank["local_world_size"] if rank else 1)
        if rank and self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, devices.usable_cpus() // rank["local_world_size"]))
        backend = parallel.join(rank, self.device, probe.trial_timeout_s) if rank else None
        ddp = bool(rank) and probe.strategy == "ddp"
        if rank:
            torch.manual_seed(0)  # every rank starts from the same weights
            # DDP wraps once set-up has seen which parameters get a gradient (below); FSDP shards
            # before the whole model meets the device.
            built = self._built()
            self.model = built.to(self.device) if ddp else parallel.wrap(built, probe.strategy, self.device)
        else:
            self._own("to", self.device)  # in place, as for any module
        model = self.model
        if not self._own("parameters", gather=lambda params: any(p.requires_grad for p in params)):
            raise InputError(f"model.name: {config.model.name} has no trainable parameters: nothing to train")
        # Set-up's reading of the data and its first steps run the user's code: a hang there names it.
        reading = (running(f"data.kind: {config.data.kind}'s items, read for their lengths")
                   if self.reads_items else contextlib.nullcontext())
        with reading:
            self.batches = build_batches(config, self.device, self.learned["scan"] if self.learned else None)
        batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        with set_up_steps(self.device), running(f"model.name: {config.model.name}'s step on two samples"):
            own_loss = check_fit(self.model, self.batches, config, self.device, labels=self.learned is None)
            unused: list[str] = []
            if ddp:
                unused = without_gradient(self.model, self.batches, config, self.device)
                self.model = parallel.wrap(self.model, "ddp", self.device, parallel.any_rank(bool(unused), self.device))
            if rank:
                torch.manual_seed(rank["rank"])  # and draws its own random samples
            self.step = make_step(self.model, config.train, self.device)
            if self.learned:
                smallest = self.learned["smallest_batch"]
            else:
                smallest = smallest_batch(self.step, self.batches) if batchnorm and self.smallest else 1
        start_threads(self.device)
        self.energy = devices.energy_meter(self.device)
        self.facts = {
            **devices.device_facts(self.device),
            "device_note": devices.unusable_gpus(probe.device, self.device),
            "torch_version": torch.__version__,
            "memory_limit_bytes": limit,
            "memory_ceiling_bytes": devices.memory_ceiling(self.device, limit),
            "memory_variation": devices.CPU_VARIATION if self.device.type == "cpu" and limit else 0.0,
            "threads": torch.get_num_threads(),
            "dataset_len": len(self.batches),
            "data": self.batches.describe,
            "input_lengths": self.batches.lengths,
            # A sharded parameter (FSDP's DTensor) still counts its full size.
            "parameters": sum(p.numel() for p in model.parameters()),
            "batchnorm": batchnorm,
            # A LightningModule's configure_optimizers, not train.optimizer and train.lr.
            "own_optimizers": isinstance(self.step, LightningStep),
            "optimizer": ", ".join(type(o).__name__ for o in self.step.optimizers),
            "optimizer_lr": self.step.given_lr,  # what a factory optimizer given no lr trains at
            "own_loss": own_loss,  # the model's output carried its own loss
            "smallest_batch": smallest,
            "unused_parameters": unused,  # DDP's: they made it look for them every step
            "backend": backend,
            "learned": {"scan": self.batches.scan, "smallest_batch": smallest},  # for the workers after this one
        }
        # What setup left in the allocator's cache (FSDP's unsharded copies, say) is not a trial's.
        devices.release(self.device)
        return self.facts

    def close(self) -> None:
        if self.rank:
            parallel.leave()

    def serve(self, op: str, args: dict[str, Any], progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run one request; any failure becomes its status (oom with how far memory got, or error)."""
        start = time.perf_counter()
        self.step.stage = None
        self.progress = progress
        self.meter = devices.CappedPeak(self.device)
        held = self._held() if op == "trial" else None
        try:
            result = getattr(self, f"_{op}")(**args)
        except InputError as exc:  # the config's or the user's code's doing, at any size: the probe stops
            result = {"status": "input", "error": unwrapped(str(exc))}
            if debugging():
                traceback.print_exc()
        except Exception as exc:  # noqa: BLE001 - every failure becomes the request's status
            if isinstance(exc, devices.PastTheCap):  # after the steps ran: no stage of theirs failed
                error = str(exc)
            else:
                error = (f"in {self.step.stage}: " if self.step.stage else "") + one_line(exc)
            result = {"status": "error", "error": error}
            if devices.is_oom(exc):
                # How far memory got before it ran out teaches the memory model where the ceiling is.
                result.update(status="oom", peak_bytes=devices.read_peak(self.device)[0],
                              capped_peak_bytes=self.meter.read(), failed_alloc_bytes=failed_allocation(str(exc)))
            elif debugging():
                traceback.print_exc()  # to stderr, which under debugging is the user's, above the error line
        devices.release(self.device)
        result["wall_s"] = time.perf_counter() - start
        if op == "trial":
            # What earlier trials left in this worker (free heap, kernels compiled for other shapes)
            # and a brand-new process would not hold, so the memory model can tell from a long-lived
            # worker's sizes where a brand-new process runs out.
            if self.settled is None:
                self.settled = self._held()
            elif held[0] is not None and self.settled[0] is not None:
                result["retained_bytes"] = held[0] - self.settled[0]
                if held[1] is not None and self.settled[1] is not None:
                    result["retained_free_bytes"] = held[1] - self.settled[1]
        return result

    def _held(self) -> tuple[int | None, int | None]:
        """CPU: the data segment now, and the allocator's free bytes within it."""
        return devices.data_segment(self.device), devices.free_heap(self.device)

    def _trial(self, batch_size: int, purpose: str = "throughput", bar: float | None = None) -> dict[str, Any]:
        """`bar`: the samples/s a throughput trial's quickest step must beat to be measured in full."""
        probe = self.config.probe
        if purpose == "fit":
            plan = StepPlan("fit", warmup=0, min_steps=probe.fit_steps)
        else:
            # Ranks step together (every step holds collectives): each timing its own steps until
            # a minimum time, or stopping at a bar, would leave one waiting for a step the others
            # never take.
            plan = StepPlan("throughput", warmup=probe.warmup_steps, min_steps=probe.steps,
                            min_time_s=0.0 if self.rank else probe.min_time_s,
                            max_time_s=0.0 if self.rank else probe.max_time_s,
                            precision=self.config.recommend.tolerance / 2,
                            bar_ms=batch_size / bar * 1000 if bar and not self.rank else None,
                            fit_steps=probe.fit_steps,
                            # Not on a GPU, nor in a brand-new process (see StepPlan).
                            first_step_bar=self.device.type == "cpu" and self.settled is not None)
        progress = self.progress

        def on_step(done: int, planned: int) -> None:
            if progress:
                progress({"batch_size": batch_size, "step": done, "steps": planned})

        return measure(
            self.step, self.batches.batch, batch_size, plan,
            dataset_len=len(self.batches), device=self.device, meter=self.meter, energy=self.energy,
            on_step=on_step,
        )

    def _noise(self, small: int, big: int, batches: int) -> dict[str, Any]:
        return {
            "status": "ok",
            "small": gradient_sq_norms(self.model, self.batches.sample, small, batches, self.step.gradients),
            "big": gradient_sq_norms(self.model, self.batches.sample, big, batches, self.step.gradients),
        }

    def _loader(self, batch_size: int) -> dict[str, Any]:
        data, probe = self.config.data, self.config.probe
        world = self.rank["world_size"] if self.rank else 1
        loader = self.batches.loader(batch_size, data.workers, data.pin_memory)
        # Each rank reads its own share of an epoch and the ranks step together (their gradients
        # meet): count them all, and time a fixed number of steps, which a clock of each rank's
        # own would make differ.
        result = measure_loader(self.step, loader, batch_size, warmup=probe.warmup_steps, steps=probe.steps,
                                min_time_s=0.0 if self.rank else probe.min_time_s,
                                dataset_len=len(self.batches) // world, device=self.device)
        if result["samples_per_s"] is not None:
            result["samples_per_s"] *= world
        return result


@contextlib.contextmanager
def set_up_steps(device: torch.device) -> Iterator[None]:
    """On a CPU, set-up's steps of a sample or two run on one thread, and without oneDNN.

    A worker often starts beside another at work (a standby beside a trial, or beside the first
    worker): two teams of threads spinning for the same cores took cnn-small's set-up steps from
    0.75 to 1.4 s, and its check of the smallest batch from 0.0 to 0.45 s, on a 2-core CPU. oneDNN
    keeps the kernels it builds for each shape, and training builds none for two samples: those
    raised cnn-small's peak at 1540 in a brand-new process by 6.5 MiB, six samples' worth, and the
    mixup example's at 145 under 1 GiB by 15-21 (docs/benchmarks.md)."""
    if device.type != "cpu":
        yield
        return
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn


def start_threads(device: torch.device) -> None:
    """On a CPU, start the team of threads the trials will use now, in set-up, not in a trial. A
    thread's start maps its stack and, at its first allocation, a heap of its own: glibc maps 128
    MiB of address space for it and keeps 64. The data peak a trial reads (`devices.CappedPeak`)
    is the lifetime peak of all mappings less the mappings other than data, so a thread started in
    a trial read as 64 MiB more than the trial held (a `torch.nn.Linear`: 367 MiB at batch 2, whose
    data segment peaked near 303), and a memory model through such a reading put the edge at 25."""
    if device.type == "cpu":
        # Enough elements that every thread gets a share (torch splits work in 32768-element grains).
        torch.ones(32768 * torch.get_num_threads()).add_(1)


def without_gradient(model: torch.nn.Module, batches: Batches, config: Config, device: torch.device) -> list[str]:
    """The trainable parameters that a step's backward leaves without a gradient (a backbone's
    pooler under a head of one's own): DDP must be told of them (`find_unused_parameters`), as a
    training run under it must, or its second step fails. Only batchfind's own step is looked
    into: a step of the user's own does its backward itself."""
    step = make_step(model, config.train, device)
    if type(step) is not Step:
        return []
    step.gradients(batches.batch(min(2, len(batches))))
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return unused


def check_fit(model: torch.nn.Module, batches: Batches, config: Config, device: torch.device,
              labels: bool = True) -> bool:
    """Two samples (one, where the dataset has one) through the step without an update, so data
    that does not fit the model is an input error, not a trial error; with `labels`, the range of
    up to `LABEL_ITEMS` items' labels too. In training mode, as the trials run: a model may return
    other outputs in eval mode (Inception's auxiliary logits, a detector's losses). Two samples,
    because a loss left per sample (`reduction="none"`) passes for a scalar with one. Returns
    whether the model's output carried its own loss."""
    try:
        batch = batches.batch(min(2, len(batches)))
    except Exception as exc:
        if devices.is_oom(exc):
            raise MemoryError(f"{STACKED_RAN_OUT}: {one_line(exc)}") from exc
        raise
    train = config.train
    step = make_step(model, train, device)
    try:
        step.check(batch, lambda classes: check_labels(batches, classes, config) if labels else None)
    except InputError as exc:
        data = config.data
        if (str(exc).startswith(f"train.loss: {train.loss} raised") and data.kind == "synthetic"
                and data.inputs is None and data.num_classes is None and not isinstance(config.model, TransformerModel)):
            # A loss of one's own gets float targets (regression) unless classes are given.
            raise InputError(f"{exc}; its synthetic targets are floats: set data.num_classes for class "
                             "labels") from exc
        if str(exc).startswith("train.loss: mse") and classes_unused(config):
            raise InputError(f"{exc}; {FLOAT_TARGETS}, and data.num_classes is not used") from exc
        raise
    except Exception as exc:
        if devices.is_oom(exc):
            raise
        if devices.UNSUPPORTED in str(exc) and train.precision != "fp32":
            raise InputError(f"train.precision: {train.precision}: this device has no kernel for one of "
                             f"{config.model.name}'s layers at that precision: {one_line(exc)}") from exc
        if any(words in str(exc) for words in _NO_GPU) and device.type != "cuda":
            raise InputError(f"model.name: {config.model.name} moves tensors to a GPU itself, and this probe runs on "
                             f"{device}: {one_line(exc)}; let it use its inputs' device, or probe on a GPU") from exc
        # Chained: under --debug the model's own frames show where it failed.
        if train.step:  # the user's own step: what it raised, whether or not in the model
            floats = f"; {FLOAT_TARGETS}, and data.num_classes is not used" if classes_unused(config) else ""
            raise InputError(f"train.step {train.step} raised {devices.clean_error(raised(exc))} "
                             f"({describe_batch(batch)} into {config.model.name}){floats}") from exc
        if isinstance(exc, UserExit):  # the model's own code ended itself: not the data's doing
            raise InputError(f"model.name: {config.model.name} raised {described(exc)} "
                             f"({describe_batch(batch)} into it)") from exc
        unset = _UNSET_SETTING.search(str(exc)) if isinstance(exc, AttributeError) else None
        if unset:
            # A Hugging Face model built from a config that lacks what its forward reads (T5's
            # decoder_start_token_id, to shift labels right): the model's doing, whatever the data.
            raise InputError(f"model.name: {config.model.name} reads {unset.group(2)} from its {unset.group(1)}, "
                             f"which does not set it: set it where the model is built ({one_line(exc)})") from exc
        given = [name for name in train.forward_kwargs if f"argument '{name}'" in str(exc)]
        if isinstance(exc, TypeError) and given:
            # `unexpected keyword argument 'mask'`, `multiple values for argument 'x'`: not the data's doing.
            raise InputError(f"train.forward_kwargs: {given[0]}: {config.model.name} refused it: "
                             f"{one_line(exc)}") from exc
        raise InputError(
            f"data and model do not fit together: {describe_batch(batch, train.target, train.call)} into "
            f"{config.model.name}: "
            f"{one_line(exc)}{_fit_hint(exc, config, batch, model)}"
        ) from exc
    return getattr(step, "own_loss", False)  # a step of the user's own or a LightningModule's: theirs


# A setting a model's configuration object lacks, in the AttributeError of the forward that read it.
_UNSET_SETTING = re.compile(r"'(\w*Config)' object has no attribute '(\w+)'")
# torch's words for a keyword the model's forward does not take.
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")

# torch's words when code asks for CUDA that is not there: a CPU build, a machine without the driver or a GPU.
_NO_GPU = ("Torch not compiled with CUDA enabled", "Found no NVIDIA driver", "No CUDA GPUs are available")


def _fit_hint(exc: Exception, config: Config, batch: Any, model: torch.nn.Module) -> str:
    """What to change, where the failure says it: an argument the batches lack, inputs that a model
    takes as one argument, a dict batch's target handed to the model, float64 data, or token ids or
    lengths past what an embedding holds (the builtin transformer's named)."""
    text = str(exc)
    if isinstance(exc, TypeError) and "required" in text and "argument" in text:
        return "; an argument the batches do not hold can be set in train.forward_kwargs"
    if isinstance(exc, TypeError) and "positional argument" in text and "were given" in text:
        return "; a model that takes its inputs as one argument is called so with train.call: single"
    extra = _UNEXPECTED.search(text) if isinstance(exc, TypeError) else None
    # A key the model refused where it takes the batch's other keys: that one may be the target.
    if (extra and isinstance(batch, Mapping) and extra.group(1) in batch and config.train.target is None
            and any(name in batch for name in _parameters(model))):
        return f"; if {extra.group(1)} is the target, name it in train.target and it is kept from the model"
    if "expected target dtype to be Long" in text or "expected scalar type Long" in text:
        return ("; cross-entropy takes class labels as whole numbers: save the targets as int64, or use "
                "train.loss: mse for values to regress, not classes")
    if ("double" in text.lower() and any(t.dtype == torch.float64 for t in tensors_in(batch))
            and any(p.dtype == torch.float32 for p in model.parameters())):
        return "; float64 data (numpy's default) meets a float32 model: save the data as float32"
    if isinstance(exc, IndexError) and isinstance(config.model, TransformerModel):
        return (f"; the transformer takes token ids from 0 to below model.vocab_size ({config.model.vocab_size}) "
                f"and sequences up to model.seq_len ({config.model.seq_len}) long")
    if isinstance(exc, IndexError) and "index out of range in self" in text:
        # torch's words for an embedding looked up past its rows: a token id or a position.
        data = config.data
        drawn = ("" if data.kind != "synthetic" else " (synthetic ids are drawn below data.vocab_size)"
                 if data.inputs is None else " (synthetic ids are drawn below data.inputs' high)")
        return ("; an embedding was looked up past its size: token ids must lie below the model's vocabulary"
                f"{drawn} and sequences within its positions")
    return ""


def _parameters(model: torch.nn.Module) -> list[str]:
    try:
        return list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return []


def smallest_batch(step: Step | CustomStep, batches: Batches) -> int:
    """2 where a batch of 1 gives a BatchNorm one value per channel, which torch refuses to train
    on (BatchNorm1d on features; a map of 1x1); else 1. The step is checked in training mode."""
    try:
        step.check(batches.batch(1), lambda classes: None)
    except Exception as exc:  # noqa: BLE001 - any other failure is the trials' to report
        return 2 if isinstance(exc, ValueError) and "Expected more than 1 value per channel" in str(exc) else 1
    return 1


# Items whose labels are checked against the model's classes, and how many at a time: a batch of
# them all would be the largest set-up allocation (256 images of 512x512 pixels: 805 MB, where the
# limit let batch 4 train).
LABEL_ITEMS = 256
LABEL_CHUNK = 8


def check_labels(batches: Batches, classes: int, config: Config) -> None:
    # Out-of-range labels fail deep inside the loss (or silently on GPU): catch them here.
    count = min(len(batches), LABEL_ITEMS)
    ranges = []
    for start in range(0, count, LABEL_CHUNK):
        batch = batches.batch(min(LABEL_CHUNK, count - start), start)
        _, labels = split(batch, config.train)
        named = labels is None  # a dict batch's own `labels`, for a model that computes its loss
        labels = given_labels(batch) if named else labels
        labels = labels[labels != IGNORE_INDEX]  # padding
        if labels.numel():
            ranges.append((int(labels.min()), int(labels.max())))
    if not ranges:
        return
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if low < 0 or high >= classes:
        raise InputError(f"data: {'labels' if named else 'targets'} range over [{low}, {high}] but the model outputs "
                         f"{classes} class{'es' if classes != 1 else ''}")


def setup_failure(exc: BaseException) -> dict[str, Any]:
    # With debugging on, the worker's own traceback travels with its message.
    trace = "\n" + "".join(traceback.format_exception(exc)).rstrip() if debugging() else ""
    if isinstance(exc, InputError):
        return {"status": "input", "error": str(exc) + trace}
    if devices.is_oom(exc):
        return {"status": "oom", "error": one_line(exc) + trace}
    if devices.starved(exc):
        # The cause first: a long library path in the message is what gets cut short.
        return {"status": "oom", "error": "the memory limit leaves too little for Python and torch themselves: "
                                          f"{one_line(exc)}" + trace}
    return {"status": "error", "error": one_line(exc) + trace}


def one_line(exc: BaseException) -> str:
    return devices.clean_error(described(exc))
