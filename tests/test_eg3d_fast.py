"""The EG3D fast path: device-side jitter, the gather-free marcher, reduced precision and its fidelity (GPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from regress.camera import ViewMixture, frontal_camera, make_cameras
from regress.generators.eg3d import EG3DGenerator
from regress.generators.eg3d.fused_field import fused_field, supported
from regress.generators.eg3d.jitter import MASK32, ROUND, hash32, keyed_uniform, seed_keys
from regress.generators.eg3d.layers import ToRGB
from regress.generators.eg3d.renderer import OSGDecoder, march, march_weights, sample_triplanes
from tests.eg3d_tiny import TINY_EG3D

PSNR_MIN_DB = 40.0
DEPTH_MAX_ERROR = 1e-2


def python_hash32(x: int) -> int:
    """The same hash on Python ints, with explicit wrap-around: the reference for the tensor version."""
    for shift, multiplier in ROUND:
        x ^= x >> shift
        if multiplier is not None:
            x = (x * multiplier) & MASK32
    return x


def psnr(reference: torch.Tensor, other: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4 / (reference.float() - other.float()).square().mean().item())


def test_hash_is_exact_32_bit_arithmetic():
    values = torch.randint(0, 2**32, (2000,), dtype=torch.int64, generator=torch.Generator().manual_seed(0))
    values[:3] = torch.tensor([0, 1, MASK32])
    expected = [python_hash32(int(v)) for v in values]
    assert hash32(values).tolist() == expected


def hashed_uniform(seeds, size: int, stream: int, device: str = "cpu") -> torch.Tensor:
    """The renderer's jitter numbers: keys of (seed, stream) moved to the device, then hashed there."""
    return keyed_uniform(seed_keys(seeds, stream).to(device), size)


def test_hashed_uniforms_depend_only_on_the_seed():
    big = 2**63 + 12345  # training seeds use the top bits
    batch = hashed_uniform([7, big, 9], 5000, stream=2)
    assert batch.dtype == torch.float32 and batch.shape == (3, 5000)
    assert torch.equal(hashed_uniform([big], 5000, stream=2)[0], batch[1])
    assert torch.equal(hashed_uniform([9, 7], 5000, stream=2), batch[[2, 0]])
    assert not torch.equal(hashed_uniform([7], 5000, stream=3)[0], batch[0])
    # pinned values: the stream of a seed must never change silently (it decides datasets)
    assert hashed_uniform([0], 3, stream=2)[0].tolist() == [0.5105606913566589, 0.07384246587753296, 0.23943793773651123]
    with pytest.raises(ValueError, match="non-negative 64-bit"):
        seed_keys([-1], 2)



def test_hashed_uniforms_look_uniform_and_independent():
    u = hashed_uniform(range(64), 16384, stream=2).double()
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 2e-3 and abs(u.var().item() - 1 / 12) < 1e-3
    histogram = torch.histc(u.float(), bins=16, min=0, max=1) / u.numel()
    assert (histogram - 1 / 16).abs().max() < 2e-3
    centered = u - 0.5
    assert abs((centered[:, 1:] * centered[:, :-1]).mean().item()) * 12 < 5e-3  # neighbours in a row
    assert abs((centered[1:] * centered[:-1]).mean().item()) * 12 < 5e-3  # neighbouring seeds


def reference_march(depths, sigma, features, density_bias=-1.0):
    """The compositing of docs/eg3d.md §6 literally, on features (N, M, S, C) already sorted: weights, then midpoint features."""
    weights = march_weights(depths, sigma, density_bias)
    features_mid = (features[..., :-1, :] + features[..., 1:, :]) / 2
    return (weights[..., None] * features_mid).sum(dim=-2) * 2 - 1, weights.sum(-1)


