"""EG3D camera conventions: exact frontal matrix, pose round trips, rays, view mixtures."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from regress.camera import (
    ViewMixture,
    camera_rays,
    camera_to_pose,
    fov_to_focal,
    frontal_camera,
    intrinsics,
    make_cameras,
    views_to_cameras,
)


def test_frontal_camera_is_the_ffhq_matrix():
    camera = frontal_camera()[0]
    cam2world = camera[:16].reshape(4, 4)
    torch.testing.assert_close(cam2world[:3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0])), atol=1e-6, rtol=0)
    torch.testing.assert_close(cam2world[:3, 3], torch.tensor([0.0, 0.0, 2.7]), atol=1e-6, rtol=0)
    torch.testing.assert_close(cam2world[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(camera[16:].reshape(3, 3), intrinsics())


def test_focal_uses_upstream_constants():
    # 1 / (tan(18.837 * 3.14159 / 360) * 1.414): the value in every EG3D camera label
    assert fov_to_focal(18.837) == pytest.approx(4.26339, abs=1e-5)
    assert intrinsics()[0, 2] == 0.5 and intrinsics()[1, 2] == 0.5


@pytest.mark.parametrize("yaw,pitch,radius,fov", [(0.0, 0.0, 2.7, 18.837), (0.6, -0.3, 2.7, 18.837), (-1.2, 0.25, 3.1, 24.0), (1.5, 0.4, 2.2, 12.0)])
def test_pose_round_trip(yaw, pitch, radius, fov):
    pose = camera_to_pose(make_cameras(yaw, pitch, radius, fov_deg=fov))
    assert pose.yaw.item() == pytest.approx(yaw, abs=1e-5)
    assert pose.pitch.item() == pytest.approx(pitch, abs=1e-5)
    assert pose.radius.item() == pytest.approx(radius, abs=1e-5)
    assert pose.fov_deg.item() == pytest.approx(fov, abs=1e-4)


def test_cameras_look_at_the_pivot_with_orthonormal_rotation():
    cameras = make_cameras(torch.linspace(-1, 1, 5), torch.linspace(-0.4, 0.4, 5))
    cam2world = cameras[:, :16].reshape(-1, 4, 4)
    rotation, origin = cam2world[:, :3, :3], cam2world[:, :3, 3]
    torch.testing.assert_close(rotation.transpose(1, 2) @ rotation, torch.eye(3).expand(5, 3, 3), atol=1e-5, rtol=0)
    to_pivot = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, 0.2]) - origin, dim=-1)
    torch.testing.assert_close(rotation[:, :, 2], to_pivot, atol=1e-5, rtol=0)
    assert (rotation[:, 1, 1] < 0).all(), "camera y must point down in world space"


def test_positive_yaw_moves_the_camera_to_plus_x():
    origin = make_cameras(0.5, 0.0)[0, [3, 7, 11]]
    assert origin[0] > 1.0 and origin[2] > 0


def test_central_ray_hits_the_pivot_direction():
    origins, directions = camera_rays(frontal_camera(), 2)
    assert origins.shape == (1, 4, 3) and directions.shape == (1, 4, 3)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(1, 4))
    # the four rays are symmetric about the optical axis (0, 0, -1)
    torch.testing.assert_close(directions.mean(dim=1)[0, :2], torch.zeros(2), atol=1e-6, rtol=0)
    # row-major order: first row is the top of the image (world +y), first column the left (world -x)
    assert directions[0, 0, 1] > 0 and directions[0, 0, 0] < 0


def test_published_mixture_proportions_over_10000_draws():
    mixture = ViewMixture.load("published")
    counts = Counter(v.category for v in mixture.draw_many(range(10_000)))
    expected = {"frontal_tight": 0.70, "side": 0.12, "side_extreme": 0.06, "frontal_wide": 0.12}
    for name, share in expected.items():
        assert abs(counts[name] / 10_000 - share) <= 0.02, (name, counts[name])


def test_view_draws_respect_their_ranges_and_mirror():
    mixture = ViewMixture.load("published")
    extreme = [v for v in mixture.draw_many(range(3000)) if v.category == "side_extreme"]
    yaws = np.degrees([v.yaw for v in extreme])
    assert (np.abs(yaws) >= 70 - 1e-9).all() and (np.abs(yaws) <= 90 + 1e-9).all()
    assert (yaws > 0).any() and (yaws < 0).any()
    cameras = views_to_cameras(extreme)
    torch.testing.assert_close(camera_to_pose(cameras).yaw.float(), torch.tensor([v.yaw for v in extreme]).float(), atol=1e-5, rtol=0)


def test_view_draws_are_a_function_of_the_seed_alone():
    mixture = ViewMixture.load("published")
    assert mixture.draw_many([5, 9, 5]) == [mixture.draw(5), mixture.draw(9), mixture.draw(5)]
    assert mixture.draw(5) != mixture.draw(6)


def test_mixture_weights_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        ViewMixture.from_dict({"categories": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.4}]})


def test_unknown_mixture_name_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="published"):
        ViewMixture.load("no-such-mixture")


def test_reversed_range_is_rejected():
    with pytest.raises(ValueError, match="reversed"):
        ViewMixture.from_dict({"categories": [{"name": "a", "weight": 1.0, "yaw_deg": [10, -10]}]})


def test_fixture_cameras_are_reproduced(eg3d_fixture_dir):
    reference = np.load(eg3d_fixture_dir / "reference.npz")
    views = torch.from_numpy(reference["views"])
    cameras = make_cameras(views[:, 0], views[:, 1])
    np.testing.assert_allclose(cameras.numpy(), reference["c"], atol=1e-6)
    np.testing.assert_allclose(frontal_camera(len(views)).numpy(), reference["c_cond"], atol=1e-6)
    assert math.isclose(float(reference["intrinsics"][0, 0]), fov_to_focal(18.837), abs_tol=1e-5)
