"""The typed result of a probe: one value feeds the table, the JSON document and any plot."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import statistics
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Union, get_args

from annotated_types import Ge, Gt, Le
from typing_extensions import TypedDict

from .errors import clipped, encodable, plain

SCHEMA_VERSION = 2

# ok: ran all steps. oom: an allocation failed. killed: the worker died from a signal (the
# kernel's OOM killer sends SIGKILL). timeout: past the per-trial limit. error: anything else.
Status = Literal["ok", "oom", "killed", "timeout", "error"]
STATUSES = get_args(Status)
# remeasure: a throughput trial run again beside its neighbour, its first measurement off the curve.
Phase = Literal["double", "refine", "verify", "remeasure"]
# throughput: warm-up, then measured steps until enough steps and time; fit: the steps that reach
# the steady-state peak, to say whether a size fits (its step times are not precise enough to rank).
Purpose = Literal["throughput", "fit"]
# What a report read back may hold where a time, a rate or a size was measured: never below zero,
# and no count larger than torch's and the kernel's, which are signed 64-bit integers.
INT64_MAX = 2**63 - 1
Measured = Annotated[float, Ge(0)]
Rate = Annotated[float, Gt(0)]  # samples/s of steps that ran
Bytes = Annotated[int, Ge(0), Le(INT64_MAX)]
Count = Annotated[int, Ge(0), Le(INT64_MAX)]  # steps, samples, parameters
Size = Annotated[int, Ge(1), Le(INT64_MAX)]  # a batch size, a number of ranks or of accumulation steps
# A rank of a distributed trial may also be stopped: another rank failed first and it was waiting on it.
RankStatus = Literal["ok", "oom", "killed", "timeout", "error", "stopped"]


@dataclass(frozen=True)
class StepTimes:
    median: Measured
    p10: Measured
    p90: Measured
    samples: list[Measured]
    # The median's 90% interval (order statistics; min to max below 5 steps, with less coverage).
    ci_low: Measured | None = None
    ci_high: Measured | None = None


@dataclass(frozen=True)
class RankTrial:
    """One rank's part of a distributed trial."""

    rank: Count
    status: RankStatus
    peak_bytes: Bytes | None = None
    step_ms: Measured | None = None  # median
    error: str | None = None


