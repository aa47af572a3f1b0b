"""`python -m regress.fit`: train a depth or latent regressor with LightningCLI.

`--data NAME` and `--model NAME` take the short names of `configs/data/NAME.yaml` and
`configs/model/NAME.yaml` (synth-online, shards, pairs; depth, latent) as well as YAML files and
class paths. Defaults: `configs/fit.yaml`, `--data synth-online`, `--model depth`; the subcommand
`fit` is implied.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import yaml
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from regress.models.base import Regressor

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIGS / "fit.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
GROUPS = {"--data": "data", "--model": "model"}
DEFAULT_CHOICES = {"--data": "synth-online", "--model": "depth"}


class UsageError(Exception):
    """Bad command-line input; `main` prints it argparse-style and exits with status 2."""


def short_names(group: str) -> list[str]:
    """The short names a group accepts: the YAML files under configs/<group>/."""
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def _check_importable(flag: str, name: str, path: Path) -> None:
    class_path = yaml.safe_load(path.read_text())["class_path"]
    module, _, attribute = class_path.rpartition(".")
    try:
        getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"{flag} {name}: its class {class_path} (from {path}) is not available ({error})") from error


def resolve_choice(flag: str, value: str) -> str:
    """A short name -> its config file (its class checked importable); YAML files and class paths pass through."""
    group = GROUPS[flag]
    path = CONFIGS / group / f"{value}.yaml"
    if path.is_file():
        _check_importable(flag, value, path)
        return str(path)
    if value.endswith((".yaml", ".yml", ".json")) or "." in value or value.startswith("{"):
        return value
    raise UsageError(f"unknown {flag} {value!r}; choose one of {', '.join(short_names(group))} (configs/{group}/NAME.yaml), a YAML file or a class path")


def expand_arguments(args: list[str]) -> list[str]:
    """Imply `fit`, replace short --data/--model names by config files, add the default choices."""
    if not args or args[0] not in SUBCOMMANDS:
        args = ["fit", *args]
    expanded, given = [args[0]], set()
    rest = iter(args[1:])
    for arg in rest:
        flag, equals, value = arg.partition("=")
        if flag not in GROUPS:
            expanded.append(arg)
            continue
        if not equals:
            value = next(rest, None)
            if value is None:
                raise UsageError(f"{flag} needs a value: one of {', '.join(short_names(GROUPS[flag]))}")
        expanded += [flag, resolve_choice(flag, value)]
        given.add(flag)
    defaults = [x for flag, name in DEFAULT_CHOICES.items() if flag not in given for x in (flag, resolve_choice(flag, name))]
    return [expanded[0], *defaults, *expanded[1:]]


class RegressCLI(LightningCLI):
    """LightningCLI that checks a checkpoint path exists before running on it."""

    def before_fit(self) -> None:
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc", "registry") and not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist; give the path of a .ckpt file")

    before_validate = before_test = before_predict = before_fit


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI on `args` (default: sys.argv[1:]) and return it."""
    from_command_line = args is None
    try:
        args = expand_arguments(list(sys.argv[1:] if from_command_line else args))
    except UsageError as error:
        print(f"regress.fit: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    if from_command_line:  # LightningCLI reads sys.argv itself and warns when given both
        sys.argv[1:], args = args, None
    return RegressCLI(
        Regressor,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={command: {"default_config_files": [str(DEFAULT_CONFIG)]} for command in SUBCOMMANDS},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
