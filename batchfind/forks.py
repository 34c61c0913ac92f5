"""Brand-new CPU workers forked from a process that has imported torch, instead of started from nothing.

A worker started from nothing spends 2-3 s of a core on Python, torch and torch._dynamo before it
builds the model. A probe proves its edge in two or three brand-new workers, and on a small machine
each start ran beside a fit check near the edge and slowed it. The `Launcher` does those imports
once per probe and forks a worker from there each time a fit check needs one (ready in 0.3-0.5 s):
the child starts where a worker started from nothing stands after the same imports
(`imports_first`), and the memory cap counts what it inherited as it counts the same imports made
by the worker itself (RLIMIT_DATA covers inherited private mappings). At the same size near the
shipped configs' edges, the two kinds of worker peaked within 1 MiB of each other
(benchmarks/forked.py). The launcher never touches a device; the probe uses one only where it
surely runs on a CPU (`devices.surely_cpu`).

The launcher is the children's parent: it tells the probe each child's pid as it forks it, and how
each one ended once it has reaped it, so `Forked` can stand in for `subprocess.Popen` in `Worker`.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time

from .config import OPTIMIZERS
from .worker import HOME, _serve as serve, boot, die_with_parent


def imports_first(optimizer: str) -> tuple[str, ...]:
    """What a worker for fit checks imports before it builds the model, for a config's
    `train.optimizer`. A builtin optimizer's constructor imports torch._dynamo (any
    torch.optim.Optimizer does: 70 MiB of data segment, a core for a second), which the launcher
    imports once for all its children. Imported late instead, where set-up makes the optimizer, it
    moved a worker's peak near a CPU edge by 1.0-1.4 MiB against a forked one's
    (docs/benchmarks.md): so every worker for fit checks (`batchfind check`'s too) imports it
    first. A worker that times steps imports it where set-up makes the optimizer, so a model or
    data that cannot be built fails without waiting for it."""
    return ("torch._dynamo",) if optimizer in OPTIMIZERS else ()


class Launcher:
    """The process the fit checks' workers are forked from; started with their environment (`env`),
    which every child inherits."""

    def __init__(self, env: dict[str, str], imports: tuple[str, ...] = ()):
        """`imports`: what the workers import before they build the model (`imports_first`)."""
        # Messages keep their bounds, and the fds passed ride with the request that names them.
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen([sys.executable, "-c", _BOOT, HOME, str(theirs.fileno()), *imports],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env=env, pass_fds=[theirs.fileno()],
                                      start_new_session=True, preexec_fn=die_with_parent)
        theirs.close()
        self._asked: list[Forked] = []  # asked for in order, their pids still to come
        self._ended: dict[int, int] = {}  # pid -> exit code as subprocess gives it (-N: signal N)
        self.is_ready = False
        self.gone = False

    def ready(self, timeout_s: float) -> bool:
        """Wait until the launcher has done its imports (up to `timeout_s`); False if it failed."""
        deadline = time.monotonic() + timeout_s
        while not self.is_ready and not self.gone and time.monotonic() < deadline:
            self.collect(max(0.0, deadline - time.monotonic()))
        return self.is_ready and not self.gone

    def spawn(self, stderr: int) -> Forked | None:
        """A child writing to `stderr`, its stdin and stdout piped to this process; None if the
        launcher is gone. Returns at once: the child's pid is read when first needed."""
        theirs_in, stdin = os.pipe()
        stdout, theirs_out = os.pipe()
        try:
            child = self.fork(theirs_in, theirs_out, stderr)
        except OSError:
            os.close(stdin)
            os.close(stdout)
            return None
        finally:
            os.close(theirs_in)
            os.close(theirs_out)
        child.stdin, child.stdout = os.fdopen(stdin, "wb"), os.fdopen(stdout, "rb")
        return child

    def fork(self, stdin: int, stdout: int, stderr: int) -> Forked:
        """A child whose fds 0, 1 and 2 are these. OSError if the launcher is gone."""
        socket.send_fds(self._sock, [b"fork"], [stdin, stdout, stderr])
        child = Forked(self)
        self._asked.append(child)
        return child

    def collect(self, timeout_s: float | None) -> None:
        """Read what the launcher has said (waiting up to `timeout_s` for a first word; None: as
        long as it takes): that it is ready, pids of children forked, codes of children ended."""
        while not self.gone and select.select([self._sock], [], [], timeout_s)[0]:
            timeout_s = 0
            try:
                message = self._sock.recv(64)
            except ConnectionResetError:  # killed, with words unread
                message = b""
            if not message:
                self._lost()
                return
            kind, *numbers = message.decode().split()
            if kind == "ready":
                self.is_ready = True
            elif kind == "pid":
                self._asked.pop(0).pid = int(numbers[0])
            else:
                self._ended[int(numbers[0])] = int(numbers[1])

    def exit_code(self, pid: int) -> int | None:
        """How child `pid` ended, once the launcher has reaped it (as `Popen.returncode`)."""
        code = self._ended.pop(pid, None)
        # Gone, the launcher took its children with it (they die with their parent).
        return -signal.SIGKILL if code is None and self.gone else code

    def close(self) -> None:
        """Kill the launcher; children still running die with it."""
        self._proc.kill()
        self._proc.wait()
        if not self.gone:
            self._lost()

    def _lost(self) -> None:
        self.gone = True
        self._sock.close()
        for child in self._asked:
            child.pid = NOT_FORKED
        self._asked = []


# The pid of a child asked for that the launcher never forked (it was gone).
NOT_FORKED = -1


class Forked:
    """A forked worker, as much of `subprocess.Popen` as `Worker` uses."""

    def __init__(self, launcher: Launcher):
        self._launcher = launcher
        self._pid: int | None = None
        self.returncode: int | None = None
        self.stdin = self.stdout = None  # set by `Worker`

    @property
    def pid(self) -> int:
        """The child's pid, or `NOT_FORKED`."""
        while self._pid is None:
            self._launcher.collect(None)
        return self._pid

    @pid.setter
    def pid(self, value: int) -> None:
        self._pid = value

    def poll(self) -> int | None:
        if self.returncode is None:
            self._launcher.collect(0)
            if self._pid == NOT_FORKED:
                self.returncode = -signal.SIGKILL
            elif self._pid is not None:
                self.returncode = self._launcher.exit_code(self._pid)
        return self.returncode

    def wait(self) -> int:
        while self.poll() is None:
            self._launcher.collect(None)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None and self.pid != NOT_FORKED:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---- launcher side ----------------------------------------------------------------------

_BOOT = boot("batchfind.forks", "_serve(int(sys.argv[2]), sys.argv[3:])")


def _serve(fd: int, imports: list[str]) -> None:
    import importlib

    sock = socket.socket(fileno=fd)
    # What a worker imports before it builds the model: the session (with torch), then `imports_first`.
    for name in (f"{__package__}.models", f"{__package__}.session", *imports):
        importlib.import_module(name)

    sock.send(b"ready")
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        readable = select.select([sock, wake_r], [], [])[0]
        if wake_r in readable:
            os.read(wake_r, 4096)
            _reap(sock)
        if sock in readable:
            message, fds, _, _ = socket.recv_fds(sock, 64, 3)
            if not message:
                return  # the probe is gone, or done
            pid = os.fork()
            if pid == 0:
                _child(sock, fds, (wake_r, wake_w))
            for passed in fds:
                os.close(passed)
            sock.send(f"pid {pid}".encode())


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(f"exit {pid} {os.waitstatus_to_exitcode(status)}".encode())


def _child(sock: socket.socket, fds: list[int], wake: tuple[int, int]) -> None:
    """In the forked child: become a worker on the fds passed, as `Worker` starts one."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        for fd in wake:
            os.close(fd)
        os.setsid()  # its own process group, as `Worker` gives one
        die_with_parent()  # the launcher, which dies with the probe
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)
        _restart_blas_threads()
        serve()
        code = 0
    except BaseException:  # noqa: BLE001 - said on stderr, as a worker started from nothing would
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _restart_blas_threads() -> None:
    """OpenBLAS (numpy's, loaded with torch where numpy is installed) ends its threads before a
    fork and starts them again only when next used. A worker started from nothing has them from
    its first import, and their stacks count in its data segment: without them, an OpenMP thread
    of the child's took a stack they left free, a cnn-small child held 7 MiB less, and a probe
    proved 1560, which three workers started from nothing then failed. So they start here, as at
    import."""
    import ctypes

    with open("/proc/self/maps") as maps:
        paths = {line.split(None, 5)[-1].strip() for line in maps if "openblas" in line.rsplit("/", 1)[-1]}
    for path in paths:
        try:
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
        except OSError:
            continue
        start = getattr(library, "blas_thread_init", None)  # absent where OpenBLAS uses OpenMP
        if start is not None:
            start()
