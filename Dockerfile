# One image trains (`mnist-train`) and serves (`mnist-serve`, the default command).
#   docker build -t mnist-serving .
#   docker build --build-arg MODEL_DIR=models -t mnist-serving:with-model .   # bake models/ in
ARG BASE_IMAGE=python:3.11-slim

# ---- builder: the virtual environment, built where compilers may exist --------------------------
FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md LICENSE ./
COPY requirements ./requirements
COPY service ./service
COPY training ./training
# Every dependency pinned by the lock for the base image's Python (`make lock` writes them).
RUN version="$(/opt/venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    && /opt/venv/bin/pip install --no-cache-dir -c "requirements/service-py${version}.txt" ".[otel]"

# ---- runtime: the venv and nothing else; no compilers, non-root ---------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG UID=10001
ARG MODEL_DIR=docker/no-model
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MNIST_HOST=0.0.0.0 \
    MNIST_PORT=8000 \
    MNIST_GRPC_PORT=8500 \
    MNIST_MODEL_REPOSITORY=/models \
    MNIST_DIR=/data
COPY --from=builder /opt/venv /opt/venv
# Empty unless MODEL_DIR names a model repository in the build context.
COPY --chown=${UID}:${UID} ${MODEL_DIR} /models
RUN mkdir -p /data && chown ${UID}:${UID} /data /models
WORKDIR /tmp
USER ${UID}:${UID}
EXPOSE 8000 8500
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"]
CMD ["mnist-serve"]