@dataclass(frozen=True)
class Trial:
    batch_size: Size  # per device
    status: Status
    step_ms: StepTimes | None = None
    samples_per_s: Rate | None = None
    epoch_s: Measured | None = None  # estimated: steps per epoch × median step
    # GPU: allocator's peak reserved; CPU: process resident peak. For an oom: the peak before it.
    # Distributed: the worst rank's.
    peak_bytes: Bytes | None = None
    peak_allocated_bytes: Bytes | None = None  # GPU only: peak bytes in live tensors
    # The peak of what the memory limit counts: GPU reserved bytes, CPU the data segment (null
    # where a trial stayed below an earlier one's peak in the same process). The memory model's unit.
    capped_peak_bytes: Bytes | None = None
    loss: float | None = None
    loss_finite: bool | None = None
    error: str | None = None
    failed_alloc_bytes: Bytes | None = None  # oom: the allocation that failed, when the message says
    fresh_process: bool = False  # the first trial of a brand-new worker process
    # CPU, a later trial of a worker: how much more of the data segment the worker held when the
    # trial began than after its first trial (memory earlier trials left behind, which a brand-new
    # process does not hold), and how much more of that was free heap, which the trial may have
    # reused (glibc only).
    retained_bytes: int | None = None
    retained_free_bytes: int | None = None
    joules_per_sample: Measured | None = None  # GPU with NVML energy counters only
    # While the steps were measured, the share of all CPUs' time that other processes ran, and that
    # a hypervisor gave to other machines (steal): a busy machine's steps are slower and noisier.
    # Null for distributed trials (the ranks are each other's load).
    other_cpu_share: Measured | None = None
    steal_share: Measured | None = None
    # Derived, not measured: the learning rate scaled to the global batch, accumulation steps to
    # the target batch, and the global batch: batch_size × world size × accumulation steps.
    lr: Measured | None = None
    accumulation_steps: Size | None = None
    global_batch_size: Size | None = None
    phase: Phase = "double"  # double: powers of two; refine: the exact edge; verify: a fresh re-run
    purpose: Purpose = "throughput"
    steps: Count | None = None  # steps run, warm-up included
    settling_steps: Count | None = None  # measured steps left out, still settling after the warm-up
    wall_s: Measured | None = None
    ranks: list[RankTrial] | None = None  # distributed: every rank's status, peak and step

    @property
    def fits(self) -> bool:
        return self.status == "ok"

    @property
    def counted_peak_bytes(self) -> int | None:
        """The peak of what the memory limit counts where known (a CPU's data segment, a GPU's
        reserved bytes), else the resident peak, which also holds code and files on a CPU."""
        return self.capped_peak_bytes or self.peak_bytes

    @property
    def spread(self) -> float:
        """Half the p10-p90 range of step time, relative to the median (0 when not measured)."""
        s = self.step_ms
        return (s.p90 - s.p10) / 2 / s.median if s and s.median > 0 else 0.0

    @property
    def uncertainty(self) -> float:
        """Half the width of the median step time's interval, relative to the median: how far
        the measured throughput may be off (the p10-p90 spread where no interval was kept). A
        single measured step has no interval: its whole value (1), not the 0 of its spread."""
        s = self.step_ms
        if not s or s.median <= 0:
            return 0.0
        if len(s.samples) < 2:
            return 1.0
        if s.ci_low is None or s.ci_high is None:
            return self.spread
        return (s.ci_high - s.ci_low) / 2 / s.median

    @property
    def throughput_range(self) -> tuple[float, float]:
        """The samples/s at the slow and the quick end of the median step time's interval (the
        p10-p90 spread where no interval was kept): a stalled step widens it on one side only. A
        single measured step has no interval: 0 to infinity."""
        s, rate = self.step_ms, self.samples_per_s or 0.0
        if not s or s.median <= 0:
            return rate, rate
        if len(s.samples) < 2:
            return 0.0, math.inf
        slow = s.ci_high if s.ci_high is not None else s.p90
        quick = s.ci_low if s.ci_low is not None else s.p10
        return rate * s.median / slow, (rate * s.median / quick if quick > 0 else math.inf)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trial":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("step_ms") is not None:
            values["step_ms"] = StepTimes(**values["step_ms"])
        if values.get("ranks") is not None:
            values["ranks"] = [RankTrial(**r) for r in values["ranks"]]
        return cls(**values)


# Statuses that say a size does not fit in memory (a hang near the edge is usually thrashing).
MEMORY_FAILURES = ("oom", "killed", "timeout")


@dataclass(frozen=True)
class Limit:
    # The largest batch that ran, below every size that failed, and the smallest size that failed for
    # memory (oom, killed, timeout); a long-lived worker's failure at a size a brand-new process then
    # fitted with room to spare is no failure of the size (`search.disowned`).
    batch_size: Size | None
    first_oom: Size | None
    verified: bool = False  # batch_size ran its measured steps in a brand-new process
    predicted_batch_size: Count | None = None  # the memory model's edge, for comparison
    refined: bool = False  # the edge between powers of two was searched to the exact size
    # The largest size expected to fit on every run: batch_size less the run-to-run variation of
    # memory the edge allows for (`variation_bytes`: on CPU a share of where memory ran out, or what
    # brand-new fit checks showed; 0 on GPU).
    safe_batch_size: Size | None = None
    variation_bytes: Bytes | None = None


