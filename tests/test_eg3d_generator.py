"""EG3D generator behaviour on a tiny random configuration: shapes, sampling determinism, jitter, layer math."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from regress.camera import ViewMixture, frontal_camera, make_cameras
from regress.generators import GeneratorSpec
from regress.generators.eg3d import EG3DConfig, EG3DGenerator
from regress.generators.eg3d.layers import ModulatedConv, fir_filter, upsample2d
from regress.sample import FIELDS
from tests.eg3d_tiny import TINY_EG3D


@pytest.fixture(scope="module")
def tiny() -> EG3DGenerator:
    torch.manual_seed(0)
    generator = EG3DGenerator(**TINY_EG3D).eval()
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            if name.endswith("noise_strength"):
                parameter.fill_(0.1)
    return generator


def test_synthesis_shapes_and_ranges(tiny):
    w = tiny.mapping(torch.randn(2, 32), frontal_camera(2), psi=0.7)
    assert w.shape == (2, tiny.num_ws, 32) and tiny.num_ws == 8
    with torch.no_grad():
        out = tiny.synthesis(w, make_cameras([0.0, 0.5], [0.0, -0.2]))
    assert out["image"].shape == (2, 3, 64, 64) and out["image_raw"].shape == (2, 3, 16, 16)
    assert out["depth"].shape == out["mask"].shape == (2, 1, 16, 16)
    assert ((out["mask"] >= 0) & (out["mask"] <= 1)).all()
    assert ((out["depth"] >= tiny.ray_start) & (out["depth"] <= tiny.ray_end)).all()
    assert out["image_raw"].abs().max() <= 1.002


def test_sample_is_deterministic_per_seed_whatever_the_batch(tiny):
    with torch.no_grad():
        batch = tiny.sample([11, 12, 13], views=ViewMixture.load("published"), psi=0.7)
        single = tiny.sample([12], views=ViewMixture.load("published"), psi=0.7)
    for key in ("z", "camera", "camera_cond"):  # drawn on the CPU per seed: exact
        assert torch.equal(batch[key][1:2], single[key]), key
    # w goes through matmuls whose blocking depends on the batch size: equal to float rounding
    torch.testing.assert_close(batch["w"][1:2], single["w"], atol=1e-5, rtol=0)
    assert (batch["image"][1:2].int() - single["image"].int()).abs().max() <= 1
    torch.testing.assert_close(batch["depth"][1:2], single["depth"], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch["mask"][1:2], single["mask"], atol=1e-5, rtol=0)
    assert not torch.equal(batch["depth"][0], batch["depth"][1])
    for key, field in FIELDS.items():
        assert batch[key].dtype == field.dtype, key
    assert batch["meta"][1]["seed"] == 12 and batch["meta"][1]["generator"] == "eg3d"
    assert batch["meta"][1]["generator_checksum"] == "random-init"


def test_jitter_depends_only_on_the_seed(tiny):
    w = tiny.mapping(torch.randn(1, 32), frontal_camera(1)).expand(2, -1, -1)
    camera = frontal_camera(2)
    with torch.no_grad():
        plain = tiny.synthesis(w, camera)
        jittered = tiny.synthesis(w, camera, noise_seeds=[5, 6])
        again = tiny.synthesis(w[:1], camera[:1], noise_seeds=[6])
    torch.testing.assert_close(plain["depth"][0], plain["depth"][1], atol=1e-6, rtol=0)
    assert (jittered["depth"][0] - jittered["depth"][1]).abs().max() > 1e-4
    assert (jittered["depth"][0] - plain["depth"][0]).abs().max() > 1e-4
    torch.testing.assert_close(again["depth"][0], jittered["depth"][1], atol=1e-5, rtol=0)


def test_density_reuses_planes_and_chunks_exactly(tiny):
    w = tiny.mapping(torch.randn(2, 32), frontal_camera(2))
    points = torch.rand(2, 1000, 3) - 0.5
    with torch.no_grad():
        planes = tiny.planes(w)
        whole = tiny.density(points, w)
        chunked = tiny.density_from_planes(planes, points, chunk=128)
    assert planes.shape == (2, 3, 8, 32, 32) and whole.shape == (2, 1000, 1)
    assert torch.equal(whole, chunked)


def test_mean_latent_and_truncation(tiny):
    mean = tiny.mean_latent()
    assert mean.shape == (tiny.num_ws, tiny.w_dim)
    z, c = torch.randn(3, 32), frontal_camera(3)
    torch.testing.assert_close(tiny.mapping(z, c, psi=0.0), mean.expand(3, -1, -1))
    w, w_cut = tiny.mapping(z, c), tiny.mapping(z, c, psi=0.5, cutoff=4)
    torch.testing.assert_close(w_cut[:, 4:], w[:, 4:])
    torch.testing.assert_close(w_cut[:, :4], mean[:4] + 0.5 * (w[:, :4] - mean[:4]))


def test_noise_modes(tiny):
    w = tiny.mapping(torch.randn(1, 32), frontal_camera(1))
    none = EG3DGenerator(EG3DConfig(**TINY_EG3D), noise_mode="none")
    none.load_state_dict(tiny.state_dict())
    planes, planes_none = tiny.planes(w), none.planes(w)
    assert (planes - planes_none).abs().max() > 0
    with pytest.raises(ValueError, match="noise_mode"):
        EG3DGenerator(**TINY_EG3D, noise_mode="fixed")
    with pytest.raises(ValueError, match="unknown EG3D options \\['noise'\\]"):
        EG3DGenerator(**TINY_EG3D, noise="const")


def test_converted_random_generator_round_trip(tiny, tmp_path):
    tiny.save_converted(tmp_path)
    loaded = GeneratorSpec("eg3d", tmp_path).create()
    assert loaded.config == tiny.config
    w = tiny.mapping(torch.randn(1, 32), frontal_camera(1))
    with torch.no_grad():
        a, b = tiny.synthesis(w, frontal_camera(1)), loaded.synthesis(w, frontal_camera(1))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_samples_per_ray_are_stored_under_upstream_names():
    """config.json, manifests and checksums keep upstream's depth_resolution(_importance): old files and sets stay valid."""
    stored = EG3DConfig(samples_per_ray=40, importance_samples_per_ray=24).to_dict()
    assert (stored["depth_resolution"], stored["depth_resolution_importance"]) == (40, 24) and "samples_per_ray" not in stored
    assert EG3DConfig.from_dict(stored) == EG3DConfig(samples_per_ray=40, importance_samples_per_ray=24)
    with pytest.raises(ValueError, match=r"unknown EG3D options \['depth_resolution'\]"):
        EG3DGenerator(**TINY_EG3D, depth_resolution=24)  # on EG3D the options say samples_per_ray: one meaning per name


