"""The input readers now live in the :mod:`model.io` package; this module re-exports them for the callers
not moved yet (service/cli.py). New code imports from :mod:`model.io`."""

from model.io import *  # noqa: F403
from model.io import __all__  # noqa: F401
