"""The OpenAI-compatible server (unclip.server) on 127.0.0.1, driven by the official openai client.

Servers run in this process on a free port (``serve_in_thread``) around the session's tiny random
pipeline, with one sampling step per stage; one test starts ``unclip serve`` as a command.
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

openai = pytest.importorskip("openai", reason="the server tests use the official openai client (unclip[test])")
pytest.importorskip("fastapi", reason="the server needs the serve extra (unclip[serve])")
requests = pytest.importorskip("requests")

from unclip.server import create_app  # noqa: E402
from unclip.server.background import serve_in_thread  # noqa: E402
from unclip.server.files import ImageStore  # noqa: E402

MODEL = "tiny-test"


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    app = create_app(tiny_pipeline, steps=1, model_name=MODEL, max_queue=32)
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="sk-local", max_retries=0, timeout=120,
                         _strict_response_validation=True)


def png_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def noise_image(side: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = len(mode)
    array = np.random.default_rng(seed).integers(0, 256, (side, side, channels), dtype=np.uint8)
    return Image.fromarray(array, mode)


def decode(item) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item.b64_json)))


# ----------------------------------------------------------------------------------------------
# the three endpoints through the openai client


def test_generate_b64_json(client):
    response = client.images.generate(prompt="a large red circle in the top left on a white background",
                                      model="dall-e-2", n=2, size="256x256", response_format="b64_json")
    assert isinstance(response.created, int)
    assert len(response.data) == 2
    for item in response.data:
        assert item.url is None
        image = decode(item)
        assert image.format == "PNG" and image.size == (256, 256)


def test_generate_url_serves_the_file_again_later(client):
    raw = client.images.with_raw_response.generate(prompt="a small blue star", size="512x512")
    response = raw.parse()
    assert raw.headers["x-unclip-source-size"] == "128"  # the tiny cascade's largest stage, resized
    (item,) = response.data
    assert item.b64_json is None and item.url.startswith("http://127.0.0.1:")
    for _ in range(2):  # stays valid across requests
        fetched = requests.get(item.url, timeout=30)
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(fetched.content)).size == (512, 512)
    for name in ("img-" + "A" * 32 + ".png", "..%2Fpipeline.json"):
        missing = requests.get(item.url.rsplit("/", 1)[0] + "/" + name, timeout=30)
        assert missing.status_code == 404 and missing.json()["error"]["message"]


def test_image_files_expire(tmp_path, monkeypatch):
    import unclip.server.files as files

    store = ImageStore(tmp_path, ttl_s=60)
    name = store.save(b"\x89PNG fake")
    assert store.path(name) == tmp_path / name
    assert store.path("../" + name) is None
    now = time.time()
    monkeypatch.setattr(files.time, "time", lambda: now + 59)  # the store's clock, not the wall's
    assert store.path(name) == tmp_path / name and store.sweep() == 0
    monkeypatch.setattr(files.time, "time", lambda: now + 61)
    assert store.path(name) is None  # expired: answered 404 even before the sweep
    assert store.sweep() == 1 and not (tmp_path / name).exists()


def test_an_image_store_on_a_file_says_so(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(ValueError, match="image_dir: .*taken is a file, not a folder"):
        ImageStore(tmp_path / "taken")
    with pytest.raises(ValueError, match="image_dir: cannot create the folder"):
        ImageStore(tmp_path / "taken" / "images")


def test_edit_keeps_the_unmasked_pixels(client):
    image = noise_image(256, seed=1)
    alpha = np.full((256, 256), 255, np.uint8)
    alpha[64:160, 96:224] = 0  # the hole to fill
    mask = Image.merge("RGBA", [Image.new("L", (256, 256), 0)] * 3 + [Image.fromarray(alpha)])
    response = client.images.edit(image=("image.png", png_bytes(image), "image/png"), mask=png_bytes(mask),
                                  prompt="a green triangle", n=2, size="256x256", response_format="b64_json")
    keep = alpha > 0
    original = np.asarray(image)
    assert len(response.data) == 2
    for item in response.data:
        result = np.asarray(decode(item).convert("RGB"))
        assert result.shape == (256, 256, 3)
        assert np.array_equal(result[keep], original[keep])
        assert (result[~keep] != original[~keep]).any(-1).mean() > 0.9


def test_edit_without_mask_uses_the_images_alpha(client, tmp_path):
    rgba = noise_image(128, "RGBA", seed=2)
    array = np.asarray(rgba).copy()
    array[..., 3] = 255
    array[:40, :40, 3] = 0
    path = tmp_path / "hole.png"
    Image.fromarray(array, "RGBA").save(path)
    with open(path, "rb") as file:  # an open file, as user code does
        response = client.images.edit(image=file, prompt="a purple square", size="256x256",
                                      response_format="b64_json")
    result = np.asarray(decode(response.data[0]).convert("RGB"))
    expected = np.asarray(Image.fromarray(array[..., :3]).resize((256, 256), Image.Resampling.BICUBIC))
    keep = np.asarray(Image.fromarray(array[..., 3]).resize((256, 256), Image.Resampling.NEAREST)) > 0
    assert result.shape == (256, 256, 3)
    assert np.array_equal(result[keep], expected[keep])


def test_create_variation(client, tmp_path):
    path = tmp_path / "photo.png"
    noise_image(96, seed=3).save(path)
    response = client.images.create_variation(image=path, n=2, size="1024x1024", response_format="b64_json")
    assert [decode(item).size for item in response.data] == [(1024, 1024)] * 2
    raw_bytes = client.images.create_variation(image=path.read_bytes())  # octet-stream upload, url default
    assert len(raw_bytes.data) == 1 and raw_bytes.data[0].url


def test_interpolations_extension(server):
    files = {"image_a": ("a.png", png_bytes(noise_image(64, seed=4))),
             "image_b": ("b.png", png_bytes(noise_image(64, seed=5)))}
    response = requests.post(f"{server}/v1/images/interpolations", files=files,
                             data={"frames": "3", "size": "256x256", "response_format": "b64_json"}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"created", "data"} and len(body["data"]) == 3
    for item in body["data"]:
        assert Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).size == (256, 256)


def test_models_and_health(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == MODEL and "dall-e-2" in ids
    health = requests.get(f"{server}/health", timeout=30).json()
    assert health["status"] == "ok" and health["model"] == MODEL and health["sizes"] == [32, 64, 128]


def test_bad_request_comes_back_as_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a circle", n=11)
    assert caught.value.param == "n" and caught.value.type == "invalid_request_error"


# ----------------------------------------------------------------------------------------------
# every bad input → 400 in OpenAI's shape, with the right param

PROMPT = "a red circle"
LONG_IN_TOKENS = "circle " * 120  # under 1000 characters, over CLIP's 77 tokens


def _png(side=64, mode="RGB", **kw):
    return png_bytes(noise_image(side, mode), **kw) if mode != "RGBA_HOLE" else _hole(side)


def _hole(side=64):
    array = np.asarray(noise_image(side, "RGBA")).copy()
    array[..., 3] = 255
    array[: side // 2, : side // 2, 3] = 0
    return png_bytes(Image.fromarray(array, "RGBA"))


def _big_png():
    """A real PNG over 4 MB (incompressible noise, no compression)."""
    return png_bytes(noise_image(1200, seed=9), compress_level=0)


def _jpeg():
    buffer = io.BytesIO()
    noise_image(64).save(buffer, format="JPEG")
    return buffer.getvalue()


JSON_CASES = [
    ("missing prompt", {"n": 1}, "prompt"),
    ("empty prompt", {"prompt": "  "}, "prompt"),
    ("prompt not text", {"prompt": 42}, "prompt"),
    ("prompt over 1000 chars", {"prompt": "a" * 1001}, "prompt"),
    ("prompt with a lone surrogate", {"prompt": "a red \ud800 circle"}, "prompt"),
    ("n zero", {"prompt": PROMPT, "n": 0}, "n"),
    ("n eleven", {"prompt": PROMPT, "n": 11}, "n"),
    ("n fractional", {"prompt": PROMPT, "n": 1.5}, "n"),
    ("n boolean", {"prompt": PROMPT, "n": True}, "n"),
    ("unknown size", {"prompt": PROMPT, "size": "1000x1000"}, "size"),
    ("size auto", {"prompt": PROMPT, "size": "auto"}, "size"),
    ("unknown response format", {"prompt": PROMPT, "response_format": "jpeg"}, "response_format"),
    ("unknown model", {"prompt": PROMPT, "model": "gpt-image-1"}, "model"),
    ("stream true", {"prompt": PROMPT, "stream": True}, "stream"),
    ("transparent background", {"prompt": PROMPT, "background": "transparent"}, "background"),
    ("webp output", {"prompt": PROMPT, "output_format": "webp"}, "output_format"),
    ("partial images", {"prompt": PROMPT, "partial_images": 2}, "partial_images"),
    ("hd quality", {"prompt": PROMPT, "quality": "hd"}, "quality"),
]


@pytest.mark.parametrize("case, body, param", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_bad_generation_is_400(server, case, body, param):
    response = requests.post(f"{server}/v1/images/generations", json=body, timeout=60)
    assert_error(response, 400, param)


RAW_JSON_CASES = [
    ("malformed JSON", b'{"prompt": "a circle",', "application/json"),
    ("JSON array", b'["a circle"]', "application/json"),
    ("not JSON", b"prompt=a+circle", "application/x-www-form-urlencoded"),
    ("JSON nested past the parser's depth", b'{"prompt": ' + b"[" * 5000, "application/json"),
]


@pytest.mark.parametrize("case, data, content_type", RAW_JSON_CASES, ids=[c[0] for c in RAW_JSON_CASES])
def test_malformed_generation_body_is_400(server, case, data, content_type):
    response = requests.post(f"{server}/v1/images/generations", data=data,
                             headers={"Content-Type": content_type}, timeout=60)
    assert_error(response, 400, None)


def form_cases():
    ok = {"image": _png(64)}
    hole = {"image": _hole(64)}
    mask_hole = {"image": _png(64), "mask": _hole(64)}
    truncated = _png(64)[:200]
    opaque = png_bytes(Image.new("RGBA", (64, 64), (200, 40, 40, 255)))  # alpha, but nothing to regenerate
    return [
        # (name, endpoint, files, fields, param)
        ("edit: missing image", "edits", {}, {"prompt": PROMPT}, "image"),
        ("edit: missing prompt", "edits", hole, {}, "prompt"),
        ("edit: over-long prompt", "edits", hole, {"prompt": "a" * 1001}, "prompt"),
        ("edit: JPEG image", "edits", {"image": _jpeg()}, {"prompt": PROMPT}, "image"),
        ("edit: text named .png", "edits", {"image": b"this is not an image"}, {"prompt": PROMPT}, "image"),
        ("edit: truncated PNG", "edits", {"image": truncated}, {"prompt": PROMPT}, "image"),
        ("edit: over 4 MB", "edits", {"image": _big_png()}, {"prompt": PROMPT}, "image"),
        ("edit: not square", "edits", {"image": png_bytes(Image.new("RGBA", (64, 48)))}, {"prompt": PROMPT}, "image"),
        ("edit: mask of another size", "edits", {"image": _png(64), "mask": _hole(32)}, {"prompt": PROMPT}, "mask"),
        ("edit: mask not a PNG", "edits", {"image": _png(64), "mask": _jpeg()}, {"prompt": PROMPT}, "mask"),
        ("edit: mask without alpha", "edits", {"image": _png(64), "mask": _png(64)}, {"prompt": PROMPT}, "mask"),
        ("edit: RGB image, no mask", "edits", ok, {"prompt": PROMPT}, "image"),
        ("edit: no transparent pixel in the image", "edits", {"image": opaque}, {"prompt": PROMPT}, "image"),
        ("edit: no transparent pixel in the mask", "edits", {"image": _png(64), "mask": opaque}, {"prompt": PROMPT},
         "mask"),
        ("edit: n out of range", "edits", mask_hole, {"prompt": PROMPT, "n": "11"}, "n"),
        ("edit: n not a number", "edits", mask_hole, {"prompt": PROMPT, "n": "two"}, "n"),
        ("edit: unknown size", "edits", mask_hole, {"prompt": PROMPT, "size": "300x300"}, "size"),
        ("edit: unknown format", "edits", mask_hole, {"prompt": PROMPT, "response_format": "png"}, "response_format"),
        ("edit: stream true", "edits", mask_hole, {"prompt": PROMPT, "stream": "true"}, "stream"),
        ("edit: two images", "edits", {"image[]": _hole(64)}, {"prompt": PROMPT}, "image"),
        ("variation: missing image", "variations", {}, {"n": "1"}, "image"),
        ("variation: JPEG image", "variations", {"image": _jpeg()}, {}, "image"),
        ("variation: over 4 MB", "variations", {"image": _big_png()}, {}, "image"),
        ("variation: not square", "variations", {"image": png_bytes(Image.new("RGB", (40, 64)))}, {}, "image"),
        ("variation: n zero", "variations", ok, {"n": "0"}, "n"),
        ("variation: unknown size", "variations", ok, {"size": "64x64"}, "size"),
        ("variation: unknown model", "variations", ok, {"model": "dall-e-3"}, "model"),
        ("interpolation: missing image_b", "interpolations", {"image_a": _png(64)}, {}, "image_b"),
        ("interpolation: one frame", "interpolations", {"image_a": _png(64), "image_b": _png(64)}, {"frames": "1"},
         "frames"),
    ]


FORM_CASES = form_cases()


@pytest.mark.parametrize("case, endpoint, files, fields, param", FORM_CASES, ids=[c[0] for c in FORM_CASES])
def test_bad_upload_is_400(server, case, endpoint, files, fields, param):
    parts = {name: (f"{name}.png", data, "application/octet-stream") for name, data in files.items()}
    parts.update({name: (None, value) for name, value in fields.items()})  # text parts
    response = requests.post(f"{server}/v1/images/{endpoint}", files=parts, timeout=60)
    assert_error(response, 400, param)


def test_a_prompt_past_clips_tokens_is_cut_and_returned_as_revised_prompt(client, tiny_pipeline):
    """The API allows 1000 characters; CLIP reads 77 tokens. The server samples the leading words
    that fit and says so in each image's ``revised_prompt`` (absent where nothing was cut)."""
    clip = tiny_pipeline.clip
    long = client.images.generate(prompt=LONG_IN_TOKENS, n=2, size="256x256", response_format="b64_json")
    revised = {item.revised_prompt for item in long.data}
    (text,) = revised
    assert clip.token_count(LONG_IN_TOKENS) > clip.context_length >= clip.token_count(text)
    assert clip.token_count(text + " circle") > clip.context_length  # the longest run of words that fits
    assert LONG_IN_TOKENS.startswith(text)
    short = client.images.generate(prompt=PROMPT, size="256x256", response_format="b64_json")
    assert short.data[0].revised_prompt is None


