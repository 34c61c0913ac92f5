"""Trials run in a child process, so an out-of-memory, a crash or a hang cannot take the tool down.

The parent speaks JSON lines with a child running `_serve`: one setup request (the config, and
the child's rank in a distributed probe), then one request per batch size; the child answers on its
original stdout and sends everything else (the user's prints, warnings) to stderr, which the parent
keeps for error messages (and under --debug also passes on as it comes). While a trial runs the
child also sends `progress` events, one per step. A standby child (`"standby": true`) builds the model and then
waits for a `start` request before it touches the device. Waiting, timeouts and stopping hung
children are the group's job (`group.py`), which may wait on several children at once.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .devices import looks_like_oom
from .errors import debugging, printable

if TYPE_CHECKING:
    from .forks import Launcher


class SetupFailed(Exception):
    """The workers could not build the model and data; `status` says how (input, oom, error, ...)."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Worker:
    """One child process. It is started and sent its setup at once; its replies are read as they come,
    so several workers (one per rank) can be waited on together."""

    def __init__(self, setup: dict[str, Any], fits_only: bool = False, launcher: Launcher | None = None):
        """`fits_only`: the worker runs fit checks and times nothing (a CPU worker's allocator is
        set for that: `steady_allocator`). `launcher`: fork it from there (started with this
        worker's environment) rather than start it from nothing."""
        # What the user's code prints is kept for the error of a worker that dies (its last words
        # say whether an allocation failed), and under --debug also shown as it comes.
        self._stderr = tempfile.TemporaryFile()
        self._kept = threading.Lock()
        echo, stderr = os.pipe() if debugging() else (None, self._stderr)
        self._proc = launcher and launcher.spawn(stderr if isinstance(stderr, int) else stderr.fileno())
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, HOME],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=environment(str(setup["config"]["probe"]["device"]), fits_only),
                # Its own process group, so processes it starts (DataLoader workers, a user's factory's)
                # end with it.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self._echo = None
        if echo is not None:
            os.close(stderr)
            self._echo = threading.Thread(target=self._show, args=(echo,), daemon=True)
            self._echo.start()
        self._buffer = b""
        self.running: str | None = None  # what of the user's code the child runs now, if it said
        self.send(setup)

    def fileno(self) -> int:
        return self._proc.stdout.fileno()

    def private_bytes(self) -> int | None:
        """The memory the child holds of its own now: resident, less the pages it shares with files
        (torch's libraries). None where the system does not say, or once the child is gone."""
        import psutil

        if self._proc.poll() is not None:
            return None
        try:
            info = psutil.Process(self._proc.pid).memory_info()
        except psutil.Error:
            return None
        return info.rss - getattr(info, "shared", 0)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self._proc.stdin.write((json.dumps(message) + "\n").encode())
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # the child is gone; read() reports how it ended

    def read(self) -> list[dict[str, Any]]:
        """After the pipe turned readable: the messages completed by what arrived (none while one is
        still incomplete), or one saying how the child ended."""
        chunk = os.read(self.fileno(), 65536)
        if not chunk:
            return [self._ended()]
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        messages = [printable(json.loads(line)) for line in lines]
        for message in messages:
            if message.get("event") == "user code":
                self.running = message["running"]
        return [m for m in messages if m.get("event") != "user code"]

    def stop(self, status: str, error: str) -> dict[str, Any]:
        """Kill the child now (hung, or waiting on a rank that failed); returns that as its reply,
        unless it had already ended on its own: then how it ended."""
        if self._proc.poll() is not None or self._exiting():
            return self._ended()
        self._kill()
        if status == "timeout" and self.running:
            # Hung in the user's factory (waiting on a download, a lock, a prompt): no batch ran, so
            # it is no sign of memory; the code that hung is named.
            return {"status": "input", "error": f"{self.running} did not return: {error}"}
        return {"status": status, "error": error}

    def _exiting(self) -> bool:
        """Linux: whether the child is on its way out already (PF_EXITING), dying on its own. Its
        sockets close before it can be reaped, so a rank whose peer it was may report the peer lost
        before `poll` sees the child gone; stopped then, a child the kernel's OOM killer ended would
        read as stopped by us (a distributed trial on a loaded 2-core CPU, one time in three)."""
        try:
            with open(f"/proc/{self._proc.pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold anything
            return bool(int(fields[6]) & PF_EXITING)
        except (OSError, IndexError, ValueError):
            return False

    def _kill(self) -> None:
        if self._proc.pid < 0:
            return  # a child its launcher never forked (`forks.NOT_FORKED`)
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except OSError:
            self._proc.kill()
        self._proc.wait()

    def close(self) -> None:
        """Kill the child and whatever it started: a worker that is done holds nothing worth waiting
        for, and killing it frees its memory at once."""
        try:
            self._kill()
        finally:
            with self._kept:
                for stream in (self._proc.stdin, self._proc.stdout, self._stderr):
                    try:
                        stream.close()
                    except OSError:
                        pass

    def _ended(self) -> dict[str, Any]:
        code = self._proc.wait()
        tail = printable(self._stderr_tail())
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            # SIGKILL from outside is almost always the kernel's OOM killer; other signals are crashes,
            # except an abort whose last words are a failed allocation (C++'s std::bad_alloc).
            status = "killed" if -code == signal.SIGKILL else "oom" if looks_like_oom(tail) else "error"
            how = f"killed by {name}"
        else:
            status, how = ("oom" if looks_like_oom(tail) else "error"), f"exited with code {code}"
        said = f": {tail}" if tail else ""
        if status == "error" and self.running:
            # The user's factory took the worker down: a model or data that cannot be built.
            return {"status": "input", "error": f"{self.running} ended the worker ({how}){said}"}
        return {"status": status, "error": f"worker {how}{said}"}

    def _stderr_tail(self, lines: int = 3) -> str:
        if self._echo is not None:
            self._echo.join(timeout=1.0)  # its last words may still be in the pipe
        with self._kept:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def _show(self, echo: int) -> None:
        """Under --debug: what the child writes to stderr, passed on to this process's as it comes,
        and kept as without --debug."""
        with open(echo, "rb", buffering=0) as pipe:
            for chunk in iter(lambda: pipe.read(65536), b""):
                try:
                    os.write(2, chunk)
                except OSError:
                    pass  # nowhere to show it; still kept
                with self._kept:
                    if self._stderr.closed:
                        return
                    self._stderr.seek(0, os.SEEK_END)
                    self._stderr.write(chunk)


# The child must import this same batchfind, installed or not (and the processes it starts).
HOME = str(Path(__file__).parent.parent)


def environment(device: str, fits_only: bool) -> dict[str, str]:
    """A worker's environment, for a probe on `device` (as the config names it)."""
    # Asking torch whether a GPU exists must not create a CUDA context in a standby: NVML counts
    # the cards (devices.cuda_usable then asks the CUDA runtime, which creates none either).
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTORCH_NVML_BASED_CUDA_CHECK="1")
    if not device.startswith("cuda"):
        env = steady_allocator(env, fits_only)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [HOME, env.get("PYTHONPATH")]))
    return env