def test_gather_free_march_equals_the_literal_marcher():
    torch.manual_seed(0)
    n, m, c, s1, s2 = 2, 5, 4, 6, 7
    depths_a, depths_b = torch.rand(n, m, s1) * 2 + 2, torch.rand(n, m, s2) * 2 + 2
    sigma_a, sigma_b = torch.randn(n, m, s1) * 5, torch.randn(n, m, s2) * 5
    features_a, features_b = torch.rand(n, c, m, s1), torch.rand(n, c, m, s2)
    depths, order = torch.sort(torch.cat([depths_a, depths_b], -1), -1)
    sigma = torch.cat([sigma_a, sigma_b], -1).gather(-1, order)
    out = march(depths, sigma, [features_a, features_b], order)
    sorted_features = torch.cat([features_a, features_b], -1).gather(-1, order[:, None].expand(-1, c, -1, -1)).permute(0, 2, 3, 1)
    expected, opacity = reference_march(depths, sigma, sorted_features)
    torch.testing.assert_close(out.features, expected.transpose(1, 2), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.opacity, opacity)
    assert out.depth.shape == (n, m) and ((out.depth >= depths.amin()) & (out.depth <= depths.amax())).all()


def test_channels_first_decoder_equals_the_layer_stack():
    torch.manual_seed(0)
    decoder = OSGDecoder(8, 16, 8)
    features = torch.randn(2, 8, 50)
    sigma, out = decoder(features)
    rows = decoder.net(features.transpose(1, 2))
    torch.testing.assert_close(sigma, rows[..., 0])
    torch.testing.assert_close(out, torch.sigmoid(rows[..., 1:]).transpose(1, 2) * 1.002 - 0.001)
    assert torch.equal(decoder(features, with_features=False)[0], sigma)


def test_torgb_product_equals_the_scaled_1x1_conv_in_both_layouts():
    torch.manual_seed(0)
    torgb = ToRGB(16, 3, 8, conv_clamp=0.5)
    x, w = torch.randn(2, 16, 6, 6), torch.randn(2, 8)
    styles = torgb.affine(w) * torgb.weight_gain
    expected = (F.conv2d(x * styles[:, :, None, None], torgb.weight) + torgb.bias[None, :, None, None]).clamp(-0.5, 0.5)
    with torch.no_grad():
        torch.testing.assert_close(torgb(x, w), expected)
        channels_last = torgb(x.to(memory_format=torch.channels_last), w)
    torch.testing.assert_close(channels_last, expected)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def tiny_pair() -> tuple[EG3DGenerator, EG3DGenerator]:
    torch.manual_seed(0)
    reference = EG3DGenerator(**TINY_EG3D).eval()
    fast = EG3DGenerator(**TINY_EG3D, render_precision="float16").eval()
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def test_reduced_precision_follows_float32_on_the_cpu(tiny_pair):
    reference, fast = tiny_pair
    w = reference.mapping(torch.randn(2, 32), frontal_camera(2), psi=0.7)
    camera = make_cameras([0.0, 0.4], [0.0, -0.2])
    with torch.no_grad():
        a, b = reference.synthesis(w, camera), fast.synthesis(w, camera)
    assert all(b[k].dtype == torch.float32 for k in ("image", "depth", "mask"))
    assert psnr(a["image"], b["image"]) > 35
    assert (a["depth"] - b["depth"]).abs().max() < 1e-2
    assert fast.identity()["config"]["precision"] == "float16"
    with pytest.raises(ValueError, match="precision"):
        EG3DGenerator(**TINY_EG3D, render_precision="int8")
    with pytest.raises(ValueError, match="compile"):
        EG3DGenerator(**TINY_EG3D, compile=True)


def test_fast_path_sample_is_deterministic_per_seed_whatever_the_batch(tiny_pair):
    _, fast = tiny_pair
    views = ViewMixture.load("published")
    with torch.no_grad():
        batch = fast.sample([21, 22, 23], views=views)
        single = fast.sample([22], views=views)
    assert (batch["image"][1:2].int() - single["image"].int()).abs().max() <= 1
    torch.testing.assert_close(batch["depth"][1:2], single["depth"], atol=1e-4, rtol=0)
    assert not torch.equal(batch["depth"][0], batch["depth"][1])


@pytest.fixture(scope="module")
def fixture_inputs(eg3d_fixture_dir) -> dict[str, torch.Tensor]:
    with np.load(eg3d_fixture_dir / "reference.npz") as npz:
        return {k: torch.from_numpy(npz[k]).cuda() for k in ("ws", "c")}


