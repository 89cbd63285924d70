"""DALL·E 2's product features: ``unclip edit``, the content filter (``--blocklist``) and the
signature watermark (``--watermark``), from the CLI, Python and the server."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unclip.cli import main
from unclip.pipeline.watermark import SIGNATURE, add_signature
from unclip.safety import Blocklist, ContentPolicyViolation, check_prompt

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--random-from", str(ROOT / "configs" / "tiny"), "--steps", "1", "--quiet", "--seed", "0"]


def picture_with_hole(path: Path, side: int = 40, seed: int = 0) -> np.ndarray:
    """A random RGBA PNG whose top-left quarter is fully transparent; returns its keep mask."""
    rgba = np.random.default_rng(seed).integers(0, 256, (side, side, 4), dtype=np.uint8)
    rgba[..., 3] = np.maximum(rgba[..., 3], 1)
    rgba[: side // 2, : side // 2, 3] = 0
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba[..., 3] > 0


# ----------------------------------------------------------------------------------------------
# unclip edit


def test_edit_regenerates_the_transparent_pixels_and_keeps_the_rest_byte_for_byte(tmp_path, capsys):
    keep = picture_with_hole(tmp_path / "hole.png")
    out = tmp_path / "out"
    assert main(["edit", str(tmp_path / "hole.png"), "a red circle", "-n", "2", "--out", str(out), *TINY]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["hole-edit-0.png", "hole-edit-1.png", "hole-edit-grid.png"]
    assert capsys.readouterr().out.split() == [str(out / name) for name in written]
    original = np.asarray(Image.open(tmp_path / "hole.png").convert("RGB"))
    results = [np.asarray(Image.open(out / f"hole-edit-{i}.png")) for i in range(2)]
    for result in results:
        assert result.shape == original.shape
        assert np.array_equal(result[keep], original[keep])
        assert not np.array_equal(result[~keep], original[~keep])  # the hole is drawn anew
    assert not np.array_equal(results[0][~keep], results[1][~keep])


def test_edit_with_a_mask_uses_the_masks_alpha(tmp_path):
    keep = picture_with_hole(tmp_path / "mask.png", seed=1)
    Image.open(tmp_path / "mask.png").convert("RGB").save(tmp_path / "plain.png")  # no alpha of its own
    out = tmp_path / "out"
    assert main(["edit", str(tmp_path / "plain.png"), "a blue square", "--mask", str(tmp_path / "mask.png"),
                 "--out", str(out), *TINY]) == 0
    original = np.asarray(Image.open(tmp_path / "plain.png"))
    assert np.array_equal(np.asarray(Image.open(out / "plain-edit-0.png"))[keep], original[keep])


@pytest.mark.parametrize("case, message", [
    ("wide", "image: the image is 40×20, not square"),
    ("no alpha", "image: it has no alpha channel"),
    ("mask size", "mask: mask and image must have the same dimensions"),
    ("missing", "image: cannot read"),
    ("not a png", "image: cannot read"),
    ("empty prompt", "prompt: the prompt is empty"),
    ("opaque", "image: no fully transparent (alpha 0) pixels: nothing to regenerate"),
])
def test_edit_refuses_bad_input_in_one_line(tmp_path, capsys, case, message):
    picture_with_hole(tmp_path / "hole.png")
    Image.new("RGB", (40, 40)).save(tmp_path / "rgb.png")
    Image.new("RGBA", (40, 40), (10, 20, 30, 1)).save(tmp_path / "opaque.png")  # alpha, but never 0
    Image.new("RGBA", (40, 20)).save(tmp_path / "wide.png")
    Image.new("RGBA", (20, 20)).save(tmp_path / "small_mask.png")
    (tmp_path / "text.png").write_text("not an image")
    args = {"wide": [str(tmp_path / "wide.png"), "a circle"],
            "no alpha": [str(tmp_path / "rgb.png"), "a circle"],
            "mask size": [str(tmp_path / "hole.png"), "a circle", "--mask", str(tmp_path / "small_mask.png")],
            "missing": [str(tmp_path / "nowhere.png"), "a circle"],
            "not a png": [str(tmp_path / "text.png"), "a circle"],
            "empty prompt": [str(tmp_path / "hole.png"), "  "],
            "opaque": [str(tmp_path / "opaque.png"), "a circle"]}[case]
    assert main(["edit", *args, "--out", str(tmp_path / "out"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unclip edit: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_edit_of_a_shapes_render_with_the_shipped_cascade_fills_the_background():
    """A render with part of its background erased, edited with its own caption by the shipped
    cascade: the kept pixels come back exactly and the detector still reads the caption."""
    from unclip.data.shapes import parse_caption, scene_from_attributes
    from unclip.evaluation.detector import detect, score
    from unclip.pipeline import UnCLIPPipeline

    scene = scene_from_attributes("red", "circle", size="large", position="top left", background="white")
    rgba = np.asarray(scene.render(64).convert("RGBA")).copy()
    rgba[40:, 40:, 3] = 0  # the bottom-right corner, background only
    pipe = UnCLIPPipeline.from_pretrained(ROOT / "checkpoints" / "shapes")
    (result,) = pipe.inpaint(Image.fromarray(rgba, "RGBA"), scene.caption, size=64, seed=0, progress=False,
                             steps={"prior": 10, "decoder": 10})
    pixels, keep = np.asarray(result), rgba[..., 3] > 0
    assert np.array_equal(pixels[keep], rgba[..., :3][keep])
    assert score(detect(result), parse_caption(scene.caption))["all"]
    assert np.abs(pixels[40:, 40:].astype(int) - 255).mean() < 40  # the erased background comes back near white


# ----------------------------------------------------------------------------------------------
# the content filter


def test_the_blocklist_matches_whole_words_case_insensitively_and_takes_regular_expressions(tmp_path):
    (tmp_path / "block.txt").write_text("# a comment\n\ncat\nsquares?\n")
    blocklist = Blocklist.from_file(tmp_path / "block.txt")
    assert blocklist.flag("a black CAT on a mat") == "it matches the blocklist entry 'cat'"
    assert blocklist.flag("two Squares") == "it matches the blocklist entry 'squares?'"
    assert blocklist.flag("a category of concatenated squarest things") is None
    assert blocklist.flag("# a comment") is None  # comment lines are not entries
    with pytest.raises(ContentPolicyViolation, match="prompt: rejected by the content filter"):
        check_prompt(blocklist, "one cat")
    assert check_prompt(None, "one cat") == "one cat"  # no filter, no filtering
    with pytest.raises(ValueError, match=r"blocklist: entry 2 \('sq\(uare'\) is not a valid regular expression"):
        Blocklist(["cat", "sq(uare"])


def test_a_flagged_prompt_exits_2_before_anything_is_generated(tmp_path, capsys):
    (tmp_path / "block.txt").write_text("circle\n")
    out = tmp_path / "out"
    code = main(["generate", "a red Circle", "--blocklist", str(tmp_path / "block.txt"), "--out", str(out), *TINY])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rejected by the content filter" in err and "'circle'" in err
    assert main(["generate", "a red square", "--blocklist", str(tmp_path / "block.txt"), "--out", str(out),
                 *TINY]) == 0
    assert main(["generate", "a red circle", "--blocklist", str(tmp_path / "missing.txt"), *TINY]) == 2
    assert "--blocklist: cannot read" in capsys.readouterr().err


def test_the_server_answers_a_flagged_prompt_with_a_content_policy_error(tiny_pipeline):
    testclient = pytest.importorskip("fastapi.testclient")
    from unclip.server import create_app

    app = create_app(tiny_pipeline, steps=1, prompt_filter=Blocklist(["star"]))
    long_flagged = "a yellow " + "circle " * 100 + "star"  # the entry lies past CLIP's 77 tokens
    with testclient.TestClient(app) as client:
        flagged = client.post("/v1/images/generations", json={"prompt": "a yellow star", "response_format": "b64_json"})
        late = client.post("/v1/images/generations", json={"prompt": long_flagged, "response_format": "b64_json"})
        fine = client.post("/v1/images/generations", json={"prompt": "a yellow circle", "response_format": "b64_json"})
    for refused in (flagged, late):
        assert refused.status_code == 400
        error = refused.json()["error"]  # OpenAI's words: the blocklist's entries are not revealed
        assert error == {"message": "Your request was rejected as a result of our safety system.",
                         "type": "invalid_request_error", "param": None, "code": "content_policy_violation"}
    assert fine.status_code == 200 and len(fine.json()["data"]) == 1


# ----------------------------------------------------------------------------------------------
# the signature watermark


def test_the_signature_is_five_squares_in_the_bottom_right_corner_scaled_with_the_image():
    for side, square in ((1024, 16), (256, 4), (64, 1)):
        image = Image.new("RGB", (side, side), "white")
        signed = np.asarray(add_signature(image))
        assert np.asarray(image).min() == 255  # the input is not drawn on
        strip = signed[side - square:, side - 5 * square:]
        for i, colour in enumerate(SIGNATURE):
            assert (strip[:, i * square:(i + 1) * square] == colour).all(), (side, i)
        rest = signed.copy()
        rest[side - square:, side - 5 * square:] = 255
        assert rest.min() == 255  # nothing else changes
    with pytest.raises(ValueError, match="too small for the signature"):
        add_signature(Image.new("RGB", (4, 4)))


def test_watermark_from_the_cli_and_the_server(tmp_path, tiny_pipeline):
    out = tmp_path / "out"
    assert main(["generate", "a red circle", "--size", "64", "--watermark", "--out", str(out), *TINY]) == 0
    corner = np.asarray(Image.open(out / "a-red-circle-0.png"))[-1, -5:]
    assert [tuple(p) for p in corner] == list(SIGNATURE)  # 64 px: one-pixel squares

    testclient = pytest.importorskip("fastapi.testclient")
    from unclip.server import create_app

    with testclient.TestClient(create_app(tiny_pipeline, steps=1, watermark=True)) as client:
        response = client.post("/v1/images/generations", json={"prompt": "a circle", "size": "256x256",
                                                                "response_format": "b64_json"})
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))))
    assert (image[-4:, -4:] == SIGNATURE[-1]).all() and (image[-4:, -20:-16] == SIGNATURE[0]).all()


# ----------------------------------------------------------------------------------------------
# outpainting


def test_window_origins_cover_the_canvas_nearest_first():
    from unclip.pipeline.outpaint import window_origins

    origins = window_origins(96, 64, 40, centre=(48, 32))
    covered = np.zeros((64, 96), bool)
    for x, y in origins:
        assert 0 <= x <= 56 and 0 <= y <= 24
        covered[y:y + 40, x:x + 40] = True
    assert covered.all()
    distances = [(x + 20 - 48) ** 2 + (y + 20 - 32) ** 2 for x, y in origins]
    assert distances == sorted(distances)


def test_outpaint_grows_the_canvas_and_keeps_the_original_exactly(tmp_path, capsys):
    original = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)  # not square
    Image.fromarray(original).save(tmp_path / "small.png")
    out = tmp_path / "out"
    assert main(["outpaint", str(tmp_path / "small.png"), "a red circle", "--expand", "8", "--right", "20",
                 "--out", str(out), *TINY]) == 0
    result = np.asarray(Image.open(out / "small-outpaint-0.png"))
    assert result.shape == (24 + 16, 32 + 8 + 20, 3)
    assert np.array_equal(result[8:32, 8:40], original)
    border = np.ones(result.shape[:2], bool)
    border[8:32, 8:40] = False
    assert result[border].std() > 1  # the new area is drawn, not left blank
    assert capsys.readouterr().out.split() == [str(out / "small-outpaint-0.png")]


@pytest.mark.parametrize("args, message", [
    ([], "margins: nothing to outpaint"),
    (["--left", "-3"], "left: expected a whole number >= 0"),
    (["--expand", "5000"], "left: at most 4096 pixels"),
])
def test_outpaint_refuses_bad_margins_in_one_line(tmp_path, capsys, args, message):
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    assert main(["outpaint", str(tmp_path / "a.png"), "a circle", *args, *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unclip outpaint: error: ") and message in err and err.count("\n") == 1


def test_outpaint_from_python_conditions_each_window_on_what_is_there(tiny_pipeline, monkeypatch):
    """Every window is decoded from slerp(z_prompt, z_there, context): with context 0 all windows get
    the prompt's one embedding; with context 1 each gets the embedding of what it shows."""
    import unclip.pipeline.outpaint as outpaint

    seen = []
    real = outpaint.inpaint

    def spy(pipe, image, prompt, options, **kwargs):
        seen.append(kwargs["image_emb"].clone())
        return real(pipe, image, prompt, options, **kwargs)

    monkeypatch.setattr(outpaint, "inpaint", spy)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    kwargs = dict(left=16, top=16, size=32, steps=1, seed=0, progress=False)
    first = tiny_pipeline.outpaint(image, "a star", context=0.0, **kwargs)
    assert first.size == (48, 48) and len(seen) > 1
    assert all(torch.equal(z, seen[0]) for z in seen)
    seen.clear()
    tiny_pipeline.outpaint(image, "a star", context=1.0, **kwargs)
    # 32-pixel windows on the 48-pixel canvas; the original's own is skipped, the first drawn is the
    # top-right one (x 16..48, y 0..32), whose bottom half is the original's top half
    window = np.zeros((32, 32, 3), np.uint8)
    window[16:] = np.asarray(image)[:16]
    window[:16] = np.asarray(image)[:16].reshape(-1, 3).mean(axis=0).round()
    there = tiny_pipeline.clip.encode_image([Image.fromarray(window)])[0]
    torch.testing.assert_close(seen[0], there, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(seen[0], seen[1])


def test_outpaint_windows_are_at_least_the_decoders_side(tiny_pipeline, monkeypatch):
    """An 8-pixel image grown to 32 is filled by one window of the decoder's side (32 in the tiny
    cascade), not by dozens of 8-pixel ones."""
    import unclip.pipeline.outpaint as outpaint

    sides = []

    def blank_window(pipe, image, prompt, options, **kwargs):
        sides.append(image.size)
        return [Image.new("RGB", image.size)]

    monkeypatch.setattr(outpaint, "inpaint", blank_window)
    result = tiny_pipeline.outpaint(Image.new("RGB", (8, 8), "red"), "a star", left=12, right=12, top=12, bottom=12,
                                    steps=1, seed=0, progress=False)
    assert result.size == (32, 32) and sides == [(32, 32)]


def test_outpaint_refuses_a_canvas_of_too_many_windows_before_sampling(tiny_pipeline, monkeypatch):
    import unclip.pipeline.outpaint as outpaint

    def never(*args, **kwargs):
        raise AssertionError("sampled before refusing")

    monkeypatch.setattr(outpaint, "sample_prior", never)
    monkeypatch.setattr(outpaint, "inpaint", never)
    with pytest.raises(ValueError, match="expand: a 8×8 image grown to 2056×2056 needs 16384 windows of 32 px, "
                                         "more than 64"):
        tiny_pipeline.outpaint(Image.new("RGB", (8, 8)), "a star", left=1024, right=1024, top=1024, bottom=1024,
                               steps=1, progress=False)


def test_the_server_refuses_an_outpaint_of_too_many_windows_with_a_400_on_expand(tiny_pipeline):
    testclient = pytest.importorskip("fastapi.testclient")
    from unclip.server import create_app

    app = create_app(tiny_pipeline, steps=1)

    def never(tasks):
        raise RuntimeError("the outpaint was queued instead of refused")

    app.state.worker.outpaint = never
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with testclient.TestClient(app) as client:
        response = client.post("/v1/images/outpaint", files={"image": ("a.png", png.getvalue(), "image/png")},
                               data={"prompt": "a circle", "expand": "1024"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "expand" and "more than 64" in error["message"]


def test_the_server_outpaints_and_keeps_the_original(tiny_pipeline):
    testclient = pytest.importorskip("fastapi.testclient")
    from unclip.server import create_app

    original = np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(original).save(png, format="PNG")
    files = {"image": ("a.png", png.getvalue(), "image/png")}
    with testclient.TestClient(create_app(tiny_pipeline, steps=1)) as client:
        response = client.post("/v1/images/outpaint", files=files,
                               data={"prompt": "a circle", "expand": "4", "right": "12", "response_format": "b64_json"})
        nothing = client.post("/v1/images/outpaint", files=files, data={"prompt": "a circle"})
        too_far = client.post("/v1/images/outpaint", files=files, data={"prompt": "a circle", "top": "5000"})
    assert response.status_code == 200, response.text
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))))
    assert image.shape == (24, 32, 3) and np.array_equal(image[4:20, 4:20], original)
    assert nothing.status_code == 400 and nothing.json()["error"]["param"] == "expand"
    assert too_far.status_code == 400 and too_far.json()["error"]["param"] == "top"


