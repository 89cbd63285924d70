"""`unclip data emoji` on a tiny stand-in of the six packages' layouts (no npm, no network)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from unclip.cli import main as cli
from unclip.data import emoji

FOX, APPLE, HASH, PUA = "1F98A", "1F34E", "0023-FE0F-20E3", "E000"
COLOURS = {FOX: "#ff8000", APPLE: "#ff0000", HASH: "#0000ff", PUA: "#00ff00"}


def rect(colour: str, inset: int) -> str:  # a filled square centred on a 32-unit canvas
    return f'<rect x="{inset}" y="{inset}" width="{32 - 2 * inset}" height="{32 - 2 * inset}" fill="{colour}"/>'


def square_svg(colour: str) -> str:
    return f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">{rect(colour, 8)}</svg>'


def iconify(folder: Path, codes: list[str], inset: int, *, chars: bool = True, alias: str | None = None) -> None:
    """An iconify package; each style draws its squares with its own inset, so styles differ."""
    folder.mkdir(parents=True)
    names = {code: f"icon-{code.lower()}" for code in codes}
    icons = {names[c]: {"body": rect(COLOURS[c], inset)} for c in codes}
    aliases = {}
    if alias:  # chars.json names an alias whose parent is the icon
        aliases = {"alias-name": {"parent": names[alias]}}
        names[alias] = "alias-name"
    (folder / "icons.json").write_text(json.dumps({"icons": icons, "aliases": aliases, "width": 32, "height": 32}))
    if chars:
        (folder / "chars.json").write_text(json.dumps({c.lower(): names[c] for c in codes}))


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("packages")
    om = emoji.package_dir(root, emoji.SETS["openmoji"])
    (om / "color" / "svg").mkdir(parents=True)
    (om / "data").mkdir()
    for code in (FOX, APPLE, HASH, PUA):
        (om / "color" / "svg" / f"{code}.svg").write_text(square_svg(COLOURS[code]))
    (om / "data" / "openmoji.json").write_text(json.dumps([
        {"hexcode": FOX, "annotation": "fox", "tags": "animal, face"},
        {"hexcode": APPLE, "annotation": "red apple", "tags": "fruit, red"},
        {"hexcode": HASH, "annotation": "keycap: #", "tags": "keycap"}]))
    webp = emoji.package_dir(root, emoji.SETS["fluent 3d"]) / "assets"
    webp.mkdir(parents=True)
    for code in (FOX, APPLE):  # RGBA: an opaque square on a transparent canvas
        image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
        image.paste(Image.new("RGBA", (22, 22), COLOURS[code]), (5, 5))
        image.save(webp / f"{code.lower()}.webp", lossless=True)
    iconify(emoji.package_dir(root, emoji.SETS["fluent flat"]), [FOX, APPLE, HASH], 6)
    iconify(emoji.package_dir(root, emoji.SETS["fluent color"]), [FOX, APPLE, HASH], 10, chars=False)
    iconify(emoji.package_dir(root, emoji.SETS["noto"]), [FOX, APPLE], 4)
    iconify(emoji.package_dir(root, emoji.SETS["twemoji"]), [FOX, APPLE, HASH], 12, alias=APPLE)
    return root


@pytest.fixture(scope="module")
def built(packages, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emoji") / "data"
    assert cli(["data", "emoji", "--out", str(out), "--packages", str(packages), "--sizes", "16", "32",
                "--held-out", "0.2", "--variation-concepts", "0.34", "--quiet"]) == 0
    return out


def read_split(out: Path, size: int, split: str) -> list[dict]:
    from unclip.data.webdataset import iter_tar_samples

    rows = []
    for shard in sorted((out / str(size) / split).glob("*.tar")):
        for raw in iter_tar_samples(str(shard)):
            image = Image.open(io.BytesIO(raw["png"])).convert("RGB")
            rows.append({"caption": raw["txt"].decode(), "meta": json.loads(raw["json"]), "image": image})
    return rows


def test_sets_join_by_code_point_with_captions_and_held_out_pairs(built):
    meta = json.loads((built / "metadata.json").read_text())
    # fox and apple in all six styles, the keycap in four (no fluent 3d, no noto); E000 has no name
    assert (meta["images"], meta["concepts"], meta["unnamed"]) == (16, 3, 1)
    assert sum(meta["counts"]["noto"].values()) == 2 and sum(meta["counts"]["openmoji"].values()) == 3
    assert meta["sizes"] == [16, 32] and meta["caption_template"] == "{annotation}, {style} style"
    assert meta["sets"]["twemoji"]["licence"] == "CC BY 4.0" and "Twemoji" in meta["sets"]["twemoji"]["credit"]
    assert len(meta["variation_concepts"]) == 1  # 0.34 of the 2 concepts in all six styles
    assert meta["variation_concepts"][0] in {"1f98a", "1f34e"}
    assert len(meta["held_out"]) == round(0.2 * 10)  # pairs of the other shared concepts: 6 + 4

    rows = {split: read_split(built, 32, split) for split in emoji.SPLITS}
    assert sum(len(r) for r in rows.values()) == 16
    train_pairs = {(r["meta"]["concept"], r["meta"]["style"]) for r in rows["train"]}
    assert not train_pairs & {tuple(p) for p in meta["held_out"]}  # never trained on
    assert {r["meta"]["concept"] for r in rows["variations"]} == set(meta["variation_concepts"])
    assert len(rows["variations"]) == 6 and not {c for c, _ in train_pairs} & set(meta["variation_concepts"])
    captions = {r["caption"] for split in rows.values() for r in split}
    assert {"fox, twemoji style", "red apple, fluent 3d style", "keycap: #, fluent color style"} <= captions
    assert all(r["caption"] == emoji.caption(r["meta"]["annotation"], r["meta"]["style"]) for r in rows["train"])
    assert len(read_split(built, 16, "train")) == len(rows["train"])  # every size holds the same split


def test_every_style_renders_its_art_on_white(built):
    for row in [r for split in emoji.SPLITS for r in read_split(built, 32, split)]:
        key = {emoji.concept_key(c): c for c in COLOURS}[row["meta"]["concept"]]
        want = Image.new("RGB", (1, 1), COLOURS[key]).getpixel((0, 0))
        assert row["image"].size == (32, 32)
        assert row["image"].getpixel((0, 0)) == (255, 255, 255), row["meta"]  # the background
        assert max(abs(a - b) for a, b in zip(row["image"].getpixel((16, 16)), want)) <= 2, row["meta"]


def test_the_shards_train_through_the_webdataset_reader(built):
    from unclip.data.webdataset import ShardDataset

    sample = next(iter(ShardDataset(str(built / "32" / "train" / "*.tar"), 32, epochs=1)))
    assert sample["image"].shape == (3, 32, 32) and sample["caption"].endswith(" style")
    assert torch.all(sample["image"][:, 0, 0] == 1.0)  # white, in [-1, 1]


def test_later_sizes_join_the_same_split_and_other_settings_are_refused(built, packages, capsys):
    before = json.loads((built / "metadata.json").read_text())
    assert cli(["data", "emoji", "--out", str(built), "--packages", str(packages), "--sizes", "16", "24",
                "--held-out", "0.2", "--variation-concepts", "0.34", "--quiet"]) == 0
    after = json.loads((built / "metadata.json").read_text())
    assert after["sizes"] == [16, 24, 32] and after["held_out"] == before["held_out"]
    assert len(read_split(built, 24, "heldout")) == len(before["held_out"])
    assert cli(["data", "emoji", "--out", str(built), "--packages", str(packages), "--sizes", "48", "--seed", "1",
                "--quiet"]) == 2
    assert "other seed" in capsys.readouterr().err and not (built / "48").exists()


def test_an_interrupted_size_leaves_no_half_folder(packages, tmp_path, monkeypatch):
    out = tmp_path / "data"
    assert emoji.build(out, ["twemoji", "noto"], {s: emoji.package_dir(packages, emoji.SETS[s]) for s in
                       ("twemoji", "noto")}, sizes=[16], progress=False)
    rendered = []

    def render_then_stop(source, size, background="white"):
        if rendered:
            raise KeyboardInterrupt
        rendered.append(size)
        return Image.new("RGB", (size, size), background)

    monkeypatch.setattr(emoji, "render", render_then_stop)
    with pytest.raises(KeyboardInterrupt):
        emoji.build(out, ["twemoji", "noto"], {s: emoji.package_dir(packages, emoji.SETS[s]) for s in
                    ("twemoji", "noto")}, sizes=[32], progress=False)
    from unclip.data.emoji_dataset import sizes_built

    assert sizes_built(out) == [16] and json.loads((out / "metadata.json").read_text())["sizes"] == [16]


def test_bad_input_gets_a_message(tmp_path, packages, monkeypatch, capsys):
    assert cli(["data", "emoji", "--out", str(tmp_path / "a"), "--sets", "clipart", "--quiet"]) == 2
    assert "unknown emoji set 'clipart'" in capsys.readouterr().err
    monkeypatch.setattr("shutil.which", lambda name: None)  # no npm on this machine
    assert cli(["data", "emoji", "--out", str(tmp_path / "b"), "--packages", str(tmp_path / "empty"),
                "--sets", "twemoji", "--quiet"]) == 2
    assert "apt-get install npm" in capsys.readouterr().err


def test_per_shard_below_one_is_refused_before_anything_is_fetched(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(emoji, "fetch", lambda *args: pytest.fail("fetched before checking"))
    assert cli(["data", "emoji", "--out", str(tmp_path / "a"), "--per-shard", "0", "--quiet"]) == 2
    assert "--per-shard must be at least 1, got 0" in capsys.readouterr().err


def test_the_data_command_names_the_kind_the_emoji_configs_train_with():
    import re

    import yaml

    from unclip.cli import data as data_command

    kind = re.search(r"data\.kind=(\w+) data\.path=", data_command.__doc__).group(1)
    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "emoji").glob("*.yaml"))
    assert configs and {yaml.safe_load(c.read_text())["data"]["kind"] for c in configs} == {kind}


def test_the_emoji_data_set_reads_each_image_in_every_caption_form(built):
    from unclip.config import DataConfig, DatasetKind
    from unclip.data import build_dataset
    from unclip.data.emoji_dataset import CAPTION_FORMS

    data = build_dataset(DataConfig(kind=DatasetKind.emoji, path=str(built), resolution=12))  # the 16 px shards
    images = len(read_split(built, 16, "train"))
    assert len(data) == images * len(CAPTION_FORMS)
    rows = [data[i] for i in range(len(data))]
    assert all(r["image"].shape == (3, 12, 12) for r in rows)
    for i in range(images):  # one image, five captions: canonical ×3, without the style, with the tags
        meta = data.meta(i)
        forms = [rows[i + k * images]["caption"] for k in range(len(CAPTION_FORMS))]
        assert forms[:3] == [emoji.caption(meta["annotation"], meta["style"])] * 3
        assert forms[3] == meta["annotation"]
        assert forms[4] == emoji.caption(", ".join([meta["annotation"], *meta["tags"]]), meta["style"])
        torch.testing.assert_close(rows[i]["image"], rows[i + images]["image"])
    with pytest.raises(ValueError, match="none at least data.resolution=64"):
        build_dataset(DataConfig(kind=DatasetKind.emoji, path=str(built), resolution=64))



# ----------------------------------------------------------------------------------------------
# unclip eval --suite emoji


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """A cheap stand-in for the Inception features: the image at 8×8, flattened, centred."""
    small = torch.nn.functional.interpolate(images.float(), size=(8, 8), mode="area")
    return (small - small.mean()).flatten(1)


class RenderingPipe:
    """Stands in for a cascade that draws every prompt as its real render: the figures must be perfect."""

    def __init__(self, root: Path, side: int):
        from unclip.data.emoji_dataset import EmojiDataset

        self.sizes, self.renders = [side], {}
        for split in emoji.SPLITS:
            data = EmojiDataset(root, side, split, forms=("canonical",))
            for i in range(len(data)):
                item = data[i]
                self.renders[item["caption"]] = item["image"]

    def generate(self, prompts, size, steps=None, guidance=None, seed=0, progress=True):
        from unclip.data.images import tensor_to_pil

        return tensor_to_pil(torch.stack([self.renders[p] for p in prompts]))


def test_nearest_real_renders_name_the_concept_within_the_style_and_the_style_overall():
    from unclip.evaluation.emoji import Gallery, nearest

    found = Gallery(torch.eye(4), ["fox", "fox", "apple", "owl"], ["noto", "twemoji", "noto", "noto"])
    query = torch.tensor([[0.1, 1.0, 0.0, 0.5], [0.0, 0.2, 0.9, 0.0]])
    (twemoji_concepts, style_a), (noto_concepts, style_b) = nearest(query, found, "noto", k=2)
    assert style_a == "twemoji" and style_b == "noto"  # the nearest render of any style
    assert twemoji_concepts == ["owl", "fox"] and noto_concepts == ["apple", "fox"]  # among noto renders only
    assert nearest(query, found, None, k=5)[0][0] == ["fox", "owl", "apple"]  # distinct concepts


def test_recognisable_is_perfect_for_a_cascade_that_draws_the_real_renders(built):
    from unclip.evaluation.emoji import EmojiEvalSettings, gallery, prompt_pairs, recognisable

    meta = json.loads((built / "metadata.json").read_text())
    found = gallery(built, 32, pixel_features, cache=False)
    assert len(found.concepts) == 16
    settings = EmojiEvalSettings(data=str(built), batch=4)
    pairs = prompt_pairs(meta, found, 300, 0)
    assert len(pairs["seen"]) == 16 - 2 - 6 and sorted(pairs["held_out"]) == sorted(tuple(p) for p in meta["held_out"])
    for name, chosen in pairs.items():
        r = recognisable(RenderingPipe(built, 32), chosen, meta, found, pixel_features, settings)
        assert (r["top1"], r["top5"], r["style"]) == (1.0, 1.0, 1.0), name


class EmbeddingPipe:
    """Stands in for a cascade whose CLIP image embedding is the image itself and whose decoder draws
    the embedding back: read with true embeddings it must be perfect, and the prior never runs."""

    def __init__(self, side: int):
        self.sizes, self.device = [side], torch.device("cpu")
        self.clip = SimpleNamespace(image_size=side, encode_image=lambda x: x.flatten(1),
                                    encode_text=lambda prompts: list(prompts))

    def plan(self, stages, **overrides):
        return {stage: None for stage in stages}

    def generate(self, *args, **kwargs):
        raise AssertionError("the prior's path was taken")


def test_recognisable_with_true_embeddings_decodes_each_pairs_own_render(built, monkeypatch):
    from unclip.evaluation.emoji import EmojiEvalSettings, gallery, prompt_pairs, recognisable

    side = 32
    monkeypatch.setattr("unclip.evaluation.emoji.decode",
                        lambda pipe, emb, text, run, g, progress: emb.reshape(len(emb), 3, side, side))
    meta = json.loads((built / "metadata.json").read_text())
    found = gallery(built, side, pixel_features, cache=False)
    settings = EmojiEvalSettings(data=str(built), batch=3)
    for name, chosen in prompt_pairs(meta, found, 300, 0).items():
        r = recognisable(EmbeddingPipe(side), chosen, meta, found, pixel_features, settings, read="decoder")
        assert (r["top1"], r["top5"], r["style"], r["n"]) == (1.0, 1.0, 1.0, len(chosen)), name
    # a decoder that draws each row from its neighbour's embedding is caught
    monkeypatch.setattr("unclip.evaluation.emoji.decode",
                        lambda pipe, emb, text, run, g, progress: emb.roll(1, 0).reshape(len(emb), 3, side, side))
    seen = prompt_pairs(meta, found, 300, 0)["seen"]
    assert recognisable(EmbeddingPipe(side), seen, meta, found, pixel_features, settings, read="decoder")["top1"] < 0.5


def test_recognisable_reads_the_prior_alone_by_its_z_i_and_refuses_other_readings(built, monkeypatch):
    from unclip.evaluation.emoji import EmojiEvalSettings, gallery, prompt_pairs, recognisable

    renders = RenderingPipe(built, 32).renders  # caption → real render
    # a prior whose z_i is its caption's render's feature: the nearest render must be the concept
    monkeypatch.setattr("unclip.evaluation.emoji.sample_prior",
                        lambda pipe, text, run, g, progress: pixel_features(torch.stack([renders[t] for t in text])))
    meta = json.loads((built / "metadata.json").read_text())
    found = gallery(built, 32, pixel_features, cache=False)
    settings = EmojiEvalSettings(data=str(built), batch=4)
    pairs = prompt_pairs(meta, found, 300, 0)
    for name, chosen in pairs.items():
        r = recognisable(EmbeddingPipe(32), chosen, meta, found, pixel_features, settings, read="prior")
        assert (r["top1"], r["top5"], r["style"]) == (1.0, 1.0, 1.0), name
    with pytest.raises(ValueError, match="read: 'inception' is not one of cascade, decoder, prior"):
        recognisable(EmbeddingPipe(32), pairs["seen"], meta, found, pixel_features, settings, read="inception")


def test_a_prior_on_emoji_embeddings_monitors_the_held_out_emoji_pairs(built, tmp_path):
    from unclip.config import DataConfig, DatasetKind
    from unclip.training.stages.common import held_out_samples

    emb = tmp_path / "emb"
    emb.mkdir()
    (emb / "metadata.json").write_text(json.dumps({"count": 0, "shards": [], "source": {
        "kind": "emoji", "path": str(built), "resolution": 32}}))
    images, captions = held_out_samples(DataConfig(kind=DatasetKind.embeddings, path=str(emb)), 32, 8)
    meta = json.loads((built / "metadata.json").read_text())
    wanted = {emoji.caption(meta["annotations"][c], s) for c, s in meta["held_out"]}
    assert images.shape[1:] == (3, 32, 32) and captions and set(captions) <= wanted


def test_the_emoji_suite_runs_on_a_tiny_cascade_and_caches_its_gallery(built, tiny_pipeline_dir, tmp_path,
                                                                       monkeypatch):
    out = tmp_path / "eval"
    args = ["eval", "--suite", "emoji", "--data", str(built), "--checkpoint", str(tiny_pipeline_dir),
            "--out", str(out), "--prompts", "3", "--fid-images", "4", "--fid-sizes", "32", "--variation-images", "2",
            "--interpolations", "1", "--batch", "4", "--steps", "2"]
    # no Inception forward in the test suite
    monkeypatch.setattr("unclip.evaluation.fid.InceptionFeatures", lambda device="cpu": pixel_features)
    assert cli(args) == 0
    report = json.loads((out / "report.json").read_text())
    rec = report["recognisable"]
    assert rec["seen"]["n"] == 3 and rec["held_out"]["n"] == 2 and rec["all"]["n"] == 5
    assert all(0 <= rec[k][m] <= 1 for k in ("seen", "held_out") for m in ("top1", "top5", "style"))
    assert set(report["fid"]) == {"32"} and report["fid"]["32"] >= 0
    assert report["variations"]["n"] == 2 * 2 and report["interpolations"]["n"] >= 1
    assert "held-out prompts: nearest real render is the concept, top 5" in (out / "report.md").read_text()
    assert (out / "samples.png").is_file() and (built / "features" / "gallery_32.safetensors").is_file()


def test_the_emoji_suite_needs_its_data(capsys, tiny_pipeline_dir):
    assert cli(["eval", "--suite", "emoji", "--checkpoint", str(tiny_pipeline_dir)]) == 2
    assert "--suite emoji needs --data" in capsys.readouterr().err


def run_clip_nearest_bench(*args: str):
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "bench" / "emoji_clip_nearest.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)


def test_the_clip_nearest_bench_reads_a_tiny_cascade_on_the_emoji_prompts(built, tiny_pipeline_dir, tmp_path):
    sheet = tmp_path / "sheet.png"
    done = run_clip_nearest_bench("--checkpoint", str(tiny_pipeline_dir), "--data", str(built), "--prompts", "3",
                                  "--steps", "2", "--sheet", str(sheet), "--sheet-size", "32")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    rows = report["rows"]
    assert (rows["seen"]["n"], rows["held_out"]["n"]) == (3, 2)  # as the emoji suite draws them (2 held-out pairs)
    assert all(0 <= rows[k][m] <= 1 for k in rows for m in ("top1", "top5", "style"))
    assert all(rows[k]["top1"] <= rows[k]["top5"] for k in rows)
    assert report["features"] == "cascade CLIP" and "| held_out |" in done.stdout
    assert Image.open(sheet).width == 4 * 32  # four prompts a row at --sheet-size
    assert report["read"] == "cascade"
    for read in ("decoder", "prior"):
        done = run_clip_nearest_bench("--checkpoint", str(tiny_pipeline_dir), "--data", str(built), "--prompts", "2",
                                      "--steps", "2", "--read", read, "--guidance", "1.5", "2")
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["read"] == read and report["rows"]["seen"]["n"] == 2
        assert report["guidance"] == {"prior": 1.5, "decoder": 2.0}


def test_the_clip_nearest_bench_names_a_folder_that_is_not_emoji_data(tiny_pipeline_dir, tmp_path):
    done = run_clip_nearest_bench("--checkpoint", str(tiny_pipeline_dir), "--data", str(tmp_path))
    assert done.returncode == 2 and "not an emoji data folder" in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------------------------
# unclip eval --suite emoji-clip


class ColourClip:
    """A CLIP stand-in that knows each test concept by its colour: the image embedding is the mean
    colour of the drawn (non-white) pixels, the text embedding the named concept's colour; the
    style never enters. ``swap`` names each concept's colour after another concept's."""

    image_size = 32
    RGB = {"fox": (1.0, 0.0, -1.0), "red apple": (1.0, -1.0, -1.0), "keycap: #": (-1.0, -1.0, 1.0)}

    def __init__(self, swap: bool = False):
        names = list(self.RGB)
        self.colour = {n: self.RGB[names[(i + swap) % len(names)]] for i, n in enumerate(names)}

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        drawn = (images < 0.9).any(1, keepdim=True).float()
        return (images * drawn).sum((2, 3)) / drawn.sum((2, 3)).clamp(min=1)

    def encode_text(self, captions: list[str]):
        from types import SimpleNamespace

        names = [c.removeprefix("an emoji of ").split(", ")[0] for c in captions]
        return SimpleNamespace(emb=torch.tensor([self.colour[n] for n in names]))


def test_emoji_clip_figures_rank_the_right_caption(built):
    from unclip.evaluation.emoji_clip import EmojiClipSettings, run_emoji_clip_eval

    settings = EmojiClipSettings(data=str(built), batch=4)
    report = run_emoji_clip_eval(ColourClip(), settings)
    assert report["styles"][0] == "fluent 3d" and report["concepts"] == 3
    for name in ("seen", "held_out"):
        r = report[name]
        assert r["n"] > 0 and r["top1"] == r["top5"] == r["paraphrase_top5"] == 1.0, name
    # style-blind embeddings tie on the six style captions: the first style wins each time
    meta = json.loads((built / "metadata.json").read_text())
    held = [tuple(p) for p in meta["held_out"]]
    assert report["held_out"]["style"] == sum(s == "fluent 3d" for _, s in held) / len(held)
    wrong = run_emoji_clip_eval(ColourClip(swap=True), settings)
    assert wrong["seen"]["top1"] == wrong["held_out"]["top1"] == 0.0  # every caption points at another concept


def test_the_emoji_clip_suite_from_the_command_line(built, tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "clip-eval"
    args = ["eval", "--suite", "emoji-clip", "--data", str(built), "--out", str(out), "--prompts", "3"]
    assert cli([*args, "--checkpoint", str(tiny_pipeline_dir)]) == 0  # a cascade: its clip/
    report = json.loads((out / "report.json").read_text())
    assert report["seen"]["n"] == 3 and report["held_out"]["n"] == 2
    assert report["checkpoint"].endswith("clip") and "paraphrase top-5" in (out / "report.md").read_text()
    assert cli([*args, "--checkpoint", str(tmp_path)]) == 2
    assert "neither a clip/ component folder nor a cascade" in capsys.readouterr().err


def test_the_emoji_clip_suite_checks_device_and_out_before_loading(built, tiny_pipeline_dir, tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setattr("unclip.checkpoint.load_expected", lambda *args: pytest.fail("loaded before checking"))
    args = ["eval", "--suite", "emoji-clip", "--data", str(built), "--checkpoint", str(tiny_pipeline_dir)]
    assert cli([*args, "--out", str(tmp_path / "eval"), "--device", "nonsense"]) == 2
    assert "--device: 'nonsense' is not a torch device" in capsys.readouterr().err
    (tmp_path / "taken").write_text("a file where the report folder should go")
    assert cli([*args, "--out", str(tmp_path / "taken")]) == 2
    assert f"--out: {tmp_path / 'taken'} is a file, not a folder" in capsys.readouterr().err


def test_the_emoji_clip_suite_takes_batch_and_bf16(built, tiny_pipeline_dir, tmp_path, monkeypatch):
    from unclip.networks.clip import ClipEncoder

    calls, real = [], ClipEncoder.encode_image

    def spy(self, images):
        calls.append((len(images), torch.is_autocast_enabled("cpu")))
        return real(self, images)

    monkeypatch.setattr(ClipEncoder, "encode_image", spy)
    out = tmp_path / "clip-eval"
    assert cli(["eval", "--suite", "emoji-clip", "--data", str(built), "--checkpoint", str(tiny_pipeline_dir),
                "--out", str(out), "--prompts", "3", "--batch", "2", "--bf16", "--device", "cpu"]) == 0
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert settings["batch"] == 2 and settings["bf16_autocast"] is True
    assert calls and all(n <= 2 and autocast for n, autocast in calls)


@pytest.mark.parametrize("suite, flag, value", [("emoji", "--compare-priors", "prior"),
                                                ("emoji", "--decoder-candidates", "2"),
                                                ("emoji-clip", "--steps", "decoder=2"),
                                                ("emoji-clip", "--fid-images", "0"),
                                                ("shapes", "--data", "runs/emoji-data")])
def test_a_flag_the_suite_does_not_use_is_refused_before_loading(suite, flag, value, built, tiny_pipeline_dir,
                                                                 tmp_path, monkeypatch, capsys):
    import unclip.cli.evaluate as eval_command

    monkeypatch.setattr(eval_command, "load_pipeline", lambda args: pytest.fail("loaded before checking"))
    monkeypatch.setattr("unclip.checkpoint.load_expected", lambda *args: pytest.fail("loaded before checking"))
    data = [] if suite == "shapes" else ["--data", str(built)]
    assert cli(["eval", "--suite", suite, *data, "--checkpoint", str(tiny_pipeline_dir), "--out", str(tmp_path),
                flag, value]) == 2
    assert f"--suite {suite} does not use {flag}; leave it out" in capsys.readouterr().err


@pytest.fixture
def no_held_out(built, tmp_path) -> Path:
    """The tiny set, its metadata naming no held-out pair (as one style or --held-out 0 leaves it)."""
    import shutil

    data = tmp_path / "no-held-out"
    shutil.copytree(built, data, ignore=shutil.ignore_patterns("features"))
    meta = json.loads((data / "metadata.json").read_text())
    (data / "metadata.json").write_text(json.dumps({**meta, "held_out": []}))
    return data


def test_both_emoji_suites_refuse_a_set_without_held_out_pairs_before_any_work(no_held_out, tiny_pipeline_dir,
                                                                               tmp_path, monkeypatch, capsys):
    import unclip.cli.evaluate as eval_command
    from unclip.evaluation.emoji import EmojiEvalSettings, run_emoji_eval
    from unclip.evaluation.emoji_clip import EmojiClipSettings, run_emoji_clip_eval

    message = "has no held-out pairs: build it with at least two styles and --held-out > 0"
    with pytest.raises(ValueError, match=message):
        run_emoji_clip_eval(ColourClip(), EmojiClipSettings(data=str(no_held_out), batch=4))
    with pytest.raises(ValueError, match=message):
        run_emoji_eval(RenderingPipe(no_held_out, 32), EmojiEvalSettings(data=str(no_held_out), batch=4),
                       features=pixel_features)
    monkeypatch.setattr(eval_command, "load_pipeline", lambda args: pytest.fail("loaded before checking"))
    assert cli(["eval", "--suite", "emoji", "--data", str(no_held_out), "--checkpoint", str(tiny_pipeline_dir),
                "--out", str(tmp_path / "eval")]) == 2
    assert message in capsys.readouterr().err


def test_the_gallery_cache_serves_only_the_renders_it_was_computed_from(built, tmp_path, capsys):
    import shutil

    from unclip.evaluation.emoji import gallery

    data = tmp_path / "data"
    shutil.copytree(built, data, ignore=shutil.ignore_patterns("features"))
    calls = []

    def counted(images):
        calls.append(len(images))
        return pixel_features(images)

    first = gallery(data, 32, counted, batch=8)
    index = data / "features" / "gallery_32.json"
    keys = json.loads(index.read_text())
    assert calls and keys["built"] == 32 and len(keys["concepts"]) == len(first.concepts) == 16
    calls.clear()
    index.write_text(json.dumps({"concepts": keys["concepts"], "styles": keys["styles"]}))  # as written before "built"
    again = gallery(data, 32, counted)
    assert not calls and torch.equal(again.features, first.features)  # the same renders: the cache serves
    for stale in ({**keys, "built": 64}, {**keys, "styles": ["another style", *keys["styles"][1:]]}):
        index.write_text(json.dumps(stale))
        assert torch.equal(gallery(data, 32, counted, batch=8).features, first.features) and calls, stale
        calls.clear()
        assert "computing the gallery again" in capsys.readouterr().out
        assert json.loads(index.read_text()) == keys  # overwritten with the renders' own index
