"""The CNN: convolution blocks, max-pooling, dropout, a dense layer and a softmax over 10 digits."""

from __future__ import annotations

import keras

from training.config import ModelConfig
from training.export import INPUT_SHAPE, LOGITS_LAYER, NUM_CLASSES


def build_model(config: ModelConfig) -> keras.Model:
    """The model takes raw pixels (0-255, float32) and rescales them itself.

    Keeping the scaling inside the graph means every client, TensorFlow Serving's included, sends
    the MNIST convention unchanged and cannot get the normalisation wrong.
    """
    if config.blocks < 1:
        raise ValueError("a model needs at least one convolution block")
    if config.blocks > 3:
        raise ValueError("at most 3 blocks fit a 28x28 input (each halves the side)")
    inputs = keras.Input(shape=INPUT_SHAPE, name="image", dtype="float32")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for block in range(config.blocks):
        filters = config.filters * 2**block
        for conv in range(2):
            x = keras.layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=not config.batch_norm,
                name=f"block{block + 1}_conv{conv + 1}",
            )(x)
            if config.batch_norm:
                x = keras.layers.BatchNormalization(name=f"block{block + 1}_bn{conv + 1}")(x)
            x = keras.layers.ReLU(name=f"block{block + 1}_relu{conv + 1}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block + 1}_pool")(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, name=f"block{block + 1}_dropout")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(config.dense_units, use_bias=not config.batch_norm, name="dense")(x)
    if config.batch_norm:
        x = keras.layers.BatchNormalization(name="dense_bn")(x)
    x = keras.layers.ReLU(name="dense_relu")(x)
    if config.dense_dropout:
        x = keras.layers.Dropout(config.dense_dropout, name="dense_dropout")(x)
    logits = keras.layers.Dense(NUM_CLASSES, name=LOGITS_LAYER)(x)
    outputs = keras.layers.Softmax(name="probabilities")(logits)
    return keras.Model(inputs, outputs, name="mnist_cnn")
