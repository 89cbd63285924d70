"""Parity with diffusers' deprecated ``UnCLIPPipeline`` (the reference implementation of Karlo's
sampling) on identical tiny weights, noise and step counts: text → decoder size (32 here, 64 at
full scale) and text → first upsampler size (64 here, 256 at full scale), within 3e-4.

diffusers draws one prior sample per prompt, so ours runs with ``prior_candidates=1``; both sides
sample every stage with ``UnCLIPScheduler`` and consume one generator in the same order. Skipped
only when diffusers' ``UnCLIPPipeline`` (or the transformers it needs) cannot be imported.
"""

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIGS, give_zero_inits_values

from unclip.pipeline import UnCLIPPipeline
from unclip.pipeline.karlo import to_diffusers

STEPS = {"prior": 5, "decoder": 5, "upsampler": 3}
GUIDANCE = {"prior": 4.0, "decoder": 8.0}


@pytest.fixture(scope="module")
def pipe():
    p = UnCLIPPipeline.from_configs(TINY_CONFIGS, seed=1)
    give_zero_inits_values(p, seed=1)
    return p


# The pipeline's UNets run in channels_last on the CPU (``networks.layers.inference_memory_format``),
# whose oneDNN convolutions sum in another order than diffusers' NCHW ones: 1e-7 apart per call,
# ≈ 1e-4 after the random weights' steps. A real difference (the guidance test below) is > 1e-2.
TOLERANCE = 3e-4


def ours(pipe, prompts, size, n=1, seed=0):
    return pipe.generate(prompts, n=n, size=size, steps=STEPS, guidance=GUIDANCE, sampler="unclip",
                         prior_candidates=1, generator=torch.Generator().manual_seed(seed),
                         return_embeddings=True, progress=False)


@pytest.mark.parametrize("prompts, n", [(["a red circle", "a small blue square in the top left"], 1),
                                        (["a green star on a black background"], 2)])
def test_text_to_image_matches_diffusers_unclip(pipe, diffusers_oracle, prompts, n):
    oracle = to_diffusers(pipe)
    expanded = [p for p in prompts for _ in range(n)]  # diffusers' num_images_per_prompt, as text_model_output
    reference, reference_small = diffusers_oracle(oracle, pipe, expanded, STEPS, GUIDANCE, seed=0)

    small = ours(pipe, prompts, size=32, n=n)
    assert small.pixels.shape == reference_small.shape == (len(expanded), 3, 32, 32)
    assert (small.pixels - reference_small).abs().max() < TOLERANCE

    full = ours(pipe, prompts, size=64, n=n)
    mine = (full.pixels * 0.5 + 0.5).permute(0, 2, 3, 1).numpy()  # diffusers' output_type="np"
    assert mine.shape == reference.shape == (len(expanded), 64, 64, 3)
    assert np.abs(mine - reference).max() < TOLERANCE
    assert not np.allclose(reference[0], reference[-1], atol=1e-2)  # not a degenerate constant image


def test_parity_fails_when_guidance_differs(pipe, diffusers_oracle):
    """The comparison is sensitive: the same run with another decoder guidance does not match."""
    oracle = to_diffusers(pipe)
    prompts = ["a red circle"]
    _, reference_small = diffusers_oracle(oracle, pipe, prompts, STEPS, {"prior": 4.0, "decoder": 3.0}, seed=0)
    assert (ours(pipe, prompts, size=32).pixels - reference_small).abs().max() > 1e-2


def test_diffusers_has_no_residual_upsampler(pipe):
    """diffusers' super-resolution UNets diffuse the image itself: a residual upsampler is refused
    with the reason, not exported as if it were one."""
    import copy
    import dataclasses

    from unclip.pipeline import UnCLIPPipeline

    ups = {slot: copy.deepcopy(net) for slot, net in pipe.upsamplers.items()}
    ups["upsampler_256"].cfg = dataclasses.replace(ups["upsampler_256"].cfg, residual=True)
    residual = UnCLIPPipeline(pipe.clip, pipe.prior, pipe.decoder, ups, sampling=pipe.sampling)
    with pytest.raises(ValueError, match="upsampler_256 is residual"):
        to_diffusers(residual)
    decoder = copy.deepcopy(pipe.decoder)
    for field, message in (("coordinates", "coordinate maps"), ("learned_variance", "learned variance")):
        decoder.cfg = dataclasses.replace(pipe.decoder.cfg, **{field: field == "coordinates"})
        changed = UnCLIPPipeline(pipe.clip, pipe.prior, decoder, pipe.upsamplers, sampling=pipe.sampling)
        with pytest.raises(ValueError, match=message):
            to_diffusers(changed)
