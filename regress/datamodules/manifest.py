"""What the stored data modules (shards, pairs) know of their w: the `latent_space` their manifest records."""

from __future__ import annotations

import torch

from regress.generators.spec import LatentSpace, stored_record


class ManifestLatents:
    """The `latent_space` of a data module read from its `manifest`: shape, mean and the generator that made the
    samples, by name (no spec: its weights are not kept with the data, and nothing renders)."""

    manifest: dict

    @property
    def latent_space(self) -> LatentSpace:
        settings = self.manifest.get("settings", {})
        identity = self.manifest.get("generator") or settings.get("generator")  # pairs manifests: top level; shards: settings
        made_by = stored_record(identity, settings.get("generator_options")) if identity else None
        mean = torch.tensor(self.manifest["mean_latent"], dtype=torch.float32)
        return LatentSpace(tuple(self.manifest["latent_shape"]), mean, made_by=made_by)
