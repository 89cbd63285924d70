"""`unclip eval` end to end on a tiny random pipeline, and the FID math."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import unclip.cli.evaluate as eval_command
from unclip.cli import main
from unclip.data.shapes import HELD_OUT_PAIRS, PAIR_POOLS
from unclip.evaluation.detector import detect, score
from unclip.evaluation.fid import (
    TF_RANGE,
    InceptionFeatures,
    frechet_distance,
    statistics,
)
from unclip.evaluation.probes import relation_probe
from unclip.evaluation.report import (
    TARGETS,
    EvalSettings,
    _get,
    clip_relation,
    detector_accuracy,
    one_object_scenes,
    prompt_sets,
    rates,
)


def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=g, dtype=torch.float64)
    mu, sigma = statistics(a)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    shift = torch.full((6,), 2.0, dtype=torch.float64)
    assert abs(frechet_distance(mu, sigma, mu + shift, sigma) - 24.0) < 1e-8  # ‖Δμ‖² only
    # diagonal covariances: Σ (σ₁ − σ₂)² over dimensions
    d1, d2 = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)), torch.diag(torch.tensor([9.0, 1.0],
                                                                                                dtype=torch.float64))
    zero = torch.zeros(2, dtype=torch.float64)
    assert abs(frechet_distance(zero, d1, zero, d2) - ((1 - 3) ** 2 + (2 - 1) ** 2)) < 1e-8


def test_inception_features_from_the_shipped_weights():
    """Images in [−1, 1] reach the network in TensorFlow's range: black as −1, white as 0.9921875."""
    features = InceptionFeatures()
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f = features(torch.cat([torch.full((2, 3, 64, 64), -1.0), torch.ones(1, 3, 64, 64), noise]))
    assert f.shape == (4, 2048) and (f >= 0).all()  # average-pooled ReLU outputs
    with torch.no_grad():
        tf = features.model(torch.tensor(TF_RANGE).reshape(2, 1, 1, 1).expand(2, 3, 299, 299).contiguous())
    tf = tf.flatten(2).mean(-1) if tf.dim() > 2 else tf
    torch.testing.assert_close(f[:2], tf[:1].expand(2, -1), atol=1e-4, rtol=1e-4)  # black, twice
    torch.testing.assert_close(f[2], tf[1], atol=1e-4, rtol=1e-4)  # white
    assert (f[3] - f[0]).abs().max() > 1 and (f[3] - f[2]).abs().max() > 1  # noise is neither


def test_inception_features_ignore_bf16_autocast():
    """``unclip eval --bf16`` runs everything under autocast; the FID yardstick must stay float32."""
    features = InceptionFeatures()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    exact = features(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = features(images)
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, exact, atol=1e-5, rtol=1e-5)


def test_prompt_sets_follow_the_split():
    sets = prompt_sets(30, seed=0)
    held = {("purple", "star"), ("orange", "circle"), ("green", "triangle")}
    pairs = lambda scenes: {(o.colour, o.shape) for s in scenes for o in s.objects}  # noqa: E731
    assert pairs(sets["one_object_held_out"]) <= held
    assert not pairs(sets["one_object_seen"]) & held and not pairs(sets["two_object"]) & held
    assert all(s.relation is not None for s in sets["two_object"])
    assert detector_accuracy(60, 64, seed=1)["all"] >= 0.99


def test_rates_are_shares_per_key_with_the_count():
    results = [{"colour": True, "all": False}, {"colour": True, "all": True}, {"colour": False, "all": False},
               {"colour": True, "all": False}]
    assert rates(results) == {"colour": 0.75, "all": 0.25, "n": 4}
    assert rates([]) == {"n": 0}


