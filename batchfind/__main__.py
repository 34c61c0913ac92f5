"""`python -m batchfind` and the `batchfind` command."""

import signal
import sys


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    # SIGTERM (a cancelled CI job) is an interrupt like Ctrl-C from the start, not only once a probe
    # runs: exit 130 either way. A signal the process was started ignoring stays ignored.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupted)
    # Ctrl-C while Python loads the CLI (typer, rich: a second or two) is an interrupt like any
    # other, not a traceback.
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    run()


if __name__ == "__main__":
    main()
