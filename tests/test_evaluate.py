"""`unclip eval` end to end on a tiny random pipeline, and the FID math."""

import json

import numpy as np
import torch
from PIL import Image

from unclip.cli import main
from unclip.evaluation.fid import InceptionFeatures, frechet_distance, statistics
from unclip.evaluation.report import TARGETS, _get, detector_accuracy, prompt_sets


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
    features = InceptionFeatures()
    f = features(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()


def test_prompt_sets_follow_the_split():
    sets = prompt_sets(30, seed=0)
    held = {("purple", "star"), ("orange", "circle"), ("green", "triangle")}
    pairs = lambda scenes: {(o.colour, o.shape) for s in scenes for o in s.objects}  # noqa: E731
    assert pairs(sets["one_object_held_out"]) <= held
    assert not pairs(sets["one_object_seen"]) & held and not pairs(sets["two_object"]) & held
    assert all(s.relation is not None for s in sets["two_object"])
    assert detector_accuracy(60, 64, seed=1)["all"] >= 0.99


def test_eval_cli_writes_the_report(tmp_path, capsys):
    out = tmp_path / "eval"
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
    assert report["clip_relation"]["n"] == 2 and report["clip_relation"]["closer_to_own_caption"] in (0, 0.5, 1)
    assert report["fid"]["64"] > 0  # random weights: far from the real renders
    assert 0 <= report["variations"]["colour_and_shape"] <= 1 and report["variations"]["n"] == 4
    for path, _ in TARGETS.values():
        assert 0 <= _get(report, path) <= 1
    table = (out / "report.md").read_text()
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
