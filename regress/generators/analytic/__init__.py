"""The embedded `analytic` generator: a procedural, differentiable head that needs no weights."""

from regress.generators.analytic.generator import AnalyticGenerator

__all__ = ["AnalyticGenerator"]