def test_outpaint_of_a_shapes_render_with_the_shipped_cascade():
    """The left half of a render, outpainted to the right with its caption by the shipped cascade:
    the kept half comes back exactly and the detector reads the whole caption."""
    from unclip.data.shapes import scene_from_attributes
    from unclip.evaluation.detector import detect, score
    from unclip.pipeline import UnCLIPPipeline

    scene = scene_from_attributes("red", "circle", size="large", position="left", background="white")
    half = scene.render(64).crop((0, 0, 32, 64))
    pipe = UnCLIPPipeline.from_pretrained(ROOT / "checkpoints" / "shapes")
    result = pipe.outpaint(half, scene.caption, right=32, size=64, seed=0, progress=False,
                           steps={"prior": 10, "decoder": 10})
    assert result.size == (64, 64)
    assert np.array_equal(np.asarray(result)[:, :32], np.asarray(half))
    assert score(detect(result), scene)["all"]


# ----------------------------------------------------------------------------------------------
# upscale (the upsamplers alone)


def test_upscale_runs_only_the_stages_above_the_image(tiny_pipeline, monkeypatch):
    calls = []
    for slot, net in tiny_pipeline.upsamplers.items():
        monkeypatch.setattr(net, "forward", lambda *a, slot=slot, net=net, **k: calls.append(slot) or
                            type(net).forward(net, *a, **k))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert tiny_pipeline.upscale(image, size=128, steps=2, seed=0, progress=False).size == (128, 128)
    assert set(calls) == {"upsampler_1024"}  # a 64 image skips the 32→64 stage
    calls.clear()
    small = image.resize((20, 20))
    assert tiny_pipeline.upscale(small, size=64, steps=2, seed=0, progress=False).size == (64, 64)
    assert set(calls) == {"upsampler_256"}  # resized up to the decoder's 32 first
    assert tiny_pipeline.upscale(small, steps=1, seed=0, progress=False).size == (128, 128)  # default: the largest
    with pytest.raises(ValueError, match="size: 64 is not above the image's side in this cascade \\(64\\)"):
        tiny_pipeline.upscale(image, size=64)
    with pytest.raises(ValueError, match="image: the image is 40×20, not square"):
        tiny_pipeline.upscale(Image.new("RGB", (40, 20)))