# glibc serves allocations at or above a threshold with their own mappings, returned to the system
# when freed. By default the threshold rises with the largest block freed (up to 32 MiB), so which
# tensors come from the heap, and how fragmented it gets, changes from run to run: a small CNN's
# peak at one batch size spread over 94 MiB in three runs, and under a CPU cap a size failed where
# a larger one fitted in the next run.
# Fixed at 4 MiB, the peak repeated within 3 MiB (docs/benchmarks.md).
MMAP_THRESHOLD = 4 << 20


# The kernel's flag on a task that has begun to exit (include/linux/sched.h).
PF_EXITING = 0x4

# A heap that never gives its top back: see `steady_allocator`.
NO_TRIM = 1 << 40


def steady_allocator(env: dict[str, str], fits_only: bool) -> dict[str, str]:
    """A CPU worker's environment with glibc's allocator held steady; settings the user made win.

    Each step maps its large tensors afresh. Where the kernel reports free memory to a hypervisor
    (virtio-balloon free page reporting: VMs), it hands the free 2 MiB blocks that huge pages need
    back to the host, and faulting them in again stalls: a 256 MiB tensor written afresh on huge
    pages took 42 ms back to back and 161 ms a second apart, on small pages 91 and 95 ms
    (benchmarks/given_back.py). So workers that time steps map on small pages, and keep the top of
    their heap instead of giving it back after each step (a fixed mmap threshold leaves glibc's
    trim threshold at 128 KiB): regrown page by page each step, it made a size's first trial run
    12-23% slower than the same size timed again later in the same worker (cnn-small's 16:
    447-512 against 579-580 samples/s; kept, 582-590 and 592-622: benchmarks/drift.py). Workers
    that run fit checks only (`fits_only`) time nothing: they map on huge pages, which near a CPU's
    edge ran quicker for cnn-small (checks 8.2-9.1 s against 10.3-11.1 s; whole probes a median
    39.0 s against 42.2) though not for gpt-small, whose first step there maps memory given back
    (26.1 s against 24.8; how much either gains turns on the host's memory that hour), and trim as
    glibc does."""
    env = dict(env)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    if not fits_only:
        env.setdefault("MALLOC_TRIM_THRESHOLD_", str(NO_TRIM))
    elif "glibc.malloc.hugetlb" not in env.get("GLIBC_TUNABLES", ""):
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"]))
    return env


