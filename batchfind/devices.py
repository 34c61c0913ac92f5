"""Device facts (torch, NVML, psutil), clocks, peak memory, memory caps and OOM classification."""

from __future__ import annotations

import functools
import os
import platform
import re
import resource
import time
from typing import Any, Callable

from .errors import InputError
from .sizes import format_size

# Fraction of available RAM a CPU probe may use when no limit is given: the rest keeps the
# machine responsive and the kernel's OOM killer away.
CPU_DEFAULT_FRACTION = 0.8

# How much a CPU worker's peak data segment may vary between runs at one batch size, as a share of
# where memory runs out (the cap), with the allocator held steady (worker.MMAP_THRESHOLD): fresh
# runs of a small CNN and a small GPT near a 2 GiB cap repeated within 3 MiB (0.15%); this allows
# three times that. GPU allocators repeat to the block.
CPU_VARIATION = 0.005

# Message fragments of allocation failures that do not arrive as torch.OutOfMemoryError.
_OOM_FRAGMENTS = (
    "out of memory",  # CUDA, HIP, XPU and MPS allocators
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_NOT_SUPPORTED",  # cuDNN's answer to a batch too large for its workspace
    "CUBLAS_STATUS_ALLOC_FAILED",
    "can't allocate memory",  # DefaultCPUAllocator
    "std::bad_alloc",  # C++ code whose allocation failed, then aborted
    "alloc_cpu.cpp",
    "could not create a primitive",  # oneDNN when its scratch allocation fails under a cap
    "Cannot allocate memory",
    "Thread creation failed",  # libgomp, when a cap leaves no room for its threads' stacks
    "Storage size calculation overflowed",  # a tensor of more than 2**63 bytes: no memory holds it
)


# oneDNN's words for a kernel it does not have (an fp16 LSTM on a CPU), at any size: not memory.
UNSUPPORTED = "could not create a primitive descriptor"


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    return isinstance(exc, RuntimeError) and _allocation_failed(str(exc))


def starved(exc: BaseException) -> bool:
    """Under a RAM cap, a library that cannot be mapped, a thread that cannot start, or the
    interpreter failing inside C code are the cap's doing, not a bug."""
    import errno

    if resource.getrlimit(resource.RLIMIT_DATA)[0] == resource.RLIM_INFINITY:
        return False
    text = str(exc).lower()
    return (isinstance(exc, SystemError)
            or isinstance(exc, ImportError) and ("failed to map segment" in text or "cannot allocate memory" in text)
            or isinstance(exc, OSError) and exc.errno in (errno.ENOMEM, errno.EAGAIN))


def _allocation_failed(text: str) -> bool:
    return UNSUPPORTED not in text and any(fragment in text for fragment in _OOM_FRAGMENTS)


def resolve_device(spec: str, local_rank: int | None = None):
    """The device to probe on; a rank of a distributed probe takes the GPU of its local rank."""
    import torch

    if spec == "auto":
        spec = "cuda" if cuda_usable() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not cuda_usable():
            why = (f"this torch's CUDA {torch.version.cuda} cannot use the GPUs NVML sees (a driver older than it?)"
                   if torch.cuda.is_available() else "this torch sees no CUDA GPU")
            raise InputError(f"probe.device: {spec} requested but {why}")
        if local_rank is not None and device.index is not None:
            raise InputError(f"probe.device: {spec} names one GPU, but each rank takes its own; use cuda or auto")
        index = local_rank if local_rank is not None else device.index or 0
        if index >= torch.cuda.device_count():
            wanted = f"{index + 1} ranks on this machine, one GPU each," if local_rank is not None else f"{spec}"
            raise InputError(f"probe.device: {wanted} requested but only {torch.cuda.device_count()} GPU(s) are visible")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return device


def wants_cuda(spec: str) -> bool:
    """Whether a device spec resolves to a GPU, without creating a CUDA context."""
    return cuda_usable() if spec == "auto" else spec.startswith("cuda")


