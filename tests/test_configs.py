"""The package ships its configs and version: short names resolve to the files inside it, from any folder."""

from __future__ import annotations

import importlib
import inspect
import tomllib
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.cli import LightningCLI

import regress
import regress.evaluate as evaluate
import regress.fit as fit
import regress.generate as generate
import regress.predict as predict
from regress import configs
from regress.camera import ViewMixture
from regress.training.cli import CountingTrainer

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
        (predict.main, ["--config", "eg3d"], "mesh_resolution", 256),
        (generate.main, ["--config", "eg3d", "--config", "mesh-512"], "mesh_coarse_stride", 8),  # 512^3 on top of eg3d
        (predict.main, ["--config", "eg3d", "--config", "mesh-512"], "mesh_resolution", 512),
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


# One source of defaults: a default lives in the signature (or dataclass) a config configures, and a shipped
# config sets only what it changes. trainer/ and recipes/ are layered over fit.yaml and the default --data and
# --model, so what they change is measured against those first.
SHIPPED = sorted(p.relative_to(configs.ROOT).as_posix() for p in configs.ROOT.rglob("*.yaml") if p.parent.name != "views")
LAYERED = ("trainer/", "recipes/")
DEFAULT_CHOICES = {"data": "data/synth-online.yaml", "model": "model/depth.yaml"}  # `python -m regress.fit` without --data, --model
REQUIRED = inspect.Parameter.empty


def shipped_yaml(name: str) -> dict:
    return yaml.safe_load((configs.ROOT / name).read_text()) or {}


