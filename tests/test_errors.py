"""One exit-status rule for the three commands: 2 when the command line cannot be used, 1 when the job stops on an
error, 130 on Ctrl-C where the job says what it kept; each error one line, `REGRESS_DEBUG=1` its traceback."""

from __future__ import annotations

import pytest

from regress import evaluate, fit, generate
from regress.errors import DEBUG_VARIABLE, UsageError, run_command

MAINS = {"fit": fit.main, "generate": generate.main, "evaluate": evaluate.main}
SUBCOMMAND = {"fit": [], "generate": [], "evaluate": ["benchmark"]}
# Per job: arguments (`{tmp}` is a fresh folder), the exit status, and the error line after `regress.JOB: error: `
# (one text for every job, or one per job).
CASES = {
    "unknown option": ({job: ["--bogus", "1"] for job in MAINS}, 2, "unrecognized arguments: --bogus 1"),
    "missing config file": ({job: ["--config", "{tmp}/missing.yaml"] for job in MAINS}, 2, "config file {tmp}/missing.yaml does not exist"),
    "value of the wrong type": (
        {"fit": ["--trainer.max_epochs", "many"], "generate": ["--batch_size", "many"], "evaluate": ["--batch_size", "many"]},
        2,
        {"fit": "--trainer.max_epochs: Expected a <class 'int'>. Got value: many", "generate": "--batch_size: Expected a <class 'int'>. Got value: many",
         "evaluate": "--batch_size: Expected a <class 'int'>. Got value: many"},
    ),  # fmt: skip
    "runtime error": (
        {
            "fit": ["--ckpt_path", "{tmp}/missing.ckpt", "--trainer.logger=false", "--trainer.default_root_dir={tmp}"],
            "generate": ["--output", "{tmp}/out", "--batch_size", "0", "--progress", "false"],  # parses; generate() refuses it
            "evaluate": ["--pairs", "{tmp}/pairs", "--encoder_seeds", "2"],
        },
        1,
        {
            "fit": "checkpoint {tmp}/missing.ckpt does not exist; give a .ckpt written by python -m regress.fit, or last",
            "generate": "batch_size must be >= 1 and workers >= 0, got 0 and 0",
            "evaluate": "encoder_seeds scores a latent regressor as an encoder: give its latent_checkpoint, or set encoder_seeds: 0",
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
