"""Regressors trained on Sample batches: `DepthRegressor` (image -> depth) and `LatentRegressor` (image -> w).

`python -m regress.fit --model NAME` picks `regress/configs/model/NAME.yaml`.
"""

from regress.models.depth import DepthRegressor
from regress.models.latent import LatentRegressor

__all__ = ["DepthRegressor", "LatentRegressor"]
