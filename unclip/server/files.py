"""The folder of generated PNGs behind ``response_format=url``.

Each image gets an unguessable name (``img-<32 url-safe chars>.png``) and expires ``ttl_s`` seconds
after it was written (one hour by default, as OpenAI's URLs): an expired file answers 404 and is
deleted by the next sweep, which runs whenever images are saved, so the folder stays bounded.
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

NAME = re.compile(r"img-[A-Za-z0-9_-]{32}\.png")


class ImageStore:
    def __init__(self, folder: str | Path | None = None, ttl_s: float = 3600.0):
        if ttl_s <= 0:
            raise ValueError(f"image_ttl_s: expected a positive number of seconds, got {ttl_s!r}")
        self.owned = folder is None  # a temporary folder is removed by close()
        self.folder = Path(tempfile.mkdtemp(prefix="unclip-images-") if folder is None else folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ValueError(f"image_dir: {self.folder} is a file, not a folder") from None
        except OSError as err:
            raise ValueError(f"image_dir: cannot create the folder {self.folder} ({err.strerror or err})") from None
        self.ttl_s = float(ttl_s)
        self._lock = threading.Lock()

    def save(self, png: bytes) -> str:
        """Write one PNG; returns its file name."""
        self.sweep()
        name = f"img-{secrets.token_urlsafe(24)}.png"
        tmp = self.folder / f".{name}.part"
        tmp.write_bytes(png)
        tmp.replace(self.folder / name)  # atomic: a reader never sees half a file
        return name

    def path(self, name: str) -> Path | None:
        """The file for ``name`` if it exists and has not expired."""
        if not NAME.fullmatch(name):
            return None
        path = self.folder / name
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        return path if age <= self.ttl_s else None

    def sweep(self) -> int:
        """Delete expired files; returns how many."""
        removed = 0
        now = time.time()
        with self._lock:
            for path in self.folder.glob("img-*.png"):
                try:
                    if now - path.stat().st_mtime > self.ttl_s:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.folder, ignore_errors=True)
