"""How every command (`python -m regress.fit`, `regress.generate`, `regress.evaluate`) ends on an error: one line
on stderr, `regress.JOB: error: ...`, and an exit status that says where the fault lies.

2, usage: the command line cannot be used as given. The parser refuses it (an unknown option, a value of the
wrong type, a missing value), a --config file does not exist or is not YAML, a short name is unknown, or the
command's own checks of its options refuse them before any work starts (UsageError).
1, everything else: the job started and stopped on an error, a value that parses but that the job then refuses
included (`generate --batch_size 0` parses as an int; generate() refuses it: 1).
130: Ctrl-C, where the job says what it kept. `REGRESS_DEBUG=1` re-raises the error with its traceback, and so
does a worker process that runs a command while it imports a script without a main guard (its parent reports).
Imports nothing from regress, so that every layer can raise UsageError.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
from typing import Callable, TypeVar

DEBUG_VARIABLE = "REGRESS_DEBUG"
USAGE_STATUS, ERROR_STATUS, INTERRUPTED_STATUS = 2, 1, 130
# The lines jsonargparse wraps around the error that matters: the option they name is kept, the rest dropped.
OPTION_LINE = re.compile(r'^Parser key "(?P<key>[^"]+)":$')
WRAPPER_LINES = (OPTION_LINE, re.compile(r"^Does not validate against any of the Union subtypes$"), re.compile(r"^Problem with given class_path '[^']+':$"))
# A loader worker's exception reaches the main process as this, with the original's traceback in the message.
WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.$")
Result = TypeVar("Result")


class UsageError(Exception):
    """Bad command-line input: the command prints it in one line and exits with status 2."""


SAYS_WHAT_WENT_WRONG = (ValueError, OSError, ArithmeticError, MemoryError, argparse.ArgumentError, UsageError)  # others get their type name
USAGE_ERRORS = (UsageError, argparse.ArgumentError)  # jsonargparse raises ArgumentError with exit_on_error=False


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message; its type's name when it has none."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def describe(error: BaseException) -> str:
    """One line for an error: the first exception under jsonargparse's wrappers, after the option they name; for a
    loader worker's, the original's last line."""
    if WORKER_ERROR.match(first_line(error)):
        last = next(line.strip() for line in reversed(str(error).splitlines()) if line.strip())
        return re.sub(r"^[\w.]+(Error|Exception): ", "", last)  # `regress.store.shards.ShardReadError: ...`
    options = []
    while any(pattern.match(first_line(error)) for pattern in WRAPPER_LINES) and (error.__cause__ or error.__context__):
        option = OPTION_LINE.match(first_line(error))
        if option and option["key"] not in options:
            options.append(option["key"])
        error = error.__cause__ or error.__context__
    prefix = f"--{'.'.join(options)}: " if options else ""
    if not isinstance(error, SAYS_WHAT_WENT_WRONG):
        prefix += f"{type(error).__name__}: "
    return prefix + first_line(error)


def importing_for_a_worker() -> bool:
    """Whether this is a spawned worker process importing its parent's script: a script without a main guard runs
    its command there too, and the worker's parent, not the worker, reports the error that follows."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def run_command(job: str, command: Callable[[], Result], hint_line: bool = False, interrupted: str | None = None) -> Result:
    """`command()`'s result; its errors as one line `JOB: error: ...` (a hint line below it with `hint_line`) and exit
    status 2 (usage) or 1, and Ctrl-C as the line `JOB: {interrupted}` and status 130 where the job gives one."""
    debug = os.environ.get(DEBUG_VARIABLE) == "1"
    try:
        return command()
    except Exception as error:
        if debug or importing_for_a_worker():
            raise
        usage = isinstance(error, USAGE_ERRORS)
        hint = f"python -m {job} --help lists the options" if usage else f"{DEBUG_VARIABLE}=1 shows the traceback"
        print(f"{job}: error: {describe(error)}", *([f"{job}: {hint}"] if hint_line else []), sep="\n", file=sys.stderr)
        raise SystemExit(USAGE_STATUS if usage else ERROR_STATUS) from error
    except KeyboardInterrupt:
        if debug or interrupted is None:
            raise
        print(f"{job}: {interrupted}", file=sys.stderr)
        raise SystemExit(INTERRUPTED_STATUS) from None
