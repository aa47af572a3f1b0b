"""Safe reading of upstream EG3D network pickles, and the converted `model.safetensors` + `config.json` form.

An upstream pickle stores every network as a call to `torch_utils.persistence.
_reconstruct_persistent_obj(meta)` whose meta carries the module's Python source. Plain
`pickle.load` would execute that source; here a restricted unpickler resolves only the globals
a released file uses (docs/eg3d.md §9), to inert stand-ins that record state, and refuses
every other global. Storages are read with `torch.load(weights_only=True)`. Whatever a damaged
pickle makes the unpickler do, the caller gets a one-line `CheckpointError`.

A converted folder's `config.json` records the SHA-256 of `model.safetensors` (`weights_sha256`)
and of its own content without the two hashes (`config_sha256`, over canonical JSON); loading
refuses a folder whose files no longer match them, and one converted before they were recorded:
reconvert it from the pickle. The hashes catch edits and damage, not a forger who rewrites them;
what samples carry is `generator_checksum`, computed from the config and tensors as loaded.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load, save

from regress.generators.eg3d.config import EG3DConfig
from regress.store.files import write_atomic, write_failed

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
GENERATOR_CLASS = "TriPlaneGenerator"
HASH_FIELDS = ("weights_sha256", "config_sha256")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: not a pickle, truncated, missing G_ema, wrong shapes."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that references a global the safe loader does not understand."""


class ModuleRecord:
    """Inert stand-in for an upstream module or object: its class name and recorded `__dict__`, never its code."""

    class_name = "object"

    def __new__(cls, *args: Any, **kwargs: Any) -> "ModuleRecord":
        record = super().__new__(cls)
        record.state = {}
        return record

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.class_name}: expected a state dict, got {type(state).__name__}")
        self.state = state


class EasyDict(dict):
    """Stand-in for `dnnlib.util.EasyDict`: a plain dict."""


def _record_class(qualified_name: str) -> type[ModuleRecord]:
    return type(qualified_name.rsplit(".", 1)[1], (ModuleRecord,), {"class_name": qualified_name})


def _reconstruct_persistent_obj(meta: Any) -> ModuleRecord:
    """Record a persistent object's class name and state; its `module_src` is dropped unread."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise CheckpointError("persistent object with unexpected meta: expected {type: 'class', class_name, state}")
    record = ModuleRecord()
    record.class_name = str(meta.get("class_name"))
    record.state = meta["state"]
    return record


def _load_storage(data: Any) -> torch.storage.TypedStorage:
    if not isinstance(data, bytes):
        raise CheckpointError(f"tensor storage must be bytes, got {type(data).__name__}")
    try:
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:  # torch's message opens with advice to turn the check off: keep its reason only
        reason = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line), _one_line(str(error)))
        raise UnsafeCheckpointError(f"a tensor storage blob was refused by torch.load(weights_only=True), nothing in it was run: {reason}") from error
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise CheckpointError(f"tensor storage blob holds a {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, torch.storage.TypedStorage) or backward_hooks:
        raise CheckpointError("tensor rebuild with an unexpected storage or backward hooks")
    return torch._utils._rebuild_tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, torch.Tensor) or backward_hooks:
        raise CheckpointError("parameter rebuild with unexpected data or backward hooks")
    return data


def _numpy_dtype(name: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(name, str):
        raise CheckpointError(f"numpy dtype from a {type(name).__name__}, expected a type code")
    dtype = np.dtype(name)
    if dtype.hasobject:
        raise CheckpointError(f"numpy object dtype {name!r} is not allowed")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise CheckpointError("numpy scalar with an object dtype or non-bytes data is not allowed")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


_RECORDED_CLASSES = (
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.activation.Softplus",
    "training.triplane.OSGDecoder",
    "training.volumetric_rendering.renderer.ImportanceRenderer",
    "training.volumetric_rendering.ray_marcher.MipRayMarcher2",
    "training.volumetric_rendering.ray_sampler.RaySampler",
)
ALLOWED_GLOBALS: dict[tuple[str, str], Callable] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    **{tuple(name.rsplit(".", 1)): _record_class(name) for name in _RECORDED_CLASSES},
}


class SafeUnpickler(pickle.Unpickler):
    """Resolves only `ALLOWED_GLOBALS`; anything else raises `UnsafeCheckpointError` naming the global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load global {module}.{name}: the EG3D safe loader only understands "
                "network pickles of the released checkpoints (tensors, numpy scalars, dicts and "
                "recorded upstream modules); this file references something else and was not executed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"refusing a pickle persistent id (a {type(pid).__name__}): not used by EG3D network pickles")


