"""`--ckpt_path`: `last` and `best` found in the run's folder, and a resumed run refused when its own --model
options contradict the checkpoint's (Lightning would build the checkpoint's model and drop them silently)."""

from __future__ import annotations

from pathlib import Path

from jsonargparse import Namespace

from regress.errors import UsageError
from regress.models.checkpoint_io import read_checkpoint
from regress.training.run_folder import checkpoint_dir

LAST = "last.ckpt"
LINKED_FROM_DATA = ("image_size", "latent_space")  # set from the data module when the model is built, not by the user


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
