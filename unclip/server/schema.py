"""The OpenAPI description of the endpoints (FastAPI serves it at ``/openapi.json``).

Request bodies are parsed by hand (``params``, ``uploads``) so that JSON and multipart share one
set of checks and every error comes back in OpenAI's shape; their schemas are declared here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from unclip.server.params import MAX_N, MAX_PROMPT_CHARS, RESPONSE_FORMATS, SIZES


class Image(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None  # only where the prompt was cut to CLIP's 77 tokens


class ImagesResponse(BaseModel):
    created: int
    data: list[Image]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Model(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: str = "list"
    data: list[Model]


PROMPT = {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS}
COMMON: dict[str, Any] = {
    "model": {"type": "string", "description": "the served checkpoint's name or 'dall-e-2' (default)"},
    "n": {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": 1},
    "size": {"type": "string", "enum": list(SIZES), "default": "1024x1024"},
    "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "url"},
    "user": {"type": "string"},
}
PNG = {"type": "string", "format": "binary", "description": "a square PNG under 4 MB"}


def _object(required: list[str], **properties) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


GENERATION = _object(["prompt"], prompt=PROMPT, **COMMON)
EDIT = _object(["image", "prompt"], image=PNG, prompt=PROMPT,
               mask=dict(PNG, description="same size as image; alpha 0 marks the pixels to regenerate"), **COMMON)
VARIATION = _object(["image"], image=PNG, **COMMON)
INTERPOLATION = _object(["image_a", "image_b"], image_a=PNG, image_b=PNG,
                        frames={"type": "integer", "minimum": 2, "maximum": 16, "default": 8},
                        **{k: v for k, v in COMMON.items() if k != "n"})

MARGIN = {"type": "integer", "minimum": 0, "maximum": 1024}
OUTPAINT = _object(["image", "prompt"], image=PNG, prompt=PROMPT,
                   expand=dict(MARGIN, description="pixels added on every side", default=0),
                   left=MARGIN, right=MARGIN, top=MARGIN, bottom=MARGIN, **COMMON)


def body(schema: dict[str, Any], media_type: str) -> dict[str, Any]:
    """``openapi_extra`` declaring a required request body."""
    return {"requestBody": {"required": True, "content": {media_type: {"schema": schema}}}}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {400: "invalid request", 401: "missing or wrong API key", 429: "the queue is full; see Retry-After"}
    return {status: {"model": ErrorResponse, "description": described[status]} for status in statuses}
