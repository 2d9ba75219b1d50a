#!/usr/bin/env bash
# Build the image and prove it works without a Docker engine (podman, via shared/tools):
# train a small model with the image into a host directory, then serve it and wait for /readyz.
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=${CONTAINER_SMOKE:-../shared/tools/container-smoke}
data=${MNIST_DIR:?set MNIST_DIR to a directory holding the four MNIST files}
models=$(mktemp -d /tmp/mnist-smoke-models.XXXXXX)
chmod a+rwx "$models"  # the image runs as UID 10001
trap 'rm -rf "$models"' EXIT

"$smoke" -u - -v "$models:/models" -v "$data:/data" . -- \
    mnist-train --data-dir /data --model-repository /models \
    --limit 3000 --epochs 2 --no-batch-norm --no-augment --no-extra-data --no-reports --quiet
test -f "$models/mnist/1/saved_model.pb"
"$smoke" -v "$models:/models" .
echo "container smoke test passed: the image trained a model and served it (/readyz 200)"
