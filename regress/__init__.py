"""regress: synthesize EG3D face data, train depth and latent regressors, benchmark them on real photos.

The jobs are `python -m regress.fit`, `regress.generate` and `regress.evaluate`; docs/architecture.md maps the package.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("regress")  # one source: pyproject.toml's version, as installed
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
