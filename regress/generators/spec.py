"""GeneratorSpec: the one way a generator enters the system, as plain data (backend name, weights path, options).

A spec is checked in full when it is made (a known backend, weights that exist, options the backend
takes, with or without a checkpoint), so a typo fails before any work; `build(device)` gives this
process's one instance of it, shared by whoever asks (a data module and the model that renders its
latents), and `create()` a fresh one. A spec, unlike a live module, can be saved, compared and sent:
`record()` is what a latent checkpoint keeps of the generator it was trained against.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from regress.generators.base import Generator
from regress.generators.registry import available_generators, backend
from regress.store.files import tree_sha256

CHECKPOINT_HELP = "give the path of a local checkpoint (EG3D: the upstream .pkl, or the folder python -m regress.generators.eg3d.convert makes)"
_INSTANCES: dict[str, Generator] = {}  # this process's generators, by `GeneratorSpec.key()`
_SHA256: dict[tuple[str, int, int], str] = {}  # checkpoint hashes by (path, size, mtime): hashed once a process


@dataclass(frozen=True)
class GeneratorSpec:
    """Which generator: a backend `name` (None: `eg3d` with a checkpoint, else the embedded `analytic` head), its
    `checkpoint` (a local path, never a download) and keyword `options` for the backend (render precision, compile, sizes).

    How it runs (EG3D's `render_precision`, a `compile` mode) is set in `options` like any other choice, and
    recorded with the rest; an option's old name is taken for one release, with a line saying its new one.
    """

    name: str | None = None
    checkpoint: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = available_generators()
        name = self.name if self.name is not None else ("eg3d" if self.checkpoint is not None else "analytic")
        if name not in known:
            raise ValueError(f"unknown generator {name!r}; known generators: {', '.join(known)}")
        checkpoint = None if self.checkpoint is None else str(self.checkpoint)
        if checkpoint is not None and not Path(checkpoint).exists():
            raise FileNotFoundError(f"generator checkpoint {checkpoint} does not exist; {CHECKPOINT_HELP}")
        if checkpoint is not None and not backend(name).has_weights:
            raise ValueError(f"the {name} generator has no weights; drop the checkpoint {checkpoint} or choose --generator eg3d")
        options = renamed(backend(name), dict(self.options or {}))
        accepted = backend(name).option_names()
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f"unknown {name} generator option(s) {', '.join(unknown)}; its options: {', '.join(accepted)}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "checkpoint", checkpoint)
        object.__setattr__(self, "options", options)

    def checkpoint_sha256(self) -> str | None:
        """SHA-256 of the checkpoint file or folder (None without one), hashed once per process and file version."""
        if self.checkpoint is None:
            return None
        path = Path(self.checkpoint)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _SHA256:
            _SHA256[key] = tree_sha256(path)
        return _SHA256[key]

    def key(self) -> str:
        """What tells two specs apart: backend, the checkpoint's content (not its path) and the options."""
        return repr((self.name, self.checkpoint_sha256(), sorted(self.options.items(), key=lambda item: item[0])))

    def create(self) -> Generator:
        """A new instance, frozen and in eval mode; random weights (a backend without a checkpoint) are the same every time."""
        cls = backend(self.name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random weights on every rerun and rank, whatever the caller's RNG state
            if self.checkpoint is not None:
                generator = cls.from_checkpoint(Path(self.checkpoint), **self.options)
            else:
                if self.name == "analytic":
                    print("regress: no EG3D checkpoint given, using the embedded analytic head generator", file=sys.stderr)
                else:  # the embedded default is a model in its own right; any other without weights is noise
                    print(f"regress: no checkpoint given for {self.name}: random weights, whose images are noise (for tests and timing only)",
                          file=sys.stderr)  # fmt: skip
                generator = cls(**self.options)
        return generator.requires_grad_(False).eval()

    def build(self, device: torch.device | str | None = None) -> Generator:
        """This process's one instance of the spec, on `device` (None: where it is): made on first use, then shared,
        so a data module and the model rendering its latents hold the same weights once."""
        key = self.key()
        if key not in _INSTANCES:
            _INSTANCES[key] = self.create()
        generator = _INSTANCES[key]
        if device is not None and generator.device != torch.device(device):
            generator.to(device)
        return generator

    def fingerprint(self) -> dict[str, Any]:
        """What decides the generator's draws, as data sets record it: its identity (backend, checksum, config), the
        checkpoint file's SHA-256 and the options, under the names the backend stores them by (EG3D: upstream's)."""
        options = backend(self.name).stored_options(self.options)
        return {"generator": self.build().identity(), "checkpoint_sha256": self.checkpoint_sha256(), "generator_options": options}

    def record(self) -> dict[str, Any]:
        """Plain data for a checkpoint's hyperparameters: the spec, and the checksum of the weights it named."""
        return {**dataclasses.asdict(self), "options": dict(self.options), "checksum": self.build().identity()["checksum"]}


def renamed(cls: type[Generator], options: dict[str, Any]) -> dict[str, Any]:
    """`options` with a backend's old option names replaced by their new ones, each said once on stderr."""
    for old, new in cls.renamed_options.items():
        if old in options:
            if new in options:
                raise ValueError(f"{cls.name} options {old!r} and {new!r} are one option; give {new!r} alone")
            print(f"regress: the {cls.name} option {old!r} is now {new!r}; the old name goes in a later release", file=sys.stderr)
            options[new] = options.pop(old)
    return options


def create_generator(name: str | None = None, checkpoint: str | Path | None = None, **options: Any) -> Generator:
    """A new generator (`GeneratorSpec(name, checkpoint, options).create()`), for code that wants its own instance."""
    return GeneratorSpec(name, None if checkpoint is None else str(checkpoint), options).create()


@dataclass(frozen=True)
class LatentSpace:
    """What a data module knows of its samples' w: shape (num_ws, w_dim), mean (float32, CPU) and the spec of the
    generator that renders it (None for stored samples). `python -m regress.fit` links it into the latent model."""

    shape: tuple[int, int]
    mean: torch.Tensor
    generator: GeneratorSpec | None = None
