"""Trials run in a child process, so an out-of-memory, a crash or a hang cannot take the tool down.

The parent speaks JSON lines with `python -m batchfind.worker`: one setup request (the config, and
the child's rank in a distributed probe), then one request per batch size; the child answers on its
original stdout and sends everything else (the user's prints, warnings) to stderr, which the parent
keeps for error messages. Waiting, timeouts and stopping hung children are the group's job
(`group.py`), which may wait on several children at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .devices import looks_like_oom


class SetupFailed(Exception):
    """The workers could not build the model and data; `status` says how (input, oom, error, ...)."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Worker:
    """One child process. It is started and sent its setup at once; its replies are read as they come,
    so several workers (one per rank) can be waited on together."""

    def __init__(self, setup: dict[str, Any]):
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The child must import this same batchfind, installed or not.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent), env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "batchfind.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            preexec_fn=_die_with_parent,
        )
        self._buffer = b""
        self.send(setup)

    def fileno(self) -> int:
        return self._proc.stdout.fileno()

    def send(self, message: dict[str, Any]) -> None:
        try:
            self._proc.stdin.write((json.dumps(message) + "\n").encode())
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # the child is gone; read() reports how it ended

    def _message(self) -> dict[str, Any] | None:
        """A complete message already read, if any."""
        if b"\n" not in self._buffer:
            return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def read(self) -> dict[str, Any] | None:
        """After the pipe turned readable: the next message, one saying how the child ended, or None
        while a message is still incomplete."""
        chunk = os.read(self.fileno(), 65536)
        if not chunk:
            return self._ended()
        self._buffer += chunk
        return self._message()

    def stop(self, status: str, error: str) -> dict[str, Any]:
        """Kill the child now (hung, or waiting on a rank that failed); returns that as its reply,
        unless it had already ended on its own: then how it ended."""
        if self._proc.poll() is not None:
            return self._ended()
        self._proc.kill()
        self._proc.wait()
        return {"status": status, "error": error}

    def end_input(self) -> None:
        """The child's loop ends at the end of its input."""
        try:
            self._proc.stdin.close()
        except OSError:
            pass

    def close(self, kill: bool = False, wait_s: float = 5.0) -> None:
        """End the child: at the end of its input, or at once (`kill`) when it is not worth waiting for."""
        try:
            if not kill and self._proc.poll() is None:
                self.end_input()
                try:
                    self._proc.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    pass
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
        finally:
            for stream in (self._proc.stdin, self._proc.stdout, self._stderr):
                try:
                    stream.close()
                except OSError:
                    pass

    def _ended(self) -> dict[str, Any]:
        code = self._proc.wait()
        tail = self._stderr_tail()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            # SIGKILL from outside is almost always the kernel's OOM killer; other signals are crashes.
            status = "killed" if -code == signal.SIGKILL else "error"
            return {"status": status, "error": f"worker killed by {name}" + (f": {tail}" if tail else "")}
        status = "oom" if looks_like_oom(tail) else "error"
        return {"status": status, "error": f"worker exited with code {code}" + (f": {tail}" if tail else "")}

    def _stderr_tail(self, lines: int = 3) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])


def _die_with_parent() -> None:
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
    from .session import Session, setup_failure

    try:
        session = Session(request["config"], request.get("rank"))
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, none crashes the probe
        send({"event": "failed", **setup_failure(exc)})
        return
    send({"event": "ready", "status": "ok", **session.facts})
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        send({"event": op, **session.serve(op, request)})
    session.close()


if __name__ == "__main__":
    _serve()
