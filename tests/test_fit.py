"""Training end to end: both regressors learn on analytic data; `python -m regress.fit` options and errors."""

from __future__ import annotations

import dataclasses

import csv
from pathlib import Path

import lightning as L
import pytest
import torch

import regress.fit as fit
from regress import configs
from regress.datamodules import SynthOnlineDataModule
from regress.models import DepthRegressor, LatentRegressor
from regress.training.arguments import expand_arguments

# A small analytic head (8-number latent, 16-pixel renders) so a few dozen steps show learning.
LEARNING_GENERATOR = {"w_dim": 8, "z_dim": 16, "image_resolution": 32, "render_resolution": 16, "depth_resolution": 16}
TINY = [
    "--data.generator=analytic",
    "--data.generator_options={image_resolution: 32, render_resolution: 8, depth_resolution: 8}",
    "--data.image_size=32", "--data.batch_size=2", "--data.epoch_length=4", "--data.val_size=2",
    "--model.encoder=test_resnet",
    "--trainer.max_steps=2", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
]  # fmt: skip
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")  # pytest's own argv


def learning_data(steps: int) -> SynthOnlineDataModule:
    """`steps` steps of batch 8 on a small analytic head."""
    return SynthOnlineDataModule(
        generator="analytic", generator_options=LEARNING_GENERATOR, epoch_length=8 * steps, batch_size=8, val_size=32, image_size=32
    )  # fmt: skip


def learn(model: L.LightningModule, data: SynthOnlineDataModule) -> tuple[dict, dict]:
    """Validation metrics of the untrained model and after an epoch of `data`."""
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    first = trainer.validate(model, data, verbose=False)[0]
    trainer.fit(model, data)
    return first, {k: v.item() for k, v in trainer.callback_metrics.items()}


def test_depth_regressor_learns():
    L.seed_everything(0)
    first, last = learn(DepthRegressor(encoder="test_resnet", lr=3e-3), learning_data(steps=24))
    assert last["val/loss"] <= 0.7 * first["val/loss"], (first, last)
    assert last["val/depth_absrel"] < 0.7 * first["val/depth_absrel"]


def test_latent_regressor_learns():
    L.seed_everything(0)
    data = learning_data(steps=48)
    first, last = learn(LatentRegressor(encoder="test_resnet", lr=3e-3, latent_space=data.latent_space), data)
    assert last["val/loss"] <= 0.7 * first["val/loss"], (first, last)
    assert first["val/latent_cosine"] == 0.0 and last["val/latent_cosine"] > 0.5  # starts at the mean latent
    # re-rendered in image space, the trained model beats the mean latent clearly (18.7 -> 23.8 dB when written)
    assert last["val/image_psnr"] > first["val/image_psnr"] + 3 and last["val/novel_psnr"] > first["val/novel_psnr"] + 3
    assert last["val/image_ssim"] > first["val/image_ssim"] and last["val/render_depth_l1"] < first["val/render_depth_l1"]


