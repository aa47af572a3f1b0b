"""The LightningCLI of `python -m regress.fit`: a run name and folder, `--ckpt_path last|best`, the guards and the
compile cache always added, the data module's facts linked into the model, options checked before a run starts."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, TypedDict

import torch
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from regress.errors import UsageError
from regress.training.callbacks import CompileCache, EmptyEpochGuard, FiniteGuard
from regress.training.resume import resolve_ckpt_path
from regress.training.run_folder import SHIPPED_ROOT, hold_run_folder, name_logs, place_checkpoints

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


class OldCompileCache(TypedDict):
    """`compile_cache: {path: FILE}`, as run configs saved before `--compile_cache FILE` hold it (read for one release)."""

    path: str | None


def compile_cache_path(value: str | OldCompileCache | None) -> str | None:
    """The cache file of `--compile_cache`, also from a saved run config's old `{path: FILE}`, with a line that says so."""
    if isinstance(value, dict):
        print("regress.fit: compile_cache: {path: FILE} is deprecated, use compile_cache: FILE", file=sys.stderr)
        return value.get("path")
    return value


class RegressCLI(LightningCLI):
    """LightningCLI with a run name, a fixed checkpoint folder per run, `--ckpt_path last` from it, the guards,
    a compile cache file, and the data module's image size and latent space linked into the model."""

    def __init__(self, *args: Any, explicit_model: set[str] = frozenset(), **kwargs: Any) -> None:
        self.explicit_model = explicit_model  # read while parsing, which LightningCLI.__init__ does
        self.held = contextlib.ExitStack()  # the run folder, from parsing to the run's end
        with self.held:
            super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--name", type=str, default="default", help="run name: checkpoints go to <trainer.default_root_dir>/NAME/checkpoints")
        parser.add_argument("--compile_cache", type=str | OldCompileCache | None, default=None,
                            help="a file of torch.compile's caches: preloaded, or written by the run when it does not exist yet")  # fmt: skip
        parser.add_lightning_class_args(FiniteGuard, "finite_guard")
        parser.add_lightning_class_args(EmptyEpochGuard, "empty_epoch_guard")
        # Data facts reach the model when it is built; jsonargparse skips a link whose data module
        # lacks the attribute or whose model lacks the parameter (DepthRegressor: no latent_space).
        parser.link_arguments("data.image_size", "model.init_args.image_size", apply_on="instantiate")
        parser.link_arguments("data.latent_space", "model.init_args.latent_space", apply_on="instantiate")
        parser.link_arguments("data.depth_units", "model.init_args.depth_units", apply_on="instantiate")  # `--data folder` only

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | None) -> None:
        super().parse_arguments(parser, args)
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        place_checkpoints(config)
        name_logs(config, SHIPPED_ROOT)
        check_precision(config)
        check_accelerator(config)
        config.compile_cache = compile_cache_path(config.compile_cache)
        if self.config.get("subcommand", "fit") == "fit":
            self.held.enter_context(hold_run_folder(config))
        config.ckpt_path = resolve_ckpt_path(config, self.explicit_model)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's, with the CompileCache of `--compile_cache FILE` after the configured callbacks: a plain
        option, named as regress.generate's, where a callback group would be `--compile_cache.path`."""
        config = self.config_init[self.subcommand]
        configured = config.trainer.callbacks or []
        callbacks = [*(configured if isinstance(configured, list) else [configured]), CompileCache(config.compile_cache)]
        return super().instantiate_trainer(**{"callbacks": callbacks, **kwargs})
