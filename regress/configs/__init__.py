"""The YAML choices shipped inside the package: fit.yaml, data/, model/, trainer/, generate/, evaluate/, views/.

Found through importlib.resources, so a checkout and an installed wheel read the same files. A
short name (`gpu`, or `trainer/gpu` from the root) picks one of them; a file of your own is taken as it is.
"""

from __future__ import annotations

import argparse
import re
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable

import yaml

from regress.errors import UsageError

ROOT = Path(str(files(__name__)))  # a folder: pip installs packages unpacked, never as a zip
SHORT_NAME = re.compile(r"[\w-]+(/[\w-]+)?")  # `gpu` or `trainer/gpu`: no suffix, at most one folder


def short_names(group: str) -> list[str]:
    """The short names of a group: the YAML files under regress/configs/<group>/."""
    return sorted(p.stem for p in (ROOT / group).glob("*.yaml"))


def shipped(group: str, name: str) -> Path | None:
    """The shipped file a short name stands for (`gpu`: <group>/gpu.yaml, `trainer/gpu`: trainer/gpu.yaml), or None."""
    path = ROOT / f"{name}.yaml" if "/" in name else ROOT / group / f"{name}.yaml"
    return path if path.is_file() else None


def checked_yaml(path: Path) -> Path:
    """`path`, once its text has parsed as YAML; a ValueError naming the file, line and column where it does not."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"config {path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}") from error
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"config {path} is a YAML {type(loaded).__name__}, not a mapping of options (option: value, one a line)")
    return path


def config_file(group: str, value: str) -> str:
    """A `--config` value with a short name of `group` replaced by its shipped file; a file is checked to be YAML;
    YAML text passes through."""
    if Path(value).is_file():
        return str(checked_yaml(Path(value)))
    if value.endswith((".yaml", ".yml")):
        raise FileNotFoundError(f"config file {value} does not exist")
    if not SHORT_NAME.fullmatch(value):
        return value
    path = shipped(group, value)
    if path is None:
        raise FileNotFoundError(f"no config {value!r}: not a file, and not one of {', '.join(short_names(group))} or GROUP/NAME in regress/configs/")
    return str(path)


def expand_flags(args: list[str], resolve: dict[str, Callable[[str | None], str | None]]) -> tuple[list[str], set[str]]:
    """Command-line arguments with the value of each `--flag VALUE` or `--flag=VALUE` whose flag `resolve` names
    replaced by `resolve[flag](VALUE)` (None for a flag without a value; a None result keeps the bare flag);
    and the flags that were given."""
    expanded, given, rest = [], set(), iter(args)
    for arg in rest:
        flag, equals, value = arg.partition("=")
        if flag not in resolve:
            expanded.append(arg)
            continue
        resolved = resolve[flag](value if equals else next(rest, None))
        expanded += [flag] if resolved is None else [f"{flag}={resolved}"] if equals else [flag, resolved]
        given.add(flag)
    return expanded, given


def expand_config_arguments(args: list[str], group: str) -> list[str]:
    """`--config NAME` and `--config=NAME` with short names replaced by the shipped files of `group`; a file that
    does not exist or is not YAML, or an unknown name, is a UsageError (the command line's fault: exit status 2)."""
    try:
        return expand_flags(args, {"--config": lambda value: None if value is None else str(config_file(group, value))})[0]
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error


def run_job(
    job: str, components: Callable | list[Callable], group: str, args: list[str] | None = None, before: Callable[[list[str]], None] | None = None
) -> Any:
    """A job's command line: `--config` short names of its `group`, then `before` (which may end the job, e.g. a
    `--verify`), then jsonargparse's CLI of `components` (a function, or a list for subcommands; no abbreviated
    options); errors exit 2 (usage) or 1 with one line (`regress.errors.run_command`)."""
    import sys

    from jsonargparse import CLI

    from regress.errors import run_command

    def command() -> Any:
        expanded = expand_config_arguments(sys.argv[1:] if args is None else args, group)
        if before is not None:
            before(expanded)
        return CLI(components, args=expanded, as_positional=False, exit_on_error=False, allow_abbrev=False, prog=f"python -m {job}")

    return run_command(job, command)


def verify_arguments(args: list[str], prog: str, what: str) -> argparse.Namespace:
    """`--verify DIR [--progress false]`, the check of a finished set that `generate` and `evaluate pairs` run instead
    of their job: `verify` the folder (`what` it must be), `progress` whether to show a bar."""
    parser = argparse.ArgumentParser(prog=prog, exit_on_error=False)
    parser.add_argument("--verify", required=True, metavar="DIR", help=what)
    parser.add_argument("--progress", type=lambda text: text.lower() in ("true", "1", "yes"), default=True)
    return parser.parse_args(args)