def unusable_gpus(spec: str, device) -> str | None:
    """Why `auto` probes the CPU of a machine with GPUs: NVML counts cards the CUDA runtime cannot use."""
    import torch

    if spec != "auto" or device.type != "cpu" or not torch.cuda.is_available():
        return None
    return (f"probe.device: auto probed the CPU: NVML sees {torch.cuda.device_count()} GPU(s) that this torch's "
            f"CUDA {torch.version.cuda} cannot use (a driver older than it?)")


def surely_cpu(spec: str) -> bool:
    """Whether a device spec resolves to the CPU, known without torch: `cpu`, or `auto` where NVML
    counts no GPU (no driver, no library, no card)."""
    if spec != "auto":
        return spec == "cpu"
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() == 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - whatever NVML fails with, it sees no GPU to use
        return True


def cuda_usable() -> bool:
    """Whether CUDA runs here. Workers count GPUs through NVML (PYTORCH_NVML_BASED_CUDA_CHECK), which
    creates no context but also counts a card the CUDA runtime cannot use (a driver older than this
    torch's CUDA); the runtime's own count, which creates no context either, settles it."""
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        return torch._C._cuda_getDeviceCount() > 0  # what torch.cuda.is_available asks without NVML
    except (AttributeError, RuntimeError):
        return False


def device_facts(device) -> dict[str, Any]:
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"device": str(device), "device_name": props.name, "memory_total_bytes": props.total_memory}
    import psutil

    return {
        "device": "cpu",
        "device_name": cpu_name(),
        "memory_total_bytes": psutil.virtual_memory().total,
    }


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_name() -> str:
    """The processor's model name ("AMD EPYC 7B13"), or at least its architecture."""
    try:
        with open("/proc/cpuinfo") as f:  # Linux; platform.processor() is empty there
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# `[enforce fail at alloc_cpu.cpp:127] err == 0. ` opens torch's CPU allocation failures: a source
# location and a failed condition, which tell a reader nothing the rest of the message does not.
_ENFORCE_NOISE = re.compile(r"\[enforce fail at [^\]]*\]\s*(?:[^.\s]+ [=!<>]=? [^.\s]+\.\s*)?")


def clean_error(message: str) -> str:
    """An error message without torch's enforce-fail bookkeeping, for the report and the table."""
    return _ENFORCE_NOISE.sub("", message)


def apply_memory_limit(device, limit: int | None, share: int = 1) -> int | None:
    """Enforce the limit for real: a RAM cap on CPU, the allocator's fraction on GPU.

    Returns the limit in force. On CPU a data-segment cap makes allocations beyond it fail
    like any out-of-memory, instead of the machine swapping or the OOM killer stepping in. The
    default CPU cap is split `share` ways (ranks on one machine share its RAM).
    """
    import torch

    if device.type == "cuda":
        if limit is None:
            return None
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)
        return min(limit, total)
    import psutil

    if limit is None:
        limit = int(psutil.virtual_memory().available * CPU_DEFAULT_FRACTION / share)
    elif limit * share > (ram := psutil.virtual_memory().total):
        # A cap the machine cannot reach stops nothing: the probe would swap instead.
        each = f" for each of {share} ranks" if share > 1 else ""
        raise InputError(f"probe.memory_limit: {format_size(limit)}{each} is more than this machine's RAM "
                         f"({format_size(ram)}); a cap above it would not keep the probe from swapping")
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    return limit


def sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        # Linux: writing 5 resets the resident-set high-water mark (VmHWM) of this process.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # read_peak then reports the lifetime peak, which only overstates


def read_peak(device) -> tuple[int, int | None]:
    """(peak bytes the device held, peak bytes in live tensors or None where unknown)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_reserved(device), torch.cuda.max_memory_allocated(device)
    status = _vm_status()
    if "VmHWM" in status:
        return status["VmHWM"], None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, None


class HostLoad:
    """What else the machine's CPUs did while this process measured, as shares of all CPUs' time
    since it was made: other processes running (`other_cpu_share`), and on a virtual machine the
    time the hypervisor gave the CPUs to other machines (`steal_share`, Linux). Either makes steps
    slower and noisier than on a quiet machine. The kernel counts in ticks (10 ms on Linux). This
    process's own children (a DataLoader's workers) are its own work, not other processes'."""

    def __init__(self):
        self.host, self.own, self.start = _cpu_seconds(), _own_seconds(), time.perf_counter()

    def read(self) -> dict[str, float | None]:
        import psutil

        capacity = (time.perf_counter() - self.start) * (psutil.cpu_count() or 1)
        busy, steal = _cpu_seconds()
        if capacity <= 0 or busy is None or self.host[0] is None:
            return {"other_cpu_share": None, "steal_share": None}
        other = busy - self.host[0] - (_own_seconds() - self.own)
        return {"other_cpu_share": round(min(1.0, max(0.0, other / capacity)), 3),
                "steal_share": round(min(1.0, max(0.0, (steal - self.host[1]) / capacity)), 3)}