def _zero_output_upsampler(tiny_pipeline, residual: bool):
    """The tiny 32→64 upsampler, x0-parameterised, its output layer zeroed (it predicts x0 = 0), as
    an image-space or a residual upsampler, in a pipeline of its own."""
    import copy
    import dataclasses

    from unclip.config import Prediction
    from unclip.pipeline import UnCLIPPipeline
    from unclip.pipeline.plan import StageSampling

    slot = "upsampler_256"
    net = copy.deepcopy(tiny_pipeline.upsamplers[slot])
    net.cfg = dataclasses.replace(net.cfg, residual=residual)
    with torch.no_grad():
        net.unet.conv_out.weight.zero_()
        net.unet.conv_out.bias.zero_()
    diffusion = dataclasses.replace(tiny_pipeline.sampling[slot].diffusion, prediction=Prediction.x0, sample_start=None)
    return UnCLIPPipeline(tiny_pipeline.clip, None, None, {slot: net}, sampling={slot: StageSampling(diffusion)})


@pytest.mark.parametrize("residual", [False, True])
def test_a_residual_upsampler_diffuses_what_bicubic_misses(tiny_pipeline, residual):
    """upsampler.residual: the diffused variable is the image minus its bicubic conditioning, so a
    network that predicts 0 returns the bicubic image (and the image-space one flat grey), through
    upscale and through the upsampler inpainting of edit."""
    from unclip.data.degradations import upsample_condition
    from unclip.data.images import image_to_tensor, tensor_to_pil

    pipe = _zero_output_upsampler(tiny_pipeline, residual)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    out = np.asarray(pipe.upscale(image, size=64, steps=3, sampler="ddim", seed=0, progress=False), dtype=int)
    bicubic = np.asarray(tensor_to_pil(upsample_condition(image_to_tensor(image)[None], 64))[0], dtype=int)
    if residual:
        assert np.abs(out - bicubic).max() <= 1
    else:
        assert np.abs(out - 128).max() <= 1 and np.abs(out - bicubic).mean() > 20
    # edit's upsampler step: the kept left half is the original's, the rest what the network makes
    from unclip.pipeline.inpaint import _upsample_known, known_at

    original = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    keep = Image.new("L", (64, 64), 0)
    keep.paste(255, (0, 0, 32, 64))
    slot = next(iter(pipe.upsamplers))
    run = pipe.plan([slot], steps=3)[slot]
    g = torch.Generator().manual_seed(0)
    pixels = _upsample_known(pipe, slot, image_to_tensor(image)[None], run, known_at(original, keep, 64, "cpu"), g,
                             lambda shape: torch.randn(shape, generator=g))
    edited = np.asarray(tensor_to_pil(pixels)[0], dtype=int)
    assert np.abs(edited[:, :32] - np.asarray(original, dtype=int)[:, :32]).max() <= 1
    expected = bicubic[:, 32:] if residual else 128
    assert np.abs(edited[:, 32:] - expected).max() <= 1


