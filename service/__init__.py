"""mnist-serving's HTTP inference service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mnist-serving")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
