"""The decoder's binding monitor (true z_i → detector) and `unclip eval`'s true-image-embedding rows."""

import json
from pathlib import Path

import torch

import unclip.evaluation.report
from unclip.checkpoint import load_component
from unclip.cli import main
from unclip.config import load_stage_config
from unclip.data.images import image_to_tensor
from unclip.data.shapes import HELD_OUT_PAIRS, swap_places
from unclip.diffusion.sampling import sample_loop
from unclip.diffusion.schedule import Sampler, make_scheduler
from unclip.evaluation.probes import binding_accuracy, binding_probe
from unclip.evaluation.report import EvalSettings, generate_side, markdown
from unclip.pipeline.denoisers import decoder_denoiser

ROOT = Path(__file__).resolve().parents[1]


def test_binding_probe_is_fixed_and_uses_training_pairs_only():
    probe = binding_probe(12)
    assert [len(s.objects) for s in probe["one_object"]] == [1] * 12
    assert [len(s.objects) for s in probe["two_object"]] == [2] * 12
    assert all(s.relation is not None for s in probe["two_object"])
    assert not {(o.colour, o.shape) for scenes in probe.values() for s in scenes for o in s.objects} & HELD_OUT_PAIRS
    assert [s.caption for s in binding_probe(12)["two_object"]] == [s.caption for s in probe["two_object"]]


def test_binding_accuracy_scores_what_the_decoder_draws():
    probe = binding_probe(16)
    side = 64
    perfect = lambda renders, captions: renders  # noqa: E731  (a decoder that draws its input back)
    assert binding_accuracy(perfect, probe["one_object"], side) == 1.0
    assert binding_accuracy(perfect, probe["two_object"], side) == 1.0
    twins = torch.stack([image_to_tensor(swap_places(s).render(side)) for s in probe["two_object"]])
    swapped = lambda renders, captions: twins  # noqa: E731  (right objects, relation inverted)
    assert binding_accuracy(swapped, probe["two_object"], side) == 0.0
    blank = lambda renders, captions: torch.ones_like(renders)  # noqa: E731  (an all-white image)
    assert binding_accuracy(blank, probe["one_object"], side) == 0.0


def test_the_decoder_run_logs_the_binding_monitor(tmp_path, monkeypatch):
    """The monitor decodes each probe render from its true CLIP image embedding with the EMA
    weights (which the export ships), guided, DDPM 10 steps, seed 0, and logs the detector's share."""
    import unclip.training.stages.decoder as stage

    decoded = {}

    def recording(reconstruct, scenes, side):
        renders = torch.stack([image_to_tensor(s.render(side)) for s in scenes])
        decoded[len(decoded)] = (renders, [s.caption for s in scenes], reconstruct(renders, [s.caption for s in scenes]))
        return binding_accuracy(reconstruct, scenes, side)

    monkeypatch.setattr(stage, "binding_accuracy", recording)
    out = tmp_path / "run"
    assert main(["train", "decoder", "--config", str(ROOT / "configs/tiny/decoder.yaml"), "--output", str(out),
                 "--no-progress", "training.steps=1", "training.checkpoint_every=100"]) == 0
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    monitor = next(entry for entry in logs if "decoder/binding_two_object" in entry)
    assert monitor["step"] == 1
    cfg = load_stage_config(ROOT / "configs/tiny/decoder.yaml")
    clip, decoder = load_component(out / "export" / "clip"), load_component(out / "export" / "decoder")
    empty = clip.encode_text([""])

    def from_true_z(renders, captions):
        fn = decoder_denoiser(decoder, clip.encode_image(renders), clip.encode_text(captions), empty,
                              cfg.diffusion.guidance_scale)
        g = torch.Generator().manual_seed(0)
        x_T = torch.randn(renders.shape, generator=g)
        return sample_loop(fn, make_scheduler(cfg.diffusion, Sampler.ddpm), x_T, 10, channels=3, generator=g,
                           progress=False)

    probe = binding_probe(cfg.training.binding_monitor)
    assert [c for r, c, x in decoded.values()] == [[s.caption for s in scenes] for scenes in probe.values()]
    for renders, captions, x in decoded.values():
        torch.testing.assert_close(x, from_true_z(renders, captions), atol=1e-4, rtol=0)
    for kind, scenes in probe.items():
        assert monitor[f"decoder/binding_{kind}"] == binding_accuracy(from_true_z, scenes, cfg.decoder.sample_size)


def test_the_binding_monitor_can_be_turned_off_and_refuses_a_negative_count(tmp_path, capsys):
    args = ["train", "decoder", "--config", str(ROOT / "configs/tiny/decoder.yaml"), "--no-progress",
            "training.steps=1", "training.checkpoint_every=100"]
    assert main([*args, "--output", str(tmp_path / "off"), "training.binding_monitor=0"]) == 0
    logs = (tmp_path / "off" / "log.jsonl").read_text()
    assert "decoder/binding" not in logs and '"step": 1' in logs
    assert main([*args, "--output", str(tmp_path / "bad"), "training.binding_monitor=-1"]) == 2
    assert "training.binding_monitor=-1" in capsys.readouterr().err


def test_eval_true_image_embedding_feeds_the_renders_own_clip_embedding(tiny_pipeline, monkeypatch):
    from unclip.evaluation.report import one_object_scenes

    scenes = one_object_scenes([("red", "circle"), ("blue", "square")], 3, seed=0)
    seen = {}

    def decode_best_of(pipe, image_emb, text, run, generator, candidates=1, progress=True):
        seen["image_emb"], seen["text_emb"] = image_emb, text.emb
        return torch.zeros(len(scenes), 3, 32, 32)

    monkeypatch.setattr(unclip.evaluation.report, "decode_best_of", decode_best_of)
    settings = EvalSettings(steps={"decoder": 1})
    generate_side(tiny_pipeline, scenes, 32, settings, seed=0, source="image")
    side = tiny_pipeline.clip.image_size
    assert torch.allclose(seen["image_emb"], tiny_pipeline.clip.encode_image([s.render(side) for s in scenes]))
    assert not torch.allclose(seen["image_emb"], seen["text_emb"])
    generate_side(tiny_pipeline, scenes, 32, settings, seed=0, source="text")
    assert torch.equal(seen["image_emb"], seen["text_emb"])


def test_eval_markdown_shows_the_true_embedding_rows_and_reads_older_reports():
    row = {"colour": 1.0, "shape": 0.5, "position": 0.25, "all": 0.25, "n": 4}
    report = {"settings": {"seed": 0}, "detector_accuracy_on_real_renders": {"64": {"all": 1.0, "n": 4}},
              "binding": {"one_object_seen": row, "one_object_held_out": row, "two_object": {"all": 0.5, "n": 4}},
              "ablation_text_embedding_as_image_embedding": {"two_object": {"all": 0.5, "n": 4}},
              "prior": {"text_embedding_baseline": 0.8, "prior_best_of_1": 0.9, "prior_best_of_2": 0.91},
              "variations": {"colour_and_shape": 1.0}, "interpolations": {"ends": 1.0, "frame_steps_toward_b": 1.0}}
    assert "true image emb." not in markdown(report)  # written before the rows existed
    report["true_image_embedding"] = {"two_object": {"all": 0.75, "n": 4}}
    assert "| two object | true image emb. | – | – | – | 75.0% | 4 |" in markdown(report)