def test_a_folder_of_upsamplers_alone_upscales_but_makes_no_images(tiny_pipeline, tmp_path):
    """A cascade shipped stage by stage (checkpoints/emoji while its decoder trains): CLIP and
    upsamplers, no prior or decoder."""
    from unclip.pipeline import UnCLIPPipeline

    partial = UnCLIPPipeline(tiny_pipeline.clip, None, None, dict(tiny_pipeline.upsamplers))
    assert partial.sizes == [32, 64, 128]  # from the first upsampler's input side
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    loaded = UnCLIPPipeline.from_pretrained(partial.save_pretrained(tmp_path / "partial"))
    assert loaded.upscale(image, size=64, steps=1, seed=0, progress=False).size == (64, 64)
    with pytest.raises(ValueError, match="size: 96 is not supported by this pipeline; it makes 32, 64, 128"):
        loaded.upscale(image, size=96)
    with pytest.raises(ValueError, match="no prior/|no decoder/"):
        loaded.generate("a red circle", steps=1)
    with pytest.raises(ValueError, match="no decoder/"):
        loaded.variations(image, steps=1)


def test_upscale_from_the_cli(tmp_path, capsys):
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "text.png").write_text("not an image")
    out = tmp_path / "out"
    args = ["--random-from", str(ROOT / "configs" / "tiny"), "--steps", "1", "--quiet", "--out", str(out)]
    assert main(["upscale", str(tmp_path / "red.png"), "--size", "64", *args]) == 0
    assert Image.open(out / "red-64-0.png").size == (64, 64)
    assert main(["upscale", str(tmp_path / "text.png"), *args]) == 2
    assert "unclip upscale: error: image: cannot read" in capsys.readouterr().err


