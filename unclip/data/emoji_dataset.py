"""The emoji data set (``data.kind: emoji``): the shards ``unclip data emoji`` wrote, read by index.

Map-style, so that training resumes exactly and cheaply (``unclip.training.batches``): the tar
headers are indexed once, and item ``i`` reads one PNG and its JSON at their offsets. Each image
appears once per caption form of :data:`CAPTION_FORMS`, so an epoch shows every image with
three canonical captions ("fox, twemoji style"), one without the style ("fox": the style is the
model's choice) and one with the CLDR tags ("fox, animal, face, twemoji style").
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import torch
from torch.utils.data import Dataset

from unclip.data.emoji import caption
from unclip.data.folder import decode_image

CAPTION_FORMS = ("canonical", "canonical", "canonical", "plain", "tags")


def caption_form(meta: dict, form: str) -> str:
    """The caption of one image (its ``json``: annotation, style, tags) in caption form ``form``."""
    if form == "plain":
        return meta["annotation"]
    if form == "tags" and meta.get("tags"):
        return caption(", ".join([meta["annotation"], *meta["tags"]]), meta["style"])
    return caption(meta["annotation"], meta["style"])


def sizes_built(root: Path) -> list[int]:
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def split_folder(root: Path, resolution: int, split: str) -> Path:
    """``root/<size>/<split>`` for the smallest size built that is at least ``resolution``."""
    meta = root / "metadata.json"
    if not meta.is_file():
        raise ValueError(f"{root} is not an emoji data folder (no metadata.json): build one with "
                         "`unclip data emoji --out DIR`")
    sizes = sizes_built(root)
    fitting = [s for s in sizes if s >= resolution]
    if not fitting:
        raise ValueError(f"{root} holds sizes {sizes}, none at least data.resolution={resolution}: "
                         f"add one with `unclip data emoji --out {root} --sizes {resolution}`")
    folder = root / str(fitting[0]) / split
    if not folder.is_dir():
        raise ValueError(f"{root} has no {split} split at {fitting[0]} px")
    return folder


class EmojiDataset(Dataset):
    """``{"image": [3,R,R] in [-1,1], "caption": str}`` for the images of one split."""

    def __init__(self, root: str | Path, resolution: int, split: str = "train", forms=CAPTION_FORMS):
        self.root, self.resolution, self.forms = Path(root), resolution, tuple(forms)
        self.shards = sorted(split_folder(self.root, resolution, split).glob("*.tar"))
        self.entries: list[tuple[int, tuple[int, int], tuple[int, int]]] = []  # shard, (png), (json)
        for i, shard in enumerate(self.shards):
            members: dict[str, dict[str, tuple[int, int]]] = {}
            with tarfile.open(shard) as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    members.setdefault(key, {})[ext] = (member.offset_data, member.size)
            self.entries += [(i, m["png"], m["json"]) for _, m in sorted(members.items()) if {"png", "json"} <= set(m)]
        if not self.entries:
            raise ValueError(f"no emoji images in {self.shards[0].parent if self.shards else self.root}")
        self._files: dict[int, object] = {}

    def __getstate__(self) -> dict:  # open files stay with the process that opened them
        return {**self.__dict__, "_files": {}}

    def __len__(self) -> int:
        return len(self.entries) * len(self.forms)

    def _read(self, shard: int, where: tuple[int, int]) -> bytes:
        handle = self._files.get(shard)
        if handle is None:
            handle = self._files[shard] = open(self.shards[shard], "rb")  # noqa: SIM115 (kept open)
        handle.seek(where[0])
        return handle.read(where[1])

    def meta(self, index: int) -> dict:
        shard, _, where = self.entries[index % len(self.entries)]
        return json.loads(self._read(shard, where))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        shard, png, _ = self.entries[index % len(self.entries)]
        form = self.forms[index // len(self.entries)]
        return {"image": decode_image(self._read(shard, png), self.resolution),
                "caption": caption_form(self.meta(index), form)}