def test_clip_relation_is_the_share_of_renders_closer_to_their_own_caption():
    """A stand-in CLIP that puts render i on axis i, its own caption on +axis i and the inverted
    one on −axis i, except for renders 1 and 3, where it has the two the other way round."""
    settings = EvalSettings(prompts=5, seed=7)
    images, own, swapped = relation_probe(16, 5, seed=7)
    wrong = {1, 3}
    axes = torch.eye(5)

    def encode_image(batch):
        assert torch.equal(batch, images)  # the probe of settings.seed, at the CLIP's side
        return 3 * axes

    def encode_text(captions):
        is_own = [c == o for c, o in zip(captions, own, strict=True)]
        assert all(is_own) or captions == swapped
        sign = [(1.0 if mine else -1.0) * (-1.0 if i in wrong else 1.0) for i, mine in enumerate(is_own)]
        return SimpleNamespace(emb=torch.tensor(sign)[:, None] * axes)

    pipe = SimpleNamespace(clip=SimpleNamespace(image_size=16, encode_image=encode_image, encode_text=encode_text))
    assert clip_relation(pipe, settings) == {"closer_to_own_caption": pytest.approx(0.6), "n": 5}


def test_eval_cli_writes_the_report(tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    pipes = []  # the pipeline the command builds, to recompute figures from
    load = eval_command.load_pipeline
    monkeypatch.setattr(eval_command, "load_pipeline", lambda args: pipes.append(load(args)) or pipes[-1])
    code = main(["eval", "--random-from", "configs/tiny", "--out", str(out), "--prompts", "2", "--fid-images", "4",
                 "--detector-scenes", "40", "--prior-captions", "2", "--variation-images", "1",
                 "--interpolations", "1", "--batch", "4", "--steps", "prior=1", "decoder=1", "upsampler=1",
                 "--ablation-prompts", "1", "--bf16", "--fid-sizes", "64"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["detector_accuracy_on_real_renders"]["64"]["all"] >= 0.99  # the gate
    assert set(report["binding"]) == {"one_object_seen", "one_object_held_out", "two_object"}
    assert report["binding"]["one_object_seen"]["n"] == 2
    assert set(report["ablation_text_embedding_as_image_embedding"]) == set(report["binding"])
    assert report["ablation_text_embedding_as_image_embedding"]["two_object"]["n"] == 1
    assert set(report["true_image_embedding"]) == set(report["binding"])
    assert report["true_image_embedding"]["one_object_seen"]["n"] == 1
    assert report["settings"]["bf16_autocast"] and report["sampling"]["decoder"]["steps"] == 1
    assert {"text_embedding_baseline", "prior_best_of_1", "prior_best_of_2"} <= set(report["prior"])
    assert report["fid"]["64"] > 0  # random weights: far from the real renders
    for name, r in report["binding"].items():  # `all` is a conjunction of the other figures
        parts = ("objects", "relation") if name == "two_object" else ("colour", "shape", "position")
        assert r["all"] <= min(r[k] for k in parts), (name, r)
    # figures recomputed by hand from the command's own pipeline, under the same bf16 autocast
    (pipe,) = pipes
    clip, steps = pipe.clip, report["settings"]["steps"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        images, own, swapped = relation_probe(clip.image_size, 2, seed=0)
        z = clip.encode_image(images)
        cos = lambda captions: F.cosine_similarity(z, clip.encode_text(captions).emb)  # noqa: E731
        closer = cos(own) > cos(swapped)
        held_out = one_object_scenes(sorted(HELD_OUT_PAIRS), 2, seed=1)
        baseline = F.cosine_similarity(clip.encode_text([s.caption for s in held_out]).emb,
                                       clip.encode_image([s.render(clip.image_size) for s in held_out])).mean()
        (scene,) = one_object_scenes(list(PAIR_POOLS["train"]), 1, seed=2)
        side = pipe.sizes[0]  # the decoder's side
        variations = pipe.variations(scene.render(side), n=4, size=side, steps=steps, seed=0, progress=False)
    assert report["clip_relation"] == {"closer_to_own_caption": pytest.approx(closer.float().mean().item()), "n": 2}
    assert report["prior"]["text_embedding_baseline"] == pytest.approx(baseline.item(), abs=1e-5)
    kept = [r["colour"] and r["shape"] for r in (score(detect(im), scene) for im in variations)]
    assert report["variations"] == {"colour_and_shape": pytest.approx(sum(kept) / 4), "n": 4}
    table = (out / "report.md").read_text()
    for label, (path, goal) in TARGETS.items():  # each target's row: the figure, the goal, met or not
        value = _get(report, path)
        assert f"| {label} | {100 * value:.1f}% | ≥ {100 * goal:.1f}% | {'yes' if value >= goal else 'no'} |" in table
    assert "decoder ddpm 1 steps" in table and "bfloat16 autocast" in table
    assert "| 64×64 | 100.0% | 40 |" in table and "prior beats the text-embedding baseline" in table
    assert "closer to own caption than to the relation inverted" in table
    assert "| two object | true image emb. |" in table
    sheet = Image.open(out / "samples.png")  # 8 captioned 128×128 tiles, 4 per row, text under each
    assert sheet.width == 4 * 128 and sheet.height > 2 * 128
    assert np.asarray(sheet.convert("L"))[128:140].min() < 100  # caption ink under the first row


def test_eval_cli_rejects_bad_counts(capsys):
    assert main(["eval", "--random-from", "configs/tiny", "--prompts", "0"]) == 2
    assert "--prompts" in capsys.readouterr().err
    assert main(["eval", "--random-from", "configs/tiny", "--decoder-candidates", "0"]) == 2
    assert "--decoder-candidates: expected a positive whole number" in capsys.readouterr().err


def small_eval(out, *extra) -> int:
    """``unclip eval`` on tiny random weights with the smallest counts and steps, plus ``extra``."""
    return main(["eval", "--random-from", "configs/tiny", "--out", str(out), "--prompts", "1", "--fid-images", "0",
                 "--detector-scenes", "40", "--prior-captions", "1", "--variation-images", "1",
                 "--interpolations", "1", "--batch", "4", "--steps", "prior=1", "decoder=2", "upsampler=1", *extra])


def test_eval_sampler_replaces_the_checkpoints_own_on_the_named_stages(tmp_path):
    out = tmp_path / "eval"
    code = small_eval(out, "--sampler", "dpmpp", "decoder=ddim")
    assert code == 0
    sampling = json.loads((out / "report.json").read_text())["sampling"]
    assert sampling["decoder"]["sampler"] == "ddim"  # STAGE=NAME wins over the bare name
    assert sampling["prior"]["sampler"] == sampling["upsampler_256"]["sampler"] == "dpmpp"
    assert "decoder ddim 2 steps" in (out / "report.md").read_text()


def test_eval_decoder_candidates_reach_the_report(tmp_path):
    out = tmp_path / "eval"
    assert small_eval(out, "--decoder-candidates", "2") == 0
    assert json.loads((out / "report.json").read_text())["settings"]["decoder_candidates"] == 2
    assert "the decoder's best of 2 by CLIP similarity to the caption" in (out / "report.md").read_text()


def test_eval_guidance_replaces_the_checkpoints_own_on_the_named_stages(tmp_path):
    out = tmp_path / "eval"
    code = small_eval(out, "--guidance", "2.5", "decoder=5")
    assert code == 0
    sampling = json.loads((out / "report.json").read_text())["sampling"]
    assert sampling["decoder"]["guidance"] == 5.0  # STAGE=G wins over the bare scale
    assert sampling["prior"]["guidance"] == 2.5
    assert sampling["upsampler_256"]["guidance"] == 1  # never guided
    assert "decoder ddpm 2 steps guidance 5" in (out / "report.md").read_text()


@pytest.mark.parametrize("value, message", [("upsampler=2", "only the prior and the decoder are guided"),
                                            ("decoder=-1", "expected a scale >= 0")])
def test_eval_rejects_bad_guidance_before_loading(capsys, monkeypatch, value, message):
    monkeypatch.setattr(eval_command, "load_pipeline", lambda args: pytest.fail("loaded before checking"))
    assert main(["eval", "--random-from", "configs/tiny", "--guidance", value]) == 2
    assert message in capsys.readouterr().err


def test_eval_rejects_an_unknown_sampler_before_loading(capsys, monkeypatch):
    monkeypatch.setattr(eval_command, "load_pipeline", lambda args: pytest.fail("loaded before checking"))
    assert main(["eval", "--random-from", "configs/tiny", "--sampler", "decoder=euler"]) == 2
    assert "unknown sampler 'euler'" in capsys.readouterr().err