def read_network_pickle(path: str | Path) -> dict:
    """The top-level dict of an upstream network pickle, with modules as inert `ModuleRecord`s."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
        if head.startswith(b"PK\x03\x04"):
            raise CheckpointError(
                f"{path} is a zip archive (a torch.save file?), not an upstream EG3D network pickle; "
                f"pass the released .pkl or a folder holding {WEIGHTS_FILE} + {CONFIG_FILE}"
            )
        if len(head) < 2 or head[0] != 0x80:
            raise CheckpointError(f"{path} is not a pickle file (it starts with {head!r}); expected an upstream EG3D .pkl")
        f.seek(0)
        try:
            data = SafeUnpickler(f).load()
        except CheckpointError as error:
            raise type(error)(f"{path}: {_one_line(str(error))}") from error
        except Exception as error:  # a damaged pickle fails in any way: MemoryError, AttributeError, OverflowError, ...
            raise _corrupt(path, error) from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, expected the dict of a training snapshot")
    return data


def _one_line(text: str, limit: int = 300) -> str:
    """`text` on one line, cut to `limit` characters: messages of damaged files can quote anything."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _corrupt(path: Path, error: Exception) -> CheckpointError:
    """The one-line error for a checkpoint that broke the loader in a way it does not foresee."""
    kind = f"{type(error).__name__}: {_one_line(str(error))}" if str(error).strip() else type(error).__name__
    return CheckpointError(f"{path}: not a valid EG3D checkpoint, truncated or corrupt ({kind}); download or copy it again")


