"""`python -m regress.fit`: train a depth or latent regressor with LightningCLI.

`--data NAME` and `--model NAME` take the short names of the shipped `regress/configs/data/NAME.yaml`
and `regress/configs/model/NAME.yaml` (synth-online, shards, pairs; depth, latent) as well as YAML
files and class paths, and `--config NAME` those of `regress/configs/trainer/` (gpu, ddp, ...) as
well as files. Defaults: `regress/configs/fit.yaml`, `--data synth-online`, `--model depth`; the
subcommand `fit` is implied. `--name NAME` keeps a run's checkpoints in `<trainer.default_root_dir>/NAME/checkpoints`,
where `--ckpt_path last` finds them. Errors print one line and a hint and exit 2 (usage) or 1 (`regress.errors`);
`REGRESS_DEBUG=1` shows the traceback. The pieces live in `regress.training`.
"""

from __future__ import annotations

import functools
import logging
import sys

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from regress import configs
from regress.errors import run_command
from regress.models.base import Regressor
from regress.training.arguments import SUBCOMMANDS, expand_arguments
from regress.training.callbacks import SaveRunConfig
from regress.training.cli import CountingTrainer, RegressCLI
from regress.training.resume import explicit_model_options


def log_to_stdout() -> None:
    """Lightning's progress notes (seed, devices, restored checkpoints) go to stdout, leaving stderr to warnings and errors."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:
                handler.setStream(sys.stdout)


def run(args: list[str] | None, from_command_line: bool) -> LightningCLI:
    """The command line (`args`, or sys.argv's when run from it) expanded, then parsed and run by RegressCLI."""
    given = list(sys.argv[1:] if from_command_line else args)
    args = expand_arguments(given)
    if from_command_line:  # LightningCLI reads sys.argv itself and warns when given both
        sys.argv[1:], args = args, None
    parser_kwargs = {"exit_on_error": False, "allow_abbrev": False, "default_config_files": [str(configs.ROOT / "fit.yaml")]}
    return RegressCLI(
        Regressor,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_class=CountingTrainer,
        parser_kwargs={"exit_on_error": False, "allow_abbrev": False, "prog": "python -m regress.fit", **{command: parser_kwargs for command in SUBCOMMANDS}},
        save_config_callback=SaveRunConfig,
        explicit_model=explicit_model_options(given),
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI on `args` (default: sys.argv[1:]) and return it; errors exit 2 (usage) or 1 with one line and a hint."""
    from_command_line = args is None
    if from_command_line:
        log_to_stdout()
    return run_command("regress.fit", functools.partial(run, args, from_command_line), hint_line=True)


if __name__ == "__main__":
    main()
