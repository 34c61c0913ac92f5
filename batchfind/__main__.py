"""`python -m batchfind` and the `batchfind` command."""

import signal
import sys


def main() -> None:
    # Ctrl-C while Python loads the CLI (typer, rich: a second or two) is an interrupt like any
    # other, not a traceback.
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    run()


if __name__ == "__main__":
    main()
