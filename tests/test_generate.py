"""Shard pre-generation: resumable after a kill, rank-independent, refusing bad input without leftovers."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from regress.generate import generate, main
from regress.generation.background import consume_in_background, short_switch_interval
from regress.generation.compress import PIPE_BYTES, compression_pool, pool_pipes
from regress.generation.render import batch_order
from regress.generators import GeneratorSpec
from regress.store.locks import LOCKS, FolderInUse
from regress.store.shard_set import MANIFEST, ShardLayout
from regress.sample import decode_sample
from regress.store.shards import REGENERATE, iter_shard, read_shard_record
from tests.eg3d_tiny import TINY_EG3D
from tests.test_locks import wait_for_holder

REPO = Path(__file__).resolve().parent.parent
SMALL = {"image_resolution": 32, "render_resolution": 16, "depth_resolution": 16}
RUN = dict(generator="analytic", generator_options=SMALL, num_samples=5, samples_per_shard=2, views="published", batch_size=1, progress=False)


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in a folder, by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def cli_args(output: Path, **options) -> list[str]:
    args = ["--output", str(output)]
    for key, value in {**RUN, **options}.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted single-rank run: 3 shards (2, 2, 1 samples)."""
    output = tmp_path_factory.mktemp("reference")
    summary = generate(output, **RUN)
    assert summary["written"] == [f"synth-00000{i}.tar" for i in range(3)] and summary["manifest"]
    return output


def test_manifest_records_every_shard_and_the_generator(reference):
    manifest = json.loads((reference / MANIFEST).read_text())
    assert [s["count"] for s in manifest["shards"]] == [2, 2, 1]
    assert [s["seed_start"] for s in manifest["shards"]] == [0, 2, 4]
    assert [s["sha256"] for s in manifest["shards"]] == [digests(reference)[f"synth-00000{i}.tar"] for i in range(3)]
    assert manifest["settings"]["generator"]["generator"] == "analytic"
    assert manifest["settings"]["generator"]["config"]["image_resolution"] == 32
    assert manifest["latent_shape"] == [14, 32] and len(manifest["mean_latent"]) == 14
    assert not list(reference.glob("*.partial"))


def test_rerun_skips_verified_shards_and_regenerates_damaged_ones(reference, tmp_path):
    for path in reference.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    damaged = tmp_path / "synth-000001.tar"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"x")  # same size, wrong checksum
    summary = generate(tmp_path, **RUN)
    assert summary["skipped"] == ["synth-000000.tar", "synth-000002.tar"] and summary["written"] == ["synth-000001.tar"]
    assert digests(tmp_path) == digests(reference)


