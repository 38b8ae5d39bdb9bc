"""The typed face of local inference: arguments, results, signatures, errors.

Kept apart from ``inference.py`` so the server can describe the tools (their
schemas) at start without importing numpy; the runtime loads on first use.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from .errors import ToolError

MODELS_DIR_DEFAULT: Final[Path] = Path(__file__).resolve().parent / "models"
MODEL_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MODEL_NAME_RE: Final = re.compile(MODEL_NAME_PATTERN)
# What one local inference call may take and give back (issue 15 item 18): a model's output size can follow
# its input values (Range, ConstantOfShape), so outputs are bounded like inputs, before any conversion.
# A tensor's values as the caller sends them: nested lists, checked against the model at call time.
# Its schema says "array" so that clients get a real type (a 0-d input's bare number is still accepted).
TensorValue = Annotated[Any, WithJsonSchema({"type": "array"})]


class TensorSpec(BaseModel):
    """One input or output of a model, as declared in the ONNX file."""

    name: str
    dtype: str = Field(description='numpy dtype name, e.g. "float32", "int64", "bool", "string".')
    shape: list[int | str | None] | None = Field(
        description="Dimensions: an int is fixed, a string is a named (symbolic) size that must agree "
        "across inputs, null is free. The whole shape is null when the model does not fix the rank."
    )


class ModelInfo(BaseModel):
    name: str = Field(description="Model name to pass to infer (the file stem).")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    size_bytes: int


class ListModelsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ListModelsResult(BaseModel):
    models: list[ModelInfo]


class InferArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=MODEL_NAME_PATTERN, description="A name from list_models.")
    inputs: dict[str, TensorValue] = Field(
        description='Every model input by name, nested like its shape: {"features": [[5.1, 3.5, 1.4, 0.2]]}.'
    )

    @field_validator("model")
    @classmethod
    def _no_dot_dot(cls, value: str) -> str:
        if ".." in value:
            raise ValueError('must not contain ".."')
        return value


class TensorOut(BaseModel):
    name: str
    dtype: str
    shape: list[int]
    data: Any = Field(description="Nested lists matching shape; non-finite floats are null.")


class InferResult(BaseModel):
    model: str
    outputs: list[TensorOut]


class ModelInputError(ToolError):
    """The caller's fault: bad model name or inputs. ``message`` is safe to show the assistant.

    A ToolError, so the gate returns field and rule as a structured error instead of a crash.
    """

    field: str
    rule: str

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(message, code="invalid_arguments", field=field, rule=rule)


class ModelRuntimeError(ToolError):
    """The model failed: an unreadable file, or onnxruntime erring on inputs that passed the checks."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="model_error")