def boot(module: str, call: str) -> str:
    """A child's start (`python -c`, this batchfind's folder first in its arguments): this batchfind
    first, even where the working directory (first on the path, so that a user's factory module
    there imports) holds a folder of that name; then the path as it was."""
    return f"import sys; sys.path.insert(0, sys.argv[1]); import {module}; del sys.path[0]; {module}.{call}"


_BOOT = boot("batchfind.worker", "_serve()")


def die_with_parent() -> None:
    # Linux: the child gets SIGKILL if batchfind itself dies, so no worker outlives it.
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# ---- child side -------------------------------------------------------------------------


def _serve() -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by user code goes to stderr, never into the protocol
    # Ctrl-C is for the parent, which stops this process itself after saving what it has.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def send(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")

    request = json.loads(sys.stdin.readline())
    from . import models
    from .session import Session, setup_failure

    models.announce = lambda running: send({"event": "user code", "running": running})

    try:
        session = Session(request["config"], request.get("rank"), request.get("learned"), request.get("smallest", True),
                          request.get("fits_only", False))
        standby = request.get("standby")
        # A standby waits before touching the device (a CUDA context would take memory from the
        # worker at work); a CPU has nothing to protect, so there it sets up in full and waits ready,
        # unless that means reading a dataset of the user's that the worker beside it reads too.
        facts = session.start() if standby and not session.wants_gpu and not session.reads_items else None
        if standby:
            send({"event": "standing by", "status": "ok"})
            line = sys.stdin.readline()
            if not line:
                return  # the probe ended without needing this standby
            # A standby started beside the first worker could not be told what that worker learned.
            session.learned = session.learned or json.loads(line).get("learned")
        facts = facts or session.start()
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, none crashes the probe
        send({"event": "failed", **setup_failure(exc)})
        return
    # What set-up left alive (torch's modules, the model, the data) lives as long as this worker:
    # frozen, the full collection after each request (`devices.release`) walks only what requests
    # made since. Over the 300,000 objects a CPU worker holds after set-up it took 70-85 ms, on
    # every trial and at the end of every fit check near the edge.
    gc.freeze()

    def progress(message: dict[str, Any]) -> None:
        send({"event": "progress", **message})

    send({"event": "ready", "status": "ok", **facts})
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        send({"event": op, **session.serve(op, request, progress)})
    session.close()

