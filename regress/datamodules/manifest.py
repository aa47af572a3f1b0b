"""What the stored data modules (shards, pairs) know of their w: the `latent_space` their manifest records."""

from __future__ import annotations

import torch

from regress.generators.spec import LatentSpace


class ManifestLatents:
    """The `latent_space` of a data module read from its `manifest`: shape and mean, no generator."""

    manifest: dict

    @property
    def latent_space(self) -> LatentSpace:
        return LatentSpace(tuple(self.manifest["latent_shape"]), torch.tensor(self.manifest["mean_latent"], dtype=torch.float32))
