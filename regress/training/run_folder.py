"""A run's folder, `<trainer.default_root_dir>/NAME`: its checkpoints in `checkpoints/`, the same for every run of
that name (so `--ckpt_path last` finds them), and its CSV and TensorBoard logs and wandb run named after it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint

from regress import configs
from regress.runtime import hold_output
from regress.store.files import PARTIAL
from regress.training.arguments import import_class

SHIPPED_ROOT = yaml.safe_load((configs.ROOT / "fit.yaml").read_text())["trainer"]["default_root_dir"]  # data/runs
DEFAULT_LOGGER_NAMES = (None, "lightning_logs")  # WandbLogger's, and CSVLogger's and TensorBoardLogger's


def checkpoint_dir(config: Namespace) -> Path:
    """Where a run keeps its checkpoints: <trainer.default_root_dir>/<name>/checkpoints, the same for every run of it."""
    return run_folder(config) / "checkpoints"


def run_folder(config: Namespace) -> Path:
    """<trainer.default_root_dir>/<name>: the run's checkpoints, config and logs."""
    return Path(config.trainer.default_root_dir or os.getcwd()) / config.name


@contextlib.contextmanager
def hold_run_folder(config: Namespace) -> Iterator[None]:
    """The run folder held by this training while it runs (a second `fit --name` of it is refused in one line naming
    the first); checkpoints' partial files left by a killed run are removed once it is held."""
    with hold_output(run_folder(config), "python -m regress.fit", f"training the run {config.name!r}", "let it finish, or give another --name"):
        for stale in checkpoint_dir(config).glob(f"*{PARTIAL}"):
            stale.unlink(missing_ok=True)
        yield


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
