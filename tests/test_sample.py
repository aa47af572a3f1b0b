"""The Sample record: schema checks and the shard member encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regress.sample import collate_samples, decode_sample, encode_sample, image_to_float, image_to_uint8, validate_batch


def make_batch(n: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8),
        "depth": torch.rand(n, 1, 128, 128, generator=g) + 2.25,
        "mask": torch.rand(n, 1, 128, 128, generator=g),
        "w": torch.randn(n, 14, 512, generator=g),
        "z": torch.randn(n, 512, generator=g),
        "camera": torch.randn(n, 25, generator=g),
        "camera_cond": torch.randn(n, 25, generator=g),
        "meta": [{"seed": i} for i in range(n)],
    }


@pytest.mark.parametrize("image_format", ["png", "webp"])
def test_members_round_trip(image_format):
    batch = make_batch()
    samples = [decode_sample(encode_sample(batch, i, image_format)) for i in range(2)]
    back = collate_samples(samples)
    for name in ("depth", "mask", "w", "z", "camera", "camera_cond"):
        assert torch.equal(back[name], batch[name]), name
    if image_format == "png":
        assert torch.equal(back["image"], batch["image"])
    assert back["meta"][1]["seed"] == 1 and back["meta"][1]["schema_version"] == 1


def test_encoding_is_byte_deterministic():
    batch = make_batch()
    assert encode_sample(batch, 0) == encode_sample(batch, 0)


def test_validate_names_the_bad_field():
    batch = make_batch()
    validate_batch(batch)
    batch["camera"] = batch["camera"][:, :24]
    with pytest.raises(ValueError, match="camera"):
        validate_batch(batch)
    del batch["depth"]
    with pytest.raises(ValueError, match="depth"):
        validate_batch(batch)


def test_corrupt_member_error_names_source_and_member():
    members = encode_sample(make_batch(), 0)
    members["depth.npy"] = members["depth.npy"][:40]
    with pytest.raises(ValueError, match=r"shard-000001.tar:000007.*depth.npy"):
        decode_sample(members, source="shard-000001.tar:000007")


def test_uint8_conversion_matches_the_eg3d_scripts():
    image = torch.tensor([-1.0, -0.5, 0.0, 1.0, 1.2]).reshape(1, 1, 1, 5)
    assert image_to_uint8(image).flatten().tolist() == [0, 64, 128, 255, 255]
    assert np.allclose(image_to_float(torch.tensor([0, 255], dtype=torch.uint8)).numpy(), [-1, 1])