def test_upscale_of_a_shapes_render_with_the_shipped_cascade():
    """A 64 render to 256 by the shipped (residual, one DDPM step at t = 999) 64→256 upsampler
    alone reads right and is closer to the real 256 render than bicubic resizing is (measured with
    part 5, trained on native 64 renders: PSNR 43.1 dB against bicubic's 32.3, MSE ratio 0.08;
    part 4 gave 33.0 dB, ratio 0.85)."""
    from unclip.data.shapes import scene_from_attributes
    from unclip.evaluation.detector import detect, score
    from unclip.pipeline import UnCLIPPipeline

    scene = scene_from_attributes("blue", "star", size="large", position="center", background="black")
    pipe = UnCLIPPipeline.from_pretrained(ROOT / "checkpoints" / "shapes")
    result = pipe.upscale(scene.render(64), size=256, seed=0, progress=False)
    truth = np.asarray(scene.render(256), dtype=float)
    bicubic = np.asarray(scene.render(64).resize((256, 256), Image.Resampling.BICUBIC), dtype=float)
    assert result.size == (256, 256) and score(detect(result), scene)["all"]
    mse = lambda x: float(np.mean((x - truth) ** 2))  # noqa: E731
    assert mse(np.asarray(result, dtype=float)) < 0.3 * mse(bicubic)  # part 4: 0.85