def test_fit_prompt_cuts_at_words_and_inside_one_overlong_word(tiny_pipeline):
    from unclip.pipeline.inputs import fit_prompt

    clip = tiny_pipeline.clip
    assert fit_prompt(clip, "a  red\tcircle") == "a  red\tcircle"  # fits: untouched
    word = "ab" * 400
    cut = fit_prompt(clip, word + " circle")
    assert word.startswith(cut) and clip.token_count(cut) <= clip.context_length < clip.token_count(cut + "ab")


def test_a_failure_while_sampling_is_a_500_the_client_does_not_retry(tiny_pipeline, monkeypatch):
    """The input passed every check, so a ValueError from the pipeline at run time is the server's
    fault: not a 400 that blames the client; a 5xx of the framework stays one too."""
    from fastapi import HTTPException
    from fastapi.testclient import TestClient

    def broken(*args, **kwargs):
        raise ValueError("prompt: something inside the pipeline went wrong")

    app = create_app(tiny_pipeline, steps=1, model_name=MODEL)

    def unavailable():
        raise HTTPException(503, "down for maintenance")

    app.add_api_route("/unavailable", unavailable)
    monkeypatch.setattr(tiny_pipeline, "generate", broken)
    with TestClient(app, raise_server_exceptions=False) as http:
        failed = http.post("/v1/images/generations", json={"prompt": PROMPT, "response_format": "b64_json"})
        down = http.get("/unavailable")
    for response, status in ((failed, 500), (down, 503)):
        assert response.status_code == status, response.text
        assert response.json()["error"]["type"] == "server_error"
        assert response.headers["x-should-retry"] == "false" and response.headers["x-request-id"]