@pytest.mark.gpu
@pytest.mark.parametrize("options", [{"render_precision": "float16"}, {"render_precision": "float16", "compile": "reduce-overhead"}])
def test_fast_path_fidelity_on_the_fixture(eg3d_fixture_dir, fixture_inputs, options):
    """PSNR >= 40 dB and depth within 1e-2 of the float32 path (TF32 off) on the reference weights."""
    matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        reference = EG3DGenerator.from_checkpoint(eg3d_fixture_dir / "network.pkl").cuda()
        fast = EG3DGenerator.from_checkpoint(eg3d_fixture_dir / "network.pkl", **options).cuda()
        with torch.no_grad():
            a = reference.synthesis(fixture_inputs["ws"], fixture_inputs["c"])
            b = fast.synthesis(fixture_inputs["ws"], fixture_inputs["c"])
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
    assert psnr(a["image"], b["image"]) >= PSNR_MIN_DB
    assert (a["depth"] - b["depth"]).abs().max().item() <= DEPTH_MAX_ERROR
    assert (a["mask"] - b["mask"]).abs().max().item() <= DEPTH_MAX_ERROR


@pytest.mark.gpu
def test_jitter_on_the_gpu_equals_the_cpu():
    seeds = [0, 5, 2**62 + 3]
    assert torch.equal(hashed_uniform(seeds, 100_000, 2, "cuda").cpu(), hashed_uniform(seeds, 100_000, 2))


def test_fused_field_traces_to_the_shapes_it_returns():
    """torch.compile traces the opaque op through its fake implementation: shapes and dtypes must be the kernel's."""
    pytest.importorskip("triton")
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        planes = torch.empty(2 * 3, 64, 64, 32, dtype=torch.float16)
        points = torch.empty(2, 5000, 3)
        w1, w2 = torch.empty(32, 64, dtype=torch.float16), torch.empty(64, 32, dtype=torch.float16)
        layers = (w1, torch.empty(64), w2, torch.empty(64), torch.empty(33))
        sigma, features = torch.ops.regress.triplane_field(planes, points, *layers, 2.0, True)
        _, no_features = torch.ops.regress.triplane_field(planes, points, *layers, 2.0, False)
    assert (sigma.shape, sigma.dtype) == ((2, 5000), torch.float32)
    assert (features.shape, features.dtype) == ((2, 32, 5000), torch.float16)
    assert no_features.shape == (2, 32, 0)


@pytest.mark.gpu
def test_fused_field_equals_plane_sampling_and_decoder():
    torch.manual_seed(0)
    decoder = OSGDecoder(32, 64, 32).cuda()
    planes = (torch.randn(2, 3, 32, 64, 64, device="cuda") * 3).half()
    planes = planes.reshape(6, 32, 64, 64).contiguous(memory_format=torch.channels_last).reshape(2, 3, 32, 64, 64)
    points = (torch.rand(2, 5000, 3, device="cuda") - 0.5) * 1.2  # some outside the box: zero padding
    assert supported(planes, decoder)
    with torch.no_grad():
        sigma, features = fused_field(planes, points, decoder, box_warp=1.0)
        density, none = fused_field(planes, points, decoder, box_warp=1.0, with_features=False)
        expected_sigma, expected_features = decoder(sample_triplanes(planes.float(), points, 1.0))
    torch.testing.assert_close(sigma, expected_sigma, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(features.float(), expected_features, atol=2e-3, rtol=0)
    assert torch.equal(density, sigma) and none is None


@pytest.mark.gpu
def test_compiled_fast_path_is_deterministic_per_seed_whatever_the_batch():
    torch.manual_seed(0)
    options = {**TINY_EG3D, "triplane_channels": 32, "decoder_hidden": 64}  # widths the fused field takes
    generator = EG3DGenerator(**options, render_precision="float16", compile="reduce-overhead").cuda().eval()
    views = ViewMixture.load("published")
    with torch.no_grad():
        batch = generator.sample([31, 32, 33], views=views)
        single = generator.sample([32], views=views)
        kept = batch["depth"].clone()
        generator.sample([41, 42, 43], views=views)
    # each batch shape is its own compiled program, with its own float16 rounding: within the fidelity budget
    assert (batch["image"][1:2].int() - single["image"].int()).abs().max() <= 1
    torch.testing.assert_close(batch["depth"][1:2], single["depth"], atol=1e-3, rtol=0)
    assert F.mse_loss(batch["depth"][0], batch["depth"][1]) > 0
    assert torch.equal(batch["depth"], kept)  # the CUDA graph's next run did not overwrite it
