"""The tiny EG3D configuration the tests build with random weights: every code path, a fraction of a second."""

TINY_EG3D = dict(
    z_dim=32, w_dim=32, channel_base=256, channel_max=16, backbone_resolution=32, triplane_channels=8,
    decoder_hidden=16, neural_rendering_resolution=16, samples_per_ray=12, importance_samples_per_ray=12,
    sr_input_resolution=16, image_resolution=64, sr_channels=(16, 8),
)  # fmt: skip
