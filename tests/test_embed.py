"""`unclip embed`: CLIP encodings of a data set in shards, and a prior trained on them alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unclip.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
PRIOR = str(ROOT / "configs/tiny/prior.yaml")


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emb") / "shapes"
    assert cli(["embed", "--config", PRIOR, "--output", str(out), "--limit", "10", "--batch-size", "4",
                "--shard-size", "4", "data.seed=5"]) == 0
    return out


def test_embed_writes_shards_metadata_and_its_clip(embeddings):
    from unclip.checkpoint import load_component
    from unclip.data.embeddings import EmbeddingsDataset
    from unclip.data.shapes import ShapesDataset

    meta = json.loads((embeddings / "metadata.json").read_text())
    assert (meta["count"], meta["shards"], meta["embed_dim"], meta["context_length"]) == (10, ["00000", "00001", "00002"], 32, 77)
    assert (meta["source"]["kind"], meta["source"]["seed"]) == ("shapes", 5)  # the data config it encoded
    clip = load_component(embeddings / "clip")
    source = [ShapesDataset(resolution=32, seed=5).item(i) for i in range(10)]
    captions = json.loads((embeddings / "00002_captions.json").read_text())
    assert captions == [s["caption"] for s in source[8:]]  # rows in data order, shards of 4, 4, 2

    rows = {item["caption"]: item for item in EmbeddingsDataset(embeddings)}
    images = torch.stack([s["image"] for s in source])
    image_emb, text = clip.encode_image(images), clip.encode_text([s["caption"] for s in source])
    for i, s in enumerate(source):
        row = rows[s["caption"]]
        torch.testing.assert_close(row["image_emb"], image_emb[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(row["text_emb"], text.emb[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(row["text_tokens"], text.tokens[i], atol=1e-2, rtol=1e-2)  # stored as fp16
        assert torch.equal(row["text_mask"], text.mask[i])


def test_the_prior_trains_on_embeddings_without_images(embeddings, tmp_path, monkeypatch):
    import numpy as np

    from unclip.checkpoint import load_component
    from unclip.networks.clip import ClipEncoder
    from unclip.training.stages.prior import MONITOR_COUNT

    encoded, real = [], ClipEncoder.encode_image

    def spy(self, images):
        encoded.append(len(images))
        return real(self, images)

    monkeypatch.setattr(ClipEncoder, "encode_image", spy)
    out = tmp_path / "prior"
    assert cli(["train", "prior", "--config", PRIOR, "--output", str(out), "--no-progress", "training.steps=3",
                "training.sample_every=1000", "data.kind=embeddings", f"data.path={embeddings}"]) == 0
    assert encoded == [MONITOR_COUNT]  # only the held-out monitor at the end; no training image
    prior = load_component(out / "export" / "prior")
    exported, used = load_component(out / "export" / "clip"), load_component(embeddings / "clip")
    for (name, a), (_, b) in zip(exported.state_dict().items(), used.state_dict().items()):
        assert torch.equal(a, b), name  # the prior was trained (and shipped) with the embeddings' CLIP
    stored = torch.from_numpy(np.concatenate([np.load(embeddings / f"0000{i}_image_emb.npy") for i in range(3)]))
    scale = stored.abs().max().item()
    torch.testing.assert_close(prior.transformer.clip_mean.reshape(-1), stored.mean(0), atol=0.05 * scale, rtol=0)


def test_embed_needs_a_limit_for_an_endless_set(tmp_path, capsys):
    assert cli(["embed", "--config", PRIOR, "--output", str(tmp_path / "x")]) == 2
    assert "--limit" in capsys.readouterr().err


def test_an_interrupted_embed_leaves_no_metadata_and_a_rerun_finishes_the_folder(tmp_path, monkeypatch):
    from unclip.networks.clip import ClipEncoder

    out, real, calls = tmp_path / "emb", ClipEncoder.encode_image, []

    def stop_at_the_second_batch(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(ClipEncoder, "encode_image", stop_at_the_second_batch)
    args = ["embed", "--config", PRIOR, "--output", str(out), "--limit", "8", "--batch-size", "4", "--shard-size", "4"]
    assert cli(args) == 130
    assert (out / "00000_captions.json").is_file()  # the first shard was written, but the folder is unfinished
    assert not (out / "metadata.json").exists() and not list(out.glob("metadata.part*"))
    monkeypatch.setattr(ClipEncoder, "encode_image", real)
    assert cli(args) == 0  # a rerun is not refused: it writes over the unfinished folder
    assert json.loads((out / "metadata.json").read_text())["count"] == 8 and (out / "clip").is_dir()


def test_embed_writes_its_metadata_only_after_its_clip(tmp_path, monkeypatch):
    def full_disk(module, folder, *args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr("unclip.checkpoint.save_component", full_disk)
    out = tmp_path / "emb"
    with pytest.raises(OSError, match="no space left"):
        cli(["embed", "--config", PRIOR, "--output", str(out), "--limit", "4", "--batch-size", "4"])
    assert (out / "00000_captions.json").is_file() and not (out / "metadata.json").exists()


@pytest.mark.parametrize("flag", ["--shard-size", "--batch-size"])
def test_embed_refuses_sizes_below_one_before_loading(flag, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("unclip.config.load_stage_config", lambda *args: pytest.fail("loaded before checking"))
    assert cli(["embed", "--config", PRIOR, "--output", str(tmp_path / "x"), "--limit", "4", flag, "0"]) == 2
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err


def test_the_monitor_reads_the_data_the_embeddings_came_from(embeddings, tmp_path, capsys):
    from unclip.config import DataConfig, DatasetKind
    from unclip.training.stages.common import monitor_data

    found = monitor_data(DataConfig(kind=DatasetKind.embeddings, path=str(embeddings)))
    assert (found.kind, found.seed) == (DatasetKind.shapes, 5)
    old = tmp_path / "old"  # written before `source` was kept
    old.mkdir()
    meta = json.loads((embeddings / "metadata.json").read_text())
    (old / "metadata.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "source"}))
    data = DataConfig(kind=DatasetKind.embeddings, path=str(old))
    assert monitor_data(data) is data and "does not name the data it was encoded from" in capsys.readouterr().out
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "metadata.json").write_text(json.dumps({**meta, "source": {"kind": "emoji", "path": str(tmp_path / "x")}}))
    data = DataConfig(kind=DatasetKind.embeddings, path=str(gone))
    assert monitor_data(data) is data and "is not there" in capsys.readouterr().out


def test_embed_refuses_an_unknown_device_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("unclip.config.load_stage_config", lambda *args: pytest.fail("loaded before checking"))
    assert cli(["embed", "--config", PRIOR, "--output", str(tmp_path / "x"), "--device", "gpu"]) == 2
    assert "--device: 'gpu' is not a torch device" in capsys.readouterr().err
