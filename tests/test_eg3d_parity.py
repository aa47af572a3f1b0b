"""EG3D parity with the upstream reference fixture: ws, tri-planes, field values and rendered images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regress.generators.eg3d import EG3DGenerator

WS_TOL = 1e-4
PLANES_TOL = 2e-2  # planes0 is stored as float16
IMAGE_TOL = 2e-3
FIELD_TOL = 1e-3


@pytest.fixture(scope="module")
def reference(eg3d_fixture_dir) -> dict[str, torch.Tensor]:
    with np.load(eg3d_fixture_dir / "reference.npz") as npz:
        return {k: torch.from_numpy(npz[k]) for k in npz.files}


@pytest.fixture(scope="module")
def generator(eg3d_fixture_dir) -> EG3DGenerator:
    return EG3DGenerator.from_checkpoint(eg3d_fixture_dir / "network.pkl")


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != reference {tuple(b.shape)}"
    return (a.detach().float().cpu() - b.float()).abs().max().item()


def test_fixture_config_is_read_from_the_pickle(generator, reference):
    config = generator.config
    assert (config.channel_base, config.channel_max, config.neural_rendering_resolution) == (2048, 64, 128)
    assert (config.samples_per_ray, config.importance_samples_per_ray, config.ray_start, config.ray_end) == (48, 48, 2.25, 3.3)
    assert generator.num_ws == 14 and generator.image_resolution == 512 and generator.depth_resolution == 128
    assert generator.box_size == 1.0 and generator.surface_level == 10.0


def test_mapping_matches_reference(generator, reference):
    with torch.no_grad():
        ws = generator.mapping(reference["z"], reference["c_cond"], psi=0.7, cutoff=14)
        ws_notrunc = generator.mapping(reference["z"], reference["c_cond"])
    assert max_error(ws, reference["ws"]) <= WS_TOL
    assert max_error(ws_notrunc, reference["ws_notrunc"]) <= WS_TOL


def test_triplanes_and_field_match_reference(generator, reference):
    """planes0 and the raw decoder outputs at the stored points (what shape extraction samples)."""
    with torch.no_grad():
        planes = generator.planes(reference["ws"][:2])
        sigma, features = generator.field(planes, reference["coords"][:2])
        density = generator.density_from_planes(planes, reference["coords"][:2], chunk=1000)
    assert max_error(planes[0].reshape(96, 256, 256), reference["planes0"]) <= PLANES_TOL
    assert max_error(sigma, reference["sigma"][:2]) <= FIELD_TOL
    assert max_error(features, reference["rgb"][:2]) <= FIELD_TOL
    assert torch.equal(density, sigma)


def test_synthesis_matches_reference(generator, reference):
    """Deterministic rendering of the most rotated view (yaw 0.8, pitch 0.3), super-resolution included."""
    index = [3]
    with torch.no_grad():
        out = generator.synthesis(reference["ws"][index], reference["c"][index])
    assert max_error(out["image"], reference["image"][index]) <= IMAGE_TOL
    assert max_error(out["image_raw"], reference["image_raw"][index]) <= IMAGE_TOL
    assert max_error(out["depth"], reference["image_depth"][index]) <= IMAGE_TOL
    assert out["mask"].shape == (1, 1, 128, 128)
    assert 0 <= out["mask"].min() and out["mask"].max() <= 1


@pytest.mark.gpu
def test_parity_on_cuda_float32(eg3d_fixture_dir, reference):
    """All four samples on the GPU in float32 with TF32 off."""
    matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        gpu = EG3DGenerator.from_checkpoint(eg3d_fixture_dir / "network.pkl").cuda()
        cuda = {k: v.cuda() for k, v in reference.items()}
        with torch.no_grad():
            ws = gpu.mapping(cuda["z"], cuda["c_cond"], psi=0.7, cutoff=14)
            planes = gpu.planes(cuda["ws"])
            sigma, features = gpu.field(planes, cuda["coords"])
            out = gpu.synthesis(cuda["ws"], cuda["c"])
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
    assert max_error(ws, reference["ws"]) <= WS_TOL
    assert max_error(planes[0].reshape(96, 256, 256), reference["planes0"]) <= PLANES_TOL
    assert max_error(sigma, reference["sigma"]) <= FIELD_TOL
    assert max_error(features, reference["rgb"]) <= FIELD_TOL
    assert max_error(out["image"], reference["image"]) <= IMAGE_TOL
    assert max_error(out["image_raw"], reference["image_raw"]) <= IMAGE_TOL
    assert max_error(out["depth"], reference["image_depth"]) <= IMAGE_TOL
