"""The OpenAI-compatible Images API and web page (``unclip serve``); needs the ``serve`` extra."""

from unclip.server.app import create_app

__all__ = ["create_app"]