# The nested objects below stay plain dicts, also when a report is read back; these types give the
# JSON Schema their fields, where every one is always written. Not total: a report of an earlier
# release, without a field added since, still reads. (typing_extensions' TypedDict: pydantic needs
# it before Python 3.12.)
class CurvePoint(TypedDict, total=False):
    batch_size: int
    samples_per_s: float
    fitted_samples_per_s: float | None
    deviation: float | None  # from the curve, relative to the curve's value
    uncertainty: float


class ThroughputCurve(TypedDict, total=False):
    fixed_ms: float
    sample_ms: float
    doubling_ms: float
    plateau_samples_per_s: float | None
    points: list[CurvePoint]


class LoaderTiming(TypedDict, total=False):
    status: Literal["ok"]
    batch_size: int
    workers: int
    pin_memory: bool
    step_ms: dict[str, float | list[float] | None]  # as a trial's `step_ms`
    data_wait_ms: dict[str, float | list[float] | None]
    data_share: float | None
    samples_per_s: float | None
    epoch_s: float | None
    other_cpu_share: float | None  # as a trial's, while the loader was timed
    steal_share: float | None


class NoiseScaleEstimate(TypedDict, total=False):
    status: Literal["ok"]
    b_simple: float | None
    ci_low: float | None
    ci_high: float | None
    grad_sq: float
    trace_cov: float
    small_batch: int
    big_batch: int
    batches: int
    samples: int
    measured_at: str


class NotMeasured(TypedDict, total=False):
    """A measurement that failed (`status` as a trial's) or was skipped, and why."""

    status: str
    error: str | None


class MemoryLine(TypedDict, total=False):
    fixed_bytes: float
    per_sample_bytes: Measured
    ceiling_bytes: Bytes
    points: Count
    ceiling_from: Literal["limit", "failure", "fits"]
    predicted_edge: Count


@dataclass(frozen=True)
class Recommendation:
    batch_size: Size | None
    reason: str
    fastest_batch_size: Size | None = None
    largest_batch_size: Size | None = None
    lr: Measured | None = None  # scaled to the global batch
    accumulation_steps: Size | None = None
    global_batch_size: Size | None = None  # batch_size × world size × accumulation steps
    noisy: bool = False  # the recommended size's throughput is uncertain by more than the tolerance
    noise_scale: Union[NoiseScaleEstimate, NotMeasured, None] = None  # the gradient noise scale, when asked for
    loader: Union[LoaderTiming, NotMeasured, None] = None  # steps through the DataLoader at batch_size, for file data
    # The sizes whose throughput, within its interval, reaches within the tolerance of the fastest:
    # [smallest, largest]. The curve through every size's latest throughput (null below 3 sizes).
    interval: list[int] | None = None
    curve: ThroughputCurve | None = None
    # Those sizes themselves: a slower size between them is no tie (null in older reports).
    tied: list[int] | None = None


@dataclass(frozen=True)
class Requirement:
    """A threshold from the command line (`--require-batch`, `--require-throughput`) and its verdict."""

    name: str  # "recommended batch", "limit", "samples/s at the recommended batch"
    required: float
    actual: float | None
    passed: bool


@dataclass(frozen=True)
class Environment:
    torch_version: str | None
    device: str | None
    device_name: str | None
    memory_total_bytes: Bytes | None
    memory_limit_bytes: Bytes | None
    threads: Size | None = None
    python: str | None = None
    platform: str | None = None

    @property
    def usable_bytes(self) -> int | None:
        """The memory the trials could use: the limit, or the whole device (a GPU without one)."""
        return self.memory_limit_bytes or self.memory_total_bytes


@dataclass(frozen=True)
class Distributed:
    """How a distributed probe ran: every trial's batch_size is per device."""

    strategy: Literal["ddp", "fsdp"]
    world_size: Size
    nodes: Size
    backend: str | None  # nccl on GPU, gloo on CPU
    launcher: Literal["batchfind", "torchrun"]


