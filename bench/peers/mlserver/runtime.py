"""Seldon MLServer serving this project's SavedModel, as an MLServer user would write it: a
custom runtime (MLServer ships none for TensorFlow) that decodes the V2 input with MLServer's own
codec, calls the serving signature, and returns both outputs our V2 route returns.

Runs inside the peers benchmark's own MLServer virtual environment, never the project's; the
model path comes from `parameters.uri` in the generated model-settings.json.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class SavedModelDigits(MLModel):
    async def load(self) -> bool:
        import tensorflow as tf

        self._tf = tf
        self._loaded: Any = tf.saved_model.load(self.settings.parameters.uri)
        self._signature = self._loaded.signatures["serving_default"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        images = images.reshape(-1, 28, 28, 1)
        # a keyword argument: a concrete function called positionally is ~15x slower
        outputs = self._signature(image=self._tf.convert_to_tensor(images))
        probabilities = outputs["probabilities"].numpy()
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output("probabilities", probabilities),
                NumpyCodec.encode_output("digit", probabilities.argmax(axis=1)),
            ],
        )
