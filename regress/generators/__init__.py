"""Generator backends behind one interface (`base.Generator`), created by name: `create_generator("analytic")`."""

from regress.generators.base import Generator
from regress.generators.registry import available_generators, create_generator, register

__all__ = ["Generator", "register", "create_generator", "available_generators"]
