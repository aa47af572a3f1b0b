"""`python -m regress.fit`: train a depth or latent regressor with LightningCLI.

`--data NAME` and `--model NAME` take the short names of the shipped `regress/configs/data/NAME.yaml`
and `regress/configs/model/NAME.yaml` (synth-online, shards, pairs; depth, latent) as well as YAML
files and class paths, and `--config NAME` those of `regress/configs/trainer/` (gpu, ddp, ...) as
well as files. Defaults: `regress/configs/fit.yaml`, `--data synth-online`, `--model depth`; the
subcommand `fit` is implied. `--name NAME` keeps a run's checkpoints in `<trainer.default_root_dir>/NAME/checkpoints`,
where `--ckpt_path last` finds them. Errors print one line; `REGRESS_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from regress import configs
from regress.models.base import Regressor
from regress.models.checkpoint_io import read_checkpoint
from regress.models.guards import EmptyEpochGuard, FiniteGuard
from regress.runtime import load_compile_cache, save_compile_cache

SUBCOMMANDS = ("fit", "validate", "test", "predict")
GROUPS = {"--data": "data", "--model": "model"}
TRAINER_GROUP = "trainer"  # where `--config NAME` looks
DEFAULT_CHOICES = {"--data": "synth-online", "--model": "depth"}
LAST = "last.ckpt"
SHIPPED_ROOT = yaml.safe_load((configs.ROOT / "fit.yaml").read_text())["trainer"]["default_root_dir"]  # data/runs
DEBUG_VARIABLE = "REGRESS_DEBUG"
# The lines jsonargparse wraps around the error that matters: the option they name is kept, the rest dropped.
OPTION_LINE = re.compile(r'^Parser key "(?P<key>[^"]+)":$')
WRAPPER_LINES = (OPTION_LINE, re.compile(r"^Does not validate against any of the Union subtypes$"), re.compile(r"^Problem with given class_path '[^']+':$"))


class UsageError(Exception):
    """Bad command-line input; `main` prints it argparse-style and exits with status 2."""


SAYS_WHAT_WENT_WRONG = (ValueError, OSError, ArithmeticError, argparse.ArgumentError, UsageError)  # others get their type name


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


def expand_arguments(args: list[str]) -> list[str]:
    """Imply `fit`, replace short --data/--model/--config names by config files, add the default choices."""
    if not args or args[0] not in SUBCOMMANDS:
        args = ["fit", *args]
    try:
        args = configs.expand_config_arguments(args, TRAINER_GROUP)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error
    args = configs.expand_flags(args, {f"{flag}.help": functools.partial(help_target, flag) for flag in GROUPS})[0]
    expanded, given = configs.expand_flags(args[1:], {flag: functools.partial(resolve_choice, flag) for flag in GROUPS})
    defaults = [x for flag, name in DEFAULT_CHOICES.items() if flag not in given for x in (flag, resolve_choice(flag, name))]
    return [args[0], *defaults, *expanded]


def checkpoint_dir(config: Namespace) -> Path:
    """Where a run keeps its checkpoints: <trainer.default_root_dir>/<name>/checkpoints, the same for every run of it."""
    return Path(config.trainer.default_root_dir or os.getcwd()) / config.name / "checkpoints"


def place_checkpoints(config: Namespace) -> None:
    """Point every ModelCheckpoint without a dirpath at the run's checkpoint folder; with `enable_checkpointing`
    false, drop them (Lightning refuses a ModelCheckpoint then, and fit.yaml ships two)."""
    callbacks = config.trainer.callbacks or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    if config.trainer.enable_checkpointing is False:
        config.trainer.callbacks = [c for c in callbacks if not issubclass(import_class(c.class_path), ModelCheckpoint)]
        return
    for callback in callbacks:
        if issubclass(import_class(callback.class_path), ModelCheckpoint) and callback.init_args.get("dirpath") is None:
            callback.init_args.dirpath = str(checkpoint_dir(config))


DEFAULT_LOGGER_NAMES = (None, "lightning_logs")  # WandbLogger's, and CSVLogger's and TensorBoardLogger's


def name_logs(config: Namespace, shipped_root: str) -> None:
    """Give every logger left at its default name the run's name: CSV and TensorBoard logs land in
    <save_dir>/NAME beside the run's checkpoints, and the wandb run is called NAME. A logger's save_dir
    left at the shipped root follows --trainer.default_root_dir, as the checkpoints do."""
    loggers = config.trainer.logger
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None)
        if init_args is None:
            continue
        if "name" in init_args and init_args.name in DEFAULT_LOGGER_NAMES:
            init_args.name = config.name
        if init_args.get("save_dir") == shipped_root and config.trainer.default_root_dir:
            init_args.save_dir = config.trainer.default_root_dir


TRAINABLE_PRECISIONS = ("32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16")


def check_precision(config: Namespace) -> None:
    """Refuse precisions that cast the weights (16-true, bf16-true, 64-true): the data reaches the model in float32."""
    precision = config.trainer.get("precision")
    if precision is not None and str(precision) not in TRAINABLE_PRECISIONS:
        raise UsageError(f"--trainer.precision {precision}: regressors train in 32-true, 16-mixed or bf16-mixed "
                         "(a precision that casts the weights meets float32 images)")  # fmt: skip


def check_accelerator(config: Namespace) -> None:
    """Refuse a GPU accelerator where no CUDA GPU is visible, naming the way back to the CPU."""
    accelerator = config.trainer.get("accelerator")
    if str(accelerator) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(f"--trainer.accelerator {accelerator} (--config gpu and ddp set it): no CUDA GPU is visible here; "
                         "leave those out to train on the CPU")  # fmt: skip


class SaveRunConfig(SaveConfigCallback):
    """The run's whole config in <default_root_dir>/NAME/config.yaml, beside its checkpoints (the logger's
    folder is shared by every run logging to wandb, so one run's config would replace another's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        path = checkpoint_dir(self.config).parent / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # jsonargparse >= 4.49 deprecates skip_none, which Lightning's own save still passes
            warnings.simplefilter("ignore", DeprecationWarning)
            self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)


