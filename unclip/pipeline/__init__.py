"""The unCLIP cascade at inference: ``UnCLIPPipeline`` and its parts (see ``cascade``)."""

from unclip.pipeline.cascade import UnCLIPPipeline
from unclip.pipeline.folder import default_checkpoint
from unclip.pipeline.inputs import load_image
from unclip.pipeline.plan import Generation, Latent, SamplingOptions

__all__ = ["UnCLIPPipeline", "SamplingOptions", "Generation", "Latent", "default_checkpoint", "load_image"]
