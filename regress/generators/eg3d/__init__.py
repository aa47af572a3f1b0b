"""Clean-room EG3D generator (docs/eg3d.md) with a safe loader for the released checkpoints."""

from regress.generators.eg3d.checkpoint import CheckpointError, UnsafeCheckpointError
from regress.generators.eg3d.config import EG3DConfig
from regress.generators.eg3d.generator import EG3DGenerator

__all__ = ["EG3DGenerator", "EG3DConfig", "CheckpointError", "UnsafeCheckpointError"]
