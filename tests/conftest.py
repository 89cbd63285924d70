"""Shared fixtures: a tiny random pipeline built once per session from ``configs/tiny`` and saved to a
temporary folder, real test photos, and diffusers' deprecated ``UnCLIPPipeline`` as an oracle."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIGS = REPO / "configs" / "tiny"


def give_zero_inits_values(pipe, seed: int = 0) -> None:
    """Fill the parameters that start at zero or identity (the learned null image embedding, the
    prior's standardisation statistics) so that tests see them act."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if pipe.decoder is not None:
            null = pipe.decoder.text_proj.learned_classifier_free_guidance_embeddings
            null.copy_(torch.randn(null.shape, generator=g))
        if pipe.prior is not None:
            t = pipe.prior.transformer
            t.clip_mean.copy_(0.5 * torch.randn(t.clip_mean.shape, generator=g))
            t.clip_std.copy_(0.5 + torch.rand(t.clip_std.shape, generator=g))


@pytest.fixture(scope="session")
def tiny_pipeline():
    """The tiny cascade (decoder 32, upsamplers 32→64→128) with random weights. Do not mutate it."""
    from unclip.pipeline import UnCLIPPipeline

    pipe = UnCLIPPipeline.from_configs(TINY_CONFIGS, seed=0)
    give_zero_inits_values(pipe)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tiny_pipeline, tmp_path_factory) -> Path:
    return tiny_pipeline.save_pretrained(tmp_path_factory.mktemp("tiny_pipeline"))


def _square(array: np.ndarray, side: int) -> Image.Image:
    h, w = array.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(array[top:top + s, left:left + s]).convert("RGB")
    return crop.resize((side, side), Image.Resampling.BICUBIC)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real photos from scikit-image (square, 96 px) and a non-square one, as PNG files."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the test photos")
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("astronaut", "chelsea", "coffee"):
        paths[name] = folder / f"{name}.png"
        _square(getattr(skimage_data, name)(), 96).save(paths[name])
    paths["wide"] = folder / "wide.png"
    Image.fromarray(skimage_data.chelsea()).resize((120, 80)).save(paths["wide"])
    paths["not_an_image"] = folder / "notes.png"
    paths["not_an_image"].write_text("this is text, not a PNG")
    return paths


# ----------------------------------------------------------------------------------------------
# diffusers' deprecated UnCLIPPipeline as an oracle


@pytest.fixture
def diffusers_oracle(monkeypatch):
    """A function ``run(oracle, pipe, prompts, steps, guidance, seed) -> (images, decoder_output)``
    that drives a diffusers ``UnCLIPPipeline`` with our CLIP's encodings.

    Two alignments make both sides see bit-identical inputs, so that 3e-4 is a fair tolerance
    with random weights (whose first steps at t = 999 amplify 1e-7 differences a millionfold):

    - the unconditional branch calls ``tokenizer("")`` and the transformers text encoder; after
      checking that it agrees with our open_clip encodings within 1e-5, it is given ours exactly;
    - unclip clamps the bicubic-upsampled conditioning of an upsampler to [−1, 1] (training sees
      clamped conditioning); diffusers and Karlo do not, so the oracle's resize is clamped too.
    It also records the decoder's output (the input of that resize) for the text→64 comparison.
    """
    try:
        import transformers  # noqa: F401
        from diffusers import UnCLIPPipeline  # noqa: F401
        try:
            import diffusers.pipelines.deprecated.unclip.pipeline_unclip as module
        except ImportError:
            import diffusers.pipelines.unclip.pipeline_unclip as module
    except ImportError as err:
        pytest.skip(f"diffusers' UnCLIPPipeline cannot be imported ({err}): the parity oracle needs diffusers' "
                    "deprecated unclip pipeline and transformers (pip install 'unclip[test]')")
    from transformers.models.clip.modeling_clip import CLIPTextModelOutput

    functional = module.F
    resize = functional.interpolate
    decoded = []

    class ClampedResize:  # the pipeline module's ``F``, with a clamped bicubic resize
        def __getattr__(self, name):
            return getattr(functional, name)

        @staticmethod
        @functools.wraps(resize)  # keeps the signature: diffusers inspects it for ``antialias``
        def interpolate(image, **kwargs):
            decoded.append(image.clone())
            return resize(image, **kwargs).clamp(-1, 1)

    monkeypatch.setattr(module, "F", ClampedResize())

    def run(oracle, pipe, prompts, steps, guidance, seed):
        empty = pipe.clip.encode_text([""])
        ids = oracle.tokenizer([""], padding="max_length", max_length=oracle.tokenizer.model_max_length,
                               truncation=True, return_tensors="pt")
        theirs = oracle.text_encoder(ids.input_ids)
        assert torch.equal(ids.attention_mask.bool(), empty.mask)
        assert torch.allclose(theirs.text_embeds, empty.emb, atol=1e-5)
        assert torch.allclose(theirs.last_hidden_state, empty.tokens, atol=1e-5)

        def exact_empty(input_ids, *args, **kwargs):
            b = len(input_ids)
            return CLIPTextModelOutput(text_embeds=empty.emb.expand(b, -1),
                                       last_hidden_state=empty.tokens.expand(b, -1, -1))

        monkeypatch.setattr(oracle.text_encoder, "forward", exact_empty)
        oracle.set_progress_bar_config(disable=True)
        text = pipe.clip.encode_text(prompts)
        decoded.clear()
        images = oracle(text_model_output=(text.emb, text.tokens), text_attention_mask=text.mask,
                        prior_num_inference_steps=steps["prior"], decoder_num_inference_steps=steps["decoder"],
                        super_res_num_inference_steps=steps["upsampler"], prior_guidance_scale=guidance["prior"],
                        decoder_guidance_scale=guidance["decoder"], generator=torch.Generator().manual_seed(seed),
                        output_type="np").images
        return images, decoded[0]

    return run


def _free_port() -> int:
    import socket

    with socket.socket() as s:  # concurrent test runs must not share the rendezvous port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def accelerate_launch(tmp_path):
    """``launch(*launch_options, "-m", "unclip", ...)``: ``accelerate launch`` on two CPU processes
    (gloo), one thread each; returns the finished process (stdout, stderr) after checking it passed."""
    import os
    import shutil
    import subprocess
    import sys

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("the accelerate command is not installed")
    if torch.cuda.is_available():
        pytest.skip("checks CPU (gloo) processes")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}

    def launch(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [accelerate, "launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
        if check:
            assert done.returncode == 0, done.stderr[-3000:]
        return done

    return launch