def _flatten_state(record: ModuleRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """A state dict (upstream naming) from a recorded module tree: parameters, persistent buffers, children."""
    state = record.state
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    tensors: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if tensor is None or name in skipped:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is a {type(tensor).__name__}, expected a tensor")
            tensors[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, ModuleRecord):
            raise CheckpointError(f"submodule {prefix}{name} is a {type(child).__name__}, not a recorded module")
        tensors.update(_flatten_state(child, f"{prefix}{name}."))
    return tensors


def _plain(value: Any) -> Any:
    """kwargs as JSON-able Python values: numpy scalars to numbers, EasyDicts to dicts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_upstream(path: str | Path) -> tuple[EG3DConfig, dict[str, torch.Tensor]]:
    """Config and state dict (upstream names) of the `G_ema` in an upstream network pickle; any failure a `CheckpointError`."""
    try:
        return _read_upstream(Path(path))
    except CheckpointError:
        raise
    except Exception as error:  # what a damaged pickle that still unpickles does to the code below
        raise _corrupt(Path(path), error) from error


def _read_upstream(path: Path) -> tuple[EG3DConfig, dict[str, torch.Tensor]]:
    data = read_network_pickle(path)
    if "G_ema" not in data:
        raise CheckpointError(f"{path} has no 'G_ema' generator (keys: {sorted(map(str, data))}); is it a network snapshot?")
    generator = data["G_ema"]
    if not isinstance(generator, ModuleRecord) or generator.class_name != GENERATOR_CLASS:
        name = generator.class_name if isinstance(generator, ModuleRecord) else type(generator).__name__
        raise CheckpointError(f"{path}: G_ema is a {name}, expected an EG3D {GENERATOR_CLASS}")
    state = generator.state
    decoder = (state.get("_modules") or {}).get("decoder")
    config = EG3DConfig.from_upstream(
        _plain(state.get("_init_kwargs") or {}),
        _plain(state.get("rendering_kwargs") or {}),
        _plain(state.get("neural_rendering_resolution")),
        _plain(decoder.state.get("hidden_dim")) if isinstance(decoder, ModuleRecord) else None,
    )
    return config, _flatten_state(generator)


def match_state_dict(
    expected: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], source: str | Path
) -> dict[str, torch.Tensor]:
    """Check that `loaded` has exactly the keys and shapes of `expected`; float32 copies of its tensors."""
    missing = [k for k in expected if k not in loaded]
    unexpected = [k for k in loaded if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(loaded[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if k in loaded and tuple(loaded[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected[:10])}{' ...' if len(unexpected) > 10 else ''}")
    if wrong:
        problems.append(f"{len(wrong)} tensors with wrong shapes: {'; '.join(wrong[:10])}{' ...' if len(wrong) > 10 else ''}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit the EG3D generator its config describes: " + " | ".join(problems)
        )
    return {k: loaded[k].detach().to(torch.float32).contiguous() for k in expected}


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no spaces: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def config_sha256(saved: dict[str, Any]) -> str:
    """SHA-256 of a converted folder's config.json content, its hash fields left out."""
    return hashlib.sha256(canonical_json({k: v for k, v in saved.items() if k not in HASH_FIELDS})).hexdigest()


def generator_checksum(config: EG3DConfig, state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a generator's config and of every tensor (name, dtype, shape, bytes), from what was loaded:
    a pickle and its conversion agree, and an edited config or a forged provenance cannot pass as the original.

    How it runs (`render_precision`, `compile`) is hashed at its defaults: the fast path names the same
    weights as the reference path (the config beside the checksum still says how samples were drawn).
    """
    sha = hashlib.sha256(canonical_json(dataclasses.replace(config, render_precision="float32", compile=None).to_dict()))
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        sha.update(canonical_json([name, str(tensor.dtype), list(tensor.shape)]))
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return sha.hexdigest()


def load_converted(path: str | Path) -> tuple[EG3DConfig, dict[str, torch.Tensor]]:
    """Config and state dict of a converted folder or its `model.safetensors`, once both files match their recorded SHA-256."""
    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    config_path = weights.with_name(CONFIG_FILE)
    missing = [p.name for p in (weights, config_path) if not p.is_file()]
    if missing:
        raise CheckpointError(f"a converted EG3D checkpoint needs {WEIGHTS_FILE} and {CONFIG_FILE} side by side in {weights.parent}: "
                              f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not there; convert the .pkl again "
                              "(python -m regress.generators.eg3d.convert)")  # fmt: skip
    saved = _read_config_file(config_path)
    data = weights.read_bytes()
    _check_recorded_hashes(saved, data, weights, config_path)
    try:
        config = EG3DConfig.from_dict(saved["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path} is not an EG3D config written by regress.generators.eg3d.convert: {error}") from error
    try:
        tensors = load(data)
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{weights} is not a readable safetensors file: {_one_line(str(error))}") from error
    return config, tensors


def _read_config_file(config_path: Path) -> dict[str, Any]:
    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{config_path} is not readable JSON ({_one_line(str(error))}); reconvert the checkpoint") from error
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise CheckpointError(f"{config_path} is not an EG3D config written by regress.generators.eg3d.convert (no 'config' mapping)")
    return saved


def _check_recorded_hashes(saved: dict[str, Any], weights: bytes, weights_path: Path, config_path: Path) -> None:
    """Refuse a converted folder whose config.json or weights differ from what was recorded at conversion."""
    reconvert = f"reconvert it from its pickle: python -m regress.generators.eg3d.convert NETWORK.pkl {config_path.parent}"
    if not all(isinstance(saved.get(k), str) for k in HASH_FIELDS):
        raise CheckpointError(
            f"{config_path} records no SHA-256 of {WEIGHTS_FILE} and of itself (converted before regress recorded them, "
            f"or written by hand), so an altered file could not be told from the original; {reconvert}"
        )
    if config_sha256(saved) != saved["config_sha256"]:
        raise CheckpointError(
            f"{config_path} was altered after conversion (its content no longer matches its config_sha256); {reconvert}; "
            "to render with other settings pass them as generator options instead of editing the file"
        )
    if hashlib.sha256(weights).hexdigest() != saved["weights_sha256"]:
        raise CheckpointError(
            f"{weights_path} was altered or damaged after conversion (its SHA-256 is not the weights_sha256 in {CONFIG_FILE}); {reconvert}"
        )


def save_converted(
    out_dir: str | Path, config: EG3DConfig, state_dict: dict[str, torch.Tensor], provenance: dict[str, Any]
) -> Path:
    """Write `model.safetensors` + `config.json` (with both SHA-256) into `out_dir`, each through a temporary name."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file, not a folder: give a folder to write {WEIGHTS_FILE} and {CONFIG_FILE} into")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, metadata={"format": "pt"})
    saved = {"config": config.to_dict(), "provenance": provenance, "weights_sha256": hashlib.sha256(weights).hexdigest()}
    saved["config_sha256"] = config_sha256(saved)
    for name, data in ((WEIGHTS_FILE, weights), (CONFIG_FILE, json.dumps(saved, indent=2).encode())):
        try:
            write_atomic(out_dir / name, data)
        except OSError as error:
            raise write_failed(out_dir / name, error, "free some space and convert again") from error
    return out_dir
