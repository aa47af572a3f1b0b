"""Data modules: `synth-online` (rendered on the training device), `shards` (WebDataset), `pairs` (evaluation).

`python -m regress.fit --data NAME` picks `regress/configs/data/NAME.yaml`; the classes load lazily there.
"""

from regress.datamodules.online import SynthOnlineDataModule

__all__ = ["SynthOnlineDataModule"]