def _own_seconds() -> float:
    """CPU seconds of this process and its children: those that ended and were waited for, and those
    still running."""
    import psutil

    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + ended.ru_utime + ended.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:  # it ended just now: counted once it is waited for
            continue
        total += times.user + times.system
    return total


def _cpu_seconds() -> tuple[float | None, float]:
    """(busy, steal) seconds of all CPUs since boot: busy is time spent running anything, this
    process included."""
    import psutil

    try:
        t = psutil.cpu_times()
    except (OSError, RuntimeError, AttributeError):
        return None, 0.0
    busy = t.user + t.system + sum(getattr(t, f, 0.0) for f in ("nice", "irq", "softirq"))
    return busy, getattr(t, "steal", 0.0)


class CappedPeak:
    """The peak of what the memory limit counts, over one trial: on GPU the allocator's reserved
    bytes (what `set_per_process_memory_fraction` caps), on CPU the data segment (what RLIMIT_DATA
    caps: heap and private anonymous mappings). Resident memory, the CPU's `peak_bytes`, also holds
    library pages the cap does not count, so only these bytes can be compared with the cap itself.

    Linux keeps no resettable data-segment peak, only the lifetime peak of all mappings (VmPeak):
    with the other mappings (code, files) unchanged during a trial, the data peak is VmPeak less
    them, and never less than the data segment at the end. A trial that stays below an earlier
    trial's peak leaves VmPeak where it was, and its data peak is unknown (None).
    """

    def __init__(self, device):
        self.device = device
        self.start = None if device.type == "cuda" else _vm_status().get("VmPeak")

    def read(self) -> int | None:
        if self.device.type == "cuda":
            import torch

            return torch.cuda.max_memory_reserved(self.device)
        status = _vm_status()
        if self.start is None or not {"VmPeak", "VmSize", "VmData"} <= status.keys() or status["VmPeak"] <= self.start:
            return None
        # Other mappings that grew after the peak make the difference read low (a failure in a
        # brand-new process read 75 MiB below what it held); the data segment now is a floor.
        # Ones that shrank make it read high (a failure at cnn-small's edge read 5% over its cap):
        # the cap in force is a ceiling.
        peak = max(status["VmPeak"] - (status["VmSize"] - status["VmData"]), status["VmData"])
        cap = resource.getrlimit(resource.RLIMIT_DATA)[0]
        return peak if cap == resource.RLIM_INFINITY else min(peak, cap)


class PastTheCap(MemoryError):
    """A CPU trial that held shared memory past the cap, which does not count it."""


# Shared memory a trial may hold past the cap, as a share of the cap or at least
# `SHARED_MIN_BYTES`: what is read at different moments is not exact.
SHARED_SHARE = 0.1
SHARED_MIN_BYTES = 64 * 1024**2


def shared_memory(device) -> tuple[int, int] | None:
    """CPU: shared memory now, this process's resident share of it (`RssShmem`) and the machine's
    (`Shmem`); None on GPU or without /proc."""
    own = None if device.type == "cuda" else _vm_status().get("RssShmem")
    if own is None:
        return None
    try:
        with open("/proc/meminfo") as f:
            machine = next((line for line in f if line.startswith("Shmem:")), None)
    except OSError:
        return None
    return None if machine is None else (own, int(machine.split()[1]) * 1024)