@pytest.mark.parametrize("body, content_type", [
    (b"--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc", "multipart/form-data; boundary=xyz"),
    (b"garbage", "multipart/form-data"),  # no boundary
    (b'{"image": "x"}', "application/json"),
], ids=["truncated multipart", "no boundary", "JSON instead of multipart"])
def test_malformed_multipart_is_400(server, body, content_type):
    response = requests.post(f"{server}/v1/images/variations", data=body, headers={"Content-Type": content_type},
                             timeout=60)
    assert_error(response, 400, None)


def assert_error(response, status: int, param: str | None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param, body
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    assert response.headers.get("x-request-id")  # the openai client's e.request_id


def test_neutral_fields_from_newer_clients_are_accepted(server):
    body = {"prompt": PROMPT, "size": "256x256", "quality": "standard", "style": "vivid", "stream": False,
            "output_format": "png", "background": "auto", "user": "u1", "moderation": "low", "some_future_field": 1,
            "response_format": "b64_json", "n": None}
    response = requests.post(f"{server}/v1/images/generations", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1


def test_the_server_samples_at_its_precision(tiny_pipeline):
    with pytest.raises(ValueError, match="precision"):
        create_app(tiny_pipeline, steps=1, model_name=MODEL, precision="fp16")
    worker = create_app(tiny_pipeline, steps=1, model_name=MODEL, precision="bf16").state.worker
    options = worker.options(64)
    assert options.precision == "bf16" and options.size == 64 and options.steps == 1


def test_a_server_fault_is_a_500_without_traceback_and_not_retried(tiny_pipeline):
    app = create_app(tiny_pipeline, steps=1, model_name=MODEL)

    def out_of_memory(tasks):
        raise RuntimeError("CUDA out of memory (simulated)")

    app.state.worker.generate = out_of_memory
    with serve_in_thread(app) as url:
        response = requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT}, timeout=60)
    assert response.status_code == 500
    assert response.headers["x-should-retry"] == "false"  # the openai client would repeat it otherwise
    error = response.json()["error"]
    assert error["type"] == "server_error" and "CUDA" not in error["message"] and "Traceback" not in response.text


