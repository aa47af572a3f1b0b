"""Training you can trust: no silent NaN, no non-finite checkpoint, a killed run resumes by `last`, one-line errors."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import regress.fit as fit
from regress.datamodules import SynthOnlineDataModule
from regress.errors import DEBUG_VARIABLE
from regress.generate import generate
from regress.models import DepthRegressor
from regress.models.checkpoint_io import VerifiedCheckpointIO, listed_hashes, read_checkpoint
from regress.store.files import AtomicFile, file_sha256
from regress.store.shard_set import MANIFEST
from regress.training.callbacks import FiniteGuard, NonFiniteError
from regress.store.locks import LOCKS
from tests.test_fit import TINY
from tests.test_locks import wait_for_holder

REPO = Path(__file__).resolve().parent.parent
STEPS_PER_EPOCH, EPOCHS = 4, 3  # epoch_length 8 at batch 2
RESUMABLE = [*TINY, "--data.epoch_length=8", "--trainer.max_steps=-1", f"--trainer.max_epochs={EPOCHS}"]
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")  # pytest's own argv


def fit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "regress.fit", *args]


def child_env(threads: int = 1) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}


def run_fit(*args: str) -> subprocess.CompletedProcess:
    """`python -m regress.fit ARGS` in a child process, its output captured as text."""
    return subprocess.run(fit_command(*args), cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)


def tensors(value) -> list[torch.Tensor]:
    """Every tensor inside a checkpoint's nested dicts and lists."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for item in value for t in tensors(item)] if isinstance(value, (list, tuple)) else []


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --- no silent NaN ---------------------------------------------------------------------------------


def test_a_diverging_run_stops_at_the_first_nan_and_saves_nothing_non_finite(tmp_path):
    result = run_fit(*TINY, "--model.lr=1e10", "--trainer.max_steps=-1", "--trainer.max_epochs=2", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}")
    assert result.returncode == 1, result.stderr
    error, hint = result.stderr.splitlines()[-2:]
    assert error.startswith("regress.fit: error: the training loss is not finite at step ") and "(epoch 0)" in error
    assert "loss=nan" in error and "l1=nan" in error and "lr=" in error  # every loss term, by name
    assert "try a lower --model.lr" in error and "gradient_clip_val" in error and hint == "regress.fit: REGRESS_DEBUG=1 shows the traceback"
    assert "Traceback" not in result.stderr
    for path in tmp_path.rglob("*.ckpt"):
        assert all(bool(torch.isfinite(t).all()) for t in tensors(load(path)) if t.is_floating_point()), path


def tiny_data() -> SynthOnlineDataModule:
    kwargs = {"image_resolution": 32, "render_resolution": 8, "depth_resolution": 8}
    return SynthOnlineDataModule(generator="analytic", generator_options=kwargs, image_size=32, batch_size=2, epoch_length=4, val_size=2)


def guarded_trainer(tmp_path: Path, **options) -> tuple[L.Trainer, ModelCheckpoint]:
    best = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min")
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}
    return L.Trainer(callbacks=[FiniteGuard(), best], default_root_dir=tmp_path, **quiet, **options), best


def test_a_nan_validation_loss_stops_before_the_checkpoint_callback_keeps_it(tmp_path):
    """Finite weights whose validation loss is NaN (a negative BatchNorm variance): no `val_loss=nan` best checkpoint."""
    model = DepthRegressor(encoder="test_resnet", depth_resolution=8, lr_schedule="constant")
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    norm.running_var.fill_(-1.0)  # training uses batch statistics; evaluation takes the square root of this
    trainer, best = guarded_trainer(tmp_path, max_epochs=1)
    with pytest.raises(NonFiniteError, match=r"val/loss is nan after step 2 \(epoch 0\): .*loss=nan"):
        trainer.fit(model, tiny_data())
    assert trainer.global_step == 2 and not list(tmp_path.glob("*.ckpt")) and best.best_model_path == ""


