"""The EG3D safe checkpoint loader: refuses what it does not understand, reports bad files clearly, converts losslessly."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from regress.generators import GeneratorSpec
from regress.generators.eg3d import CheckpointError, EG3DGenerator, UnsafeCheckpointError
from regress.generators.eg3d.checkpoint import config_sha256, read_network_pickle, save_converted
from regress.generators.eg3d.config import EG3DConfig
from regress.generators.eg3d.convert import main as convert_main

REPO = Path(__file__).resolve().parent.parent


class _Reduce:
    """Pickles as `function(*args)`: how a malicious pickle makes the loader call something."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _write(path, payload) -> os.PathLike:
    path.write_bytes(pickle.dumps(payload, protocol=4))
    return path


@pytest.mark.parametrize(
    "function, command, global_name",
    [
        (os.system, "touch {marker}", f"{os.system.__module__}.system"),
        (builtins.eval, "open({marker!r}, 'w').write('pwned')", "builtins.eval"),
        (builtins.exec, "open({marker!r}, 'w').write('pwned')", "builtins.exec"),
    ],
)
def test_pickle_calling_a_dangerous_global_is_refused(tmp_path, function, command, global_name):
    marker = tmp_path / "marker"
    path = _write(tmp_path / "evil.pkl", {"G_ema": _Reduce(function, command.format(marker=str(marker)))})
    with pytest.raises(UnsafeCheckpointError, match=global_name.replace(".", r"\.")):
        EG3DGenerator.from_checkpoint(path)
    assert not marker.exists()


