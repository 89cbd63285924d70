"""The training stages: each module's ``build(cfg, ctx) -> StageTask`` gives the shared loop a
network, a data set, a loss closure, a monitor and an export (see ``common.StageTask``)."""

from __future__ import annotations

from collections.abc import Callable

from unclip.config import Stage, StageConfig
from unclip.training.stages import clip, decoder, prior, upsampler
from unclip.training.stages.common import StageContext, StageTask

BUILDERS: dict[Stage, Callable[[StageConfig, StageContext], StageTask]] = {
    Stage.clip: clip.build,
    Stage.prior: prior.build,
    Stage.decoder: decoder.build,
    Stage.upsampler_256: upsampler.build,
    Stage.upsampler_1024: upsampler.build,
}


def build_task(cfg: StageConfig, ctx: StageContext) -> StageTask:
    """The task of ``cfg``'s stage."""
    return BUILDERS[Stage(cfg.stage)](cfg, ctx)