def test_short_names_pick_config_files():
    root = configs.ROOT
    args = expand_arguments(["--data", "synth-online", "--trainer.max_steps=1"])
    assert args == ["fit", "--model", str(root / "model" / "depth.yaml"), "--data", str(root / "data" / "synth-online.yaml"), "--trainer.max_steps=1"]
    args = expand_arguments(["validate", "--model=latent", "--data", "shards"])
    assert args == ["validate", f"--model={root / 'model' / 'latent.yaml'}", "--data", str(root / "data" / "shards.yaml")]
    assert expand_arguments(["--model", "regress.models.DepthRegressor"])[-1] == "regress.models.DepthRegressor"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "nope"], "unknown --data 'nope'; choose one of folder, folder-export, folder-prosopo, pairs, shards, synth-online"),
        (["--data", "synth-online", "--model", "resnet"], "unknown --model 'resnet'; choose one of depth, latent"),
        (["--model"], "--model needs a value: one of depth, latent"),
        (["--data.help", "nope"], "unknown --data 'nope'; choose one of folder, folder-export, folder-prosopo, pairs, shards, synth-online"),
    ],
)
def test_unknown_names_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag, name, option", [("--data.help", "shards", "--data.skip_corrupt"), ("--model.help=latent", None, "--model.cycle_weight")])
def test_help_on_a_short_name_shows_its_class_options(flag, name, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit.main([flag] if name is None else [flag, name])
    assert exit_info.value.code == 0
    assert option in capsys.readouterr().out


def test_usage_names_the_command_to_type(capsys):
    with pytest.raises(SystemExit):
        fit.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m regress.fit [options] fit")


@pytest.mark.parametrize("given, steps", [("1", 1), ("1.0", 2), ("yaml 1", 1), ("0.5", 1)])
def test_a_whole_number_of_batches_counts_batches(given, steps, tmp_path):
    """Lightning reads an int as a count and a float as a share: `1` is one batch, `1.0` the whole epoch (2 here)."""
    limit = [f"--trainer.limit_train_batches={given}"]
    if given.startswith("yaml"):
        (tmp_path / "limit.yaml").write_text(f"trainer:\n  limit_train_batches: {given.split()[1]}\n")
        limit = ["--config", str(tmp_path / "limit.yaml")]
    args = ["--data", "synth-online", *TINY, "--trainer.max_steps=-1", "--trainer.max_epochs=1", "--trainer.limit_val_batches=0"]
    cli = fit.main([*args, *limit, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"])
    assert cli.trainer.global_step == steps


def test_checkpointing_off_trains_and_writes_no_checkpoint(tmp_path):
    """fit.yaml's two ModelCheckpoints go with `enable_checkpointing false` (Lightning refused the pair)."""
    args = ["--data", "synth-online", *TINY, "--trainer.enable_checkpointing=false", "--trainer.logger=false"]
    cli = fit.main([*args, f"--trainer.default_root_dir={tmp_path}"])
    assert cli.trainer.global_step == 2 and cli.trainer.checkpoint_callbacks == []
    assert not any(tmp_path.rglob("*.ckpt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
@pytest.mark.parametrize("config", ["gpu", "ddp"])
def test_a_gpu_config_without_a_gpu_is_a_usage_error(config, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--data", "synth-online", "--config", config, f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 2
    assert "--trainer.accelerator gpu (--config gpu and ddp set it): no CUDA GPU is visible here" in capsys.readouterr().err


def test_a_config_naming_a_missing_class_says_so(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "later.yaml").write_text("class_path: regress.datamodules.later.LaterDataModule\n")
    monkeypatch.setattr(configs, "ROOT", tmp_path)
    with pytest.raises(SystemExit):
        fit.main(["--data", "later", "--model", "regress.models.DepthRegressor"])
    assert "--data later: its class regress.datamodules.later.LaterDataModule" in capsys.readouterr().err


def csv_rows(log_dir: Path) -> list[dict]:
    with open(log_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_cli_trains_with_a_logger_override_and_checkpoints(tmp_path):
    cli = fit.main(["--data", "synth-online", "--model", "latent", *TINY, "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}"])
    assert isinstance(cli.model, LatentRegressor) and isinstance(cli.datamodule, SynthOnlineDataModule)
    assert cli.model.hparams.image_size == 32 and cli.model.hparams.latent_shape == (14, 32)  # linked from the data module
    assert torch.equal(cli.model.mean_latent, cli.datamodule.generator.mean_latent())
    rows = csv_rows(Path(cli.trainer.logger.log_dir))
    assert any(row["train/loss"] for row in rows) and any(row["val/latent_cosine"] for row in rows) and any(row["val/image_psnr"] for row in rows)
    last = tmp_path / "default" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["hyper_parameters"]
    assert "latent_space" not in saved  # no generator inside, but its record: plain data
    assert saved["generator_record"] == {**dataclasses.asdict(cli.datamodule.generator_spec), "checksum": cli.datamodule.generator.identity()["checksum"]}
    resumed = fit.main(["--data", "synth-online", "--model", "latent", *TINY, "--trainer.max_steps=4", "--trainer.logger=false", f"--ckpt_path={last}", f"--trainer.default_root_dir={tmp_path / 'elsewhere'}"])
    assert resumed.trainer.global_step == 4


def test_a_resumed_latent_run_says_when_its_data_renders_with_another_generator(tmp_path, capsys):
    fit.main(["--data", "synth-online", "--model", "latent", *TINY, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"])
    first = torch.load(tmp_path / "default" / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["generator_record"]
    capsys.readouterr()
    other = "--data.generator_options={image_resolution: 32, render_resolution: 8, depth_resolution: 8, readout_gain: 2.5}"
    resumed = fit.main(["--data", "synth-online", "--model", "latent", *TINY, other, "--trainer.max_steps=3", "--trainer.logger=false",
                        "--ckpt_path=last", f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    now = resumed.model.hparams.generator_record
    assert now["options"]["readout_gain"] == 2.5 and now["checksum"] != first["checksum"]
    assert (f"regress: warning: this LatentRegressor was trained against analytic {first['checksum']} (no checkpoint file named); "
            f"its data's latents are analytic {now['checksum']} (no checkpoint file named)'s") in capsys.readouterr().err  # fmt: skip


@pytest.mark.parametrize("logger", ["csv", "tensorboard"])
def test_the_shipped_logger_configs_write_their_logs(logger, tmp_path):
    cli = fit.main(["--data", "synth-online", *TINY, "--config", logger, "--name=exp", f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}"])
    log_dir = Path(cli.trainer.logger.log_dir)
    assert log_dir == tmp_path / "exp" / "version_0" and cli.trainer.global_step == 2  # beside the run's checkpoints
    if logger == "csv":
        assert any(row["val/loss"] for row in csv_rows(log_dir))
    else:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(log_dir))
        events.Reload()
        assert {"train/loss", "val/loss"} <= set(events.Tags()["scalars"])


def test_default_logger_is_offline_wandb(tmp_path):
    cli = fit.main(["--data", "synth-online", *TINY, "--trainer.max_steps=1", f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}"])
    assert type(cli.trainer.logger).__name__ == "WandbLogger" and cli.trainer.logger.experiment.name == "default"  # the run's name
    assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.image_size=100"], "image size 100 does not fit encoder test_resnet"),
        (["--ckpt_path=missing.ckpt"], "checkpoint missing.ckpt does not exist"),
        (["--data.checkpoint=missing.pkl"], "generator checkpoint missing.pkl does not exist"),
        (["--model.encoder_weights=missing.pth"], "encoder weights missing.pth do not exist"),
    ],
)
def test_bad_input_gets_a_clear_error(args, message, tmp_path, capsys):
    """Constructor and setup errors of the model and data reach the user as one line, whatever wraps them."""
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--data", "synth-online", *TINY, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}", *args])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.splitlines()
    assert error[-2].startswith(f"regress.fit: error: {message}") and error[-1] == "regress.fit: REGRESS_DEBUG=1 shows the traceback"


@pytest.mark.parametrize("spelling", ["--compile_cache FILE", "--compile_cache=FILE", "--compile_cache.path FILE", "--compile_cache.path=FILE"])
def test_compile_cache_takes_a_file_as_generate_does_and_the_old_spelling_still_works(spelling, tmp_path, capsys):
    """`--compile_cache FILE`, as in regress.generate; `--compile_cache.path` keeps working for a release, with a note."""
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"not a cache")  # refused when the run starts: the file reached the callback
    with pytest.raises(SystemExit) as exit_info:
        fit.main([*TINY, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}", *spelling.replace("FILE", str(foreign)).split()])
    error = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 1 and error[-2].startswith(f"regress.fit: error: {foreign} is not a torch.compile cache")
    deprecated = [line for line in error if "deprecated" in line]
    assert deprecated == (["regress.fit: --compile_cache.path is deprecated, use --compile_cache FILE"] if ".path" in spelling else [])


def test_a_run_config_saved_before_the_rename_still_reads_its_compile_cache(tmp_path, capsys):
    """Run configs written before `--compile_cache FILE` hold `compile_cache: {path: FILE}`; `--config` of one still works."""
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"not a cache")
    (tmp_path / "saved.yaml").write_text(f"compile_cache:\n  path: {foreign}\n")
    with pytest.raises(SystemExit) as exit_info:
        fit.main([*TINY, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}", "--config", str(tmp_path / "saved.yaml")])
    error = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 1 and error[-2].startswith(f"regress.fit: error: {foreign} is not a torch.compile cache")
    assert "regress.fit: compile_cache: {path: FILE} is deprecated, use compile_cache: FILE" in error


@pytest.mark.gpu
def test_latent_regressor_trains_on_eg3d_synthesis_on_the_gpu(eg3d_fixture_dir, tmp_path):
    data = SynthOnlineDataModule(checkpoint=eg3d_fixture_dir / "network.pkl", epoch_length=8, batch_size=4, val_size=4, image_size=128)
    model = LatentRegressor(encoder="resnet18", cycle_weight=0.1, latent_space=data.latent_space)
    trainer = L.Trainer(accelerator="gpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    assert model.hparams.latent_shape == (14, 512) and trainer.global_step == 2
    assert {"val/latent_l1", "val/latent_cosine"} <= set(trainer.callback_metrics)