class CountingPipeline:
    """Stands in for the pipeline: records how many images each call asks for, makes blank ones."""

    sizes, decoder = [32], object()

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def made(self, kind: str, count: int) -> list[Image.Image]:
        self.calls.append((kind, count))
        return [Image.new("RGB", (32, 32))] * count

    def generate(self, prompts, n, options):
        return self.made("generate", len(prompts) * n)

    def inpaint(self, image, prompt, options, *, n, **kwargs):
        return self.made("edit", n)

    def variations(self, image, n, options, eta):
        return self.made("vary", n)

    def interpolate(self, image_a, image_b, frames, options):
        return self.made("interpolate", frames)


def test_max_batch_bounds_every_pipeline_call_even_within_one_request(tiny_pipeline, tmp_path):
    """A request's n above max_batch is split into pipeline calls of at most max_batch images;
    interpolation frames (one slerp, at most 16) stay in one call."""
    from unclip.server.params import Common
    from unclip.server.work import Delivery, EditTask, GenerateTask, InterpolateTask, VaryTask, Worker

    pipe = CountingPipeline()
    worker = Worker(pipe, ImageStore(tmp_path), max_batch=3)

    def delivery(n):
        return Delivery(Common(MODEL, n, 256, "b64_json"), "http://x/")

    image = Image.new("RGBA", (32, 32))
    results = worker.generate([GenerateTask("a", delivery(7)), GenerateTask("b", delivery(1))])
    assert [len(r.data) for r in results] == [7, 1]
    assert [len(r.data) for r in worker.edit([EditTask("a", image, None, delivery(4))])] == [4]
    assert [len(r.data) for r in worker.vary([VaryTask(image, delivery(5))])] == [5]
    assert [len(r.data) for r in worker.interpolate([InterpolateTask(image, image, delivery(8))])] == [8]
    assert pipe.calls == [("generate", 3), ("generate", 3), ("generate", 2), ("edit", 3), ("edit", 1),
                          ("vary", 3), ("vary", 2), ("interpolate", 8)]
    assert create_app(tiny_pipeline, steps=1, model_name=MODEL, max_batch=3).state.worker.max_batch == 3


