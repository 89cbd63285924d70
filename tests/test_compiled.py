"""``unclip.pipeline.compiled``: torch.compile on a pipeline's networks, opt in. Traced with the
``eager`` backend (no C++ compile, so it fits the suite), which runs the same graph dynamo captures."""

import numpy as np
from conftest import TINY_CONFIGS

from unclip.pipeline import UnCLIPPipeline
from unclip.pipeline.compiled import compile_networks
from unclip.pipeline.folder import random_parts


def test_compiled_networks_sample_the_same_images():
    pipe = UnCLIPPipeline.from_configs(TINY_CONFIGS)
    kwargs = dict(size=64, seed=1, steps={"prior": 2, "decoder": 2, "upsampler": 2}, progress=False)
    eager = [np.asarray(im) for im in pipe.generate("a red circle", n=2, **kwargs)]
    assert compile_networks(pipe, backend="eager") == ["prior", "decoder", *[s.value for s in pipe.upsamplers]]
    assert compile_networks(pipe, backend="eager") == []  # once only
    compiled = [np.asarray(im) for im in pipe.generate("a red circle", n=2, **kwargs)]
    assert all(np.array_equal(a, b) for a, b in zip(eager, compiled))
    assert all(hasattr(pipe.component(s), "_unclip_compiled") for s in ("prior", "decoder"))


def test_the_autoregressive_prior_stays_eager():
    pipe = UnCLIPPipeline(**vars(random_parts(TINY_CONFIGS, prior="prior_ar")))
    assert "prior" not in compile_networks(pipe, backend="eager")
    assert not hasattr(pipe.prior, "_unclip_compiled")
