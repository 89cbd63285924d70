"""Image folders with a caption beside each image, and the image helpers every data set shares.

Layout: ``photo.jpg`` + ``photo.txt`` (same stem, UTF-8 caption), anywhere under the folder.
Images without a caption are left out (counted in ``uncaptioned``); an image that cannot be decoded
is skipped when reached (counted in ``skipped``, with a warning naming the file), never a crash.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import IterableDataset, get_worker_info

from unclip.data.images import image_to_tensor

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


# ----------------------------------------------------------------------------------------------
# shared image helpers


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit single-channel image (modes ``I;16*``, ``I``, ``F``) scaled to 8-bit ``L``:
    integers from 0–65535 (16-bit PNGs and TIFFs), floats from 0–1; other modes as they are.
    Pillow's own conversion clips at 255 instead, so most such images would come out white."""
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    top = 1.0 if image.mode == "F" else 65535.0
    levels = np.asarray(image, dtype=np.float64) * (255.0 / top)
    return Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of ``image``; transparency is composited on white, 16- and 32-bit levels scaled
    to 8 bits (:func:`to_8bit`)."""
    image = to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:  # palette with a transparent index
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Shorter side to ``resolution`` (bicubic, antialiased), then the central square."""
    return ImageOps.fit(image, (resolution, resolution), method=Image.Resampling.BICUBIC)


def prepare_image(image: Image.Image, resolution: int) -> torch.Tensor:
    """Any PIL image → the common sample format: FloatTensor [3, R, R] in [-1, 1]."""
    return image_to_tensor(resize_center_crop(to_rgb(image), resolution))


def decode_image(data: bytes | Path, resolution: int) -> torch.Tensor:
    """Decode an encoded image (bytes or a file) fully, turned upright as its EXIF orientation
    says (as photos from phones and cameras need); raises on corrupt data (PIL's errors)."""
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(source) as image:
        image.load()  # decode now, so that truncated files fail here and not later
        return prepare_image(ImageOps.exif_transpose(image), resolution)


# ----------------------------------------------------------------------------------------------
# sharding across ranks and DataLoader workers


def consumer_slot(rank: int = 0, world_size: int = 1) -> tuple[int, int]:
    """(index, count) of this reader among all ranks × DataLoader workers."""
    info = get_worker_info()
    workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
    return rank * workers + worker, world_size * workers


def epochs_range(epochs: int | None) -> Iterator[int]:
    """0, 1, 2, … forever (``None``) or up to ``epochs``."""
    epoch = 0
    while epochs is None or epoch < epochs:
        yield epoch
        epoch += 1


# ----------------------------------------------------------------------------------------------
# the data set


class FolderDataset(IterableDataset):
    """Captioned images from a folder, as ``{"image": [3,R,R] in [-1,1], "caption": str}``.

    Iterable: each epoch walks the file list in an order shuffled by ``(seed, epoch)``, split
    between ranks (``rank``/``world_size``) and DataLoader workers; ``epochs=None`` repeats
    forever. Counters (``skipped``, ``uncaptioned``) live in the process that reads, so with
    DataLoader workers each worker keeps its own.
    """

    def __init__(
        self,
        path: str | Path,
        resolution: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epochs: int | None = None,
        shuffle: bool = True,
    ):
        self.root = Path(path)
        if not self.root.is_dir():
            raise ValueError(f"image folder not found: {self.root}")
        self.resolution = resolution
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epochs, self.shuffle = epochs, shuffle
        self.files, self.uncaptioned = self._scan()
        if self.uncaptioned:
            logger.warning("%s: %d images without a .txt caption left out", self.root, self.uncaptioned)
        if not self.files:
            raise ValueError(
                f"no captioned images in {self.root} (looked for {', '.join(IMAGE_EXTENSIONS)} "
                f"with a .txt beside each; {self.uncaptioned} without caption)"
            )
        self.skipped = 0  # unreadable images met so far
        self._bad: set[Path] = set()

    def _scan(self) -> tuple[list[Path], int]:
        images = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        captioned = [p for p in images if p.with_suffix(".txt").is_file()]
        return captioned, len(images) - len(captioned)

    def __len__(self) -> int:
        """Captioned images in the folder (an epoch's length before skips, over all readers)."""
        return len(self.files)

    def _epoch_files(self, epoch: int) -> Sequence[Path]:
        files = list(self.files)
        if self.shuffle:
            random.Random(f"{self.seed}-{epoch}").shuffle(files)
        slot, slots = consumer_slot(self.rank, self.world_size)
        return files[slot::slots]

    def _load(self, path: Path) -> dict | None:
        try:
            image = decode_image(path, self.resolution)
            caption = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            self._bad.add(path)
            self.skipped += 1
            logger.warning("skipping unreadable image %s: %s", path, err)
            return None
        return {"image": image, "caption": caption}

    def __iter__(self) -> Iterator[dict]:
        for epoch in epochs_range(self.epochs):
            files = self._epoch_files(epoch)
            if not files:  # more readers than files: this one has nothing to read
                slot = consumer_slot(self.rank, self.world_size)
                logger.warning("%s: no files for reader %d of %d; it stops", self.root, *slot)
                return
            produced = 0
            for path in files:
                if path in self._bad:
                    continue
                sample = self._load(path)
                if sample is not None:
                    produced += 1
                    yield sample
            # Without shuffling a reader sees the same files every epoch; with it, only a folder
            # that is entirely unreadable can starve every epoch.
            if produced == 0 and (not self.shuffle or self._bad.issuperset(self.files)):
                raise ValueError(f"no readable images in {self.root} ({self.skipped} skipped)")
