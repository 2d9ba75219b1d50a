"""mnist-serving's training job."""

import os

# NumPy's BLAS on one thread, set before NumPy loads (as `service` does, and for the same
# reason): the rendering pool runs a process per core, and a BLAS thread pool in each made the
# small least-squares fits of the upload preprocessing three times slower (3.4 ms against
# 10.5 ms per picture, measured). Training's heavy work is TensorFlow's, on its own pools.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
