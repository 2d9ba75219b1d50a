"""mnist-serving's HTTP inference service."""

import os
from importlib.metadata import PackageNotFoundError, version

# NumPy's BLAS on one thread, set before NumPy loads (the server's entry points import this
# package first). The server's only BLAS work is small (the upload preprocessing's least-squares
# fit of the paper); a BLAS thread pool made it slower, and 8 times slower while the model kept
# the other core busy (4.3 ms against 34 ms per upload, measured). TensorFlow keeps its own
# thread pools. An operator's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:
    __version__ = version("mnist-serving")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
