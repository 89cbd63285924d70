"""Validation of the Images API's fields (DALL·E 2 semantics), shared by JSON and multipart bodies.

Every check raises ``APIError`` (400) naming the offending ``param``. Multipart fields arrive as
text (``n`` as ``"2"``, booleans as ``"true"``), so numbers and booleans are coerced from strings
there. Fields the server does not know are ignored; the GPT-image-only fields that newer clients
may send are accepted when their value is neutral and refused when it cannot be honoured (e.g.
``stream=true``, ``background=transparent``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from unclip.server.errors import APIError

SIZES = {"256x256": 256, "512x512": 512, "1024x1024": 1024}
DEFAULT_SIZE = "1024x1024"
RESPONSE_FORMATS = ("url", "b64_json")
MAX_PROMPT_CHARS = 1000
MAX_N = 10
DALL_E_2 = "dall-e-2"

# GPT-image-only fields: the values that change nothing for a DALL·E 2 model
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "quality": (None, "standard", "auto"),
    "background": (None, "auto", "opaque"),
    "output_format": (None, "png"),
    "stream": (None, False),
    "partial_images": (None, 0),
}
REFUSAL_HINTS = {
    "stream": "streaming (stream=true) is not supported by this server; omit stream or send false",
    "background": "transparent backgrounds are not supported; the images are opaque PNGs",
    "output_format": "only png output is supported",
    "quality": "dall-e-2 has one quality, 'standard'",
    "partial_images": "partial images need streaming, which this server does not support",
}


@dataclass
class Common:
    """The fields every image endpoint shares, validated."""

    model: str
    n: int
    side: int  # the requested output side in pixels (256, 512 or 1024)
    response_format: str


def parse_common(fields: Mapping[str, Any], served_model: str, *, text: bool, n_name: str = "n",
                 max_n: int = MAX_N, default_n: int = 1, min_n: int = 1) -> Common:
    """``model``, ``n``, ``size``, ``response_format`` and the GPT-only fields; ``text`` is True for
    multipart bodies, whose values are strings."""
    check_gpt_fields(fields, text)
    return Common(model=parse_model(fields.get("model"), served_model),
                  n=parse_int(fields.get(n_name), n_name, default_n, min_n, max_n, text),
                  side=parse_choice(fields.get("size"), "size", SIZES, DEFAULT_SIZE),
                  response_format=parse_choice(fields.get("response_format"), "response_format",
                                               RESPONSE_FORMATS, "url"))


def parse_prompt(value: Any) -> str:
    if value is None:
        raise APIError("'prompt' is a required property", param="prompt", code="missing_required_parameter")
    if not isinstance(value, str):
        raise APIError(f"Invalid type for 'prompt': expected a string, got {_kind(value)}.", param="prompt",
                       code="invalid_type")
    if not value.strip():
        raise APIError("Invalid 'prompt': the prompt is empty.", param="prompt", code="invalid_value")
    if len(value) > MAX_PROMPT_CHARS:
        raise APIError(f"Invalid 'prompt': string too long. Expected a string with maximum length "
                       f"{MAX_PROMPT_CHARS}, but got a string with length {len(value)} instead.",
                       param="prompt", code="string_above_max_length")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError("Invalid 'prompt': it is not valid Unicode text (it holds a lone surrogate).",
                       param="prompt", code="invalid_value") from None
    return value


def parse_model(value: Any, served_model: str) -> str:
    if value is None or value in (served_model, DALL_E_2):
        return served_model
    raise APIError(f"The model '{value}' does not exist; this server serves '{served_model}' "
                   f"(also accepted as '{DALL_E_2}').", param="model", code="model_not_found")


def parse_int(value: Any, name: str, default: int, low: int, high: int, text: bool) -> int:
    if value is None:
        return default
    number = value
    if text and isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            raise APIError(f"Invalid type for '{name}': expected an integer, got {value!r}.", param=name,
                           code="invalid_type") from None
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int):
        raise APIError(f"Invalid type for '{name}': expected an integer, got {_kind(value)}.", param=name,
                       code="invalid_type")
    if number < low:
        raise APIError(f"{number} is less than the minimum of {low} - '{name}'", param=name, code="invalid_value")
    if number > high:
        raise APIError(f"{number} is greater than the maximum of {high} - '{name}'", param=name,
                       code="invalid_value")
    return number


def parse_choice(value: Any, name: str, choices, default: str):
    """``value`` (or ``default`` when absent) if it is one of ``choices``; a dict maps it."""
    value = default if value is None else value
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(f"'{c}'" for c in choices)
        raise APIError(f"Invalid value: {value!r}. Supported values are: {listed}.", param=name,
                       code="invalid_value")
    return choices[value] if isinstance(choices, dict) else value


def check_gpt_fields(fields: Mapping[str, Any], text: bool) -> None:
    for name, neutral in NEUTRAL_VALUES.items():
        if name not in fields:
            continue
        value = _coerce_text(fields[name]) if text else fields[name]
        if isinstance(value, bool) or value is None:
            ok = value in neutral and (value is None or any(v is value for v in neutral))
        else:
            ok = value in neutral
        if not ok:
            raise APIError(f"Invalid value for '{name}': {fields[name]!r}. {REFUSAL_HINTS[name]}.", param=name,
                           code="unsupported_value")


def _coerce_text(value: Any) -> Any:
    """A multipart text field as the JSON value it stands for (``"true"`` → True, ``"0"`` → 0)."""
    if not isinstance(value, str):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", ""):
        return None
    try:
        return int(lowered)
    except ValueError:
        return value


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
