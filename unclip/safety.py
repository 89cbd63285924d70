"""The content filter in front of generation: prompts are checked before anything is sampled.

``PromptFilter`` is the hook: any object with ``flag(prompt) -> str | None`` (the reason, or None
when the prompt may be drawn) can stand behind ``unclip serve`` and the CLI, e.g. a moderation
model. ``Blocklist`` is the built-in one: a file with one term or regular expression a line,
matched case-insensitively on word boundaries. No filter, no filtering (the default).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol


class PromptFilter(Protocol):
    def flag(self, prompt: str) -> str | None:
        """Why ``prompt`` may not be drawn, or None when it may."""


class ContentPolicyViolation(ValueError):
    """A prompt the filter flagged: nothing was generated."""


class Blocklist:
    """Terms or regular expressions, each matched case-insensitively as whole words."""

    def __init__(self, patterns: list[str]):
        self.patterns = []
        for i, pattern in enumerate(patterns, 1):
            try:
                self.patterns.append((pattern, re.compile(rf"(?<!\w)(?:{pattern})(?!\w)", re.IGNORECASE)))
            except re.error as err:
                raise ValueError(f"blocklist: entry {i} ({pattern!r}) is not a valid regular expression: {err}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Blocklist:
        """One entry a line; blank lines and lines starting with ``#`` are skipped."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--blocklist: cannot read {path}: {err}") from None
        return cls([line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")])

    def flag(self, prompt: str) -> str | None:
        for pattern, compiled in self.patterns:
            if compiled.search(prompt):
                return f"it matches the blocklist entry {pattern!r}"
        return None


def check_prompt(prompt_filter: PromptFilter | None, prompt: str) -> str:
    """``prompt``, or ``ContentPolicyViolation`` when the filter flags it."""
    reason = prompt_filter.flag(prompt) if prompt_filter is not None else None
    if reason is not None:
        raise ContentPolicyViolation(f"prompt: rejected by the content filter ({reason}); nothing was generated")
    return prompt