def resolve_ckpt_path(config: Namespace, explicit_model: set[str]) -> str | None:
    """`last` -> the run's last.ckpt, `best` -> the best by the monitored metric that last.ckpt records; a path
    must be a readable checkpoint whose model the command does not contradict; Lightning's other names pass through."""
    ckpt_path = config.get("ckpt_path")
    if ckpt_path in ("last", "best"):
        last = checkpoint_dir(config) / LAST
        if not last.is_file():
            raise FileNotFoundError(f"no {LAST} in {last.parent}; start the run without --ckpt_path, or give the --name of the run to resume")
        ckpt_path = str(last) if ckpt_path == "last" else best_checkpoint(last)
    if ckpt_path in (None, "hpc", "registry"):
        return ckpt_path
    saved = read_checkpoint(ckpt_path, "checkpoint", "give a .ckpt written by python -m regress.fit, or last")
    check_resumed_model(config.model, saved["hyper_parameters"], ckpt_path, explicit_model)
    return ckpt_path


def best_checkpoint(last: Path) -> str:
    """The best checkpoint that the run's monitoring ModelCheckpoint recorded in `last`."""
    states = read_checkpoint(last, "checkpoint", "start the run again").get("callbacks", {})
    best = next((s.get("best_model_path") for k, s in states.items() if k.startswith("ModelCheckpoint") and s.get("monitor")), None)
    if not best or not Path(best).is_file():
        raise FileNotFoundError(f"{last} records no best checkpoint that still exists ({best or 'none monitored'}); give its path, or last")
    return best


LINKED_FROM_DATA = ("image_size", "latent_space")  # set from the data module when the model is built, not by the user


def explicit_model_options(args: list[str]) -> set[str]:
    """The model settings a command line gives itself: `class` for --model, NAME for --model[.init_args].NAME."""
    names = set()
    for arg in args:
        flag = arg.partition("=")[0]
        if flag == "--model":
            names.add("class")
        elif flag.startswith("--model."):
            names.add(flag.removeprefix("--model.").removeprefix("init_args.").split(".")[0])
    return names


def check_resumed_model(model: Namespace, saved: dict, path: str, explicit: set[str]) -> None:
    """Refuse a resumed run whose own --model or --model.* options differ from the checkpoint's: Lightning builds
    the model from the checkpoint's settings and would drop them without a word. Settings the command leaves
    at their defaults are the checkpoint's to set."""
    given = model.init_args.as_dict() if model.get("init_args") else {}
    found, asked = saved.get("_class_path", ""), model.get("class_path", "")
    if "class" in explicit and found and asked and found != asked:
        raise UsageError(f"{path} holds a {found.rpartition('.')[2]}, but the command asks for a {asked.rpartition('.')[2]}; "
                         "a resumed run keeps its checkpoint's model: drop --model, or start a new run (another --name)")  # fmt: skip
    differ = [f"{k}={given[k]!r} (the checkpoint's: {v!r})" for k, v in saved.items()
              if k in explicit and k not in LINKED_FROM_DATA and k in given and _plain(given[k]) != _plain(v)]  # fmt: skip
    if differ:
        raise UsageError(f"{path} was trained with other model settings than asked for here: --model.{', --model.'.join(differ)}; "
                         "a resumed run keeps its checkpoint's: drop those options, or start a new run (another --name)")  # fmt: skip