# ----------------------------------------------------------------------------------------------
# keys


def test_api_key(tiny_pipeline):
    app = create_app(tiny_pipeline, steps=1, api_key="sk-right", model_name=MODEL)
    with serve_in_thread(app) as url:
        missing = requests.get(f"{url}/v1/models", timeout=30)
        assert_error_status(missing, 401, None)
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.images.generate(prompt=PROMPT)
        assert caught.value.code == "invalid_api_key"
        right = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-right", max_retries=0)
        assert right.models.list().data[0].id == MODEL
        assert requests.get(f"{url}/", timeout=30).status_code == 200  # the page and health need no key
        assert requests.get(f"{url}/health", timeout=30).status_code == 200


def assert_error_status(response, status, code):
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


# ----------------------------------------------------------------------------------------------
# the command


def test_unclip_serve_command_prints_its_url_and_serves(tiny_pipeline_dir):
    command = [sys.executable, "-m", "unclip.cli", "serve", "--checkpoint", str(tiny_pipeline_dir), "--port", "0",
               "--steps", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "http://" not in line and time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split("/ ")[0]
        models = requests.get(f"{url}/v1/models", timeout=30).json()
        assert models["data"][0]["id"] == tiny_pipeline_dir.name
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        response = client.images.generate(prompt=PROMPT, size="256x256", response_format="b64_json")
        assert decode(response.data[0]).size == (256, 256)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("flags, message", [
    (["--port", "70000"], "--port: expected 0..65535 (0 picks a free one), got 70000"),
    (["--port", "-1"], "--port: expected 0..65535 (0 picks a free one), got -1"),
    (["--image-dir", "{file}"], "--image-dir: {file} is a file, not a folder"),
])
def test_unclip_serve_refuses_a_bad_port_or_image_dir_before_loading(capsys, monkeypatch, tiny_pipeline_dir,
                                                                      tmp_path, flags, message):
    from unclip.cli import common, main

    def never(args):
        raise AssertionError("the pipeline was loaded")

    monkeypatch.setattr(common, "load_pipeline", never)
    file = tmp_path / "taken"
    file.write_text("a file, not a folder")
    code = main(["serve", "--checkpoint", str(tiny_pipeline_dir), *[f.format(file=file) for f in flags]])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == [f"unclip serve: error: {message.format(file=file)}"]


# ----------------------------------------------------------------------------------------------
# the OpenAPI schema, fuzzed


def test_schemathesis_finds_no_server_error(server):
    schemathesis = pytest.importorskip("schemathesis", reason="the schema fuzz test needs schemathesis (unclip[test])")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    session = requests.Session()
    seen = []

    def check(case):
        response = case.call(base_url=server, session=session, timeout=60)
        seen.append((case.operation.label, response.status_code))
        assert response.status_code < 500, (case.operation.label, response.status_code, response.text[:500])
        if response.status_code >= 400:  # every refusal in OpenAI's shape
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            examples = 15 if operation.method.upper() == "POST" else 5
            run = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                           suppress_health_check=list(HealthCheck))(given(case=operation.as_strategy(mode))(check))
            try:
                run()
            except Unsatisfiable:  # no invalid input exists (e.g. GET /health takes none)
                assert mode is schemathesis.GenerationMode.NEGATIVE
    operations = {label for label, _ in seen}
    assert {"POST /v1/images/generations", "POST /v1/images/edits", "POST /v1/images/variations"} <= operations
    assert any(status == 200 for label, status in seen if label == "POST /v1/images/generations")
