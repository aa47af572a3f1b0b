"""The package ships its configs and version: short names resolve to the files inside it, from any folder."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

import regress
import regress.evaluate as evaluate
import regress.fit as fit
import regress.generate as generate
from regress import configs
from regress.camera import ViewMixture

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")


def test_version_is_the_one_in_pyproject():
    assert regress.__version__ == PYPROJECT["project"]["version"]


def test_every_shipped_config_is_package_data():
    """The wheel takes what package-data names: every YAML under regress/configs must match one of its patterns."""
    package = REPO / "regress"
    declared = {path for pattern in PYPROJECT["tool"]["setuptools"]["package-data"]["regress"] for path in package.glob(pattern)}
    shipped = set(configs.ROOT.rglob("*.yaml"))
    assert configs.ROOT == package / "configs" and len(shipped) >= 18 and shipped <= declared


def test_short_names_resolve_to_the_shipped_files_of_the_group():
    root = configs.ROOT
    assert configs.expand_config_arguments(["--config", "gpu", "--config=trainer/ddp"], "trainer") == [
        "--config", str(root / "trainer" / "gpu.yaml"), f"--config={root / 'trainer' / 'ddp.yaml'}",
    ]  # fmt: skip
    assert configs.expand_config_arguments(["--config", "eg3d", "--checkpoint", "gpu"], "generate") == [
        "--config", str(root / "generate" / "eg3d.yaml"), "--checkpoint", "gpu",
    ]  # fmt: skip
    assert configs.config_file("evaluate", "generate/analytic") == str(root / "generate" / "analytic.yaml")
    assert configs.config_file("trainer", "{trainer: {max_epochs: 1}}") == "{trainer: {max_epochs: 1}}"  # YAML text passes through


def test_a_file_of_your_own_wins_over_a_short_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("gpu").write_text("trainer: {max_epochs: 1}\n")
    assert configs.config_file("trainer", "gpu") == "gpu"


def test_an_unknown_short_name_lists_the_group():
    with pytest.raises(FileNotFoundError, match="no config 'gpus': not a file, and not one of csv, ddp, gpu, tensorboard"):
        configs.config_file("trainer", "gpus")


def test_fit_reads_a_trainer_config_by_short_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--data", "synth-online", "--config", "csv", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    assert printed["data"]["class_path"] == "regress.datamodules.SynthOnlineDataModule"
    assert printed["trainer"]["max_epochs"] == 4  # regress/configs/fit.yaml, the default config


def test_the_latent_encoder_recipe_is_a_whole_run_by_its_short_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--config", "recipes/latent-encoder", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "regress.models.LatentRegressor"  # over the default --model depth
    assert printed["data"]["init_args"]["generator_options"] == {"image_resolution": 128, "compile": True}
    assert printed["trainer"]["max_steps"] == 2200 and printed["trainer"]["precision"] == "bf16-mixed"


def test_fit_refuses_an_unknown_config_name_as_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--data", "synth-online", "--config", "gpus"])
    assert exit_info.value.code == 2
    assert "regress.fit: error: no config 'gpus'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "main, args, key, value",
    [
        (generate.main, ["--config", "eg3d"], "generator", "eg3d"),
        (evaluate.main, ["benchmark", "--config", "benchmark"], "output", "data/benchmark"),
    ],
)
def test_generate_and_evaluate_read_configs_by_short_name(main, args, key, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)[key] == value


def test_view_mixtures_go_by_short_name():
    assert [c.name for c in ViewMixture.load("frontal").categories] == ["frontal"]
    with pytest.raises(FileNotFoundError, match=r"no view mixture 'side': not a file, and not one of \['frontal', 'published'\]"):
        ViewMixture.load("side")