def test_verify_passes_a_clean_dataset_and_names_every_bad_shard(reference, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--verify", str(reference), "--progress", "false"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"regress.generate: verified 3 shards of {reference} against its manifest: every one has its recorded size and SHA-256\n"
    for path in reference.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    with tarfile.open(tmp_path / "synth-000001.tar") as tar:
        start = tar.getmember("0000000002.depth.npy").offset_data + 200
    raw = bytearray((tmp_path / "synth-000001.tar").read_bytes())
    raw[start : start + 16] = bytes(b ^ 0xFF for b in raw[start : start + 16])  # 16 bytes of a depth map inverted
    (tmp_path / "synth-000001.tar").write_bytes(bytes(raw))
    (tmp_path / "synth-000002.tar").unlink()
    (tmp_path / "synth-000007.tar").write_bytes((tmp_path / "synth-000000.tar").read_bytes())
    with pytest.raises(SystemExit) as exit_info:
        main(["--verify", str(tmp_path), "--progress", "false"])
    lines = capsys.readouterr().out.splitlines()
    assert exit_info.value.code == 1 and len(lines) == 4
    assert lines[0].startswith(f"regress.generate: bad shard: {tmp_path}/synth-000001.tar: SHA-256 ")
    assert "differs from its manifest's" in lines[0] and "regenerate it" in lines[0]
    assert lines[1] == f"regress.generate: bad shard: {tmp_path}/synth-000002.tar: missing; {REGENERATE}"
    assert lines[2] == f"regress.generate: bad shard: {tmp_path}/synth-000007.tar: a shard its manifest does not list (another run's or seed range's); move it away"
    assert lines[3] == f"regress.generate: verified 3 shards of {tmp_path} against its manifest: 3 bad"


def test_verify_reads_a_pipe_template(reference, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--verify", f"pipe:cat {reference}/{{name}}", "--progress", "false"])
    assert exit_info.value.code == 0
    assert "verified 3 shards of pipe:cat" in capsys.readouterr().out


def test_extending_the_seed_range_keeps_full_shards_and_replaces_the_manifest(reference, tmp_path):
    for path in reference.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    summary = generate(tmp_path, **{**RUN, "num_samples": 6})
    assert summary["skipped"] == ["synth-000000.tar", "synth-000001.tar"] and summary["written"] == ["synth-000002.tar"]
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["num_samples"] == 6 and [s["count"] for s in manifest["shards"]] == [2, 2, 2]


def test_shards_are_rendered_side_by_side_a_batch_of_each_in_turn():
    """Each shard's SHA-256 is one stream: two shards written side by side hash twice as fast as one after the other."""
    layout = ShardLayout("synth", 100, 10, 4)  # shards of 4, 4 and 2 seeds
    order = [(shard, list(seeds)) for shard, seeds in batch_order(layout, [0, 1, 2], batch_size=3, side_by_side=2)]
    assert order == [(0, [100, 101, 102]), (1, [104, 105, 106]), (0, [103]), (1, [107]), (2, [108, 109])]
    assert [shard for shard, _ in batch_order(layout, [2, 0], batch_size=3)] == [2, 0, 0]


def written_into(path: Path) -> bool:
    """Whether the file exists with bytes in it (it may be renamed away while it is looked at)."""
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def test_kill_mid_shard_then_resume_gives_the_uninterrupted_shards(reference, tmp_path):
    command = [sys.executable, "-m", "regress.generate", *cli_args(tmp_path)]
    child = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not written_into(tmp_path / "synth-000001.tar.partial") and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, f"generation ended before it could be killed: {child.stderr.read().decode()}"
    complete = sorted(path.name for path in tmp_path.glob("*.tar"))  # shards 0 and 1 are written side by side
    assert "synth-000002.tar" not in complete and list(tmp_path.glob("*.partial")) and not (tmp_path / MANIFEST).exists()

    summary = generate(tmp_path, **RUN)
    assert summary["skipped"] == complete and sorted(summary["skipped"] + summary["written"]) == sorted(p.name for p in reference.glob("*.tar"))
    assert digests(tmp_path) == digests(reference)
    assert not list(tmp_path.glob("*.partial"))


def test_a_second_run_writing_the_same_shards_at_once_is_refused(tmp_path):
    command = [sys.executable, "-m", "regress.generate", *cli_args(tmp_path, num_samples=40)]
    first = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not list(tmp_path.glob("*.partial")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert first.poll() is None, f"the first run ended too soon: {first.stderr.read().decode()}"
        with pytest.raises(ValueError, match=f"another python -m regress.generate is writing the 'synth' shards of rank 0 in {tmp_path}"):
            generate(tmp_path, **{**RUN, "num_samples": 40})
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_another_set_or_rank_layout_into_a_folder_being_written_is_refused_and_a_killed_runs_lock_taken_over(tmp_path, monkeypatch, capsys):
    first_run = cli_args(tmp_path, name="a", num_samples=4000)  # killed long before it ends
    first = subprocess.Popen([sys.executable, "-m", "regress.generate", *first_run], cwd=REPO, env=child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_for_holder(tmp_path, first)
        second = subprocess.run([sys.executable, "-m", "regress.generate", *cli_args(tmp_path, name="b")], cwd=REPO, env=child_env(),
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert second.returncode == 1 and len(second.stderr.splitlines()) == 1, second.stderr
        assert second.stderr.startswith(f"regress.generate: error: another python -m regress.generate is writing the 'a' shards of rank 0 "
                                        f"in {tmp_path} (pid {first.pid} on ")  # fmt: skip
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")  # the same set, other ranks: they would write shard 1 beside the first run
        with pytest.raises(FolderInUse, match=f"pid {first.pid} "):
            generate(tmp_path, **{**RUN, "name": "a", "num_samples": 4000})
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert not list(tmp_path.glob("b-*")) and not (tmp_path / MANIFEST).exists()
    summary = generate(tmp_path, **{**RUN, "name": "b"})  # the killed run wrote no manifest: the folder is free
    assert summary["manifest"] and f"taking over the lock of python -m regress.generate (pid {first.pid} on " in capsys.readouterr().err
    assert not (tmp_path / LOCKS).exists() and not list(tmp_path.glob("b-*.partial"))  # the killed run's partial shard is its own


def test_two_ranks_write_disjoint_shards_identical_to_one_rank(reference, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    second = generate(tmp_path, **RUN)
    assert second["written"] == ["synth-000001.tar"] and second["manifest"] is None  # rank 0's shards are missing
    monkeypatch.setenv("RANK", "0")
    first = generate(tmp_path, workers=1, **RUN)  # compressing in a worker process changes nothing
    assert first["written"] == ["synth-000000.tar", "synth-000002.tar"] and first["manifest"]  # the last rank writes it
    assert digests(tmp_path) == digests(reference)


def test_background_consumer_gets_every_item_in_order_and_errors_surface_on_either_side():
    assert consume_in_background(list, iter(range(50))) == list(range(50))

    def failing_producer():
        yield 1
        raise KeyError("render failed")

    seen = []
    with pytest.raises(KeyError, match="render failed"):
        consume_in_background(lambda items: seen.extend(items), failing_producer())
    assert seen == [1]

    produced = []

    def counting_producer():
        for i in range(1000):
            produced.append(i)
            yield i

    def failing_consumer(items):
        next(items)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        consume_in_background(failing_consumer, counting_producer(), depth=2)
    assert len(produced) < 10  # the producer stopped soon after the consumer failed


def test_the_switch_interval_is_short_inside_the_block_and_restored_after_an_error():
    before = sys.getswitchinterval()
    with pytest.raises(KeyError):
        with short_switch_interval(0.001):
            assert sys.getswitchinterval() == pytest.approx(0.001)
            raise KeyError("render failed")
    assert sys.getswitchinterval() == before


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe sizes are a Linux feature")
def test_the_compression_pipes_take_a_whole_sample_at_once():
    pool = compression_pool(1)
    try:
        for end in pool_pipes(pool):
            assert fcntl.fcntl(end.fileno(), fcntl.F_GETPIPE_SZ) == PIPE_BYTES > 948_000  # an EG3D sample, bench_compression.py
    finally:
        pool.shutdown()


def test_batch_size_changes_a_sample_only_by_float_rounding():
    """What docs/sample-schema.md promises: the same inputs, renders equal to float32 rounding (hence batch_size in the fingerprint)."""
    generator, seeds = GeneratorSpec("analytic").create(), list(range(8))
    with torch.no_grad():
        whole = generator.sample(seeds)
        pairs = [generator.sample(seeds[i : i + 2]) for i in range(0, 8, 2)]
    for name in ("w", "z", "camera"):
        assert torch.equal(torch.cat([p[name] for p in pairs]), whole[name]), name
    for name in ("depth", "mask"):
        assert (torch.cat([p[name] for p in pairs]) - whole[name]).abs().max() < 1e-4, name
    assert (torch.cat([p["image"] for p in pairs]).int() - whole["image"].int()).abs().max() <= 1


def test_random_weights_are_the_same_on_every_run(tmp_path):
    """A backend without a checkpoint draws its weights from a fixed seed, not from the caller's RNG state."""
    options = dict(generator="eg3d", generator_options=TINY_EG3D, num_samples=2, samples_per_shard=2, batch_size=2, device="cpu", progress=False)
    for seed in (1, 2):
        torch.manual_seed(seed)
        generate(tmp_path / str(seed), **options)
    assert digests(tmp_path / "1") == digests(tmp_path / "2")
    assert torch.initial_seed() == 2  # the caller's RNG is left as it was


def test_pipe_output_sends_the_same_shards_and_manifest_and_resumes_without_resending(reference, tmp_path):
    remote, log, staging = tmp_path / "remote", tmp_path / "sent.log", tmp_path / "staging"
    remote.mkdir()
    output = f"pipe:cat > {remote}/{{name}} && echo {{name}} >> {log}"
    summary = generate(output, staging=staging, **RUN)
    tars = [f"synth-00000{i}.tar" for i in range(3)]
    assert summary["manifest"] and log.read_text().split() == [*tars, MANIFEST]
    assert {k: v for k, v in digests(remote).items() if k != MANIFEST} == {k: v for k, v in digests(reference).items() if k.endswith(".tar")}
    assert json.loads((remote / MANIFEST).read_text()) == json.loads((reference / MANIFEST).read_text())
    assert not list(staging.glob("*.tar")) and all(read_shard_record(staging / t)["sent_to"] == output[5:].replace("{name}", t) for t in tars)
    generate(output, staging=staging, **RUN)  # a rerun sends only the manifest again
    assert log.read_text().split() == [*tars, MANIFEST, MANIFEST]


def test_a_failing_pipe_command_keeps_the_shard_and_a_rerun_sends_it(tmp_path):
    staging, remote = tmp_path / "staging", tmp_path / "remote"
    options = {**RUN, "num_samples": 2}
    with pytest.raises(OSError, match=r"sending synth-000000.tar with `cat > .*missing/synth-000000.tar` failed \(exit \d+: .+\); the file stays in .*staging"):
        generate(f"pipe:cat > {tmp_path}/missing/{{name}}", staging=staging, **options)
    assert (staging / "synth-000000.tar").is_file()
    remote.mkdir()
    assert generate(f"pipe:cat > {remote}/{{name}}", staging=staging, **options)["skipped"] == ["synth-000000.tar"]
    assert sorted(p.name for p in remote.iterdir()) == [MANIFEST, "synth-000000.tar"]


def test_pipe_output_needs_a_name_placeholder_and_a_staging_folder(tmp_path):
    with pytest.raises(ValueError, match=r"has no \{name\}"):
        generate("pipe:aws s3 cp - s3://bucket/data.tar", staging=tmp_path, **RUN)
    with pytest.raises(ValueError, match="needs a local --staging folder"):
        generate("pipe:cat > /tmp/{name}", **RUN)


def test_other_settings_in_the_same_folder_are_refused(reference, tmp_path):
    for path in reference.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    before = digests(tmp_path)
    with pytest.raises(ValueError, match="generated with other settings.*new output folder"):
        generate(tmp_path, **{**RUN, "psi": 0.5})
    assert digests(tmp_path) == before


def test_png_level_changes_bytes_not_pixels_and_a_set_resumes_at_another_level(reference, tmp_path):
    smallest = generate(tmp_path / "level9", **{**RUN, "png_level": 9})
    for name in smallest["written"]:
        ours, theirs = ([decode_sample(m) for _, m in iter_shard(str(folder / name))] for folder in (reference, tmp_path / "level9"))
        assert [s["image"] for s in ours] != [] and all(torch.equal(a["image"], b["image"]) for a, b in zip(ours, theirs, strict=True))
    assert digests(tmp_path / "level9")["synth-000000.tar"] != digests(reference)["synth-000000.tar"]
    for path in reference.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    assert generate(tmp_path, **{**RUN, "png_level": 9})["written"] == []  # lossless at any level: nothing to redo
    with pytest.raises(ValueError, match="png_level is a zlib level from 0"):
        generate(tmp_path / "bad", **{**RUN, "png_level": 10})


def test_meshes_and_jpg_images_are_stored_per_sample(tmp_path):
    summary = generate(tmp_path, with_mesh=True, mesh_resolution=20, image_format="jpg", **{**RUN, "num_samples": 2})
    shard = tmp_path / summary["written"][0]
    assert read_shard_record(shard)["count"] == 2
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        assert names == [f"{k:010d}.{m}" for k in (0, 1) for m in ("image.jpg", "depth.npy", "mask.npy", "w.npy", "z.npy", "camera.npy", "camera_cond.npy", "mesh.ply", "meta.json")]
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in tar.getmembers())
        assert tar.extractfile(names[0]).read().startswith(b"\xff\xd8")  # JPEG
        assert tar.extractfile(names[7]).read().startswith(b"ply\nformat binary_little_endian")


def test_coarse_to_fine_meshes_are_the_dense_meshes_and_only_such_a_set_records_it(tmp_path):
    meshed = {**RUN, "num_samples": 2, "with_mesh": True, "mesh_resolution": 33}
    dense, coarse = generate(tmp_path / "dense", **meshed), generate(tmp_path / "coarse", **meshed, mesh_coarse_stride=4)
    for summary in (dense, coarse):
        with tarfile.open(Path(summary["output"]) / summary["written"][0]) as tar:
            summary["meshes"] = [tar.extractfile(name).read() for name in tar.getnames() if name.endswith("mesh.ply")]
    assert len(dense["meshes"]) == 2 and coarse["meshes"] == dense["meshes"]
    settings = {name: json.loads((tmp_path / name / MANIFEST).read_text())["settings"]["mesh"] for name in ("dense", "coarse")}
    assert "coarse_to_fine" not in settings["dense"] and settings["coarse"] == {**settings["dense"], "coarse_to_fine": {"stride": 4, "margin": 0}}
    with pytest.raises(ValueError, match="generated with other settings"):  # a dense set does not go on coarse to fine
        generate(tmp_path / "dense", **{**meshed, "num_samples": 4}, mesh_coarse_stride=4)
    with pytest.raises(ValueError, match="mesh_coarse_stride is a number of grid cells, 1 or more"):
        generate(tmp_path / "bad", **meshed, mesh_coarse_stride=0)


def test_command_line_reads_a_config_file(tmp_path):
    config = tmp_path / "generate.yaml"
    config.write_text((REPO / "regress" / "configs" / "generate" / "analytic.yaml").read_text())
    output = tmp_path / "out"
    summary = main(["--config", str(config), *cli_args(output, num_samples=1)])
    assert summary["written"] == ["synth-000000.tar"] and (output / MANIFEST).is_file()
    manifest = json.loads((output / MANIFEST).read_text())
    assert manifest["settings"]["image_format"] == "png" and manifest["settings"]["psi"] == 0.7


BAD_OPTIONS = {
    "unknown generator": ({"generator": "stylegan9"}, "unknown generator 'stylegan9'; known generators: analytic"),
    "unknown generator option": ({"generator_options": {**SMALL, "foo": 1}}, "unknown analytic generator option(s) foo; its options: z_dim,"),
    "a device that is not one": ({"device": "bogus"}, "device 'bogus' is not a torch device: give auto, cpu, cuda or cuda:N"),
    "a GPU that is not there": ({"device": "cuda:7"}, "device 'cuda:7': "),
    "a view mixture that is not one": ({"views": {"foo": 1}}, "\"{'foo': 1}\" is not a view mixture: a view mixture is {categories:"),
    "a negative truncation cutoff": ({"cutoff": -5}, "cutoff is the number of latent layers truncated, from 0, got -5"),
    "a checkpoint that is not there": ({"generator": "eg3d", "checkpoint": "nowhere.pkl"}, "generator checkpoint nowhere.pkl does not exist; give"),
}


@pytest.mark.parametrize("options, message", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_options_are_one_line_errors_and_write_nothing(options, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(tmp_path / "out", **options))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"regress.generate: error: {message}")
    assert not (tmp_path / "out").exists()


def test_mesh_grid_too_large_for_memory_is_refused_up_front(tmp_path):
    with pytest.raises(MemoryError, match=r"grid 4096\^3 need about .* GiB.*lower the mesh resolution"):
        generate(tmp_path / "out", with_mesh=True, mesh_resolution=4096, **RUN)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=r"^output folder .*a-file/shards is not writable.*choose another output folder"):
        generate(blocker / "shards", **RUN)
    with pytest.raises(FileExistsError, match=r"^output .*a-file is a file, not a folder; choose another output folder"):
        generate(blocker, **RUN)
    with pytest.raises(ValueError, match=r"^the output folder is empty: give --output DIR"):
        generate("", **RUN)
    if os.geteuid() != 0:  # root writes anywhere; then only the case above applies
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OSError, match="is not writable"):
            generate(locked, **RUN)


def test_disk_full_stops_with_a_clear_error_and_no_partial_file(tmp_path):
    """A file size limit (RLIMIT_FSIZE) makes the kernel refuse writes past 12 kB, as a full disk would."""
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (12000, 12000)); "
        "from regress.generate import main; main(sys.argv[1:])"
    )
    args = cli_args(tmp_path, num_samples=4)
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "regress.generate: error: [Errno 27] writing" in result.stderr and "the disk may be full" in result.stderr
    assert "free some space and rerun the same command" in result.stderr
    assert not list(tmp_path.glob("*.partial")) and not (tmp_path / MANIFEST).exists()
    assert all(read_shard_record(p) is not None for p in tmp_path.glob("*.tar"))  # any shard left is a complete one


def test_a_script_without_a_main_guard_gets_a_clear_error_and_no_partial_file(tmp_path):
    """The compression processes start with spawn and import the calling script: one that runs generate on import fails there."""
    script = tmp_path / "make_shards.py"
    script.write_text(f"from regress.generate import main\nmain({cli_args(tmp_path / 'out', workers=1)!r})\n")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("regress.generate: error:")]
    assert len(errors) == 1 and "an image-compression process stopped while synth-000000.tar was written" in errors[0]
    assert 'without `if __name__ == "__main__":`' in errors[0] and "--workers 0" in errors[0]
    assert not list((tmp_path / "out").glob("*.partial")) and not list((tmp_path / "out").glob("*.tar"))


