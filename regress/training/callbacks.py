"""The callbacks `python -m regress.fit` always adds, and the one that writes the run's config.

FiniteGuard: training stops at the first non-finite loss, gradient or monitored metric, and never saves one.
EmptyEpochGuard: a training epoch that got no batch at all stops the run instead of ending it as a success.
Each check runs where the value first exists, before the optimizer step or the checkpoint callbacks (Lightning
runs those last) can use it. CompileCache: torch.compile's caches kept in a file. SaveRunConfig: the run's
whole config beside its checkpoints.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback

from regress.runtime import load_compile_cache, save_compile_cache
from regress.training.run_folder import checkpoint_dir

HINT = "try a lower --model.lr (in a new run: a resumed one keeps its checkpoint's), --trainer.gradient_clip_val 1.0, full precision (--trainer.precision 32), or check the data for non-finite values"


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss, gradient, metric or weight and stopped rather than go on or save it."""


def logged(trainer: L.Trainer, prefix: str) -> str:
    """The values logged under `prefix` (the named loss terms and the learning rate), as `name=value` pairs."""
    values = {name.removeprefix(prefix): float(value) for name, value in trainer.callback_metrics.items() if name.startswith(prefix)}
    return ", ".join(f"{name}={value:.4g}" for name, value in values.items())


def where(trainer: L.Trainer) -> str:
    """The step and epoch in progress, as the logs count them."""
    return f"step {trainer.global_step} (epoch {trainer.current_epoch})"


def gradient_norm(module: torch.nn.Module) -> torch.Tensor | None:
    """The 2-norm of all gradients together, on their device; None when there are none."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else None


def non_finite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity."""
    return [name for name, t in state_dict.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


class FiniteGuard(Callback):
    """Raises NonFiniteError, naming the step, the loss terms and what to try, at the first non-finite value."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self.losses.append(loss.detach())  # checked with the gradients: one host sync a step, once backward is queued

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        losses, self.losses = self.losses, []
        loss_finite = torch.stack([torch.isfinite(loss).all() for loss in losses]).all() if losses else torch.tensor(True)
        # 16-bit mixed precision: the grad scaler skips non-finite steps itself, so only the loss counts
        norm = None if getattr(trainer.precision_plugin, "scaler", None) is not None else gradient_norm(pl_module)
        checks = [loss_finite.float(), *([norm.float().to(loss_finite.device)] if norm is not None else [])]
        values = torch.stack(checks).tolist()
        if values[0] != 1.0:
            raise NonFiniteError(f"the training loss is not finite at {where(trainer)}: {logged(trainer, 'train/')}; {HINT}")
        if norm is not None and not math.isfinite(values[1]):
            raise NonFiniteError(f"the gradient norm is {values[1]} at {where(trainer)}: {logged(trainer, 'train/')}; {HINT}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for callback in trainer.checkpoint_callbacks:
            monitor = getattr(callback, "monitor", None)
            value = trainer.callback_metrics.get(monitor) if monitor else None
            if value is not None and not bool(torch.isfinite(value).all()):
                raise NonFiniteError(f"{monitor} is {float(value)} after {where(trainer)}: {logged(trainer, 'val/')}; {HINT}")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        bad = non_finite_tensors(checkpoint["state_dict"])
        if bad:
            total = len(checkpoint["state_dict"])
            raise NonFiniteError(f"not saving a checkpoint at {where(trainer)}: {len(bad)} of {total} weight tensors are not finite (first {bad[0]}); {HINT}")


class EmptyEpochGuard(Callback):
    """Raises ValueError at the end of a training epoch that trained on no batch (every shard skipped as corrupt,
    fewer samples than one batch a rank): such a run would otherwise finish, exit 0 and leave nothing trained.

    Batches are counted by the fit loop, whose count a resumed run restores: an epoch resumed after its last
    batch has trained on its batches before the checkpoint.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trained = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if trained == 0 and trainer.limit_train_batches != 0:
            raise ValueError(f"training epoch {trainer.current_epoch} got no batch from the data: every shard skipped as corrupt, "
                             "or fewer samples than one batch a rank; check the data (python -m regress.generate --verify DIR)")  # fmt: skip


class CompileCache(Callback):
    """torch.compile's caches kept in a file (`--compile_cache FILE`): preloaded when the run starts, so
    a new machine with the same torch, Triton and GPU skips most compilation; when the file does not
    exist yet, rank 0 writes it after the first validation (training and validation shapes compiled,
    so a run killed later still leaves it) and again at the end."""

    def __init__(self, path: str | None = None) -> None:
        self.path, self.write, self.saved = path, False, False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.write = self.path is not None and not load_compile_cache(self.path)

    def _save(self, trainer: L.Trainer) -> None:
        if self.write and trainer.is_global_zero:
            save_compile_cache(self.path)
        self.saved = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and not self.saved:
            self._save(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._save(trainer)
        self.write = False


class SaveRunConfig(SaveConfigCallback):
    """The run's whole config in <default_root_dir>/NAME/config.yaml, beside its checkpoints (the logger's
    folder is shared by every run logging to wandb, so one run's config would replace another's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        path = checkpoint_dir(self.config).parent / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # jsonargparse >= 4.49 deprecates skip_none, which Lightning's own save still passes
            warnings.simplefilter("ignore", DeprecationWarning)
            self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)