def test_modulated_conv_equals_per_sample_demodulated_weights():
    """The activation-scaling form equals docs/eg3d.md §1's literal per-sample weights (grouped conv), both for up 1 and 2."""
    torch.manual_seed(1)
    x, w = torch.randn(2, 5, 8, 8), torch.randn(2, 16)
    for up in (1, 2):
        conv = ModulatedConv(5, 7, 16, resolution=8 * up, up=up)
        styles = conv.affine(w)
        weight = conv.weight[None] * styles[:, None, :, None, None]
        weight = weight * (weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).rsqrt()
        if up == 1:
            y = F.conv2d(x.reshape(1, 10, 8, 8), weight.reshape(14, 5, 3, 3), padding=1, groups=2)
        else:  # zero-stuff, pad, correlate with the flipped per-sample kernel, then the FIR
            stuffed = torch.zeros(2, 5, 16, 16)
            stuffed[..., ::2, ::2] = x
            y = F.conv2d(F.pad(stuffed, (2, 1, 2, 1)).reshape(1, 10, 19, 19), weight.flip([3, 4]).reshape(14, 5, 3, 3), groups=2)
            y = F.conv2d(F.pad(y.reshape(2 * 7, 1, 17, 17), (1, 1, 1, 1)), 4 * fir_filter()[None, None])
        expected = F.leaky_relu(y.reshape(2, 7, 8 * up, 8 * up) + conv.bias[None, :, None, None], 0.2) * math.sqrt(2)
        torch.testing.assert_close(conv(x, w, noise_mode="none"), expected, atol=1e-4, rtol=1e-4)


def test_upsample2d_keeps_constant_images_constant():
    image = torch.full((1, 2, 6, 6), 3.0)
    up = upsample2d(image, fir_filter())
    assert up.shape == (1, 2, 12, 12)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full((1, 2, 8, 8), 3.0))
