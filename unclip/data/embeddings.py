"""Precomputed CLIP encodings (written by ``unclip embed``), so the prior trains without images.

On disk, a folder with ``metadata.json``::

    {"count": N, "shards": ["00000", ...], "embed_dim": D, "context_length": L, "text_width": W,
     "source": {"kind": "emoji", "path": ..., ...}}

(``source``: the data config the encodings came from, so a prior's monitor can read held-out pairs
of the same set; folders written before it lack it)

and per shard prefix ``p``: ``p_image_emb.npy`` [n,D], ``p_text_emb.npy`` [n,D] (float32 or
float16), ``p_text_tokens.npy`` [n,L,W] (float16), ``p_text_mask.npy`` [n,L] (bool) and
``p_captions.json`` (a list of n strings).
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

METADATA = "metadata.json"
_ARRAYS = ("image_emb", "text_emb", "text_tokens", "text_mask")
_DTYPES = {"image_emb": np.float32, "text_emb": np.float32, "text_tokens": np.float16, "text_mask": np.bool_}


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()  # numpy has no bfloat16
    return np.asarray(x)


class EmbeddingsWriter:
    """Accumulates batches of encodings and writes them as shards of ``shard_size`` rows.

    Use as a context manager, or call :meth:`close` to flush the last shard and write
    ``metadata.json`` (a folder without it is incomplete and will not load). The context manager
    writes it only when its block ends without an error, so that an interrupted run never leaves a
    folder that looks finished.
    """

    def __init__(self, out_dir: str | Path, shard_size: int = 10_000, *, prefix: str = "",
                 metadata: str = METADATA, source: dict | None = None):
        """``prefix`` starts every shard name and ``metadata`` names the file ``close`` writes: one
        writer per process uses its own (see :func:`merge_metadata`). ``source``: the data config
        (as a dict) the encodings come from, kept in the metadata."""
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.out_dir, self.source = Path(out_dir), source
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size, self.prefix, self.metadata = shard_size, prefix, metadata
        self.count = 0
        self.shards: list[str] = []
        self.shapes: dict[str, tuple[int, ...]] | None = None  # per-row shapes, fixed by the first add
        self._buffer: dict[str, list[np.ndarray]] = {name: [] for name in _ARRAYS}
        self._captions: list[str] = []

    def add(self, image_emb, text_emb, text_tokens, text_mask, captions: list[str]) -> None:
        """Append a batch: [B,D], [B,D], [B,L,W], [B,L] (tensors or arrays) and B captions."""
        batch = dict(zip(_ARRAYS, (image_emb, text_emb, text_tokens, text_mask)))
        batch = {name: _numpy(x).astype(_DTYPES[name]) for name, x in batch.items()}
        sizes = {x.shape[0] for x in batch.values()} | {len(captions)}
        if len(sizes) != 1:
            shapes = {k: tuple(v.shape) for k, v in batch.items()}
            raise ValueError(f"batch sizes differ: {shapes}, {len(captions)} captions")
        shapes = {name: x.shape[1:] for name, x in batch.items()}
        if self.shapes is None:
            self.shapes = shapes
        elif shapes != self.shapes:
            raise ValueError(f"row shapes {shapes} differ from earlier batches' {self.shapes}")
        for name, x in batch.items():
            self._buffer[name].append(x)
        self._captions.extend(str(c) for c in captions)
        while len(self._captions) >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, rows: int) -> None:
        prefix = f"{self.prefix}{len(self.shards):05d}"
        for name in _ARRAYS:
            data = np.concatenate(self._buffer[name])
            np.save(self.out_dir / f"{prefix}_{name}.npy", data[:rows])
            self._buffer[name] = [data[rows:]]
        (self.out_dir / f"{prefix}_captions.json").write_text(json.dumps(self._captions[:rows]))
        self._captions = self._captions[rows:]
        self.shards.append(prefix)
        self.count += rows

    def close(self) -> None:
        """Write the remaining rows and ``metadata.json``."""
        if self._captions:
            self._flush(len(self._captions))
        shapes = self.shapes or {}
        metadata = {
            "count": self.count,
            "shards": self.shards,
            "embed_dim": int(shapes["image_emb"][0]) if shapes else None,
            "context_length": int(shapes["text_tokens"][0]) if shapes else None,
            "text_width": int(shapes["text_tokens"][1]) if shapes else None,
        }
        if self.source is not None:
            metadata["source"] = self.source
        (self.out_dir / self.metadata).write_text(json.dumps(metadata, indent=2))

    def __enter__(self) -> EmbeddingsWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:  # after an error: no metadata, so the partial folder does not pass for complete
            self.close()


def merge_metadata(out_dir: str | Path, parts: list[str]) -> dict:
    """Join the metadata files ``parts`` (one per process, each naming its own shards) into
    ``metadata.json`` and remove them; parts that wrote nothing add no shards."""
    out_dir = Path(out_dir)
    metas = [json.loads((out_dir / part).read_text()) for part in parts]
    filled = [m for m in metas if m["count"]]
    keys = ("embed_dim", "context_length", "text_width")
    if any(tuple(m[k] for k in keys) != tuple(filled[0][k] for k in keys) for m in filled):
        raise ValueError(f"{out_dir}: the processes wrote embeddings of different shapes")
    merged = {"count": sum(m["count"] for m in metas), "shards": [s for m in metas for s in m["shards"]],
              **{k: filled[0][k] if filled else None for k in keys}}
    if "source" in metas[0]:
        merged["source"] = metas[0]["source"]
    (out_dir / METADATA).write_text(json.dumps(merged, indent=2))
    for part in parts:
        (out_dir / part).unlink()
    return merged


def source_data(path: str | Path) -> dict | None:
    """The data config (a dict) an embeddings folder was encoded from, or None where its metadata
    does not say (folders written before ``source`` was kept)."""
    meta = Path(path) / METADATA
    return json.loads(meta.read_text()).get("source") if meta.is_file() else None


class EmbeddingsDataset(Dataset):
    """Map-style reader of an embeddings folder; arrays are memory-mapped, opened per process.

    Item ``i`` is row ``perm[i]`` for a fixed permutation by ``seed``:
    ``{"image_emb": [D], "text_emb": [D], "text_tokens": [L,W] (float32), "text_mask": [L] (bool),
    "caption": str}``.
    """

    def __init__(self, path: str | Path, seed: int = 0):
        self.root = Path(path)
        meta_path = self.root / "metadata.json"
        if not meta_path.is_file():
            raise ValueError(f"{self.root} is not an embeddings folder (no metadata.json: not one, or "
                             "its `unclip embed` did not finish)")
        self.metadata = json.loads(meta_path.read_text())
        self.shards: list[str] = list(self.metadata["shards"])
        if not self.shards or not self.metadata["count"]:
            raise ValueError(f"embeddings folder {self.root} is empty")
        self._arrays: list[dict[str, np.ndarray]] | None = None
        self._captions: list[list[str]] | None = None
        lengths = [len(arrays["image_emb"]) for arrays in self._open()]
        if sum(lengths) != self.metadata["count"]:
            count = self.metadata["count"]
            raise ValueError(f"{self.root}: shards hold {sum(lengths)} rows, metadata says {count}")
        self._check_shapes()
        self._starts = np.cumsum([0, *lengths[:-1]]).tolist()  # first global row of each shard
        self._order = np.random.default_rng(seed).permutation(sum(lengths))  # int64, compact

    def _check_shapes(self) -> None:
        d, length, w = (self.metadata[k] for k in ("embed_dim", "context_length", "text_width"))
        expected = {"image_emb": (d,), "text_emb": (d,), "text_tokens": (length, w), "text_mask": (length,)}
        for prefix, arrays in zip(self.shards, self._open()):
            for name, shape in expected.items():
                if arrays[name].shape[1:] != shape or len(arrays[name]) != len(arrays["image_emb"]):
                    found = tuple(arrays[name].shape)
                    raise ValueError(
                        f"{self.root}/{prefix}_{name}.npy has shape {found}, expected (n, *{shape})"
                    )

    def _open(self) -> list[dict[str, np.ndarray]]:
        if self._arrays is None:
            self._arrays = [
                {name: np.load(self.root / f"{prefix}_{name}.npy", mmap_mode="r") for name in _ARRAYS}
                for prefix in self.shards
            ]
            self._captions = [json.loads((self.root / f"{p}_captions.json").read_text()) for p in self.shards]
        return self._arrays

    def __getstate__(self) -> dict:
        # Memory maps would be pickled as full copies when DataLoader workers spawn: reopen instead.
        return {**self.__dict__, "_arrays": None, "_captions": None}

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        row = int(self._order[index])
        shard = bisect.bisect_right(self._starts, row) - 1
        local = row - self._starts[shard]
        arrays = self._open()[shard]
        item: dict[str, torch.Tensor | str] = {
            name: torch.from_numpy(np.array(arrays[name][local])) for name in _ARRAYS
        }
        for name in ("image_emb", "text_emb", "text_tokens"):
            item[name] = item[name].float()
        item["caption"] = self._captions[shard][local]
        return item
