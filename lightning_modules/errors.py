"""How the ``hamode`` command reports an error: a user's mistake as one short message with exit status 2, a run
that fails on its own with status 1, anything else (a bug) with its traceback."""

from __future__ import annotations

import re
import traceback
from pathlib import Path

__all__ = ["USAGE_ERROR", "explain", "innermost_error"]

USAGE_ERROR = 2
"""Exit status of a command refused for its arguments (as argparse's)."""

_OURS = (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "hamode")
_RUN_FAILURES = ("NonFiniteLossError", "ImplicitSolveError", "ContinuousSolveError")


def innermost_error(error: BaseException) -> BaseException:
    """The exception at the bottom of ``raise ... from ...`` chains: the one that says what was wrong."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None:
            break
        error = inner
    return error


def _raised_by_hamode(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and any(Path(frames[-1].filename).resolve().is_relative_to(p) for p in _OURS)


def _flag_of(message: str, argv: list[str]) -> str:
    """The command-line argument that gave a value the message quotes (``--model.x=bad`` or ``--model.x bad``)."""
    for value in re.findall(r"'([^']+)'|=(\S+)", message):
        value = value[0] or value[1]
        for i, arg in enumerate(argv):
            if arg.startswith("--") and "=" in arg and arg.split("=", 1)[1] == value:
                return arg
            if arg.startswith("--") and "=" not in arg and i + 1 < len(argv) and argv[i + 1] == value:
                return f"{arg} {value}"
    return ""


def explain(error: BaseException, command: str, argv: list[str] = ()) -> tuple[str, int] | None:
    """``(message, exit status)`` for an error a user should see without a traceback, else None (a bug: the
    traceback is shown). ``argv``: the command's arguments, to name the flag that gave a refused value."""
    if isinstance(error, SystemExit):
        if isinstance(error.code, str):  # hamode's own refusals: SystemExit("hamode fit: ...")
            return error.code, USAGE_ERROR
        return None
    inner = innermost_error(error)
    if type(inner).__name__ in _RUN_FAILURES or type(error).__name__ in _RUN_FAILURES:
        failure = inner if type(inner).__name__ in _RUN_FAILURES else error
        return f"{command}: {type(failure).__name__}: {failure}", 1
    if isinstance(inner, (ValueError, TypeError, KeyError, FileNotFoundError)) and _raised_by_hamode(inner):
        message = str(inner.args[0] if isinstance(inner, KeyError) and inner.args else inner)
        flag = _flag_of(message, list(argv))
        return f"{command}: error: {message}" + (f"\n(given by {flag})" if flag else ""), USAGE_ERROR
    return None
