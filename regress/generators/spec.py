"""GeneratorSpec: the one way a generator enters the system, as plain data (backend name, weights path, options).

A spec is checked in full when it is made (a known backend, weights that exist, options the backend
takes, with or without a checkpoint), so a typo fails before any work; `build(device)` gives this
process's one instance of it, shared by whoever asks (a data module and the model that renders its
latents), and `create()` a fresh one. A spec, unlike a live module, can be saved, compared and sent:
`record()` is what a latent checkpoint keeps of the generator it was trained against.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from regress.generators.base import Generator
from regress.generators.options import check_options
from regress.generators.registry import backend
from regress.store.files import tree_sha256

CHECKPOINT_HELP = "give the path of a local checkpoint (EG3D: the upstream .pkl, or the folder python -m regress.generators.eg3d.convert makes)"
_INSTANCES: dict[str, Generator] = {}  # this process's generators, by `GeneratorSpec.key`
_SHA256: dict[tuple[str, int, int], str] = {}  # checkpoint hashes by (path, size, mtime): hashed once a process


@dataclass(frozen=True)
class GeneratorSpec:
    """Which generator: a backend `name` (None: `eg3d` with a checkpoint, else the embedded `analytic` head), its
    `checkpoint` (a local path, never a download) and keyword `options` for the backend (render precision, compile, sizes).

    How it runs (EG3D's `render_precision`, a `compile` mode) is set in `options` like any other choice, and
    recorded with the rest; an option's old name is taken for one release, with a line saying its new one.
    """

    name: str | None = None
    checkpoint: str | Path | None = None  # a str once made
    options: Mapping[str, Any] | None = field(default_factory=dict)  # a dict once made

    def __post_init__(self) -> None:
        name = self.name if self.name is not None else ("eg3d" if self.checkpoint is not None else "analytic")
        cls = backend(name)  # an unknown name is a ValueError listing the known ones
        checkpoint = None if self.checkpoint is None else str(self.checkpoint)
        if checkpoint is not None and not Path(checkpoint).exists():
            raise FileNotFoundError(f"generator checkpoint {checkpoint} does not exist; {CHECKPOINT_HELP}")
        if checkpoint is not None and not cls.has_weights:
            raise ValueError(f"the {name} generator has no weights; drop the checkpoint {checkpoint} or choose --generator eg3d")
        options = renamed(cls, dict(self.options or {}))
        accepted = cls.option_names()
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f"unknown {name} generator option(s) {', '.join(unknown)}; its options: {', '.join(accepted)}")
        check_options(name, options, cls.option_types(), cls.option_bounds)
        if self.name is None and checkpoint is None:
            print("regress: no EG3D checkpoint given, using the embedded analytic head generator", file=sys.stderr)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "checkpoint", checkpoint)
        object.__setattr__(self, "options", options)

    @property
    def checkpoint_sha256(self) -> str | None:
        """SHA-256 of the checkpoint file or folder (None without one), hashed once per process and file version."""
        if self.checkpoint is None:
            return None
        path = Path(self.checkpoint)
        stat = path.stat()
        version = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if version not in _SHA256:
            _SHA256[version] = tree_sha256(path)
        return _SHA256[version]

    @functools.cached_property
    def key(self) -> str:
        """What tells two specs apart: backend, the checkpoint's content (not its path) and the options."""
        return repr((self.name, self.checkpoint_sha256, sorted(self.options.items(), key=lambda item: item[0])))

    def create(self) -> Generator:
        """A new instance, frozen and in eval mode; random weights (a backend without a checkpoint) are the same every time."""
        cls = backend(self.name)
        with torch.random.fork_rng(devices=[]):  # weights are drawn on the CPU: its stream alone is set, then given back
            torch.default_generator.manual_seed(0)  # the same random weights on every rerun and rank
            if self.checkpoint is not None:
                generator = cls.from_checkpoint(Path(self.checkpoint), **self.options)
            else:
                if cls.has_weights:  # the embedded default is a model in its own right; any other without weights is noise
                    print(f"regress: no checkpoint given for {self.name}: random weights, whose images are noise (for tests and timing only)",
                          file=sys.stderr)  # fmt: skip
                generator = cls(**self.options)
        return generator.requires_grad_(False).eval()

    def build(self, device: torch.device | str | None = None) -> Generator:
        """This process's one instance of the spec, on `device` (None: where it is): made on first use, then shared,
        so a data module and the model rendering its latents hold the same weights once. It lives as long as the
        process: code that goes through many large generators, each once, uses `create()`."""
        if self.key not in _INSTANCES:
            _INSTANCES[self.key] = self.create()
        generator = _INSTANCES[self.key]
        if device is not None and generator.device != torch.device(device):
            generator.to(device)
        return generator

    def fingerprint(self) -> dict[str, Any]:
        """What decides the generator's draws, as data sets record it: its identity (backend, checksum, config), the
        checkpoint file's SHA-256 and the options, an option renamed since under the name data sets stored it by."""
        return {"generator": self.build().identity(), "checkpoint_sha256": self.checkpoint_sha256, "generator_options": self.stored_options()}

    def stored_options(self) -> dict[str, Any]:
        """The options as data sets record them: one renamed since under the name it had when they began to."""
        return backend(self.name).stored_options(self.options)

    def record(self) -> dict[str, Any]:
        """Plain data for a checkpoint's hyperparameters: the spec, and the checksum of the weights it named."""
        return {**dataclasses.asdict(self), "checksum": self.build().identity()["checksum"]}


def renamed(cls: type[Generator], options: dict[str, Any]) -> dict[str, Any]:
    """`options` with a backend's old option names replaced by their new ones, each said once on stderr."""
    for old, new in cls.renamed_options.items():
        if old in options:
            if new in options:
                raise ValueError(f"{cls.name} options {old!r} and {new!r} are one option; give {new!r} alone")
            print(f"regress: the {cls.name} option {old!r} is now {new!r}; the old name goes in a later release", file=sys.stderr)
            options[new] = options.pop(old)
    return options


def describe_record(record: dict[str, Any]) -> str:
    """A generator record in a few words: backend, checksum and where its weights came from."""
    return f"{record['name']} {record['checksum']} ({record.get('checkpoint') or 'no checkpoint file named'})"


def stored_record(identity: dict[str, Any], options: dict[str, Any] | None) -> dict[str, Any]:
    """The record of the generator a stored data set names (its manifest's identity and options; the weights' path is
    not kept with the data, so it is None)."""
    return {"name": identity["generator"], "checkpoint": None, "options": dict(options or {}), "checksum": identity["checksum"]}


@dataclass(frozen=True)
class LatentSpace:
    """What a data module knows of its samples' w: shape (num_ws, w_dim), mean (float32, CPU), the spec of the
    generator that renders it (None for stored samples) and, for stored samples, the record of the generator that
    made them (`made_by`, from their manifest). `python -m regress.fit` links it into the latent model."""

    shape: tuple[int, int]
    mean: torch.Tensor
    generator: GeneratorSpec | None = None
    made_by: dict[str, Any] | None = None

    def generator_record(self) -> dict[str, Any] | None:
        """What a latent checkpoint keeps of the generator of these latents: the spec's record, else the stored one."""
        return self.generator.record() if self.generator is not None else self.made_by
