"""The fit command line before jsonargparse reads it: `fit` implied, short --data/--model/--config names replaced
by the shipped config files (their classes checked importable), `--data.help NAME` by its class, the default
choices added, and old spellings of options renamed with a note."""

from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path

import yaml

from regress import configs
from regress.errors import UsageError

SUBCOMMANDS = ("fit", "validate", "test", "predict")
GROUPS = {"--data": "data", "--model": "model"}
TRAINER_GROUP = "trainer"  # where `--config NAME` looks
DEFAULT_CHOICES = {"--data": "synth-online", "--model": "depth"}
# Kept for one release after their rename: the old flag -> the new one and its value's name.
OLD_SPELLINGS = {"--compile_cache.path": "--compile_cache FILE"}


def import_class(class_path: str) -> type:
    """The class a dotted path names (ImportError or AttributeError when it is not there)."""
    module, _, attribute = class_path.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def _check_importable(flag: str, name: str, path: Path) -> None:
    class_path = yaml.safe_load(path.read_text())["class_path"]
    try:
        import_class(class_path)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"{flag} {name}: its class {class_path} (from {path}) is not available ({error})") from error


def resolve_choice(flag: str, value: str | None) -> str:
    """A short name -> its config file (its class checked importable); YAML files and class paths pass through."""
    group = GROUPS[flag]
    if value is None:
        raise UsageError(f"{flag} needs a value: one of {', '.join(configs.short_names(group))}")
    path = configs.shipped(group, value)
    if path is not None:
        _check_importable(flag, value, path)
        return str(path)
    if value.endswith((".yaml", ".yml", ".json")):
        try:
            return configs.config_file(group, value)  # a file checked to be YAML
        except (FileNotFoundError, ValueError) as error:
            raise UsageError(f"{flag} {error}") from error
    if "." in value or value.startswith("{"):
        return value
    raise unknown_choice(flag, value)


def unknown_choice(flag: str, value: str) -> UsageError:
    """The error for a --data/--model value that is no shipped name, YAML file or class path."""
    group = GROUPS[flag]
    names = ", ".join(configs.short_names(group))
    return UsageError(f"unknown {flag} {value!r}; choose one of {names} (regress/configs/{group}/NAME.yaml), a YAML file or a class path")


def help_target(flag: str, value: str | None) -> str | None:
    """`--data.help NAME` / `--model.help NAME`: a short name -> the class its config file names (jsonargparse takes classes)."""
    if value is None or "." in value:
        return value
    path = configs.shipped(GROUPS[flag], value)
    if path is None:
        raise unknown_choice(flag, value)
    return yaml.safe_load(path.read_text())["class_path"]


def rename_old_spellings(args: list[str]) -> list[str]:
    """`--compile_cache.path FILE` (or `=FILE`) as `--compile_cache FILE`, with one line on stderr that says so:
    scripts written for the old name keep working for a release."""
    renamed = []
    for arg in args:
        flag, equals, value = arg.partition("=")
        if flag in OLD_SPELLINGS:
            print(f"regress.fit: {flag} is deprecated, use {OLD_SPELLINGS[flag]}", file=sys.stderr)
            arg = OLD_SPELLINGS[flag].split()[0] + equals + value
        renamed.append(arg)
    return renamed


def expand_arguments(args: list[str]) -> list[str]:
    """Imply `fit`, replace short --data/--model/--config names by config files, add the default choices."""
    if not args or args[0] not in SUBCOMMANDS:
        args = ["fit", *args]
    args = configs.expand_config_arguments(rename_old_spellings(args), TRAINER_GROUP)
    args = configs.expand_flags(args, {f"{flag}.help": functools.partial(help_target, flag) for flag in GROUPS})[0]
    expanded, given = configs.expand_flags(args[1:], {flag: functools.partial(resolve_choice, flag) for flag in GROUPS})
    defaults = [x for flag, name in DEFAULT_CHOICES.items() if flag not in given for x in (flag, resolve_choice(flag, name))]
    return [args[0], *defaults, *expanded]
