"""GeneratorSpec: checked in full when made, one instance a process, one fingerprint; LatentSpace is plain data."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
import torch

from regress.generators import Generator, GeneratorSpec, LatentSpace
from regress.generators.spec import stored_record
from regress.store.files import tree_sha256

from eg3d_tiny import TINY_EG3D

SMALL = {"image_resolution": 32, "depth_resolution": 16}


def test_no_name_means_eg3d_with_a_checkpoint_and_the_analytic_head_without(eg3d_fixture_dir):
    assert GeneratorSpec().name == "analytic"
    spec = GeneratorSpec(checkpoint=eg3d_fixture_dir / "network.pkl")
    assert spec.name == "eg3d" and spec.checkpoint == str(eg3d_fixture_dir / "network.pkl")


@pytest.mark.parametrize("with_checkpoint", [False, True], ids=["without-checkpoint", "with-checkpoint"])
def test_options_are_checked_against_the_backend_with_or_without_a_checkpoint(with_checkpoint, eg3d_fixture_dir):
    checkpoint = eg3d_fixture_dir / "network.pkl" if with_checkpoint else None
    with pytest.raises(ValueError, match=r"unknown eg3d generator option\(s\) noise_mod; its options: .*noise_mode"):
        GeneratorSpec("eg3d", checkpoint, {"noise_mod": "const"})
    GeneratorSpec("eg3d", checkpoint, {"noise_mode": "const"})  # a real option passes


def test_a_bad_spec_fails_when_made_naming_what_to_fix(tmp_path):
    with pytest.raises(ValueError, match="unknown generator 'stylegan'; known generators: analytic, eg3d"):
        GeneratorSpec("stylegan")
    with pytest.raises(FileNotFoundError, match=f"generator checkpoint {tmp_path / 'no.pkl'} does not exist"):
        GeneratorSpec("eg3d", tmp_path / "no.pkl")
    (tmp_path / "weights.pkl").write_bytes(b"x")
    with pytest.raises(ValueError, match="the analytic generator has no weights; drop the checkpoint"):
        GeneratorSpec("analytic", tmp_path / "weights.pkl")
    with pytest.raises(ValueError, match=r"unknown analytic generator option\(s\) resolution; its options: z_dim"):
        GeneratorSpec("analytic", options={"resolution": 64})


def test_build_shares_one_instance_per_process_and_create_makes_a_new_one():
    spec = GeneratorSpec("analytic", options=SMALL)
    built = spec.build()
    assert GeneratorSpec("analytic", options=dict(SMALL)).build() is built  # equal specs, one instance
    assert GeneratorSpec("analytic", options={**SMALL, "seed": 1}).build() is not built  # other draws, another
    fresh = spec.create()
    assert fresh is not built and isinstance(fresh, Generator)
    assert not fresh.training and not any(p.requires_grad for p in fresh.parameters())
    assert torch.equal(fresh.mean_latent(), built.mean_latent())
    assert spec.build("cpu") is built and built.device == torch.device("cpu")


def test_random_weights_are_the_same_whatever_the_callers_rng_and_leave_it_alone(monkeypatch):
    spec = GeneratorSpec("eg3d", options=TINY_EG3D)
    for seeding in ("manual_seed", "manual_seed_all"):  # a GPU's stream is the caller's: building never seeds it
        monkeypatch.setattr(torch.cuda, seeding, lambda seed: pytest.fail(f"building a generator called torch.cuda.{seeding}"))
    torch.default_generator.manual_seed(1)
    first = spec.create().state_dict()
    torch.default_generator.manual_seed(2)
    before = torch.random.get_rng_state()
    second = spec.create().state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's stream goes on as if nothing was built


def test_the_fingerprint_is_what_shard_sets_recorded_before_the_spec(eg3d_fixture_dir):
    spec = GeneratorSpec("analytic", options=SMALL)
    assert spec.fingerprint() == {"generator": spec.build().identity(), "checkpoint_sha256": None, "generator_options": SMALL}
    checkpoint = eg3d_fixture_dir / "network.pkl"
    with_weights = GeneratorSpec(checkpoint=checkpoint)
    assert with_weights.fingerprint()["checkpoint_sha256"] == tree_sha256(checkpoint)
    assert with_weights.key == GeneratorSpec("eg3d", str(checkpoint)).key != GeneratorSpec("eg3d", checkpoint, {"noise_mode": "none"}).key


def test_a_spec_and_a_latent_space_are_plain_data():
    spec = GeneratorSpec("analytic", options=SMALL)
    assert pickle.loads(pickle.dumps(spec)) == spec == copy.deepcopy(spec)
    record = spec.record()
    assert record == {"name": "analytic", "checkpoint": None, "options": SMALL, "checksum": spec.build().identity()["checksum"]}
    assert all(isinstance(v, (str, dict, type(None))) for v in record.values())
    space = LatentSpace((14, 32), torch.zeros(14, 32), spec)
    assert not any(isinstance(getattr(space, f.name), torch.nn.Module) for f in dataclasses.fields(space))


def test_the_old_precision_option_is_read_for_one_release_and_data_sets_record_what_they_did(capsys):
    spec = GeneratorSpec("eg3d", options={**TINY_EG3D, "precision": "float16"})
    assert spec.options["render_precision"] == "float16" and "precision" not in spec.options
    assert "the eg3d option 'precision' is now 'render_precision'" in capsys.readouterr().err
    assert spec == GeneratorSpec("eg3d", options={**TINY_EG3D, "render_precision": "float16"})
    recorded = spec.fingerprint()["generator_options"]  # under the stored name, as shard sets written before recorded it
    assert recorded["precision"] == "float16" and "render_precision" not in recorded
    assert spec.build().identity()["config"]["precision"] == "float16"
    with pytest.raises(ValueError, match="eg3d options 'precision' and 'render_precision' are one option"):
        GeneratorSpec("eg3d", options={"precision": "float16", "render_precision": "float32"})


def test_the_default_generator_is_said_once_when_it_is_taken_and_not_when_it_is_asked_for(capsys):
    GeneratorSpec(options=SMALL).build()
    assert capsys.readouterr().err == "regress: no EG3D checkpoint given, using the embedded analytic head generator\n"
    GeneratorSpec("analytic", options=SMALL).build()
    assert capsys.readouterr().err == ""


def test_a_stored_data_set_names_its_generator_without_a_spec():
    identity = GeneratorSpec("analytic", options=SMALL).build().identity()
    made_by = stored_record(identity, SMALL)
    space = LatentSpace((14, 32), torch.zeros(14, 32), made_by=made_by)
    assert space.generator_record() == {"name": "analytic", "checkpoint": None, "options": SMALL, "checksum": identity["checksum"]}
    spec = GeneratorSpec("analytic", options=SMALL)
    assert LatentSpace((14, 32), torch.zeros(14, 32), spec).generator_record() == spec.record()