@dataclass(frozen=True)
class Report:
    tool: dict[str, str]
    environment: Environment
    config: dict[str, Any]
    dataset_len: Count | None
    parameters: Count | None  # the model's parameter count
    # Items of varying length: {longest, shortest, scanned, total}; batches use the longest.
    input_lengths: dict[str, int] | None
    trials: list[Trial]
    limit: Limit
    recommendation: Recommendation
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    stopped_because: str | None = None
    wall_s: Measured | None = None
    memory_model: MemoryLine | None = None  # fixed_bytes + per_sample_bytes × batch, ceiling_bytes
    requirements: list[Requirement] = field(default_factory=list)
    distributed: Distributed | None = None  # null for a single-process probe
    # The class of the optimizer the trials stepped (`AdamW`): train.optimizer's, or a LightningModule's
    # own from configure_optimizers. Null in reports written before it was added.
    optimizer: str | None = None
    schema_version: Literal[2] = SCHEMA_VERSION  # `SCHEMA_VERSION`, stated to a report's schema

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # Envelope first: readers see what they are looking at before the details.
        order = ["schema_version", "tool", "environment", "distributed", "config", "dataset_len", "parameters",
                 "optimizer", "input_lengths", "trials", "limit", "memory_model", "recommendation", "requirements",
                 "warnings", "interrupted", "stopped_because", "wall_s"]
        return {key: data[key] for key in order}

    def to_json(self) -> str:
        return json.dumps(encodable(finite(self.to_dict())), indent=2, allow_nan=False)


