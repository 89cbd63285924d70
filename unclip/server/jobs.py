"""Turning a validated request into a ``Job`` for the worker thread, one builder per endpoint.

Each builder reads its body (JSON or multipart), checks every field (400 in OpenAI's shape on the
first bad one), and returns the job; nothing here touches the networks except CLIP's tokenizer.
"""

from __future__ import annotations

import logging

from fastapi import Request

from unclip.pipeline import UnCLIPPipeline
from unclip.pipeline.inputs import fit_prompt
from unclip.pipeline.inpaint import keep_mask
from unclip.pipeline.outpaint import Margins, window_side
from unclip.safety import ContentPolicyViolation, PromptFilter, check_prompt
from unclip.server.errors import APIError
from unclip.server.params import parse_common, parse_int, parse_prompt
from unclip.server.queue import Job
from unclip.server.uploads import file_part, has_alpha, read_form, read_json, read_png
from unclip.server.work import (
    Delivery,
    EditTask,
    GenerateTask,
    InterpolateTask,
    OutpaintTask,
    VaryTask,
    Worker,
)

log = logging.getLogger("unclip.server")

SAFETY_MESSAGE = "Your request was rejected as a result of our safety system."  # OpenAI's words
MAX_FRAMES = 16
MAX_MARGIN = 1024  # pixels an outpaint request may add on one side


class JobBuilder:
    def __init__(self, pipeline: UnCLIPPipeline, worker: Worker, model_name: str, public_url: str | None = None,
                 prompt_filter: PromptFilter | None = None):
        self.pipeline, self.worker, self.model_name, self.prompt_filter = pipeline, worker, model_name, prompt_filter
        self.public_url = public_url.rstrip("/") + "/" if public_url else None

    def delivery(self, request: Request, common, revised_prompt: str | None = None) -> Delivery:
        return Delivery(common, self.public_url or str(request.base_url), revised_prompt)

    def prompt(self, value) -> tuple[str, str | None]:
        """The prompt to sample, and the same text again where it had to be cut to CLIP's context
        (the response's ``revised_prompt``; the API allows 1000 characters, CLIP reads 77 tokens)."""
        prompt = parse_prompt(value)
        try:
            check_prompt(self.prompt_filter, prompt)  # the whole text, before any cut
        except ContentPolicyViolation as err:
            log.info("refused a prompt: %s", err)  # the client is not told which entry matched
            raise APIError(SAFETY_MESSAGE, code="content_policy_violation") from None
        fitted = fit_prompt(self.pipeline.clip, prompt)  # parse_prompt checked type and emptiness
        return fitted, (fitted if fitted != prompt else None)

    async def generation(self, request: Request) -> Job:
        fields = await read_json(request)
        prompt, revised = self.prompt(fields.get("prompt"))
        common = parse_common(fields, self.model_name, text=False)
        task = GenerateTask(prompt, self.delivery(request, common, revised))
        key = ("generate", self.worker.source_side(common.side))  # generations of one stage batch together
        return Job(run=self.worker.generate, payload=task, key=key, weight=common.n)

    async def edit(self, request: Request) -> Job:
        fields, files = await read_form(request)
        image = read_png(file_part(files, fields, "image"), "image")
        prompt, revised = self.prompt(fields.get("prompt"))
        mask_bytes = file_part(files, fields, "mask", required=False)
        mask = None if mask_bytes is None else read_png(mask_bytes, "mask")
        check_edit_images(image, mask)
        common = parse_common(fields, self.model_name, text=True)
        task = EditTask(prompt, image, mask, self.delivery(request, common, revised))
        return Job(run=self.worker.edit, payload=task, weight=common.n)

    async def variation(self, request: Request) -> Job:
        fields, files = await read_form(request)
        image = read_png(file_part(files, fields, "image"), "image")
        common = parse_common(fields, self.model_name, text=True)
        return Job(run=self.worker.vary, payload=VaryTask(image, self.delivery(request, common)), weight=common.n)

    async def interpolation(self, request: Request) -> Job:
        fields, files = await read_form(request)
        image_a = read_png(file_part(files, fields, "image_a"), "image_a")
        image_b = read_png(file_part(files, fields, "image_b"), "image_b")
        common = parse_common(fields, self.model_name, text=True, n_name="frames", max_n=MAX_FRAMES, default_n=8,
                              min_n=2)  # both ends
        task = InterpolateTask(image_a, image_b, self.delivery(request, common))
        return Job(run=self.worker.interpolate, payload=task, weight=common.n)


    async def outpaint(self, request: Request) -> Job:
        fields, files = await read_form(request)
        image = read_png(file_part(files, fields, "image"), "image")
        prompt, revised = self.prompt(fields.get("prompt"))
        expand = parse_int(fields.get("expand"), "expand", 0, 0, MAX_MARGIN, text=True)
        sides = {side: parse_int(fields.get(side), side, expand, 0, MAX_MARGIN, text=True)
                 for side in ("left", "right", "top", "bottom")}
        if not any(sides.values()):
            raise APIError("Invalid request: give 'expand' or at least one of 'left', 'right', 'top', 'bottom' "
                           "a number of pixels above 0.", param="expand", code="invalid_value")
        margins = Margins(**sides)
        window_side(image.size, margins, min(self.pipeline.sizes, default=1))  # too many windows: 400 on `expand`
        common = parse_common(fields, self.model_name, text=True)
        task = OutpaintTask(prompt, image, margins, self.delivery(request, common, revised))
        return Job(run=self.worker.outpaint, payload=task, weight=common.n)


def check_edit_images(image, mask) -> None:
    """The mask matches the image and has alpha; without a mask the image itself has alpha. Some
    pixel of that alpha is 0 (a pixel to regenerate)."""
    if mask is not None and mask.size != image.size:
        raise APIError(f"Invalid mask - mask and image must have the same dimensions, got "
                       f"{mask.size[0]}x{mask.size[1]} and {image.size[0]}x{image.size[1]}.", param="mask",
                       code="invalid_image")
    if mask is not None and not has_alpha(mask):
        raise APIError(f"Invalid mask - the mask must have an alpha channel (its fully transparent pixels mark "
                       f"what to edit), got mode {mask.mode}.", param="mask", code="invalid_image")
    if mask is None and not has_alpha(image):
        raise APIError(f"Invalid input image - format must be in ['RGBA', 'LA'] when no mask is given (its "
                       f"transparent pixels are the mask), got {image.mode}.", param="image", code="invalid_image")
    try:
        keep_mask(image, mask)  # alpha 0 nowhere: nothing to regenerate
    except ValueError as err:
        raise APIError(f"Invalid input - {err}.", param="image" if mask is None else "mask",
                       code="invalid_image") from None