def check_shared(device, before: tuple[int, int] | None, data_peak: int | None) -> None:
    """CPU: raise `PastTheCap` where a trial made and holds shared memory (an anonymous shared
    mapping, /dev/shm) that takes it past the cap. RLIMIT_DATA counts the heap and private mappings
    only, and a size that fits only by escaping the cap does not fit the budget the cap keeps. The
    process's and the machine's shared memory must both have grown: a file of a tmpfs that the
    trial mapped was in the machine's memory before, and a memory-mapped dataset's pages are page
    cache, in neither."""
    cap = resource.getrlimit(resource.RLIMIT_DATA)[0]
    after = shared_memory(device)
    if before is None or after is None or cap == resource.RLIM_INFINITY:
        return
    grew = min(after[0] - before[0], after[1] - before[1])
    slack = max(SHARED_SHARE * cap, SHARED_MIN_BYTES)
    if grew > slack and (data_peak or 0) + grew > cap + slack:
        raise PastTheCap(f"the steps hold {format_size(grew)} of shared memory, which the {format_size(cap)} limit "
                         f"does not count, beside {format_size(data_peak or 0)} that it does")


def data_segment(device) -> int | None:
    """CPU: the data segment now, what RLIMIT_DATA counts (None on GPU or without /proc)."""
    return None if device.type == "cuda" else _vm_status().get("VmData")


def free_heap(device) -> int | None:
    """CPU with glibc: the bytes free inside the allocator's heaps (mallinfo2's `fordblks`), which
    the process holds and a later allocation may reuse; None elsewhere."""
    mallinfo2 = None if device.type == "cuda" else _mallinfo2()
    return None if mallinfo2 is None else mallinfo2().fordblks


@functools.cache
def _mallinfo2():
    """glibc's `mallinfo2` (2.33+), typed; None where there is none."""
    import ctypes

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fields = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    mallinfo2.restype = type("mallinfo2", (ctypes.Structure,), {"_fields_": [(f, ctypes.c_size_t) for f in fields]})
    return mallinfo2


def memory_ceiling(device, limit: int | None) -> int | None:
    """Where the capped peak runs out: on CPU the limit in force; on GPU what the device can still give
    this process (free memory plus what its allocator already holds), or the limit where that is less
    (the CUDA context and other processes take memory that a limit near the card's size counts)."""
    if device.type != "cuda":
        return limit
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    room = free + torch.cuda.memory_reserved(device)
    return room if limit is None else min(limit, room)


def _vm_status() -> dict[str, int]:
    """The Vm* and Rss* lines of /proc/self/status in bytes (empty where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)
                    if k.startswith(("Vm", "Rss"))}
    except OSError:
        return {}


def release(device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def host_info() -> dict[str, Any]:
    """What `batchfind info` shows: torch, GPUs through NVML, CPU and RAM through psutil."""
    import psutil
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "cpu": {
            "name": cpu_name(),
            "cores_logical": psutil.cpu_count(logical=True),
            "cores_physical": psutil.cpu_count(logical=False),
            "ram_total_bytes": psutil.virtual_memory().total,
            "ram_available_bytes": psutil.virtual_memory().available,
        },
        "gpus": [],
        "driver": None,
        "nvml_error": None,
    }
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            info["driver"] = _text(pynvml.nvmlSystemGetDriverVersion())
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                info["gpus"].append(
                    {"index": i, "name": _text(pynvml.nvmlDeviceGetName(handle)),
                     "memory_total_bytes": mem.total, "memory_free_bytes": mem.free}
                )
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # no driver, no library: say so, do not fail
        info["nvml_error"] = f"{type(exc).__name__}: {exc}"
    return info


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value



def energy_meter(device) -> Callable[[], float] | None:
    """A reader of the GPU's energy counter in joules (NVML), or None where there is none."""
    if device.type != "cuda":
        return None
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        # Match the CUDA device to NVML by UUID: their indices differ under CUDA_VISIBLE_DEVICES.
        uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
        if uuid is not None:
            handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # fails here on GPUs without the counter
    except Exception:  # no NVML, no counter: energy is simply not measured
        return None
    return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000  # millijoules


def looks_like_oom(text: str) -> bool:
    """For a worker that died: does its last word look like an allocation failure?"""
    return "MemoryError" in text or "OutOfMemoryError" in text or _allocation_failed(text)
