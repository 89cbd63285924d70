"""Reading request bodies within limits, multipart forms, and the uploaded PNGs.

A PNG is recognised by its bytes (``\\x89PNG\\r\\n\\x1a\\n``), never by the part's filename or content
type: the openai client sends raw bytes as ``application/octet-stream``. Its
dimensions are read from the header before decoding, so a small file that would decode to a huge
image is refused without allocating it.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from fastapi import Request
from PIL import Image
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser

from unclip.server.errors import APIError

MAX_IMAGE_BYTES = 4 * 1024 * 1024  # "a square PNG under 4 MB"
MAX_SIDE = 4096  # decoded side limit, against decompression bombs
MAX_JSON_BYTES = 64 * 1024
MAX_FORM_BYTES = 2 * MAX_IMAGE_BYTES + 64 * 1024  # two images and the text fields
BODY_TIMEOUT_S = 60.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOO_LARGE = "Uploaded image must be a PNG and less than 4 MB."


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (400) past ``limit`` bytes or ``BODY_TIMEOUT_S`` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(f"The request body is {int(declared)} bytes; at most {limit} are accepted. {TOO_LARGE}",
                       code="request_too_large")

    async def collect() -> bytes:
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise APIError(f"The request body is over {limit} bytes. {TOO_LARGE}", code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(collect(), BODY_TIMEOUT_S)
    except TimeoutError:
        raise APIError(f"The request body did not arrive within {BODY_TIMEOUT_S:.0f} s.", code="timeout") from None


async def read_json(request: Request) -> dict[str, Any]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise APIError(f"Expected a JSON body (Content-Type: application/json), got {kind or 'none'!r}.",
                       code="invalid_content_type")
    body = await read_body(request, MAX_JSON_BYTES)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as err:
        raise APIError(f"The body is not valid JSON: {err}.", code="invalid_json") from None
    except RecursionError:  # nested deeper than the parser goes
        raise APIError("The body is not valid JSON: it is nested too deeply.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError("The JSON body must be an object.", code="invalid_json")
    return data


async def read_form(request: Request) -> tuple[dict[str, str], dict[str, bytes]]:
    """A multipart body as (text fields, file parts' bytes); a repeated name is refused."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise APIError(f"Expected a multipart/form-data body, got {kind or 'none'!r}.", code="invalid_content_type")
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise APIError("The multipart body could not be parsed: the Content-Type names no boundary.",
                       code="invalid_multipart")
    body = await read_body(request, MAX_FORM_BYTES)
    if not body.rstrip().endswith(b"--" + boundary + b"--"):  # the parser accepts truncated bodies silently
        raise APIError("The multipart body could not be parsed: it ends before its closing boundary.",
                       code="invalid_multipart")

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=4, max_fields=32,
                                     max_part_size=64 * 1024).parse()
    except Exception as err:  # noqa: BLE001 - any parse failure is the client's malformed body
        detail = getattr(err, "message", None) or str(err) or type(err).__name__
        raise APIError(f"The multipart body could not be parsed: {detail}.", code="invalid_multipart") from None
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    try:
        for name, value in form.multi_items():
            if name in fields or name in files:
                raise APIError(f"The field '{name}' was sent more than once.", param=name, code="invalid_value")
            if isinstance(value, UploadFile):
                files[name] = await value.read()
            else:
                fields[name] = value
    finally:
        await form.close()
    return fields, files


def file_part(files: dict[str, bytes], fields: dict[str, str], name: str, required: bool = True) -> bytes | None:
    """The bytes of file part ``name``; a text part of that name counts as a (non-PNG) file."""
    if name in files:
        return files[name]
    if name in fields:
        return fields[name].encode("utf-8", "replace")
    if f"{name}[]" in files:
        raise APIError(f"dall-e-2 takes exactly one '{name}'; send it as '{name}', not '{name}[]'.", param=name,
                       code="invalid_value")
    if required:
        raise APIError(f"'{name}' is a required property", param=name, code="missing_required_parameter")
    return None


def read_png(data: bytes, param: str) -> Image.Image:
    """A decoded, square PNG (its own mode kept, so that alpha survives)."""
    if len(data) >= MAX_IMAGE_BYTES:
        raise APIError(f"{TOO_LARGE} '{param}' is {len(data)} bytes.", param=param, code="image_too_large")
    if not data.startswith(PNG_MAGIC):
        raise APIError(f"{TOO_LARGE} '{param}' is not a PNG file.", param=param, code="invalid_image_format")
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
        w, h = image.size
        if max(w, h) > MAX_SIDE:
            raise APIError(f"Invalid input image - '{param}' is {w}x{h}; at most {MAX_SIDE}x{MAX_SIDE} is accepted.",
                           param=param, code="invalid_image")
        image.load()
    except APIError:
        raise
    except Exception as err:  # noqa: BLE001 - truncated or corrupt data; PIL raises many kinds
        raise APIError(f"Invalid input image - '{param}' could not be decoded as a PNG ({err}).", param=param,
                       code="invalid_image") from None
    if w != h:
        raise APIError(f"Invalid input image - expected an image with equal width and height, got {w}x{h} instead.",
                       param=param, code="invalid_image")
    return image


def has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info