def test_code_smuggled_through_module_src_is_never_executed(tmp_path, monkeypatch):
    """A persistent object whose embedded source writes a file: the safe loader records it and runs nothing.

    The control at the end loads the same file the upstream way (exec of module_src) and the file appears.
    """
    marker = tmp_path / "marker"
    source = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # what upstream's persistence does with module_src
        exec(meta["module_src"], {})
        return meta["state"]

    _reconstruct_persistent_obj.__module__ = persistence.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)
    meta = {"type": "class", "version": 6, "module_src": source, "class_name": "TriPlaneGenerator", "state": {}}
    path = _write(tmp_path / "smuggled.pkl", {"G_ema": _Reduce(_reconstruct_persistent_obj, meta)})

    record = read_network_pickle(path)["G_ema"]
    assert record.class_name == "TriPlaneGenerator" and record.state == {}
    with pytest.raises(CheckpointError, match="176 missing keys"):
        EG3DGenerator.from_checkpoint(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # control: a plain unpickler runs the smuggled code
    assert marker.read_text() == "pwned"


def test_storage_blob_with_a_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "marker"
    blob = io.BytesIO()
    torch.save(_Reduce(os.system, f"touch {marker}"), blob, _use_new_zipfile_serialization=False)
    path = _write(tmp_path / "blob.pkl", {"G_ema": _Reduce(torch.storage._load_from_bytes, blob.getvalue())})
    with pytest.raises(UnsafeCheckpointError) as refused:
        EG3DGenerator.from_checkpoint(path)
    assert not marker.exists()
    assert str(refused.value).startswith(f"{path}: a tensor storage blob was refused by torch.load(weights_only=True), nothing in it was run: ")
    assert "GLOBAL posix.system" in str(refused.value) and "set to `False`" not in str(refused.value)  # the global named, not the advice


def test_truncated_pickle_is_reported(tmp_path, eg3d_fixture_dir):
    data = (eg3d_fixture_dir / "network.pkl").read_bytes()
    path = tmp_path / "truncated.pkl"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        EG3DGenerator.from_checkpoint(path)


@pytest.mark.parametrize(
    "content, message",
    [(b"definitely not a network\n", "not a pickle file"), (b"PK\x03\x04rest-of-a-zip", "zip archive"), (b"", "not a pickle file")],
)
def test_non_pickle_file_is_reported(tmp_path, content, message):
    path = tmp_path / "network.pkl"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        EG3DGenerator.from_checkpoint(path)


def test_pickle_without_g_ema_is_reported(tmp_path):
    path = _write(tmp_path / "snapshot.pkl", {"G": None, "D": None, "training_set_kwargs": {}})
    with pytest.raises(CheckpointError, match="no 'G_ema'.*'D', 'G'"):
        EG3DGenerator.from_checkpoint(path)


@pytest.fixture(scope="module")
def converted(eg3d_fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eg3d") / "converted"
    assert convert_main([str(eg3d_fixture_dir / "network.pkl"), str(out)]) == 0
    return out


def test_conversion_round_trip_gives_identical_generator(eg3d_fixture_dir, converted):
    from_pickle = EG3DGenerator.from_checkpoint(eg3d_fixture_dir / "network.pkl")
    from_folder = GeneratorSpec("eg3d", converted).create()
    from_file = EG3DGenerator.from_checkpoint(converted / "model.safetensors")
    assert sorted(p.name for p in converted.iterdir()) == ["config.json", "model.safetensors"]
    reference = from_pickle.state_dict()
    for other in (from_folder, from_file):
        assert other.identity() == from_pickle.identity()
        assert all(torch.equal(reference[k], v) for k, v in other.state_dict().items())
    with np.load(eg3d_fixture_dir / "reference.npz") as npz:
        z, c, coords = (torch.from_numpy(npz[k][:1]) for k in ("z", "c_cond", "coords"))
    with torch.no_grad():
        outputs = [(g.mapping(z, c, psi=0.7), g.density(coords, g.mapping(z, c, psi=0.7))) for g in (from_pickle, from_folder)]
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    provenance = json.loads((converted / "config.json").read_text())["provenance"]
    assert provenance["source_sha256"] == hashlib.sha256((eg3d_fixture_dir / "network.pkl").read_bytes()).hexdigest()


def test_wrong_shapes_and_keys_are_reported(converted, tmp_path):
    tensors = load_file(str(converted / "model.safetensors"))
    tensors["decoder.net.0.weight"] = torch.zeros(64, 31)
    del tensors["backbone.mapping.w_avg"]
    tensors["backbone.mapping.fc2.weight"] = torch.zeros(3)
    config = EG3DConfig.from_dict(json.loads((converted / "config.json").read_text())["config"])
    broken = save_converted(tmp_path / "broken", config, tensors, {})  # hashes that match: only the shapes are wrong
    with pytest.raises(CheckpointError) as error:
        EG3DGenerator.from_checkpoint(broken)
    message = str(error.value)
    assert "decoder.net.0.weight: checkpoint (64, 31), model (64, 32)" in message
    assert "1 missing keys: backbone.mapping.w_avg" in message
    assert "1 unexpected keys: backbone.mapping.fc2.weight" in message


def test_converted_folder_without_config_is_reported(converted, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((converted / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="config.json"):
        EG3DGenerator.from_checkpoint(tmp_path)


def altered_copy(converted: Path, tmp_path: Path, edit) -> Path:
    """A copy of the converted folder whose config.json content went through `edit`."""
    folder = tmp_path / "altered"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((converted / "model.safetensors").read_bytes())
    saved = json.loads((converted / "config.json").read_text())
    edit(saved)
    (folder / "config.json").write_text(json.dumps(saved, indent=2))
    return folder


@pytest.mark.parametrize(
    "edit",
    [
        lambda saved: saved["config"].update(ray_end=4.5),  # every render changes
        lambda saved: saved["provenance"].update(source_sha256="0" * 64),  # a forged origin
    ],
    ids=["ray_end", "provenance"],
)
def test_an_edited_config_json_is_refused(converted, tmp_path, edit):
    folder = altered_copy(converted, tmp_path, edit)
    with pytest.raises(CheckpointError, match=r"altered/config.json was altered after conversion .*reconvert it from its pickle: python -m regress.generators.eg3d.convert") as error:
        EG3DGenerator.from_checkpoint(folder)
    assert "\n" not in str(error.value)


def test_altered_weights_are_refused(converted, tmp_path):
    folder = altered_copy(converted, tmp_path, lambda saved: None)
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-100:-84] = bytes(b ^ 0xFF for b in raw[-100:-84])
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"model.safetensors was altered or damaged after conversion .*weights_sha256.*reconvert"):
        EG3DGenerator.from_checkpoint(folder)


def test_a_folder_converted_without_hashes_is_refused_with_how_to_reconvert(converted, tmp_path):
    folder = altered_copy(converted, tmp_path, lambda saved: [saved.pop("weights_sha256"), saved.pop("config_sha256")])
    with pytest.raises(CheckpointError, match=r"records no SHA-256 of model.safetensors and of itself .*python -m regress.generators.eg3d.convert NETWORK.pkl .*altered"):
        EG3DGenerator.from_checkpoint(folder)


def test_the_checksum_in_every_sample_covers_the_config_and_the_weights(eg3d_fixture_dir, converted, tmp_path):
    """Computed from what was loaded: a config edited and re-hashed by hand loads, but never with the original's checksum."""
    original = EG3DGenerator.from_checkpoint(converted).identity()["checksum"]
    assert EG3DGenerator.from_checkpoint(eg3d_fixture_dir / "network.pkl").identity()["checksum"] == original
    assert EG3DGenerator.from_checkpoint(converted, ray_end=4.5).identity()["checksum"] != original
    fast = EG3DGenerator.from_checkpoint(converted, render_precision="float16", compile="reduce-overhead").identity()
    assert fast["checksum"] == original and fast["config"]["precision"] == "float16"  # how it runs: same weights, said in the config

    def forge(saved):
        saved["config"]["ray_end"], saved["provenance"]["source_sha256"] = 4.5, "0" * 64
        saved["config_sha256"] = config_sha256(saved)  # what a forger can redo: the hashes are not a signature

    forged = EG3DGenerator.from_checkpoint(altered_copy(converted, tmp_path, forge))
    assert forged.config.ray_end == 4.5 and forged.identity()["checksum"] not in (original, "0" * 64)
    weights = load_file(str(converted / "model.safetensors"))
    weights["decoder.net.0.bias"] = weights["decoder.net.0.bias"] + 1e-6
    config = EG3DConfig.from_dict(json.loads((converted / "config.json").read_text())["config"])
    retrained = save_converted(tmp_path / "retrained", config, weights, {"source_sha256": "0" * 64})
    assert EG3DGenerator.from_checkpoint(retrained).identity()["checksum"] != original


# Single bytes of the fixture pickle changed, at opcodes: each of these once escaped the loader (MemoryError with no
# message, AttributeError, TypeError, OverflowError) or gave a message of many lines; one still loads.
MUTATIONS = [(435, 114), (1011645, 81), (1735800, 97), (3070713, 144), (3941254, 149), (16407400, 52),
             (17700976, 20), (17852515, 142), (19735618, 98), (21182319, 133), (24249249, 253), (32958702, 97)]  # fmt: skip


@pytest.mark.parametrize("offset, value", MUTATIONS, ids=[f"{o}={v}" for o, v in MUTATIONS])
def test_a_damaged_pickle_loads_or_is_one_clear_line(eg3d_fixture_dir, tmp_path, offset, value):
    data = bytearray((eg3d_fixture_dir / "network.pkl").read_bytes())
    data[offset] = value
    path = tmp_path / "damaged.pkl"
    path.write_bytes(bytes(data))
    try:
        generator = EG3DGenerator.from_checkpoint(path)
    except CheckpointError as error:
        message = str(error)
        assert message.startswith(f"{path}: ") and len(message) > len(f"{path}: ") + 20 and "\n" not in message
        assert len(message) < 600
    else:
        assert generator.num_ws == 14


def test_full_ffhq512_config_maps_one_to_one_onto_the_released_manifest(eg3d_fixture_dir):
    manifest = json.loads((eg3d_fixture_dir / "ffhq512-full-state-dict-manifest.json").read_text())
    with torch.device("meta"):
        generator = GeneratorSpec("eg3d").create()
    shapes = {k: list(v.shape) for k, v in generator.state_dict().items()}
    assert shapes == manifest
    assert generator.num_ws == 14 and generator.z_dim == 512 and generator.w_dim == 512


def test_a_converted_checkpoint_missing_a_file_names_the_missing_one(tmp_path):
    weights = tmp_path / "ffhq.safetensors"
    weights.write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"side by side in .*: config.json is not there; convert the .pkl again"):
        GeneratorSpec("eg3d", weights).create()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r": model.safetensors is not there"):
        GeneratorSpec("eg3d", tmp_path).create()


def test_converting_onto_a_file_or_a_full_disk_is_one_line(eg3d_fixture_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as stop:
        convert_main([str(eg3d_fixture_dir / "network.pkl"), str(blocker)])
    assert stop.value.code == 1 and capsys.readouterr().err == (
        f"regress.generators.eg3d.convert: error: {blocker} is a file, not a folder: give a folder to write model.safetensors and config.json into\n"
    )
    code = (  # a file size limit stands in for a full disk: the same OSError where the weights are written
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from regress.generators.eg3d.convert import main; main(sys.argv[1:])"
    )
    out = tmp_path / "converted"
    result = subprocess.run([sys.executable, "-c", code, str(eg3d_fixture_dir / "network.pkl"), str(out)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1 and result.stderr == (
        f"regress.generators.eg3d.convert: error: [Errno 27] writing {out / 'model.safetensors'} failed (File too large): the disk may be full or a "
        "file size limit reached; free some space and convert again\n"
    )
    assert list(out.iterdir()) == []  # nothing half-written