def config_section(config: Any, name: str) -> dict:
    """A section of a report's config, or {}: the config is what the user wrote, read back, and a
    section may be anything."""
    section = config.get(name) if isinstance(config, dict) else None
    return section if isinstance(section, dict) else {}


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float as None: JSON has no such numbers, and in a report
    they can only mean "not measured" (a config cannot hold them; validation refuses them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def timed(trials: list[Trial]) -> list[Trial]:
    """The throughput measurements among the trials: what sizes are ranked by (a fit check's two
    steps, the first touching fresh memory, do not rank sizes)."""
    return [t for t in trials if t.fits and t.purpose == "throughput" and t.loss_finite and t.samples_per_s]


def latest_timed(trials: list[Trial]) -> dict[int, Trial]:
    """The latest throughput measurement at each size: a re-measure supersedes the first, and a
    later fit check (a verification) does not."""
    return {t.batch_size: t for t in timed(trials)}


# Above this share of all CPUs' time taken by other processes (or a hypervisor's other machines)
# while throughput was timed, the machine was busy.
BUSY_SHARE = 0.1


def busy(trials: list[Trial]) -> tuple[str, int] | None:
    """What kept the machine busy while throughput was timed (the median over those trials) and over
    how many trials, or None where it was quiet or nobody measured: the doubling's sizes and those
    measured again, sizes stopped after a step far slower than one that could compete (their step
    decided that they were slow) and fit checks past the headroom included."""
    loads = [t for t in trials if t.fits and t.phase in ("double", "remeasure")
             and t.other_cpu_share is not None and t.steal_share is not None]
    if not loads:
        return None
    said = load_text(statistics.median(t.other_cpu_share for t in loads),
                     statistics.median(t.steal_share for t in loads))
    return (said, len(loads)) if said else None


def load_text(other: float | None, steal: float | None) -> str | None:
    """What kept the machine busy, in words; None where neither share passed `BUSY_SHARE`."""
    parts = ([f"other processes used {other:.0%} of the CPUs"] if other is not None and other > BUSY_SHARE else []) + (
        [f"the hypervisor gave {steal:.0%} of their time to other machines (steal)"]
        if steal is not None and steal > BUSY_SHARE else [])
    return " and ".join(parts) or None


def first_fitting(trials: list[Trial]) -> dict[int, Trial]:
    """The first run that fitted at each size: its peak is that size's. On a CPU a size run again
    later ran in a worker holding what larger sizes left behind (cnn-small's 8: 355 MiB at first,
    464 MiB re-measured after 64)."""
    first: dict[int, Trial] = {}
    for t in trials:
        if t.fits:
            first.setdefault(t.batch_size, t)
    return first


def check_requirements(
    report: Report, *, batch: int | None = None, on: str = "recommended", throughput: float | None = None
) -> list[Requirement]:
    """Verdicts on the thresholds a CI job set; a size or speed that was not measured fails."""
    checks = []
    if batch is not None:
        actual = report.limit.batch_size if on == "limit" else report.recommendation.batch_size
        name = "limit" if on == "limit" else "recommended batch"
        checks.append(Requirement(name, batch, actual, actual is not None and actual >= batch))
    if throughput is not None:
        chosen = latest_timed(report.trials).get(report.recommendation.batch_size)
        actual = chosen.samples_per_s if chosen else None
        checks.append(Requirement("samples/s at the recommended batch", throughput, actual,
                                  actual is not None and actual >= throughput))
    return checks


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """The path to write `path` through. For a regular file (or a new one): a temporary beside it,
    renamed onto it when the block succeeds, so a reader never sees half a file and a failure
    leaves no temporary behind; the file keeps its permissions, and a symbolic link stays a link.
    For anything else (/dev/null, /dev/stdout, a FIFO, a shell's >(cmd)): `path` itself, written
    in place, since renaming over it would replace the device or the link."""
    target = replace_target(path)
    if target is None:
        yield Path(path)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # Once written: a read-only file's mode on the temporary would refuse the writing.
        _take_mode(Path(tmp), target)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def replace_target(path: Path) -> Path | None:
    """The regular file an atomic write of `path` renames onto (through symbolic links), or None
    when `path` must be written in place: it is a device, a FIFO or a socket, or it reaches a file
    through /proc (/dev/stdout, /dev/fd/N), which is some process's open file, not a name."""
    kind, hop = _follow(path)
    if kind != "path":
        return None
    try:
        mode = os.stat(hop).st_mode
    except FileNotFoundError:
        return hop
    return hop if stat.S_ISREG(mode) else None


def _follow(path: Path) -> tuple[str, Any]:
    """Where `path`'s symbolic links lead: ("path", the last one), ("fd", N) for this process's
    descriptor N (/dev/stdout, /dev/fd/N), or ("proc", None) for another process's."""
    hop = Path(os.path.abspath(path))
    mine = f"/proc/{os.getpid()}/fd"
    for _ in range(40):  # the kernel's own limit on links followed
        if not hop.is_symlink():
            break
        folder = os.path.realpath(hop.parent)
        if folder == mine and hop.name.isdigit():
            return "fd", int(hop.name)
        if folder == "/proc" or folder.startswith("/proc/"):
            return "proc", None
        hop = Path(os.path.normpath(os.path.join(folder, os.readlink(hop))))
    return "path", hop


def _take_mode(tmp: Path, target: Path) -> None:
    """The replacement gets the replaced file's mode (and owner, where allowed); a new file the
    umask's default, not mkstemp's 0600."""
    try:
        old = os.stat(target)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        return
    os.chmod(tmp, stat.S_IMODE(old.st_mode))
    try:
        os.chown(tmp, old.st_uid, old.st_gid)
    except OSError:
        pass  # only root may give a file away; the mode is kept either way


def write_atomic(path: Path, data: str | bytes) -> None:
    """`data` (text as UTF-8) written to `path` as atomic_path says: renamed into place, or in place."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    kind, fd = _follow(path)
    if kind == "fd":  # /dev/stdout: this process's own descriptor, in turn with what it prints
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return
    with atomic_path(path) as target:
        # In place: appended, never truncated: another process's /proc/N/fd/M may be a file holding its output.
        with open(target, "wb" if target != Path(path) else "ab") as f:
            f.write(data)
            f.flush()
            if stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                os.fsync(f.fileno())  # a pipe or a terminal has nothing to sync


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the report, derived from these types so the two cannot drift apart."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(Report).json_schema(mode="serialization")
    # Every field is always written (null when not measured); readers may rely on its presence.
    for definition in [schema, *schema.get("$defs", {}).values()]:
        if "properties" in definition:
            definition["required"] = list(definition["properties"])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://batchfind.dev/schema/report-v{SCHEMA_VERSION}.json",
        **schema,
        "title": f"batchfind report, schema version {SCHEMA_VERSION}",
    }


def _from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 reports (one process, `effective_batch_size` set only with accumulation) read as
    version 2, so baselines kept from before still compare."""
    upgraded = {**data, "schema_version": SCHEMA_VERSION, "distributed": None}
    parts = [t for t in data.get("trials") or [] if isinstance(t, dict)]
    if isinstance(data.get("recommendation"), dict):
        parts.append(data["recommendation"])
    for part in parts:
        effective = part.pop("effective_batch_size", None)
        part["global_batch_size"] = effective if effective is not None else part.get("batch_size")
    return upgraded


def _not_json(token: str) -> None:
    # Python's json reads NaN and Infinity, which JSON does not have (and comparisons would carry).
    raise ValueError(f"{token} is not a JSON number")


def _finite(token: str) -> float | int:
    value = float(token)
    if not math.isfinite(value):  # 1e999: infinity, under another name
        raise ValueError(f"{clipped(token, 40)} is beyond any float")
    # JSON Schema reads 8.0 as an integer, and so does the strict reading here; a float field takes
    # an int as it is.
    return int(value) if value.is_integer() and abs(value) <= 2**53 else value


def _bounded(token: str) -> int:
    value = int(token)
    if abs(value) >= 2**1023:  # arithmetic in floats (compare's ratios) would overflow
        raise ValueError(f"{clipped(token, 40)} is beyond any float")
    return value


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def load_report(path: Path) -> Report:
    """A report written by batchfind, validated against the schema; problems name the file and field."""
    from pydantic import TypeAdapter, ValidationError

    from .errors import InputError, printable

    from .files import MAX_REPORT_BYTES, check_shape, read_text

    text = read_text(Path(path), MAX_REPORT_BYTES, "a JSON report")
    try:
        data = json.loads(text, parse_constant=_not_json, parse_float=_finite, parse_int=_bounded)
    except ValueError as exc:  # JSONDecodeError, NaN, an integer of thousands of digits
        raise InputError(f"{path}: not a JSON report: {exc}") from None
    except RecursionError:
        raise InputError(f"{path}: not a JSON report: nested too deeply to parse") from None
    check_shape(data, Path(path), max_values=None, max_text=None)
    data = printable(data)  # what compare and plot show of it stays text
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a JSON report: expected an object at the top level (got {_json_kind(data)})")
    version = data.get("schema_version")
    if isinstance(version, bool):  # true == 1 in Python, not in JSON
        version = None
    if version == 1:
        data = _from_v1(data)
    elif version != SCHEMA_VERSION:
        given = json.dumps(data.get("schema_version"))
        raise InputError(f"{path}: schema_version: expected {SCHEMA_VERSION} or 1 (got {given})")
    try:
        # Strict, as JSON Schema reads it: "no" is no boolean and "64" no size (lax validation
        # would read an interrupted report marked "interrupted": "no" as a whole probe).
        return TypeAdapter(Report).validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        # In JSON's words: a report is JSON, and the dataclass behind a part is no name to its reader.
        kinds = {"dataclass_type": "an object", "list_type": "an array", "int_type": "an integer",
                 "bool_type": "a boolean", "float_type": "a number", "string_type": "a string"}
        message = ("required" if first["type"] == "missing"
                   else f"expected {kinds[first['type']]} (got {_json_kind(first['input'])})" if first["type"] in kinds
                   else plain(first["msg"]))
        raise InputError(f"{path}: {field}: {message}") from None
