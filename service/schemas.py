"""Pydantic models of the native API: the OpenAPI schema and examples clients read.

Requests are decoded by `service.decoding` (orjson + numpy, several times faster than validating
784 numbers per image field by field); these models describe the same contract for the docs.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator

Pixel = Annotated[float, Field(ge=0, le=255)]
Image = list[list[Pixel]] | list[Pixel]

_EXAMPLE_IMAGE = [[0] * 28 for _ in range(28)]
for _row in range(6, 22):
    _EXAMPLE_IMAGE[_row][14] = 255  # a vertical stroke: a "1"
# Probabilities of digits 0-9 for that "1", as the model answers them.
_EXAMPLE_PROBABILITIES: list[Any] = [1e-5, 0.9987, 4e-4, 1e-5, 2e-4, 1e-5, 1e-5, 5e-4, 1e-4, 1e-5]


class PredictRequest(BaseModel):
    instances: list[Image] = Field(
        description="Images, each 28x28 nested lists or 784 flat numbers, 0 (background) "
        "to 255 (ink), as in MNIST.",
        min_length=1,
        json_schema_extra={"examples": [[_EXAMPLE_IMAGE]]},  # type: ignore[list-item]
    )


class DigitPrediction(BaseModel):
    digit: int = Field(ge=0, le=9, description="The most probable digit.")
    probability: float = Field(description="Probability of `digit` (calibrated).")
    unsure: bool = Field(
        description="True when `probability` is below the version's unsure threshold (chosen "
        "on validation data at export): the picture may not be a digit, or not one the model "
        "can read. Show the top two digits, or ask again."
    )
    probabilities: list[float] = Field(description="Probability of each digit 0-9.")


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    predictions: list[DigitPrediction]

    model_config = {
        "protected_namespaces": (),
        "json_schema_extra": {
            "examples": [
                {
                    "model_name": "mnist",
                    "model_version": "1",
                    "predictions": [
                        {
                            "digit": 1,
                            "probability": 0.9987,
                            "unsure": False,
                            "probabilities": _EXAMPLE_PROBABILITIES,
                        }
                    ],
                }
            ]
        },
    }


class LabelTarget(BaseModel):
    """The body of `PUT /v1/admin/models/{name}/labels/{label}`."""

    version: int = Field(ge=1, examples=[2])

    @field_validator("version", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        """Pydantic's lax mode reads `true` as 1: a label moved to version 1 by mistake."""
        if isinstance(value, bool):
            raise ValueError("a version is a number, not true or false")
        return value


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong, for a human.")
    code: str = Field(description="Machine-readable error code.")


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Malformed JSON (or, in the TF Serving and V2 APIs, invalid input)",
        404: "Unknown model or version",
        413: "Body larger than the configured limit",
        415: "Content-Type not accepted by the route",
        422: "Valid JSON, but not valid images",
        503: "Model not ready, or server overloaded (see Retry-After)",
        504: "Request deadline passed while it waited for the model",
    }.items()
}


_BINARY_BODY = {"schema": {"type": "string", "format": "binary"}}

# The native predict route reads its body itself, in one of three forms.
PREDICT_DOC: dict[str, object] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "application/octet-stream": {
                **_BINARY_BODY,
                "description": "N x 784 bytes: each image's 28x28 uint8 pixels, row by row.",
            },
            "application/x-npy": {
                **_BINARY_BODY,
                "description": "A .npy file (numpy.save) of shape (N, 28, 28), (N, 784) or "
                "(N, 28, 28, 1), any integer or float dtype, pixels 0-255.",
            },
        },
    }
}


_FLAT_EXAMPLE = [pixel for row in _EXAMPLE_IMAGE for pixel in row]

TFSERVING_PREDICT_DOC: dict[str, object] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "Exactly one of `instances` (row format) or `inputs` "
                    "(columnar); images 28x28x1, 28x28 or 784 numbers in 0-255.",
                    "properties": {
                        "signature_name": {"type": "string", "default": "serving_default"},
                        "instances": {"type": "array", "items": {}},
                        "inputs": {},
                    },
                },
                "examples": {
                    "row": {"value": {"instances": [_EXAMPLE_IMAGE]}},
                    "columnar": {"value": {"inputs": {"image": [_EXAMPLE_IMAGE]}}},
                },
            }
        },
    },
    "responses": {
        "200": {
            "description": "`predictions` for row requests, `outputs` for columnar ones",
            "content": {"application/json": {"example": {"predictions": [_EXAMPLE_PROBABILITIES]}}},
        }
    },
}

V2_INFER_DOC: dict[str, object] = {
    "requestBody": {
        "required": True,
        "description": "KServe V2 inference request. Request parameter `binary_data_output` and "
        "output parameter `binary_data` (booleans): outputs as raw bytes after the JSON header "
        "(Triton's binary tensor extension). Output parameter `classification` (1-10) on "
        "`probabilities`: the best digits instead, as BYTES `<probability>:<digit>` (Triton's "
        "classification extension).",
        "content": {
            "application/json": {
                "schema": {"type": "object", "required": ["inputs"]},
                "example": {
                    "id": "req-1",
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1, 784],
                            "datatype": "FP32",
                            "data": _FLAT_EXAMPLE,
                        }
                    ],
                    "outputs": [{"name": "probabilities"}, {"name": "digit"}, {"name": "unsure"}],
                },
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Triton's binary tensor extension: JSON header of "
                "`Inference-Header-Content-Length` bytes, then the raw tensors.",
            },
        },
    },
    "responses": {
        "200": {
            "description": "Output tensors",
            "content": {
                "application/json": {
                    "example": {
                        "model_name": "mnist",
                        "model_version": "1",
                        "id": "req-1",
                        "outputs": [
                            {
                                "name": "probabilities",
                                "shape": [1, 10],
                                "datatype": "FP32",
                                "data": _EXAMPLE_PROBABILITIES,
                            },
                            {"name": "digit", "shape": [1], "datatype": "INT64", "data": [1]},
                            {"name": "unsure", "shape": [1], "datatype": "BOOL", "data": [False]},
                        ],
                    }
                }
            },
        }
    },
}
