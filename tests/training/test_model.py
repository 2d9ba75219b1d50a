"""The model builder: output shape and parameter counts for a few configurations."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import ModelConfig
from training.model import build_model


def expected_parameters(config: ModelConfig) -> int:
    """Count by hand: 3x3 convolutions, batch norm (4 per channel), dense layers."""
    total, channels, side = 0, 1, 28
    for block in range(config.blocks):
        filters = config.filters * 2**block
        for _ in range(2):
            total += 9 * channels * filters + (0 if config.batch_norm else filters)
            total += 4 * filters if config.batch_norm else 0
            channels = filters
        side //= 2
    flat = side * side * channels
    total += flat * config.dense_units + (0 if config.batch_norm else config.dense_units)
    total += 4 * config.dense_units if config.batch_norm else 0
    return total + config.dense_units * 10 + 10


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(),
        ModelConfig(blocks=1, filters=8, dense_units=32, batch_norm=False),
        ModelConfig(blocks=3, filters=16, dense_units=64),
    ],
    ids=["default", "tiny", "three-blocks"],
)
def test_shapes_and_parameter_counts(config: ModelConfig) -> None:
    model = build_model(config)
    assert model.count_params() == expected_parameters(config)
    assert model.input_shape == (None, 28, 28, 1)
    probabilities = np.asarray(model(np.zeros((3, 28, 28, 1), np.float32)))
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_default_model_size() -> None:
    assert build_model(ModelConfig()).count_params() == 339_938


@pytest.mark.parametrize("blocks", [0, 4])
def test_impossible_depth_is_refused(blocks: int) -> None:
    with pytest.raises(ValueError, match="block"):
        build_model(ModelConfig(blocks=blocks))


def test_the_temperature_is_folded_into_the_logits_layer() -> None:
    """softmax(logits / T) from weights divided by T: the calibrated model is the same graph."""
    from training.export import logits_of, with_temperature

    model = build_model(ModelConfig(blocks=1, filters=8, dense_units=32))
    before = [weight.copy() for weight in model.get_weights()]
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1)).astype(np.float32)
    calibrated = with_temperature(model, 0.5)
    np.testing.assert_allclose(
        np.asarray(logits_of(calibrated)(images)),
        np.asarray(logits_of(model)(images)) / 0.5,
        rtol=1e-5,
        atol=1e-5,
    )
    assert calibrated.count_params() == model.count_params()
    for weight, original in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(weight, original)  # the trained model is left alone
    assert with_temperature(model, 1.0) is model
