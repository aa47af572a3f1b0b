"""One exit-status rule for the commands: 2 when the command line cannot be used, 1 when the job stops on an
error, 130 on Ctrl-C where the job says what it kept; each error one line, `REGRESS_DEBUG=1` its traceback."""

from __future__ import annotations

import pytest
from PIL import Image

from regress import evaluate, export, fit, generate, predict
from regress.errors import DEBUG_VARIABLE, UsageError, run_command

MAINS = {"fit": fit.main, "generate": generate.main, "evaluate": evaluate.main, "export": export.main}
SUBCOMMAND = {"fit": [], "generate": [], "evaluate": ["benchmark"], "export": []}
# Per job: arguments (`{tmp}` is a fresh folder), the exit status, and the error line after `regress.JOB: error: `
# (one text for every job, or one per job).
CASES = {
    "unknown option": ({job: ["--bogus", "1"] for job in MAINS}, 2, "unrecognized arguments: --bogus 1"),
    "abbreviated option": (
        {"fit": ["--trainer.max_epoch", "3"], "generate": ["--num_sampl", "3"], "evaluate": ["--pair", "{tmp}"], "export": ["--sourc", "{tmp}"]},
        2,
        {"fit": "unrecognized arguments: --trainer.max_epoch 3", "generate": "unrecognized arguments: --num_sampl 3",
         "evaluate": "unrecognized arguments: --pair {tmp}", "export": "unrecognized arguments: --sourc {tmp}"},
    ),  # fmt: skip
    "missing config file": ({job: ["--config", "{tmp}/missing.yaml"] for job in MAINS}, 2, "config file {tmp}/missing.yaml does not exist"),
    "value of the wrong type": (
        {"fit": ["--trainer.max_epochs", "many"], "generate": ["--batch_size", "many"], "evaluate": ["--batch_size", "many"],
         "export": ["--relative_depth", "many"]},
        2,
        {"fit": "--trainer.max_epochs: Expected a <class 'int'>. Got value: many", "generate": "--batch_size: Expected a <class 'int'>. Got value: many",
         "evaluate": "--batch_size: Expected a <class 'int'>. Got value: many", "export": "--relative_depth: Expected a <class 'bool'>. Got value: many"},
    ),  # fmt: skip
    "runtime error": (
        {
            "fit": ["--ckpt_path", "{tmp}/missing.ckpt", "--trainer.logger=false", "--trainer.default_root_dir={tmp}"],
            "generate": ["--output", "{tmp}/out", "--batch_size", "0", "--progress", "false"],  # parses; generate() refuses it
            "evaluate": ["--pairs", "{tmp}/pairs", "--encoder_seeds", "2"],
            "export": ["--source", "{tmp}", "--output", "{tmp}/out"],
        },
        1,
        {
            "fit": "checkpoint {tmp}/missing.ckpt does not exist; give a .ckpt written by python -m regress.fit, or last",
            "generate": "batch_size must be >= 1 and workers >= 0, got 0 and 0",
            "evaluate": "encoder_seeds scores a latent regressor as an encoder: give its latent_checkpoint, or set encoder_seeds: 0",
            "export": "{tmp} is neither a shard set nor a pairs set",
        },
    ),
}
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")  # pytest's own argv


@pytest.mark.parametrize("job", MAINS)
@pytest.mark.parametrize("args, status, message", CASES.values(), ids=CASES.keys())
def test_every_command_exits_by_the_one_rule_with_a_one_line_error(job, args, status, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        MAINS[job]([*SUBCOMMAND[job], *(arg.format(tmp=tmp_path) for arg in args[job])])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"regress.{job}: error: ")]
    assert stop.value.code == status and len(errors) == 1, err
    expected = (message[job] if isinstance(message, dict) else message).format(tmp=tmp_path)
    assert errors[0].startswith(f"regress.{job}: error: {expected}") and "usage:" not in err and "Traceback" not in err


def interrupt() -> None:
    raise KeyboardInterrupt


def test_ctrl_c_exits_130_where_the_job_says_what_it_kept(capsys):
    with pytest.raises(SystemExit) as stop:
        run_command("regress.generate", interrupt, interrupted="interrupted; complete shards are kept")
    assert stop.value.code == 130 and capsys.readouterr().err == "regress.generate: interrupted; complete shards are kept\n"
    with pytest.raises(KeyboardInterrupt):
        run_command("regress.evaluate", interrupt)


def refuse() -> None:
    raise UsageError("--thing 3: give 1 or 2")


def test_usage_errors_exit_2_with_a_hint_and_the_debug_variable_raises_them(capsys, monkeypatch):
    with pytest.raises(SystemExit) as stop:
        run_command("regress.fit", refuse, hint_line=True)
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["regress.fit: error: --thing 3: give 1 or 2", "regress.fit: python -m regress.fit --help lists the options"]
    monkeypatch.setenv(DEBUG_VARIABLE, "1")
    with pytest.raises(UsageError, match="give 1 or 2"):
        run_command("regress.fit", refuse, hint_line=True)


# Per command: its main and the arguments that reach the generator (`{tmp}` a folder holding one photo).
GENERATOR_JOBS = {
    "generate": (generate.main, ["--output", "{tmp}/out", "--progress", "false", "--generator_options"]),
    "fit": (fit.main, ["--trainer.logger=false", "--trainer.default_root_dir={tmp}", "--data.generator_options"]),
    "evaluate": (evaluate.main, ["pairs", "--images", "{tmp}/photo.png", "--output", "{tmp}/pairs", "--generator_options"]),
    "predict": (predict.main, ["--images", "{tmp}/photo.png", "--depth_checkpoint", "{tmp}/none.ckpt", "--generator_options"]),
}
BAD_OPTIONS = {  # YAML as on a command line -> the error line
    "{image_resolution: 64.5}": "the analytic generator option image_resolution must be a whole number, got 64.5",
    "{image_resolution: nan}": "the analytic generator option image_resolution must be a whole number, got 'nan'",
    '{"image_resolution": 1e9}': "the analytic generator option image_resolution must be a whole number, got 1000000000.0",
    "{image_resolution: 1000000000}": "the analytic generator option image_resolution must be from 8 to 4096, got 1000000000",
    "{readout_gain: .nan}": "the analytic generator option readout_gain must be a finite number, got nan",
    "{march_steps: 0}": "the analytic generator option march_steps must be from 1 to 1024, got 0",  # empty masks everywhere
}


@pytest.mark.parametrize("options, message", BAD_OPTIONS.items(), ids=BAD_OPTIONS.keys())
@pytest.mark.parametrize("job", GENERATOR_JOBS)
def test_a_bad_generator_option_value_is_one_line_naming_it_in_every_job(job, options, message, tmp_path, capsys):
    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    main, args = GENERATOR_JOBS[job]
    with pytest.raises(SystemExit) as stop:
        main([*(arg.format(tmp=tmp_path) for arg in args), options])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"regress.{job}: error: ")]
    assert stop.value.code == 1 and errors == [f"regress.{job}: error: {message}"] and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "pairs").exists()  # refused before anything is written


def test_a_config_that_is_no_mapping_is_one_line_in_every_job(tmp_path, capsys):
    config = tmp_path / "list.yaml"
    config.write_text("- num_samples: 4\n- batch_size: 2\n")
    for job, main in {**MAINS, "predict": predict.main}.items():
        with pytest.raises(SystemExit) as stop:
            main([*SUBCOMMAND.get(job, []), "--config", str(config)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.splitlines()[0] == (
            f"regress.{job}: error: config {config} is a YAML list, not a mapping of options (option: value, one a line)"
        ), err
        assert "usage:" not in err
