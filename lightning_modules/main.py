"""The ``hamode`` command: ``hamode fit|validate|test|predict`` (`lightning_modules.cli`) and ``hamode compare``
(`lightning_modules.compare`). Kept apart from both so that neither imports the other's entry point.

A user's mistake (a bad value, an unknown name, a refused checkpoint or resume) is printed as one short message and
the command exits with status 2; a run that fails on its own (a diverged loss, a solve that does not converge) with
status 1 and its message. ``--debug`` (anywhere on the command line) or ``HAMODE_DEBUG=1`` shows the traceback.

The command keeps freed CPU memory for reuse ([`hamode.memory`][hamode.memory]; ``HAMODE_KEEP_FREED_MEMORY=0`` turns
that off).
"""

from __future__ import annotations

import os
import signal
import sys

from hamode.memory import keep_freed_memory, keep_freed_memory_requested

from .errors import explain

__all__ = ["main"]


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``hamode`` console script (``hamode compare`` goes to `lightning_modules.compare`)."""
    argv = sys.argv[1:] if args is None else list(args)
    debug = "--debug" in argv or os.environ.get("HAMODE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] in (["--version"], ["-V"]):
        from hamode import __version__

        print(f"hamode {__version__}")
        return
    command = f"hamode {argv[0]}" if argv and not argv[0].startswith("-") else "hamode"
    if keep_freed_memory_requested():  # the command owns its process (hamode.memory; HAMODE_KEEP_FREED_MEMORY=0: off)
        keep_freed_memory()
    try:
        _dispatch(argv)
    except (KeyboardInterrupt, SystemExit) as error:
        found = None if debug or isinstance(error, KeyboardInterrupt) else explain(error, command, argv)
        if found is None:
            raise
        print(found[0], file=sys.stderr)
        raise SystemExit(found[1]) from None
    except Exception as error:
        found = None if debug else explain(error, command, argv)
        if found is None:
            raise
        message, status = found
        print(f"{message}\n(the traceback: add --debug, or set HAMODE_DEBUG=1)", file=sys.stderr)
        raise SystemExit(status) from None


def _dispatch(argv: list[str]) -> None:
    if argv and argv[0] == "compare":
        from .compare import main as compare_main

        compare_main(argv[1:])
        return
    try:
        from lightning.pytorch.utilities.exceptions import SIGTERMException
    except ModuleNotFoundError as error:  # hamode installed without its training extra
        raise SystemExit(
            f"hamode: the command needs the training extra ({error.name} is not installed): "
            "pip install 'hamode[train]' (from a clone: pip install -e '.[train]')"
        ) from None

    from .cli import cli

    try:
        cli(argv)
    except SIGTERMException:  # Lightning's own (outside training): a SystemExit without a status, i.e. 0
        raise SystemExit(128 + signal.SIGTERM) from None


if __name__ == "__main__":  # python -m lightning_modules.main
    main(sys.argv[1:])
