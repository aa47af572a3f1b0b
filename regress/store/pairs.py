"""The pairs folder: records of real photos beside their inversions, the settings that made them, and their manifest.

`records/<key>/` holds one record's members in the Sample schema (`image.png` is the inverted
render; `depth.npy`, `mask.npy`, `w.npy`, `camera.npy`, `camera_cond.npy`, optional `mesh.ply`,
`meta.json`) plus `real.png` (the photo's crop at the generator's resolution), `landmarks.npy`
(its 68 landmarks, pixels) and `losses.json` (per step). Records are written under a temporary
name and renamed when complete, so a rerun skips them; `errors.json` lists the photos that failed
and why; `settings.json` guards a resumed run against other settings; `manifest.json` describes
the finished set and lists every record's files with their size and SHA-256, so that a reader finds a missing or
damaged record before its first sample (`check_pair_records`). `pairs-000000.tar ...` optionally hold the records as
shards with the same members.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from regress.store.files import PARTIAL, file_sha256, parse_manifest, resolved, write_folder, write_json
from regress.store.shard_set import setting_differences
from regress.store.shards import ShardWriter

PAIRS_FORMAT = "regress-pairs-v1"
RECORDS = "records"
MANIFEST = "manifest.json"
ERRORS = "errors.json"
SETTINGS = "settings.json"
RECORD_FILES = "record_files"  # the manifest's list: key -> {name: [bytes, SHA-256]}


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


def read_errors(root: Path) -> dict[str, str]:
    """The photos that failed (source -> why) in the errors.json of a pairs folder or a predict output, empty when none are listed."""
    path = Path(root) / ERRORS
    return {e["source"]: e["error"] for e in json.loads(path.read_text())["errors"]} if path.is_file() else {}


def write_errors(root: Path, errors: dict[str, str]) -> None:
    """errors.json of a pairs folder or a predict output: the photos that failed, sorted by source."""
    write_json(Path(root) / ERRORS, {"errors": [{"source": s, "error": e} for s, e in sorted(errors.items())]})


def record_files(root: str | Path, key: str) -> dict[str, list]:
    """A record's files as its manifest lists them: name -> [bytes, SHA-256]."""
    return {p.name: [p.stat().st_size, file_sha256(p)] for p in sorted((Path(root) / RECORDS / key).iterdir()) if p.is_file()}


def write_pairs_manifest(root: Path, content: dict[str, Any]) -> None:
    """The manifest of a finished pairs folder: `content` marked with the format, and every record's files (by key:
    name -> [bytes, SHA-256])."""
    listed = {key: record_files(root, key) for key in record_keys(root)}
    write_json(Path(root) / MANIFEST, {"format": PAIRS_FORMAT, **content, RECORD_FILES: listed})


def record_problem(root: str | Path, key: str, listed: dict[str, list], members: dict[str, bytes] | None = None) -> str | None:
    """What is wrong with a record against its listed files, None when nothing is: a missing folder or file, or a
    size that differs; given its `members` (name -> bytes) as read, also an unlisted member or another SHA-256."""
    folder = Path(root) / RECORDS / key
    if not folder.is_dir():
        return f"record {key} is missing"
    for name, (size, sha256) in listed.items():
        path = folder / name
        if not path.is_file():
            return f"record {key} lacks {name}"
        if path.stat().st_size != size:
            return f"record {key}: {name} has {path.stat().st_size} bytes, its manifest lists {size}"
        if members is not None and hashlib.sha256(members[name]).hexdigest() != sha256:
            return f"record {key}: {name} does not match the SHA-256 its manifest lists"
    extra = sorted(set(members or {}) - set(listed))
    return f"record {key} holds {extra[0]}, which its manifest does not list" if extra else None


def check_pair_records(root: str | Path, manifest: dict[str, Any], verify: bool = False) -> tuple[list[str], list[str]]:
    """(the keys of the records its manifest lists that are whole, one line per record that is not): each present
    with its files at their sizes, with `verify` their SHA-256 too (every byte read). Older sets list no files:
    their records on disk, with a one-line note."""
    listed = manifest.get(RECORD_FILES)
    if listed is None:
        print(f"regress: note: {root} lists no record files (made before they were listed), so missing or damaged records go "
              "unnoticed; rerun python -m regress.evaluate pairs on it to list them", file=sys.stderr)  # fmt: skip
        return record_keys(root), []
    whole, problems = [], []
    for key, files in sorted(listed.items()):
        members = read_pair_record(root, key) if verify and (Path(root) / RECORDS / key / "meta.json").is_file() else None
        problem = record_problem(root, key, files, members)
        if problem is None:
            whole.append(key)
        else:
            problems.append(f"{root}: {problem}")
    return whole, problems


def verify_pairs(root: str | Path) -> tuple[int, list[str]]:
    """(records checked, one line per bad one) of a pairs folder: each record its manifest lists whole, with its files'
    sizes and SHA-256, and no record beside them that it does not list. Reads every byte once."""
    manifest = read_pairs_manifest(root)
    if RECORD_FILES not in manifest:
        return 0, [f"{root} lists no record files (made before they were listed): rerun python -m regress.evaluate pairs on it to list them"]
    _, problems = check_pair_records(root, manifest, verify=True)
    unlisted = sorted(set(record_keys(root)) - set(manifest[RECORD_FILES]))
    problems += [f"{root}: record {key} is not listed in its manifest (added after it was written); rerun python -m regress.evaluate pairs" for key in unlisted]
    return len(manifest[RECORD_FILES]), problems


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