def test_an_infinite_gradient_behind_a_finite_loss_stops_before_the_optimizer_step(tmp_path):
    model = DepthRegressor(encoder="test_resnet", depth_resolution=8, lr_schedule="constant")
    first = next(model.parameters())
    before = first.detach().clone()
    first.register_hook(lambda grad: grad * float("inf"))
    trainer, _ = guarded_trainer(tmp_path, max_epochs=1)
    with pytest.raises(NonFiniteError, match=r"the gradient norm is (inf|nan) at step 0 \(epoch 0\): l1=[0-9.]+, loss=[0-9.]+"):
        trainer.fit(model, tiny_data())
    assert torch.equal(first.detach(), before) and not list(tmp_path.glob("*.ckpt"))


def test_non_finite_weights_are_never_written(tmp_path):
    model = DepthRegressor(encoder="test_resnet", depth_resolution=8)
    trainer, _ = guarded_trainer(tmp_path / "best", max_epochs=1)
    trainer.fit(model, tiny_data())
    trainer.save_checkpoint(tmp_path / "finite.ckpt")
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"not saving a checkpoint at step 2 \(epoch 1\): 1 of \d+ weight tensors are not finite"):
        trainer.save_checkpoint(tmp_path / "poisoned.ckpt")
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["finite.ckpt"]


# --- resume by last --------------------------------------------------------------------------------


