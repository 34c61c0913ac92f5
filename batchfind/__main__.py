"""`python -m batchfind` and the `batchfind` command."""

import signal
import sys


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    # SIGTERM (a cancelled CI job) and SIGHUP (a closed terminal, a dropped SSH session) are
    # interrupts like Ctrl-C from the start, not only once a probe runs: exit 130 either way. A
    # signal the process was started ignoring (nohup) stays ignored.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _interrupted)
    # Ctrl-C while Python loads the CLI (typer, rich: a second or two) or while typer builds the
    # command, before a command handles it, is an interrupt like any other, not a traceback.
    try:
        from .cli import main as run

        run()
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
    main()
