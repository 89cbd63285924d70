"""Webdataset tar shards in img2dataset's layout, read with the standard ``tarfile`` module.

Each shard ``*.tar`` holds samples as consecutive members sharing a key: ``{key}.jpg`` (or
``.jpeg``/``.png``/``.webp``), ``{key}.txt`` (the caption) and ``{key}.json`` (metadata, ignored
here). Samples without an image or a caption are left out (``incomplete``); an image that fails
to decode, or a damaged shard, is skipped with a warning and counted (``skipped``).
"""

from __future__ import annotations

import glob
import io
import json
import logging
import random
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import IterableDataset

from unclip.data.folder import consumer_slot, decode_image, epochs_range
from unclip.data.images import tensor_to_image

logger = logging.getLogger(__name__)

_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shards(shards: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard paths from a list, a glob (``data/*.tar``) or a brace range (``data/{000..099}.tar``)."""
    if not isinstance(shards, (str, Path)):
        return [str(s) for s in shards]
    pattern = str(shards)
    match = _BRACES.search(pattern)
    if match:  # zero-padded numeric range, as webdataset and img2dataset write it
        first, last = match.group(1), match.group(2)
        width = len(first)
        names = [
            pattern[: match.start()] + f"{i:0{width}d}" + pattern[match.end() :]
            for i in range(int(first), int(last) + 1)
        ]
        return [p for name in names for p in expand_shards(name)]
    if glob.has_magic(pattern):
        return sorted(glob.glob(pattern))
    return [pattern]


def _split_name(name: str) -> tuple[str, str]:
    """``dir/000123.jpg`` → (``dir/000123``, ``jpg``): the key ends at the basename's first dot."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def iter_tar_samples(path: str) -> Iterator[dict[str, bytes]]:
    """Raw samples of one shard, streamed: ``{"__key__": key, ext: bytes, ...}``."""
    current: dict[str, bytes] = {}
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = _split_name(member.name)
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            current[ext] = tar.extractfile(member).read()
    if current:
        yield current


class ShardDataset(IterableDataset):
    """Captioned images from tar shards: ``{"image": [3,R,R] in [-1,1], "caption": str}``.

    Infinite (``epochs=None``) or ``epochs`` passes. Each epoch shuffles the shard order by
    ``(seed, epoch)`` and mixes samples through a shuffle buffer of ``buffer_size``. Shards are
    split between ranks and DataLoader workers; when there are fewer shards than readers, every
    reader walks all shards and keeps every n-th sample instead.
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        resolution: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epochs: int | None = None,
        buffer_size: int = 256,
    ):
        self.shards = expand_shards(shards)
        missing = [s for s in self.shards if not Path(s).is_file()]
        if not self.shards or missing:
            detail = f" (missing: {missing[0]})" if missing else ""
            raise ValueError(f"no webdataset shards found for {shards!r}{detail}")
        self.resolution = resolution
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epochs, self.buffer_size = epochs, buffer_size
        self.skipped = 0  # undecodable images and unreadable shards met so far
        self.incomplete = 0  # samples without an image or a caption

    def _decode(self, raw: dict[str, bytes], shard: str) -> dict | None:
        image_key = next((k for k in _IMAGE_KEYS if k in raw), None)
        if image_key is None or "txt" not in raw:
            self.incomplete += 1
            return None
        try:
            image = decode_image(raw[image_key], self.resolution)
            caption = raw["txt"].decode("utf-8").strip()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            self.skipped += 1
            logger.warning("skipping unreadable sample %s in %s: %s", raw["__key__"], shard, err)
            return None
        return {"image": image, "caption": caption}

    def _samples(self, shards: Sequence[str], offset: int, stride: int) -> Iterator[dict]:
        """Decoded samples number offset, offset + stride, … of ``shards`` read in order."""
        index = -1
        for shard in shards:
            try:
                for raw in iter_tar_samples(shard):
                    index += 1
                    if index % stride != offset:
                        continue
                    sample = self._decode(raw, shard)
                    if sample is not None:
                        yield sample
            except (tarfile.TarError, OSError, EOFError) as err:
                self.skipped += 1
                logger.warning("skipping the rest of damaged shard %s: %s", shard, err)

    def __iter__(self) -> Iterator[dict]:
        slot, slots = consumer_slot(self.rank, self.world_size)
        for epoch in epochs_range(self.epochs):
            rng = random.Random(f"{self.seed}-{epoch}-{slot}")
            shards = list(self.shards)
            random.Random(f"{self.seed}-{epoch}").shuffle(shards)  # same order for every reader
            if len(shards) >= slots:
                shards, offset, stride = shards[slot::slots], 0, 1
            else:
                offset, stride = slot, slots
            buffer: list[dict] = []
            produced = 0
            for sample in self._samples(shards, offset, stride):
                produced += 1
                if len(buffer) < self.buffer_size:
                    buffer.append(sample)
                    continue
                i = rng.randrange(len(buffer))
                buffer[i], sample = sample, buffer[i]
                yield sample
            rng.shuffle(buffer)
            yield from buffer
            if produced == 0 and slots == 1:
                raise ValueError(f"no readable samples in the shards {shards[:3]}… ({self.skipped} skipped)")
            if produced == 0:  # more readers than samples, or this reader's shards are all damaged
                logger.warning("reader %d of %d found no samples in its shards; it stops", slot, slots)
                return


def write_shards(
    samples: Iterable[dict],
    out_dir: str | Path,
    per_shard: int = 1000,
    *,
    image_format: str = "png",
) -> list[Path]:
    """Write ``{"image", "caption"[, "json"]}`` samples as img2dataset-style shards; returns paths.

    ``image`` is a PIL image or a FloatTensor [3,H,W] in [-1,1]; it is stored as PNG (lossless,
    the default) or JPEG (``image_format="jpg"``). Shards are ``00000.tar``, ``00001.tar``, …;
    keys are the sample's running index, nine digits, as img2dataset names them.
    """
    if per_shard < 1:
        raise ValueError(f"per_shard must be at least 1, got {per_shard}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pil_format = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}[image_format]
    paths: list[Path] = []
    tar: tarfile.TarFile | None = None
    try:
        for index, sample in enumerate(samples):
            if index % per_shard == 0:
                if tar is not None:
                    tar.close()
                paths.append(out_dir / f"{len(paths):05d}.tar")
                tar = tarfile.open(paths[-1], mode="w")
            image = sample["image"]
            if isinstance(image, torch.Tensor):
                image = tensor_to_image(image)
            encoded = io.BytesIO()
            image.convert("RGB").save(encoded, format=pil_format)
            meta = {"key": f"{index:09d}", "caption": sample["caption"], **sample.get("json", {})}
            members = {
                image_format: encoded.getvalue(),
                "txt": sample["caption"].encode("utf-8"),
                "json": json.dumps(meta).encode("utf-8"),
            }
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{index:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    finally:
        if tar is not None:
            tar.close()
    return paths