def csv_steps(log_dir: Path) -> list[int]:
    """The steps at which a CSV logger recorded a training loss."""
    with open(log_dir / "metrics.csv") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def killed_at_its_first_last_checkpoint(run: list[str], last: Path, threads: int = 1) -> dict:
    """Start `python -m regress.fit RUN`, kill it (SIGKILL) once `last` exists, and return that checkpoint."""
    child = subprocess.Popen(fit_command(*run), cwd=REPO, env=child_env(threads), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not last.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {child.stderr.read().decode()}"
    return load(last)


def test_a_killed_run_resumes_by_last_where_it_stopped(tmp_path):
    run = [*RESUMABLE, "--name=demo", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    threads = torch.get_num_threads()  # as many as the runs below: Adam turns rounding differences into visible ones
    last = tmp_path / "demo" / "checkpoints" / "last.ckpt"
    saved = killed_at_its_first_last_checkpoint(run, last, threads)
    assert saved["global_step"] == STEPS_PER_EPOCH * (saved["epoch"] + 1) < STEPS_PER_EPOCH * EPOCHS  # an epoch's end
    assert saved["SynthOnlineDataModule"] == {"epoch": saved["epoch"], "samples_done": 2 * STEPS_PER_EPOCH}

    logger = ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path / 'logs'}"]
    resumed = fit.main([*run, *logger, "--ckpt_path=last"])
    assert resumed.trainer.global_step == STEPS_PER_EPOCH * EPOCHS and resumed.trainer.current_epoch == EPOCHS
    assert csv_steps(Path(resumed.trainer.logger.log_dir)) == list(range(saved["global_step"], STEPS_PER_EPOCH * EPOCHS))

    straight = fit.main([*RESUMABLE, "--name=straight", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"])
    resumed_weights, straight_weights = load(last)["state_dict"], straight.model.state_dict()
    for name, value in straight_weights.items():  # the same seeds in the same order: the seed stream went on
        assert torch.equal(resumed_weights[name], value), name


@pytest.mark.slow
def test_a_second_fit_of_a_name_in_training_is_refused_and_a_killed_runs_lock_and_partial_files_are_taken_over(tmp_path, capsys):
    run = [*TINY, "--name=demo", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    first = subprocess.Popen(fit_command(*run, "--trainer.max_steps=-1", "--trainer.max_epochs=100000"), cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_holder(tmp_path / "demo", first)
        second = run_fit(*run)
        lines = [line for line in second.stderr.splitlines() if line.startswith("regress.fit: ")]
        assert second.returncode == 1 and len(lines) == 2, second.stderr
        assert lines[0].startswith(f"regress.fit: error: another python -m regress.fit is training the run 'demo' in {tmp_path / 'demo'} "
                                   f"(pid {first.pid} on ")  # fmt: skip
        assert lines[0].endswith("let it finish, or give another --name")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    checkpoints = tmp_path / "demo" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / f"last.ckpt.{first.pid}.partial").write_bytes(b"half a checkpoint")  # as a kill mid-save leaves it
    fit.main(run)
    assert f"taking over the lock of python -m regress.fit (pid {first.pid} on " in capsys.readouterr().err
    assert load(checkpoints / "last.ckpt")["global_step"] == 2
    assert not list(checkpoints.glob("*.partial")) and not (tmp_path / "demo" / LOCKS).exists()


def test_checkpoints_are_saved_through_a_partial_file_of_this_process(tmp_path):
    """Two processes saving one checkpoint name never write, or rename, each other's partial file."""
    other = tmp_path / "last.ckpt.1.partial"
    other.write_bytes(b"another process's save in progress")
    VerifiedCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert other.read_bytes() == b"another process's save in progress" and load(tmp_path / "last.ckpt") == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.1.partial", "last.ckpt.sha256"]


@pytest.mark.slow
def test_a_step_based_last_checkpoint_keeps_a_kill_mid_epoch_to_its_last_save(tmp_path):
    """`--trainer.callbacks.every_n_train_steps N` sets the last of fit.yaml's callbacks, last.ckpt's, to save every N steps."""
    run = [*TINY, "--data.epoch_length=400", "--trainer.max_steps=-1", "--trainer.max_epochs=1", "--trainer.callbacks.every_n_train_steps=2",
           "--name=demo", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.limit_val_batches=0"]  # fmt: skip
    last = tmp_path / "demo" / "checkpoints" / "last.ckpt"
    saved = killed_at_its_first_last_checkpoint(run, last)
    assert saved["epoch"] == 0 and saved["global_step"] % 2 == 0 and 0 < saved["global_step"] < 200  # inside the first epoch
    resumed = fit.main([*run, "--ckpt_path=last", f"--trainer.max_steps={saved['global_step'] + 2}"])
    assert resumed.trainer.global_step == saved["global_step"] + 2 and load(last)["global_step"] == saved["global_step"] + 2


# --- one-line errors -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shard_folders(tmp_path_factory) -> Path:
    """Next to each other: a missing folder, an empty one, and real shards whose manifest.json was deleted."""
    root = tmp_path_factory.mktemp("roots")
    (root / "empty").mkdir()
    small = {"image_resolution": 32, "render_resolution": 8, "depth_resolution": 8}
    generate(root / "no-manifest", generator="analytic", generator_options=small, num_samples=8, samples_per_shard=4, progress=False)
    (root / "no-manifest" / MANIFEST).unlink()
    generate(root / "corrupt", generator="analytic", generator_options=small, num_samples=8, samples_per_shard=4, progress=False)
    shutil.copytree(root / "corrupt", root / "small")  # 4 training samples: fewer than a batch of 8
    for shard in (root / "corrupt").glob("*.tar"):
        damaged = bytearray(shard.read_bytes())
        damaged[len(damaged) // 2] ^= 1
        shard.write_bytes(bytes(damaged))
    (root / "foreign.bin").write_bytes(b"not a cache")
    (root / "bad.yaml").write_text("trainer:\n  max_epochs: [1: 2\n")
    return root


ONE_LINE_ERRORS = {
    "missing shard folder": (["--data", "shards", "--data.root", "{root}/missing"], 1, "shard folder {root}/missing does not exist"),
    "empty shard folder": (["--data", "shards", "--data.root", "{root}/empty"], 1, "no manifest.json at {root}/empty/manifest.json"),
    "deleted manifest": (["--data", "shards", "--data.root", "{root}/no-manifest"], 1, "no manifest.json at {root}/no-manifest/manifest.json"),
    "missing encoder weights": (["--model.encoder_weights", "{root}/resnet.pth"], 1, "encoder weights {root}/resnet.pth do not exist"),
    "misspelled model option": (["--model.lrr", "0.1"], 2, "--model: Option 'lrr' is not accepted"),
    "misspelled trainer option": (["--trainer.max_epochz", "3"], 2, "unrecognized arguments: --trainer.max_epochz 3"),
    "constructor error": (["--data.image_size", "100"], 1, "image size 100 does not fit encoder test_resnet"),
    "no last checkpoint": (["--ckpt_path", "last", "--name", "fresh"], 1, "no last.ckpt in {root}/fresh/checkpoints; "),
    "foreign compile cache": (["--compile_cache", "{root}/foreign.bin"], 1, "{root}/foreign.bin is not a torch.compile cache"),
    "corrupt shard in a loader worker": (["--data", "shards", "--data.root", "{root}/corrupt", "--data.num_workers", "2"], 1,
                                         "{root}/corrupt/synth-000000.tar: SHA-256 "),
    "every training shard corrupt and skipped": (["--data", "shards", "--data.root", "{root}/corrupt", "--data.skip_corrupt", "true",
                                                 "--data.num_workers", "0"], 1, "all 1 training shards are corrupt, none can be used"),
    "no training batch in an epoch": (["--data", "shards", "--data.root", "{root}/small", "--data.resampled", "false", "--data.batch_size", "8",
                                      "--data.num_workers", "0"], 1, "training epoch 0 got no batch from the data"),
    "meshes the shards lack": (["--data", "shards", "--data.root", "{root}/corrupt", "--data.with_mesh", "true"], 1,
                               "{root}/corrupt was generated without meshes; drop --data.with_mesh"),
    "unreadable checkpoint": (["--ckpt_path", "{root}/foreign.bin"], 1, "checkpoint {root}/foreign.bin cannot be read as a PyTorch checkpoint"),
    "config that is not YAML": (["--config", "{root}/bad.yaml"], 2, "config {root}/bad.yaml is not valid YAML at line 3, column 1: expected ',' or ']'"),
    "weights cast to float16": (["--trainer.precision", "16-true"], 2, "--trainer.precision 16-true: regressors train in 32-true"),
}


@pytest.mark.parametrize("args, status, cause", ONE_LINE_ERRORS.values(), ids=ONE_LINE_ERRORS.keys())
def test_errors_are_one_line_with_the_cause(shard_folders, args, status, cause):
    root = shard_folders
    args = [arg.format(root=root) for arg in args]
    result = run_fit("--model.encoder=test_resnet", f"--trainer.default_root_dir={root}", "--trainer.logger=false", *args)
    lines = [line for line in result.stderr.splitlines() if line.startswith("regress.fit: ")]  # not notes, nor libraries' warnings
    assert result.returncode == status and len(lines) == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"regress.fit: error: {cause.format(root=root)}"), result.stderr


def test_the_debug_variable_shows_the_traceback(tmp_path):
    result = subprocess.run(
        fit_command("--model.encoder=test_resnet", f"--model.encoder_weights={tmp_path}/resnet.pth"),
        cwd=REPO, env={**child_env(), DEBUG_VARIABLE: "1"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
    assert f"FileNotFoundError: encoder weights {tmp_path}/resnet.pth do not exist" in result.stderr


def test_a_run_name_keeps_its_checkpoints_in_one_folder_across_runs(tmp_path):
    """A second run of the same name, started afresh, writes into the same folder and replaces last.ckpt."""
    args = [*TINY, "--name=exp", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    first = fit.main(args)
    folder = tmp_path / "exp" / "checkpoints"
    assert [cb.dirpath for cb in first.trainer.checkpoint_callbacks] == [str(folder)] * 2
    assert Path(first.trainer.checkpoint_callback.best_model_path).parent == folder and load(folder / "last.ckpt")["global_step"] == 2
    fit.main([*args, "--trainer.max_steps=4"])
    assert load(folder / "last.ckpt")["global_step"] == 4 and sorted(p.name for p in folder.glob("last*")) == ["last.ckpt", "last.ckpt.sha256"]


# --- checkpoint integrity and resuming what was asked for --------------------------------------------


def test_checkpoints_carry_their_sha256_and_a_damaged_one_is_refused(tmp_path, capsys):
    args = [*TINY, "--name=exp", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    fit.main(args)
    folder = tmp_path / "exp" / "checkpoints"
    for checkpoint in folder.glob("*.ckpt"):  # sha256sum's format: `sha256sum -c last.ckpt.sha256` checks it
        assert (folder / f"{checkpoint.name}.sha256").read_text() == f"{file_sha256(checkpoint)}  {checkpoint.name}\n"
    assert not list(folder.glob("*.partial"))
    damaged = bytearray((folder / "last.ckpt").read_bytes())
    damaged[len(damaged) // 2 : len(damaged) // 2 + 64] = bytes(64)  # flipped bits that torch.load would still read
    (folder / "last.ckpt").write_bytes(bytes(damaged))
    with pytest.raises(SystemExit) as stop:
        fit.main([*args, "--trainer.max_steps=4", "--ckpt_path=last"])
    assert stop.value.code == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"regress.fit: error: checkpoint {folder / 'last.ckpt'} is damaged: its bytes no longer match the SHA-256 in last.ckpt.sha256 "
        "saved beside it; restore it from a copy, or give a .ckpt written by python -m regress.fit, or last"
    )


def test_a_resume_that_asks_for_another_model_is_refused_and_best_resumes_the_best(tmp_path, capsys):
    args = [*TINY, "--name=exp", f"--trainer.default_root_dir={tmp_path}", "--config=csv"]
    first = fit.main(args)
    run = tmp_path / "exp"
    assert (run / "config.yaml").is_file() and (run / "version_0" / "metrics.csv").is_file()  # logs beside the checkpoints
    last = run / "checkpoints" / "last.ckpt"
    refused = {
        "--model=latent": f"{last} holds a DepthRegressor, but the command asks for a LatentRegressor; a resumed run keeps",
        "--model.lr=1e30": f"{last} was trained with other model settings than asked for here: --model.lr=1e+30 (the checkpoint's: 0.001);",
    }
    for option, message in refused.items():
        with pytest.raises(SystemExit) as stop:
            fit.main([option, *args, "--ckpt_path=last"])  # --model before the --model.* options of TINY
        assert stop.value.code == 2 and capsys.readouterr().err.splitlines()[0].startswith(f"regress.fit: error: {message}")
    resumed = fit.main([*args, "--trainer.max_steps=4", "--ckpt_path=best"])  # a new process's `best`: what last.ckpt recorded
    assert resumed.trainer.ckpt_path == first.trainer.checkpoint_callback.best_model_path and resumed.trainer.global_step == 4


def test_the_ddp_config_trains_two_ranks_on_the_cpu_and_writes_one_verified_checkpoint(tmp_path):
    """configs/trainer/ddp.yaml with the checkpoint plugin, on two gloo ranks: rank 0 alone writes, whole and hashed."""
    small = [arg for arg in TINY if not arg.startswith("--trainer.max_steps")]
    result = run_fit("--config=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32-true",
                     *small, "--data.epoch_length=8", "--trainer.max_epochs=1", "--trainer.logger=false",
                     f"--trainer.default_root_dir={tmp_path}", "--name=ddp")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "ddp" / "checkpoints"
    assert load(folder / "last.ckpt")["global_step"] == 2  # 8 samples, 2 ranks of batch 2
    assert (folder / "last.ckpt.sha256").read_text() == f"{file_sha256(folder / 'last.ckpt')}  last.ckpt\n"
    assert not list(folder.glob("*.partial"))


def test_a_save_over_a_checkpoint_lists_only_the_new_hash_and_a_removal_takes_the_list(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, path)  # written before lists were kept
    old = file_sha256(path)
    plugin = VerifiedCheckpointIO()
    lists_during_the_rename = []
    rename = AtomicFile.commit
    monkeypatch.setattr(AtomicFile, "commit", lambda self: (lists_during_the_rename.append(listed_hashes(path)), rename(self)))
    plugin.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {}}, path)
    new = file_sha256(path)
    assert lists_during_the_rename == [{old, new}]  # a kill mid-replace leaves a file its list accepts
    assert listed_hashes(path) == {new} and read_checkpoint(path, "checkpoint", "")["state_dict"]["w"].sum() == 2
    plugin.remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_checkpoint_hash_list_is_named(tmp_path):
    VerifiedCheckpointIO().save_checkpoint({"state_dict": {}, "hyper_parameters": {}}, tmp_path / "last.ckpt")
    (tmp_path / "last.ckpt.sha256").write_bytes(bytes(range(128, 256)))
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'last.ckpt.sha256'} is damaged \(not a sha256sum list: ordinal not in range\(128\) at byte 0\); "
                                         "restore it from a copy, or delete it to use last.ckpt unchecked$"):  # fmt: skip
        read_checkpoint(tmp_path / "last.ckpt", "checkpoint", "give another")