def test_the_shipped_1024_upsampler_sharpens_beyond_bicubic_and_keeps_flat_backgrounds_flat():
    """A 256 render to 1024 by the shipped (residual, one DDPM step at t = 999) 256→1024 stage
    alone, on its default 256×256 tiles. Part 2 of these weights, trained on plain random crops,
    was level with bicubic (39.64 dB against 39.88 here) and 3.3 dB worse on the whole image, whose
    statistics GroupNorm had not seen; part 3, trained on crops chosen for their edges, measured
    41.07 dB on tiles and 41.31 on the whole image; part 4, trained on native 256 renders
    (data.low_res), measured at shipping 43.27 dB on tiles, 43.13 on the whole image and 39.88 for
    bicubic, with a background error of 0.14 grey levels on tiles (0.34 whole)."""
    from unclip.data.shapes import scene_from_attributes
    from unclip.pipeline import UnCLIPPipeline

    scene = scene_from_attributes("red", "circle", size="large", position="top left", background="black")
    pipe = UnCLIPPipeline.from_pretrained(ROOT / "checkpoints" / "shapes")
    truth = np.asarray(scene.render(1024), dtype=float)
    flat = np.abs(truth - truth[-1, -1]).sum(-1) == 0
    psnr = lambda x: float(10 * np.log10(255**2 / np.mean((np.asarray(x, dtype=float) - truth) ** 2)))  # noqa: E731
    tiles = pipe.upscale(scene.render(256), size=1024, seed=0, progress=False)
    whole = pipe.upscale(scene.render(256), size=1024, seed=0, progress=False, tile=0)
    bicubic = scene.render(256).resize((1024, 1024), Image.Resampling.BICUBIC)
    assert psnr(tiles) > psnr(bicubic) + 2.5 and psnr(whole) > psnr(bicubic) + 2.5  # part 3: +1.2 / +1.4
    assert np.abs(np.asarray(tiles, dtype=float) - truth)[flat].mean() < 0.5