def import_path(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def parameter_defaults(target: object) -> dict:
    """Name -> default (REQUIRED where none) of a function's parameters, a dataclass instance's fields, or a class's
    __init__ parameters (and its bases' while its __init__ hands **kwargs on, as CountingTrainer does to Trainer)."""
    if is_dataclass(target) and not isinstance(target, type):
        return {f.name: getattr(target, f.name) for f in fields(target)}
    defaults = {}
    for owner in inspect.getmro(target)[:-1] if isinstance(target, type) else [target]:
        parameters = list(inspect.signature(owner.__init__ if isinstance(owner, type) else owner).parameters.values())[isinstance(owner, type):]
        defaults.update({p.name: p.default for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in defaults})
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return defaults


def plain(value: object) -> object:
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def needless_keys(where: str, given: dict, defaults: dict, owner: str, base: dict) -> list[str]:
    """The keys of `given` that are no parameter of `owner`, or that set what applies without them: the value of
    `base` (the config this one is layered on) if it has the key, else the parameter's default."""
    problems = []
    for key, value in given.items():
        name, default = f"{where}{key}", base.get(key, defaults.get(key, REQUIRED))
        if key not in defaults:
            problems.append(f"{name} is no parameter of {owner}")
        elif isinstance(value, dict) and "class_path" in value:
            same_class = isinstance(default, dict) and default.get("class_path") == value["class_path"]
            problems += needless_keys(f"{name}.init_args.", value.get("init_args") or {}, parameter_defaults(import_path(value["class_path"])),
                                      value["class_path"], (default.get("init_args") or {}) if same_class else {})  # fmt: skip
        elif isinstance(value, list) and value and all(isinstance(item, dict) and "class_path" in item for item in value):
            for i, item in enumerate(value):
                defaults_i = parameter_defaults(import_path(item["class_path"]))
                problems += needless_keys(f"{name}[{i}].init_args.", item.get("init_args") or {}, defaults_i, item["class_path"], {})
        elif isinstance(value, dict) and (isinstance(defaults[key], type) or is_dataclass(defaults[key])):  # a group: Trainer, FaceAligner()
            group = defaults[key]
            problems += needless_keys(f"{name}.", value, parameter_defaults(group), getattr(group, "__name__", type(group).__name__), base.get(key) or {})
        elif default is not REQUIRED and plain(value) == plain(default):
            problems.append(f"{name}: {value!r} is what applies without it ({'the config it is layered on' if key in base else 'the default'})")
    return problems


def config_problems(name: str) -> list[str]:
    """What `name` (relative to regress/configs) sets that is no option, or no change, of what it configures."""
    config, group = shipped_yaml(name), name.split("/")[0]
    if group in ("data", "model"):
        target = config.get("class_path")
        extra = [f"{key} is neither class_path nor init_args" for key in config if key not in ("class_path", "init_args")]
        return extra + needless_keys("init_args.", config.get("init_args") or {}, parameter_defaults(import_path(target)), target, {})
    if group == "generate":
        return needless_keys("", config, parameter_defaults(generate.generate), "regress.generate.generate", {})
    if group == "predict":
        return needless_keys("", config, parameter_defaults(predict.predict), "regress.predict.predict", {})
    if group == "evaluate":
        command = evaluate.benchmark if name == "evaluate/benchmark.yaml" else evaluate.pairs
        return needless_keys("", config, parameter_defaults(command), f"regress.evaluate.{command.__name__}", {})
    seed_default = inspect.signature(LightningCLI).parameters["seed_everything_default"].default
    options = {"trainer": CountingTrainer, "data": REQUIRED, "model": REQUIRED, "seed_everything": seed_default}
    base = {**shipped_yaml("fit.yaml"), **{key: shipped_yaml(path) for key, path in DEFAULT_CHOICES.items()}} if name.startswith(LAYERED) else {}
    return needless_keys("", config, options, "python -m regress.fit's config", base)


def test_every_shipped_config_is_checked():
    assert {"fit.yaml", "data/synth-online.yaml", "generate/analytic.yaml", "evaluate/benchmark.yaml", "recipes/latent-encoder.yaml"} <= set(SHIPPED)
    assert not any(name.startswith("views/") for name in SHIPPED)  # data, not options


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_config_sets_only_options_it_changes(name):
    """Every key is a parameter of what the file configures and differs from its default: one source of defaults."""
    problems = config_problems(name)
    assert not problems, f"regress/configs/{name}: " + "; ".join(problems)


def test_the_check_names_a_default_set_again_and_an_unknown_key(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.yaml").write_text(
        "class_path: regress.datamodules.SynthOnlineDataModule\ninit_args: {epoch_length: 256, batch_size: 32, epochs: 3}\n"
    )
    monkeypatch.setattr(configs, "ROOT", tmp_path)
    assert config_problems("data/x.yaml") == [
        "init_args.epoch_length: 256 is what applies without it (the default)",
        "init_args.epochs is no parameter of regress.datamodules.SynthOnlineDataModule",
    ]


def test_the_main_job_trains_256_samples_an_epoch(capsys):
    """README's main job (`python -m regress.fit --data synth-online`): a short CPU run, the data module's own defaults
    but the render size; 512 samples an epoch was the signature's, and never what the job ran."""
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--data", "synth-online", "--print_config"])
    assert exit_info.value.code == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    assert (data["epoch_length"], data["batch_size"], data["val_size"], data["image_size"]) == (256, 16, 64, 128)
    assert data["generator_options"] == {"image_resolution": 128}


def test_generate_without_a_config_makes_the_analytic_configs_dataset(capsys):
    """`--config analytic` names its folder and pins the analytic head; everything that decides the samples is generate()'s default."""
    printed = []
    for args in (["--output", "data/shards/analytic"], ["--config", "analytic"]):
        with pytest.raises(SystemExit) as exit_info:
            generate.main([*args, "--print_config"])
        assert exit_info.value.code == 0
        printed.append(yaml.safe_load(capsys.readouterr().out))
    plain_run, analytic = printed
    assert plain_run.pop("generator") is None and plain_run["checkpoint"] is None  # no generator, no checkpoint: the analytic head
    assert analytic.pop("generator") == "analytic"
    assert plain_run == analytic and analytic["num_samples"] == 10000 and analytic["mesh_resolution"] == 128