def _plain(value: object) -> object:
    """Tuples as lists, the way YAML and a checkpoint's hyperparameters spell the same value."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


class CompileCache(Callback):
    """torch.compile's caches kept in a file (`--compile_cache.path`): preloaded when the run starts, so
    a new machine with the same torch, Triton and GPU skips most compilation; when the file does not
    exist yet, rank 0 writes it after the first validation (training and validation shapes compiled,
    so a run killed later still leaves it) and again at the end."""

    def __init__(self, path: str | None = None) -> None:
        self.path, self.write, self.saved = path, False, False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.write = self.path is not None and not load_compile_cache(self.path)

    def _save(self, trainer: Trainer) -> None:
        if self.write and trainer.is_global_zero:
            save_compile_cache(self.path)
        self.saved = True

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and not self.saved:
            self._save(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._save(trainer)
        self.write = False


class CountingTrainer(Trainer):
    """Lightning's Trainer with its batch counts typed int before float, so that `limit_train_batches 1` is one batch.

    Lightning types them `float | int`: an int counts batches, a float is a fraction of the epoch. jsonargparse
    tries the types in order, so a whole number from the command line or YAML became a float: `1` ran the
    whole epoch (1.0). Here `1` is one batch and `1.0` the whole epoch, as in Python.
    """

    def __init__(
        self,
        *args: Any,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            limit_train_batches: training batches an epoch: an int counts them, a float is a share (default 1.0)
            limit_val_batches: validation batches a check: an int counts them, a float is a share (default 1.0)
            limit_test_batches: test batches: an int counts them, a float is a share (default 1.0)
            limit_predict_batches: prediction batches: an int counts them, a float is a share (default 1.0)
            overfit_batches: train and validate on this many training batches (int) or this share of them (float)
            val_check_interval: validate every this many training batches (int) or this share of an epoch (float)
        """
        super().__init__(
            *args,
            limit_train_batches=limit_train_batches,
            limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches,
            limit_predict_batches=limit_predict_batches,
            overfit_batches=overfit_batches,
            val_check_interval=val_check_interval,
            **kwargs,
        )


class RegressCLI(LightningCLI):
    """LightningCLI with a run name, a fixed checkpoint folder per run, `--ckpt_path last` from it, the guards,
    a compile cache file, and the data module's image size and latent space linked into the model."""

    def __init__(self, *args: Any, explicit_model: set[str] = frozenset(), **kwargs: Any) -> None:
        self.explicit_model = explicit_model  # read while parsing, which LightningCLI.__init__ does
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--name", type=str, default="default", help="run name: checkpoints go to <trainer.default_root_dir>/NAME/checkpoints")
        parser.add_lightning_class_args(FiniteGuard, "finite_guard")
        parser.add_lightning_class_args(EmptyEpochGuard, "empty_epoch_guard")
        parser.add_lightning_class_args(CompileCache, "compile_cache")
        # Data facts reach the model when it is built; jsonargparse skips a link whose data module
        # lacks the attribute or whose model lacks the parameter (DepthRegressor: no latent_space).
        parser.link_arguments("data.image_size", "model.init_args.image_size", apply_on="instantiate")
        parser.link_arguments("data.latent_space", "model.init_args.latent_space", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | None) -> None:
        super().parse_arguments(parser, args)
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        place_checkpoints(config)
        name_logs(config, SHIPPED_ROOT)
        check_precision(config)
        check_accelerator(config)
        config.ckpt_path = resolve_ckpt_path(config, self.explicit_model)


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message; its type's name when it has none."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


# A loader worker's exception reaches the main process as this, with the original's traceback in the message.
WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.$")


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


def log_to_stdout() -> None:
    """Lightning's progress notes (seed, devices, restored checkpoints) go to stdout, leaving stderr to warnings and errors."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:
                handler.setStream(sys.stdout)


def fail(message: str, hint: str, status: int) -> SystemExit:
    """Print the error and a hint on stderr, the way argparse does; the SystemExit to raise."""
    print(f"regress.fit: error: {message}\nregress.fit: {hint}", file=sys.stderr)
    return SystemExit(status)


def run(args: list[str] | None, from_command_line: bool) -> LightningCLI:
    given = list(sys.argv[1:] if from_command_line else args)
    args = expand_arguments(given)
    if from_command_line:  # LightningCLI reads sys.argv itself and warns when given both
        sys.argv[1:], args = args, None
    parser_kwargs = {"exit_on_error": False, "default_config_files": [str(configs.ROOT / "fit.yaml")]}
    return RegressCLI(
        Regressor,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_class=CountingTrainer,
        parser_kwargs={"exit_on_error": False, "prog": "python -m regress.fit", **{command: parser_kwargs for command in SUBCOMMANDS}},
        save_config_callback=SaveRunConfig,
        explicit_model=explicit_model_options(given),
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI on `args` (default: sys.argv[1:]) and return it; errors exit 2 (usage) or 1 with one line."""
    from_command_line = args is None
    if from_command_line:
        log_to_stdout()
    try:
        return run(args, from_command_line)
    except Exception as error:
        if os.environ.get(DEBUG_VARIABLE) == "1":
            raise
        if isinstance(error, (UsageError, argparse.ArgumentError)):
            raise fail(describe(error), "python -m regress.fit --help lists the options", 2) from error
        raise fail(describe(error), f"{DEBUG_VARIABLE}=1 shows the traceback", 1) from error


if __name__ == "__main__":
    main()
