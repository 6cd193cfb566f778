"""The ``hamode`` command: ``hamode fit|validate|test|predict`` (:mod:`lightning_modules.cli`) and ``hamode compare``
(:mod:`lightning_modules.compare`). Kept apart from both so that neither imports the other's entry point."""

from __future__ import annotations

import signal
import sys

__all__ = ["main"]


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``hamode`` console script (``hamode compare`` goes to :mod:`lightning_modules.compare`)."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] in (["--version"], ["-V"]):
        from hamode import __version__

        print(f"hamode {__version__}")
        return
    if argv and argv[0] == "compare":
        from .compare import main as compare_main

        compare_main(argv[1:])
        return
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .cli import cli

    try:
        cli(args)
    except SIGTERMException:  # Lightning's own (outside training): a SystemExit without a status, i.e. 0
        raise SystemExit(128 + signal.SIGTERM) from None


if __name__ == "__main__":  # python -m lightning_modules.main
    main(sys.argv[1:])