@pytest.mark.gpu
def test_eg3d_shards_with_meshes_on_the_gpu_are_byte_identical_run_to_run(tmp_path):
    options = dict(generator="eg3d", generator_options=TINY_EG3D, num_samples=4, samples_per_shard=2, batch_size=2, with_mesh=True, mesh_resolution=48, device="cuda", progress=False)
    for run in ("a", "b"):
        torch.manual_seed(0)  # random weights: the same ones for both runs
        summary = generate(tmp_path / run, **options)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert json.loads((tmp_path / "a" / MANIFEST).read_text())["settings"]["generator"]["generator"] == "eg3d"
    device_seconds = {stage: seconds for stage, seconds in summary["stage_seconds"].items() if stage.startswith("device: ")}
    assert set(device_seconds) == {"device: sample", "device: density grids", "device: meshes"} and min(device_seconds.values()) > 0


def test_a_run_on_the_cpu_has_no_device_stages(tmp_path):
    stages = generate(tmp_path, **{**RUN, "with_mesh": True, "mesh_resolution": 16})["stage_seconds"]
    assert stages["render: density grids"] > 0 and not [stage for stage in stages if stage.startswith("device")]


def test_compression_workers_end_when_their_parent_is_killed_outright(tmp_path):
    code = (
        "import os, sys, time\n"
        "from regress.generation.compress import compression_pool\n"
        "pool = compression_pool(2)\n"
        "print(*[p.pid for p in pool._processes.values()], flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=child_env(), stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in child.stdout.readline().split()]
    assert len(workers) == 2 and all(Path(f"/proc/{pid}").exists() for pid in workers)
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a compression worker outlived its killed parent"


def test_an_output_folder_holding_something_else_is_refused_untouched(reference, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / MANIFEST).write_text('{"dataset": "my labels"}')
    other_set = tmp_path / "other-set"
    shrunk = tmp_path / "shrunk"
    for folder in (other_set, shrunk):
        shutil.copytree(reference, folder)
    before = {folder: digests(folder) for folder in (foreign, other_set, shrunk)}
    refused = {
        foreign: ([], f"{foreign / MANIFEST} is not a regress shard manifest; use another output folder, so that it is not replaced"),
        other_set: (["--name", "other"], f"{other_set} holds the shard set 'synth', whose manifest this run (--name other) would replace"),
        shrunk: (["--num_samples", "2"], f"{shrunk} holds 2 more shards of 'synth' than this run makes (synth-000001.tar ...)"),
        reference: (["--psi", "0.5"], f"{reference / 'synth-000000.tar'} was generated with other settings than this run's (psi: 0.7 -> 0.5)"),
    }
    for folder, (extra, message) in refused.items():
        with pytest.raises(SystemExit) as stop:
            main([*cli_args(folder), *extra])
        assert stop.value.code == 1 and capsys.readouterr().err.strip().splitlines()[-1].startswith(f"regress.generate: error: {message}")
    assert {folder: digests(folder) for folder in before} == before


def test_the_steady_rate_leaves_out_the_batch_rendered_ahead_during_warm_up(tmp_path):
    """render_batches works one batch ahead: by the first batch's hand-over the second is rendered too (CPU), so a
    two-batch run has no steady part to report (it once reported one of a few milliseconds, 460x the true rate)."""
    two = generate(tmp_path / "two", **{**RUN, "num_samples": 2})
    assert two["steady_samples_per_second"] is None and 0 < two["warmup_seconds"] <= two["seconds"]
    five = generate(tmp_path / "five", **RUN)
    assert five["steady_samples_per_second"] is not None and five["warmup_seconds"] < five["seconds"]


def test_a_manifest_that_cannot_be_written_is_a_one_line_error_naming_it(tmp_path, capsys):
    (tmp_path / MANIFEST).mkdir()  # the rename into place fails, as a full disk's write would
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(tmp_path))
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"regress.generate: error: [Errno 21] writing {tmp_path / MANIFEST} failed (Is a directory)")
    assert error.endswith("complete shards are kept, free some space and rerun the same command")
    assert all(read_shard_record(p) is not None for p in tmp_path.glob("*.tar")) and len(list(tmp_path.glob("*.tar"))) == 3
