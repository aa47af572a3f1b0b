"""Generator backends behind one interface (`base.Generator`), entering through one spec: `GeneratorSpec("analytic").build()`."""

from regress.generators.base import Generator
from regress.generators.registry import available_generators, register
from regress.generators.spec import GeneratorSpec, LatentSpace

__all__ = ["Generator", "GeneratorSpec", "LatentSpace", "register", "available_generators"]
