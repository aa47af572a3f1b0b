"""The pairs folder: records of real photos beside their inversions, the settings that made them, and their manifest.

`records/<key>/` holds one record's members in the Sample schema (`image.png` is the inverted
render; `depth.npy`, `mask.npy`, `w.npy`, `camera.npy`, `camera_cond.npy`, optional `mesh.ply`,
`meta.json`) plus `real.png` (the photo's crop at the generator's resolution), `landmarks.npy`
(its 68 landmarks, pixels) and `losses.json` (per step). Records are written under a temporary
name and renamed when complete, so a rerun skips them; `errors.json` lists the photos that failed
and why; `settings.json` guards a resumed run against other settings; `manifest.json` describes
the finished set. `pairs-000000.tar ...` optionally hold the records as shards with the same members.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from regress.store.files import PARTIAL, parse_manifest, resolved, write_folder, write_json
from regress.store.shard_set import setting_differences
from regress.store.shards import ShardWriter

PAIRS_FORMAT = "regress-pairs-v1"
RECORDS = "records"
MANIFEST = "manifest.json"
ERRORS = "errors.json"
SETTINGS = "settings.json"


def record_key(path: Path, face_index: int = 0) -> str:
    """A stable, WebDataset-safe key (no dots) from the photo's name and full path, and the face's index."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:48]
    digest = hashlib.sha1(str(resolved(path)).encode()).hexdigest()[:8]
    return f"{stem}-{digest}" + (f"-face{face_index}" if face_index else "")


def prepare_pairs_folder(output: Path, fingerprint: dict, resume: bool) -> None:
    """Check a resumed folder was made with the same settings, or clear our files from it; record the settings."""
    path = output / SETTINGS
    saved = json.loads(path.read_text()) if resume and path.is_file() else fingerprint
    if saved != fingerprint:
        differ = ", ".join(setting_differences(saved, fingerprint))
        raise ValueError(
            f"{output} holds pairs made with other settings ({differ}; see {path}); choose another output or pass --resume false to rebuild"
        )
    if not resume:
        shutil.rmtree(output / RECORDS, ignore_errors=True)
        for stale in [output / ERRORS, output / MANIFEST, *output.glob("pairs-*.tar*")]:
            stale.unlink(missing_ok=True)
    (output / RECORDS).mkdir(parents=True, exist_ok=True)
    write_json(path, fingerprint)


def write_pair_record(root: Path, key: str, members: dict[str, bytes]) -> Path:
    """Write one record's members to `records/key.partial/`, then rename it to `records/key/`."""
    return write_folder(Path(root) / RECORDS / key, members)


def read_pair_record(root: str | Path, key: str) -> dict[str, bytes]:
    """A record's members (name -> bytes), meta.json last as in shards."""
    folder = Path(root) / RECORDS / key
    members = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "meta.json"}
    members["meta.json"] = (folder / "meta.json").read_bytes()
    return members


def record_keys(root: str | Path) -> list[str]:
    """Keys of the complete records of a pairs folder, sorted (unfinished `.partial` ones are not records)."""
    records = Path(root) / RECORDS
    if not records.is_dir():
        raise FileNotFoundError(f"{root} has no {RECORDS}/ folder: build it with python -m regress.evaluate pairs")
    return sorted(p.name for p in records.iterdir() if p.is_dir() and not p.name.endswith(PARTIAL))


def read_pair_errors(root: Path) -> dict[str, str]:
    """The photos that failed (source -> why), empty when none are listed."""
    path = Path(root) / ERRORS
    return {e["source"]: e["error"] for e in json.loads(path.read_text())["errors"]} if path.is_file() else {}


def write_pair_errors(root: Path, errors: dict[str, str]) -> None:
    write_json(Path(root) / ERRORS, {"errors": [{"source": s, "error": e} for s, e in sorted(errors.items())]})


def write_pairs_manifest(root: Path, content: dict[str, Any]) -> None:
    """The manifest of a finished pairs folder: `content` marked with the format."""
    write_json(Path(root) / MANIFEST, {"format": PAIRS_FORMAT, **content})


def read_pairs_manifest(root: str | Path) -> dict[str, Any]:
    """A pairs folder's manifest; a clear error when the set was never finished."""
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise FileNotFoundError(f"pairs folder {root} does not exist; build it with python -m regress.evaluate pairs --output {root}")
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {root}: run (or rerun) python -m regress.evaluate pairs to finish the set")
    return parse_manifest(path.read_bytes(), str(path), "a pairs manifest", PAIRS_FORMAT, "rerun python -m regress.evaluate pairs to write it again")


def write_pair_shards(root: Path, samples_per_shard: int = 1000) -> list[dict[str, Any]]:
    """Pack the records of a pairs folder into `pairs-000000.tar ...` (same members); their records for the manifest."""
    keys = record_keys(root)  # records are read one at a time: a large set never sits in memory whole
    shards = []
    for index, start in enumerate(range(0, len(keys), samples_per_shard)):
        with ShardWriter(Path(root) / f"pairs-{index:06d}.tar") as writer:
            for key in keys[start : start + samples_per_shard]:
                writer.add(key, read_pair_record(root, key))
            shards.append(writer.commit({"index": index}))
    return shards
